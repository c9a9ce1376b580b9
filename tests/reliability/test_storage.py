"""A read-only database: the read commands (`subscribers list`, `digest status`) still work,
and a write command exits 3 with a clear message and no traceback (README, exit codes).

Tests run as root, and chmod does not stop root. Two ways to make the database read-only:
- the way a user would configure it: an SQLite URI with mode=ro in `database.url`;
- the way a full or read-only disk does it: the real command run in a private mount
  namespace where the site's folder is a read-only bind mount (`unshare -m`; skipped where
  the machine does not allow it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import Figures
from mailsite import MailSite, site_tables, write_config
from sites import postroom_command, postroom_env

pytestmark = pytest.mark.slow

READERS = ["ann@example.org", "bob@example.org"]
COMMANDS = {
    "subscribers list": (["subscribers", "list"], 0),
    "digest status": (["digest", "status"], 0),
    "subscribers add (a write)": (["subscribers", "add", "new@example.org"], 3),
}


def make_database(root: Path) -> MailSite:
    """A site whose database holds two readers; closed, as after a clean shutdown (SQLite
    then removes its -wal and -shm files)."""
    site = MailSite.create(root)
    site.add_subscribers(READERS)
    site.engine.dispose()
    return site


def judge(figures: Figures, way: str, runs: dict[str, subprocess.CompletedProcess[str]],
          stray: list[str]) -> None:
    """Record a row per command: its exit code against the expected one."""
    for name, (_, expected) in COMMANDS.items():
        run = runs[name]
        output = run.stdout + run.stderr
        traceback = "Traceback" in output
        ok = run.returncode == expected and not traceback
        if name == "subscribers list":
            ok = ok and all(reader in run.stdout for reader in READERS)
        if expected == 3:
            ok = ok and "postroom:" in run.stderr
        last = (run.stderr.strip() or run.stdout.strip()).splitlines()[-1:]
        figures.record(f"read-only database ({way}): {name}", f"exit {run.returncode}",
                       f"exit {expected}" + (", lists the readers" if expected == 0 and
                                             "list" in name else "") + ", no traceback",
                       ok, f"{last[0][:150] if last else ''}"
                           + (f"; stray files {stray}" if stray else ""))


def test_a_read_only_sqlite_uri(tmp_path: Path, figures: Figures) -> None:
    make_database(tmp_path / "site")
    database = tmp_path / "site" / "db.sqlite"
    readonly = write_config(tmp_path / "site" / "readonly.toml", site_tables(
        tmp_path / "site", None, database={"url": f"sqlite:///file:{database}?mode=ro&uri=true"}))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    runs = {name: subprocess.run([*postroom_command(), *args, "--config", str(readonly)],
                                 cwd=workdir, env=postroom_env(), capture_output=True,
                                 text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
            for name, (args, _) in COMMANDS.items()}
    # Whatever postroom opened instead of the database shows up as new files.
    stray = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                   if p.is_file() and "file:" in str(p))
    judge(figures, "SQLite URI mode=ro in database.url", runs, stray)
    figures.assert_held()


def read_only_mounts_work() -> bool:
    if not (shutil.which("unshare") and shutil.which("mount")):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind -o ro / /mnt"],
                           capture_output=True, check=False, timeout=10)
    return probe.returncode == 0


def test_a_database_on_a_read_only_mount(tmp_path: Path, figures: Figures) -> None:
    site = make_database(tmp_path / "site")
    if not read_only_mounts_work():
        figures.skip("read-only database (read-only mount)",
                     "this machine allows no private read-only bind mount (unshare -m)")
    folder = str(tmp_path / "site")
    runs = {}
    for name, (args, _) in COMMANDS.items():
        # The mount exists only in the command's own namespace, and ends with it.
        script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
        runs[name] = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, "-", folder, *postroom_command(), *args,
             "--config", str(site.config)],
            cwd=folder, env=postroom_env(), capture_output=True, text=True, timeout=60,
            check=False, stdin=subprocess.DEVNULL)
    judge(figures, "read-only mount, closed cleanly", runs, [])
    figures.assert_held()

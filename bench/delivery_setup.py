"""What bench/delivery.py measures against: Postfix's SMTP test tools, a running smtp-sink,
a site folder with a digest to send, and subscriber databases and CSV files of any size.

Also the one way every measured command is run: `measure`, a subprocess with a timeout whose
CPU time and peak RSS come from wait4(2) (the process and every descendant it reaped).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

SBIN = Path("/usr/sbin")
SINK, SOURCE = SBIN / "smtp-sink", SBIN / "smtp-source"
POSTFIX_PACKAGE = "postfix"
LOOPBACK = "127.0.0.1"
SENDER, RECIPIENT = "sender@bench.example", "rcpt@bench.example"
DIGEST_SINCE = "2020-01-01"
POST_COUNT = 9  # with the summary below: a digest message of ~14 KB, like a real one
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores a DateTime in SQLite


class BenchError(Exception):
    """The benchmark cannot go on (a tool is missing, the sink does not start)."""


# --- running and measuring one command ---------------------------------------------------

@dataclass
class Measured:
    """One finished (or killed) command: exit code, wall seconds, CPU seconds, peak RSS."""

    returncode: int
    wall: float
    cpu: float  # user + sys of the process and its reaped descendants
    maxrss_kb: int  # the largest single process among them, not a sum
    stdout: str
    stderr: str
    timed_out: bool


def measure(argv: Sequence[str], env: Mapping[str, str], timeout: float,
            cwd: Path | None = None) -> Measured:
    """Run argv in its own process group; kill the group after `timeout` seconds.

    wait4(2) gives the rusage of exactly this child and its reaped descendants, which is the
    RUSAGE_CHILDREN delta of the run without its one flaw: ru_maxrss of RUSAGE_CHILDREN is a
    high-water mark over every child ever reaped, so a small run after a big one would
    report the big one's peak.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=dict(env), cwd=cwd, start_new_session=True)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            _kill_group(proc.pid)

        killer = threading.Timer(timeout, expire)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: the command runs in its own session, so stop it too
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            killer.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        _kill_group(proc.pid)  # a worker left behind must not run into the next measurement
        return Measured(
            returncode=proc.returncode, wall=wall, cpu=usage.ru_utime + usage.ru_stime,
            maxrss_kb=usage.ru_maxrss, stdout=_read(out), stderr=_read(err),
            timed_out=expired.is_set(),
        )


def rss_floor_kb() -> int:
    """The least peak RSS `measure` can report: that of a command using almost no memory."""
    return measure(["/bin/true"], os.environ, timeout=30).maxrss_kb


def _read(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode("utf-8", "replace")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# --- Postfix's smtp-source and smtp-sink --------------------------------------------------

def ensure_postfix_tools(wait_seconds: float = 900.0) -> None:
    """Make sure smtp-sink and smtp-source exist: wait for a running apt, else install."""
    if _tools_present():
        return
    if _apt_running():
        print(f"waiting for a running apt/dpkg to finish (up to {wait_seconds:.0f} s)...",
              flush=True)
        deadline = time.monotonic() + wait_seconds
        while _apt_running() and time.monotonic() < deadline and not _tools_present():
            time.sleep(2.0)
        if _tools_present():
            return
    if os.geteuid() != 0:
        raise BenchError(f"{SINK} and {SOURCE} are missing: install the Debian package "
                         f"'{POSTFIX_PACKAGE}' (apt-get install --no-install-recommends postfix)")
    print(f"installing the Debian package '{POSTFIX_PACKAGE}' (no configuration)...", flush=True)
    _install_postfix()
    if not _tools_present():
        raise BenchError(f"the package '{POSTFIX_PACKAGE}' is installed but {SINK} or {SOURCE} "
                         "is still missing")


def _tools_present() -> bool:
    return all(os.access(tool, os.X_OK) for tool in (SINK, SOURCE))


def _apt_running() -> bool:
    names = {"apt", "apt-get", "dpkg", "unattended-upgr"}
    for stat in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if stat.read_text().strip() in names:
                return True
    return False


def _install_postfix() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["debconf-set-selections"], check=True, timeout=60, env=env,
                   input="postfix postfix/main_mailer_type select No configuration\n", text=True)
    install = ["apt-get", "install", "-y", "--no-install-recommends",
               "-o", "DPkg::Lock::Timeout=600", POSTFIX_PACKAGE]
    if subprocess.run(install, timeout=1800, env=env).returncode == 0:
        return
    subprocess.run(["apt-get", "update"], check=False, timeout=900, env=env)
    if subprocess.run(install, timeout=1800, env=env).returncode != 0:
        raise BenchError(f"could not install the Debian package '{POSTFIX_PACKAGE}'")


def postfix_version() -> str:
    for argv in (["postconf", "-d", "-h", "mail_version"],
                 ["dpkg-query", "-W", "-f", "${Version}", POSTFIX_PACKAGE]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip()
    return "unknown"


class Sink:
    """A running smtp-sink on a free loopback port, counting the messages it accepts (-c)."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.counter_path = workdir / "smtp-sink.counters"
        self._last = 0
        self._counter = open(self.counter_path, "ab")  # noqa: SIM115 (closed in stop)
        argv = [str(SINK), "-c"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # it refuses to run as root
        argv += [f"{LOOPBACK}:{self.port}", "4096"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._counter,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.extensions = self._wait_until_ready()

    def _wait_until_ready(self, seconds: float = 10.0) -> list[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise BenchError(f"smtp-sink exited: {err.strip()}")
            with contextlib.suppress(OSError):
                return _ehlo_extensions(self.port)
            time.sleep(0.1)
        raise BenchError(f"smtp-sink did not answer on {LOOPBACK}:{self.port}")

    def accepted(self) -> int:
        """Messages accepted so far (the last `mesg=` counter smtp-sink printed)."""
        self._counter.flush()
        with open(self.counter_path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 256))
            found = re.findall(rb"mesg=(\d+)", handle.read())
        return int(found[-1]) if found else self._last

    def checkpoint(self) -> int:
        """The count now; the counter file is emptied so it never grows with the run."""
        time.sleep(0.05)  # the last "." is counted before its reply: this is only belt and braces
        self._last = self.accepted()
        os.truncate(self.counter_path, 0)  # smtp-sink writes in append mode: no hole
        return self._last

    def stop(self) -> None:
        _kill_group(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._counter.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _ehlo_extensions(port: int) -> list[str]:
    with socket.create_connection((LOOPBACK, port), timeout=5) as conn:
        reader = conn.makefile("rb")
        reader.readline()  # 220 greeting
        conn.sendall(b"EHLO bench.example\r\n")
        lines = []
        while True:
            line = reader.readline().decode().rstrip()
            if not line:
                break
            lines.append(line[4:].strip())
            if line[3:4] != "-":
                break
        conn.sendall(b"QUIT\r\n")
        return [line for line in lines[1:] if line]


# --- the site, its databases and CSV files -------------------------------------------------

SUMMARY = ("A summary of post {i}: a few sentences, as long as a real blog's summaries are, so "
           "that the digest lists every post with its title, date, link and summary in HTML "
           "and in plain text, and the message has the size of a real digest.")


@dataclass
class Site:
    """A site folder in a temporary directory; `db_url` points a command at one database."""

    root: Path
    config: Path
    schema_db: Path  # empty database with the current schema

    def env(self, database: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM")}
        env["POSTROOM__DATABASE__URL"] = f"sqlite:///{database}"
        env.update(extra or {})
        return env


def create_site(root: Path, smtp_port: int, postroom: Sequence[str]) -> Site:
    """Write posts and a config, then create the schema with `postroom db upgrade`."""
    posts = root / "posts"
    posts.mkdir(parents=True)
    for i in range(1, POST_COUNT + 1):
        (posts / f"2020-02-{i:02d}-post-{i}.md").write_text(
            f"---\ntitle: {json.dumps(f'Benchmark post {i}: a digest for many readers')}\n"
            f"date: 2020-02-{i:02d}\nsummary: {json.dumps(SUMMARY.format(i=i))}\n"
            "tags: [bench]\n---\n\n"
            f"The body of post {i}.\n", encoding="utf-8")
    config = root / "postroom.toml"
    config.write_text(_config_text(root, smtp_port), encoding="utf-8")
    site = Site(root, config, root / "schema.db")
    done = measure([*postroom, "--config", str(config), "db", "upgrade"], site.env(site.schema_db),
                   timeout=120)
    if done.returncode != 0:
        raise BenchError(f"postroom db upgrade failed (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return site


def _config_text(root: Path, smtp_port: int) -> str:
    return f"""\
# Written by bench/delivery.py.
[site]
title = "Bench blog"
base_url = "https://blog.bench.example"
timezone = "UTC"

[site.author]
name = "Bench"

[paths]
posts = "posts"
output = "public"

[database]
url = "sqlite:///{root / 'postroom.db'}"

[digest]
since = {DIGEST_SINCE}

[mail]
transport = "smtp"
from_address = "{SENDER}"

[smtp]
host = "{LOOPBACK}"
port = {smtp_port}
security = "none"
concurrency = 8
timeout = 60.0
"""


def digest_message(site: Site, postroom: Sequence[str]) -> bytes:
    """The digest as one subscriber gets it, from `postroom digest preview`."""
    scratch = site.root / "preview.db"
    shutil.copyfile(site.schema_db, scratch)
    folder = site.root / "digest-preview"
    done = measure([*postroom, "--config", str(site.config), "digest", "preview",
                    "--to", RECIPIENT, "--output", str(folder)], site.env(scratch), timeout=120)
    message = folder / "digest.eml"
    if done.returncode != 0 or not message.exists():
        raise BenchError(f"postroom digest preview failed (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return message.read_bytes()


def subscriber_db(site: Site, count: int) -> Path:
    """A copy of the schema database with `count` active subscribers, inserted directly."""
    path = site.root / f"subscribers-{count}.db"
    if path.exists():
        return path
    shutil.copyfile(site.schema_db, path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        columns = db.execute("PRAGMA table_info(subscribers)").fetchall()
        names, row_of = _row_maker(columns)
        marks = ", ".join("?" for _ in names)
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        with db:
            db.executemany(f"INSERT INTO subscribers ({', '.join(names)}) VALUES ({marks})",
                           (row_of(i) for i in range(count)))
        (inserted,) = db.execute("SELECT count(*) FROM subscribers").fetchone()
    if inserted != count:
        raise BenchError(f"inserted {inserted} subscribers instead of {count}")
    return path


def _row_maker(columns: list[tuple[Any, ...]]) -> tuple[list[str], Any]:
    """Column names to fill and a function from a row number to their values.

    Columns this script knows get realistic values; any other NOT NULL column without a
    default (a per-subscriber key added by a migration) gets a random token, or 0 if it is
    an integer column, so the benchmark keeps working while the schema changes.
    """
    stamp = (datetime.now(UTC) - timedelta(days=1)).strftime(SQLITE_TIME)
    known: dict[str, Any] = {
        "email": lambda i: f"reader{i}@bench.example", "name": lambda i: f"Reader {i}",
        "status": "active", "source": "bench", "created_at": stamp,
        "status_changed_at": stamp, "confirmed_at": stamp, "bounce_count": 0,
    }
    makers: list[Any] = []
    names: list[str] = []
    for _cid, name, kind, notnull, default, primary in columns:
        if name in known:
            value = known[name]
            makers.append(value if callable(value) else (lambda _i, v=value: v))
        elif notnull and default is None and not primary:
            integer = "INT" in str(kind).upper()
            makers.append((lambda _i: 0) if integer else (lambda _i: secrets.token_urlsafe(12)))
        else:
            continue
        names.append(name)
    return names, lambda i: tuple(make(i) for make in makers)


def write_csv(path: Path, rows: int) -> Path:
    """A subscriber CSV (`email,name`) of `rows` distinct addresses."""
    if not path.exists():
        with open(path, "w", encoding="utf-8", newline="") as handle:
            handle.write("email,name\n")
            handle.writelines(f"import{i}@bench.example,Reader {i}\n" for i in range(rows))
    return path


def count_subscribers(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return int(db.execute("SELECT count(*) FROM subscribers").fetchone()[0])

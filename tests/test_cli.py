"""cli.py, end to end: the installed `postroom` command run as a user would run it."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from feedreader import read_feed
from sites import Site

FEED_FILES = ["feed.atom", "feed.json", "feed.rss"]
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run(postroom_command: str, clean_env: dict[str, str], tmp_path: Path) -> Run:
    """Return run(*args, cwd=..., env=...) → the finished `postroom` process."""

    def run_postroom(
        *args: str, cwd: Path = tmp_path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [postroom_command, *args],
            cwd=cwd,
            env={**clean_env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )
        # Whatever happens, a user never sees a traceback.
        assert "Traceback" not in result.stdout + result.stderr
        return result

    return run_postroom


def good_site(site: Site) -> Site:
    site.write_post("2025-01-01-one.md", "One.\n", title="One", date=date(2025, 1, 1), tags=["a"])
    site.write_post("2025-01-02-two.md", "Two.\n", title="Two", date=date(2025, 1, 2))
    return site


def test_build_writes_feeds_and_prints_a_summary(site: Site, run: Run) -> None:
    good_site(site)
    result = run("build", "--config", str(site.config_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    feeds = [n for n in site.output_files() if not n.startswith(".")]
    assert {*FEED_FILES, "tags/a.atom", "tags/a.rss", "tags/a.json"} <= set(feeds)
    summary = result.stdout.strip()
    assert re.fullmatch(
        rf"2 published posts; (\d+) (?:feeds|files) in {re.escape(str(site.output))}: "
        r"\1 written, 0 unchanged",
        summary,
    ), summary
    for name in FEED_FILES:
        assert [e.title for e in read_feed(name, site.feed(name)).entries] == ["Two", "One"]

    again = run("build", "--config", str(site.config_path))
    assert again.returncode == 0
    assert re.search(r": 0 written, \d+ unchanged$", again.stdout.strip()), again.stdout


def test_build_with_problems_exits_1_and_prints_each_one(site: Site, run: Run) -> None:
    good_site(site)
    bad_yaml = site.write_raw("bad-yaml.md", "---\ntitle: T\ndate: 2025-01-03\ntags: [a\n---\n")
    no_title = site.write_raw("no-title.md", "---\ndate: 2025-01-03\n---\nBody\n")
    latin1_text = "---\ntitle: Café\ndate: 2025-01-03\n---\n"
    latin1 = site.write_raw("latin1.md", latin1_text.encode("latin-1"))
    result = run("build", "-c", str(site.config_path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{bad_yaml}:5: invalid YAML in front matter")
    assert lines[1] == f"{latin1}:2: not valid UTF-8 (byte 0xe9); save as UTF-8"
    assert lines[2] == f"{no_title}:1: title is missing"
    assert "3 problem(s)" in result.stdout
    # The good posts were still built.
    assert [e.title for e in read_feed("feed.atom", site.feed("feed.atom")).entries] == [
        "Two", "One"
    ]


def test_check_reports_problems_and_writes_nothing(site: Site, run: Run) -> None:
    good_site(site)
    bad = site.write_raw("bad.md", "---\ntitle: T\ndate: someday\n---\n")
    result = run("check", "--config", str(site.config_path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{bad}:3: date 'someday' is not a date (expected YYYY-MM-DD or ISO 8601)"
    ]
    assert result.stdout.strip() == "2 published posts, 1 problem(s)"
    assert not site.output.exists()


def test_check_on_a_clean_site(site: Site, run: Run) -> None:
    good_site(site)
    result = run("check", "--config", str(site.config_path))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == "2 published posts, 0 problem(s)"
    assert not site.output.exists()


def test_posts_sharing_a_date_are_a_note_that_keeps_exit_0(site: Site, run: Run) -> None:
    good_site(site)
    also = site.write_post("2025-01-02-also.md", "Also.\n", title="Also", date=date(2025, 1, 2))
    note = (f"{also}: note: 2 posts are dated 2025-01-02 with no time (2025-01-02-also.md, "
            "2025-01-02-two.md): the feeds order them by file name, one second apart; give "
            "each its time (date: 2025-01-02T09:30:00) to choose their order")
    for command in ("check", "build", "build"):  # the second build: nothing changed, said again
        result = run(command, "--config", str(site.config_path))
        assert (result.returncode, result.stderr.splitlines()) == (0, [note]), command
        assert "problem" not in result.stdout.replace("0 problem(s)", "")


def test_config_option_before_or_after_the_command(site: Site, run: Run) -> None:
    good_site(site)
    before = run("--config", str(site.config_path), "check")
    after = run("check", "--config", str(site.config_path))
    assert before.returncode == after.returncode == 0
    assert before.stdout == after.stdout == "2 published posts, 0 problem(s)\n"


def test_postroom_config_environment_variable(site: Site, run: Run, tmp_path: Path) -> None:
    good_site(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run("build", cwd=elsewhere, env={"POSTROOM_CONFIG": str(site.config_path)})
    assert result.returncode == 0, result.stderr
    # Paths are the config's, not the working folder's.
    assert (site.output / "feed.atom").is_file()
    assert list(elsewhere.iterdir()) == []


def test_env_override_reaches_the_command(site: Site, run: Run, tmp_path: Path) -> None:
    good_site(site)
    out = tmp_path / "elsewhere-out"
    result = run("build", "-c", str(site.config_path), env={"POSTROOM__PATHS__OUTPUT": str(out)})
    assert result.returncode == 0, result.stderr
    assert (out / "feed.rss").is_file()
    assert not site.output.exists()


def test_init_then_build(run: Run, tmp_path: Path) -> None:
    folder = tmp_path / "newsite"
    created = run("init", str(folder))
    assert created.returncode == 0, created.stderr
    assert (folder / "postroom.toml").is_file()
    assert len(list((folder / "posts").glob("*.md"))) == 1
    assert (folder / "templates").is_dir()
    assert "postroom build" in created.stdout

    built = run("build", cwd=folder)
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith("1 published posts;")
    for name in FEED_FILES:
        (entry,) = read_feed(name, (folder / "public" / name).read_bytes()).entries
        assert entry.title == "Hello, world"
    assert (folder / "public" / "tags" / "meta.atom").is_file()


def test_init_refuses_a_folder_that_is_not_empty(run: Run, tmp_path: Path) -> None:
    folder = tmp_path / "full"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    result = run("init", str(folder))
    assert result.returncode == 2
    assert str(folder) in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["mine.txt"]


def test_an_output_folder_that_cannot_be_written_exits_2_naming_it(site: Site, run: Run) -> None:
    # An OSError once reached the user as a traceback with exit 1 (the handler for database
    # errors re-raised it before the one for OSError could see it).
    good_site(site)
    site.output.write_text("a file where the output folder should be\n")
    result = run("build", "--config", str(site.config_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"postroom: {site.output}: cannot write the feeds")
    assert site.output.read_text() == "a file where the output folder should be\n"


def test_broken_config_exits_2_naming_the_file(site: Site, run: Run) -> None:
    site.config_path.write_text(
        site.config_path.read_text().replace('timezone = "Europe/Berlin"', 'timezone = "Nowhere"')
    )
    line = site.config_path.read_text().splitlines().index('timezone = "Nowhere"') + 1
    for command in ("build", "check"):
        result = run(command, "--config", str(site.config_path))
        assert result.returncode == 2
        assert result.stdout == ""
        assert f"{site.config_path}:{line}: site.timezone: 'Nowhere' is not a known time zone" in (
            result.stderr
        )
    assert not site.output.exists()


def test_invalid_toml_and_missing_config_exit_2(site: Site, run: Run, tmp_path: Path) -> None:
    site.config_path.write_text("[site\n")
    result = run("build", "--config", str(site.config_path))
    assert result.returncode == 2
    assert f"{site.config_path}: invalid TOML" in result.stderr
    missing = tmp_path / "missing.toml"
    result = run("check", "--config", str(missing))
    assert result.returncode == 2
    assert f"{missing}: config file not found" in result.stderr


def test_quiet_and_verbose(site: Site, run: Run) -> None:
    good_site(site)
    quiet = run("build", "--quiet", "--config", str(site.config_path))
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    (site.output / "feed.atom").unlink()
    verbose = run("-v", "build", "--config", str(site.config_path))
    assert verbose.returncode == 0
    assert f"  wrote {site.output / 'feed.atom'}" in verbose.stdout.splitlines()
    assert ": 1 written," in verbose.stdout


def test_version_and_help(run: Run) -> None:
    version = run("--version")
    assert version.returncode == 0
    assert re.fullmatch(r"postroom, version \d+\.\d+\.\d+\S*\n", version.stdout)
    helped = run("--help")
    assert helped.returncode == 0
    for command in ("build", "check", "init"):
        assert command in helped.stdout


# ---- silent surprises (issue 8, item 11) ------------------------------------------------------


def test_a_command_outside_a_site_folder_says_it_uses_the_built_in_defaults(
    run: Run, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "not-a-site"
    elsewhere.mkdir()
    result = run("check", cwd=elsewhere)
    assert "no config file found" in result.stderr
    assert f"using the built-in defaults in {elsewhere}" in result.stderr
    quiet = run("check", "--quiet", cwd=elsewhere)
    assert "no config file found" not in quiet.stderr


def test_check_refuses_a_digest_schedule_the_daemon_could_not_run(site: Site, run: Run) -> None:
    site.config_path.write_text(site.config_path.read_text()
                                + '\n[digest]\nschedule = "funday 09:00"\n')
    result = run("check", "--config", str(site.config_path))
    assert result.returncode == 2
    assert re.search(rf"{re.escape(str(site.config_path))}:\d+: digest\.schedule", result.stderr)
    assert "unknown day" in result.stderr

"""SIGKILL in the middle of the other long jobs: a feed build (every feed file on disk stays the
old or the new complete file), a subscriber import (running it again ends with exactly the
file's subscribers) and the creation of a digest (one clean run afterwards makes exactly one
digest and reaches every reader once). Real `postroom` processes; moments from the seed.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from killing import kill_when, sigkill, wait_connections_closed
from lxml import etree

from conftest import Figures
from mailserver import MailServer
from mailsite import MailSite, assert_no_traceback, start_postroom
from postroom.subscribers import IMPORT_BATCH
from sites import NOW, Site, write_post_file

pytestmark = pytest.mark.slow


def start(site_config: Path, cwd: Path, output: Path, *args: str) -> subprocess.Popen[bytes]:
    return start_postroom(*args, "--config", str(site_config), cwd=cwd, output=output)


# ---- a feed build ------------------------------------------------------------------------

TAGS = 40


def feed_files(output: Path) -> dict[str, bytes]:
    return {p.relative_to(output).as_posix(): p.read_bytes()
            for p in sorted(output.rglob("*")) if p.is_file()}


def replaced(output: Path, before: dict[str, int]) -> int:
    """Return how many of the files (relative path → inode) have been replaced since."""
    count = 0
    for name, inode in before.items():
        with contextlib.suppress(FileNotFoundError):
            count += (output / name).stat().st_ino != inode
    return count


def whole(name: str, data: bytes) -> bool:
    """Whether a feed file parses as a whole (XML, or JSON for .json)."""
    try:
        if name.endswith(".json"):
            json.loads(data)
        elif name.endswith((".atom", ".rss", ".xsl", ".xml")):
            etree.fromstring(data)
    except (ValueError, etree.XMLSyntaxError):
        return False
    return True


@pytest.mark.parametrize("posts, kills", [
    pytest.param(3000, 3, id="3000x3"),
    pytest.param(5000, 12, id="5000x12", marks=pytest.mark.long),
])
def test_sigkill_during_a_feed_build(tmp_path: Path, figures: Figures, rng: random.Random,
                                     posts: int, kills: int) -> None:
    site = Site(tmp_path / "site")
    site.posts.mkdir(parents=True)
    site.configure(site={"title": "Blog round 0"})
    for i in range(posts):
        write_post_file(site.posts, f"p{i:05d}", f"Post {i}", NOW - timedelta(hours=i + 1),
                        "Some words.\n", tags=[f"t{i % TAGS}"])
    site.build(datetime.now(UTC))
    total = len(feed_files(site.output))
    torn, missing, mid_way, temp_files = [], 0, 0, 0
    for round_number in range(1, kills + 1):
        # Every feed changes with the title: the killed build has a whole folder to replace.
        site.configure(site={"title": f"Blog round {round_number}"})
        old = feed_files(site.output)
        inodes = {name: (site.output / name).stat().st_ino for name in old}
        moment = rng.randrange(1, total * 2 // 3)
        log = tmp_path / f"build-{round_number}.log"
        process = start(site.config_path, site.root, log, "build")
        kill_when(process, lambda m=moment, i=inodes: replaced(site.output, i) >= m, log,
                  f"{moment} feed files replaced")
        now = feed_files(site.output)
        temp_files += sum(name.endswith(".tmp") for name in now)
        # An earlier kill's temporary files are cleared by this build: not feeds gone missing.
        missing += len({n for n in old if not n.endswith(".tmp")} - set(now))
        new = 0
        for name, data in now.items():
            if name.endswith(".tmp"):
                continue
            if old.get(name) == data:
                continue
            if whole(name, data) and (f"Blog round {round_number}".encode() in data
                                      or name == ".postroom-manifest.json"):
                new += 1
            else:
                torn.append(f"round {round_number}: {name}")
        mid_way += 0 < new < len(old)
    # A clean build afterwards finishes the job.
    report = site.build(datetime.now(UTC))
    final = feed_files(site.output)
    stale = [n for n, d in final.items() if not n.endswith(".tmp") and not whole(n, d)]
    litter = sum(name.endswith(".tmp") for name in final)

    case = f"SIGKILL ×{kills} during a feed build of {posts:,} posts ({total} files)"
    figures.hold(f"{case}: torn or missing feed files", len(torn) + missing, "0",
                 not torn and not missing,
                 f"{mid_way} of {kills} kills left old and new files side by side; "
                 f"{temp_files} temporary file(s) left by the kills"
                 + (f"; {torn[:3]}" if torn else ""))
    figures.hold(f"{case}: feeds whole after the next build", len(stale), "0",
                 not stale and not report.problems,
                 f"{litter} temporary file(s) of the killed builds still in the output folder"
                 + (f"; {stale[:3]}" if stale else ""))


# ---- an import ---------------------------------------------------------------------------

def subscriber_count(database: Path) -> int:
    """Count the subscribers as another process would (a WAL reader never waits)."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as reader:
            return int(reader.execute("select count(*) from subscribers").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not created yet


@pytest.mark.parametrize("rows, kills", [
    pytest.param(15_000, 2, id="15000x2"),
    pytest.param(200_000, 6, id="200000x6", marks=pytest.mark.long),
])
def test_sigkill_during_an_import_then_run_it_again(tmp_path: Path, figures: Figures,
                                                    rng: random.Random, rows: int,
                                                    kills: int) -> None:
    site = MailSite.create(tmp_path)
    database = tmp_path / "db.sqlite"
    addresses = [f"Reader{i:06d}@example.org" for i in range(rows)]
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("email,name\n" + "".join(f"{a},Reader {i}\n"
                                                 for i, a in enumerate(addresses)))
    reached = [0]
    for number in range(1, kills + 1):
        # Each run is killed once it has stored some new rows, at most two batches' worth:
        # always before the end of the file.
        moment = reached[-1] + rng.randrange(1, 2 * IMPORT_BATCH)
        log = tmp_path / f"import-{number}.log"
        process = start(site.config, tmp_path, log, "subscribers", "import", str(csv_file))
        kill_when(process, lambda m=moment: subscriber_count(database) >= m, log,
                  f"{moment} subscribers imported", timeout=120)
        reached.append(subscriber_count(database))
    assert reached[-1] < rows, "killed before the end of the file"
    again = site.run("subscribers", "import", str(csv_file), timeout=300)
    assert_no_traceback(again)

    with sqlite3.connect(database) as reader:
        stored = [(email, status) for email, status in reader.execute(
            "select email, status from subscribers")]
    emails = Counter(email.lower() for email, _ in stored)
    difference = len(set(emails) ^ {a.lower() for a in addresses})
    doubles = sum(n - 1 for n in emails.values())
    statuses = Counter(status for _, status in stored)
    figures.hold(f"SIGKILL ×{kills} during an import of {rows:,} rows, run again: "
                 "subscribers unlike the file", difference + doubles, "0",
                 difference == doubles == 0 and again.returncode == 0
                 and statuses == Counter({"active": rows}),
                 f"killed at {reached[1:]} rows stored; the re-run said "
                 f"{again.stdout.strip().splitlines()[-1:]}, exit {again.returncode}")


# ---- digest creation ---------------------------------------------------------------------

@pytest.fixture
def slow_server() -> Iterator[MailServer]:
    # No message is accepted while the killed runs send: each waits a minute for its 250.
    with MailServer(delay=60.0) as running:
        yield running


def digest_rows(database: Path) -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as reader:
            return int(reader.execute("select count(*) from digests").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_sigkill_while_a_digest_is_created_then_one_clean_run(
        tmp_path: Path, slow_server: MailServer, figures: Figures,
        rng: random.Random) -> None:
    site = MailSite.create(tmp_path, smtp_port=slow_server.port,
                           smtp={"concurrency": 4, "timeout": 90.0})
    readers = [f"reader{i:03d}@example.org" for i in range(200)]
    site.add_subscribers(readers)
    site.write_post("news", "News")
    database = tmp_path / "db.sqlite"
    started_at = 0.0
    moments: list[tuple[str, Callable[[], bool]]] = [
        ("at once", lambda: True),
        (f"{(d := rng.uniform(0.1, 0.6)):.2f} s after start",
         lambda d=d: time.monotonic() - started_at >= d),
        ("as the digest row is committed", lambda: digest_rows(database) >= 1),
        ("as the first SMTP connection opens", lambda: bool(slow_server.greeted_sessions())),
        (f"{(e := rng.uniform(0.6, 1.2)):.2f} s after start",
         lambda e=e: time.monotonic() - started_at >= e),
    ]
    for number, (what, condition) in enumerate(moments, start=1):
        log = tmp_path / f"send-{number}.log"
        started_at = time.monotonic()
        process = start(site.config, tmp_path, log, "digest", "send")
        if what == "at once":
            sigkill(process)
        else:
            kill_when(process, condition, log, what)
        wait_connections_closed(slow_server)
    assert slow_server.count() == 0, "a killed run got a message through"
    slow_server.delay = 0.0
    final = site.run("digest", "send", timeout=120)
    assert_no_traceback(final)

    per_reader = slow_server.per_recipient()
    made = digest_rows(database)
    not_once = sum(per_reader[r] != 1 for r in readers)
    statuses = Counter(row.status for row in site.deliveries())
    case = f"SIGKILL ×{len(moments)} while a digest is created (200 readers), then one run"
    note = "kills: " + ", ".join(what for what, _ in moments)
    figures.hold(f"{case}: digests made", made, "= 1", made == 1, note)
    figures.hold(f"{case}: readers not reached exactly once", not_once, "0",
                 not_once == 0 and final.returncode == 0
                 and statuses == Counter({"sent": len(readers)}),
                 f"deliveries {dict(statuses)}; exit {final.returncode}"
                 f"{'' if final.returncode == 0 else ': ' + final.stderr[-200:]}")

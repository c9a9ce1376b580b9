"""Load: K concurrent feed pollers (half with validators, half without) against a real
`postroom serve` while a digest is sent from this process to a real SMTP server and a real
`postroom subscribers import` of a generated CSV runs, all on the same database. Figures:
errors (bound 0), p99 latency (reported), deliveries lost (bound 0), rows imported (bound:
the CSV's, with no failure).
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from conftest import Figures
from daemonproc import DaemonSite
from mailserver import MailServer
from postroom.build import SiteBuilder
from postroom.newsletter import send_outbox
from sites import postroom_command, postroom_env

pytestmark = pytest.mark.slow

FEEDS = ["/feed.atom", "/feed.rss", "/feed.json"]


@dataclass
class Polls:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


async def poll(base_url: str, path: str, validators: bool, until: float, polls: Polls) -> None:
    """GET one feed again and again until `until`, as one feed reader on its own connection."""
    etag: str | None = None
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        while time.monotonic() < until:
            headers = {"If-None-Match": etag} if validators and etag else {}
            started = time.monotonic()
            try:
                response = await client.get(path, headers=headers)
            except httpx.HTTPError as err:
                polls.errors.append(f"{type(err).__name__}: {err}")
                continue
            polls.latencies.append(time.monotonic() - started)
            polls.statuses[response.status_code] = polls.statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                etag = response.headers.get("etag")
                if not response.content:
                    polls.errors.append(f"empty 200 for {path}")
            elif response.status_code != 304 or not validators:
                polls.errors.append(f"{response.status_code} for {path}")


async def poll_all(base_url: str, pollers: int, seconds: float) -> Polls:
    polls = Polls()
    until = time.monotonic() + seconds
    await asyncio.gather(*(poll(base_url, FEEDS[n % len(FEEDS)], n % 2 == 0, until, polls)
                           for n in range(pollers)))
    return polls


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


@pytest.fixture
def sink() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


def write_import_csv(path: Path, rows: int) -> Path:
    path.write_text("email,name\n" + "".join(f"newcomer{n:06d}@example.org,Newcomer {n}\n"
                                             for n in range(rows)), encoding="utf-8")
    return path


def newcomers(database: Path) -> int:
    """Count the imported subscribers, as another process would (a WAL reader never waits)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as reader:
        return int(reader.execute("select count(*) from subscribers where email like "
                                  "'newcomer%' and status = 'active'").fetchone()[0])


@pytest.mark.parametrize("pollers, seconds, readers, imported", [
    pytest.param(50, 3.0, 400, 3000, id="50x3s"),
    pytest.param(200, 30.0, 5000, 50_000, id="200x30s", marks=pytest.mark.long),
])
def test_feed_pollers_while_a_digest_is_sent_and_an_import_runs(
        tmp_path: Path, sink: MailServer, figures: Figures, pollers: int, seconds: float,
        readers: int, imported: int) -> None:
    now = datetime.now(UTC)
    with DaemonSite.create(tmp_path / "site", smtp_port=sink.port,
                           digest={"since": now - timedelta(days=1)}) as site:
        for n in range(20):
            site.write_post(f"post-{n}", f"Post {n}", now - timedelta(hours=n + 1),
                            tags=("load",))
        settings = site.settings()
        SiteBuilder(settings).build(now)
        site.add_subscribers([f"reader{n:05d}@example.org" for n in range(readers)])
        assert site.create_digest().recipients == readers
        server = site.start("serve")
        server.wait_healthy()

        csv_file = write_import_csv(tmp_path / "newcomers.csv", imported)
        importing = subprocess.Popen(
            [*postroom_command(), "subscribers", "import", str(csv_file), "--config",
             str(site.config)], cwd=site.root, env=postroom_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        import_started = time.monotonic()
        sent: list[object] = []
        sending = threading.Thread(target=lambda: sent.append(asyncio.run(send_outbox(
            settings, site.engine, lambda: datetime.now(UTC)))))
        sending.start()
        polls = asyncio.run(poll_all(site.base_url, pollers, seconds))
        # Whether the import was still running when the polling ended (it overlapped all).
        import_outlasted = importing.poll() is None
        import_output, import_errors = importing.communicate(timeout=300)
        import_seconds = time.monotonic() - import_started
        sending.join(120)
        assert not sending.is_alive(), "the send did not finish"
        rows = site.deliveries()
        stored = newcomers(site.root / "var" / "postroom.db")
        assert server.running(), server.log()

    received = sink.per_recipient()
    lost = sum(1 for row in rows if row.status != "sent" or received[row.email] != 1)
    requests = len(polls.latencies) + len(polls.errors)
    p50, p99 = percentile(polls.latencies, 0.5), percentile(polls.latencies, 0.99)
    case = (f"load: {pollers} feed pollers for {seconds:.0f} s during a send to {readers:,} "
            f"and an import of {imported:,}")
    figures.record(f"{case}: errors", len(polls.errors), "0", not polls.errors,
                   f"{requests} requests {dict(sorted(polls.statuses.items()))}; "
                   f"p50 {p50 * 1000:.1f} ms; {polls.errors[:2]}")
    figures.record(f"{case}: p99 latency", f"{p99 * 1000:.1f} ms", "reported", True,
                   f"max {max(polls.latencies, default=0) * 1000:.1f} ms")
    figures.record(f"{case}: deliveries lost", lost, "0", lost == 0 and len(rows) == readers,
                   f"{len(rows)} deliveries")
    said = import_output.strip().splitlines()[-1:] or [""]
    figures.record(f"{case}: rows imported meanwhile", f"{stored:,}",
                   f"{imported:,} (the CSV), exit 0, no bad row",
                   stored == imported and importing.returncode == 0
                   and said[0].startswith(f"{imported} added") and "Traceback" not in
                   import_errors, f"{import_seconds:.1f} s, "
                   f"{'outlasting' if import_outlasted else 'within'} the polling; "
                   f"exit {importing.returncode}: {said[0][:120]} {import_errors[-200:]}")
    figures.assert_held()

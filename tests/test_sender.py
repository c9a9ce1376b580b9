"""The sender: a pool of workers moving deliveries from pending to sent, through a real SMTP
server (aiosmtpd) or a real Maildir, recorded in a real SQLite file."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from mailserver import MailServer
from mailsite import FROM_ADDRESS, MailSite
from postroom import outbox
from postroom.errors import StoreError, TemplateError
from postroom.newsletter import send_outbox
from postroom.senderpool import MIN_DUE_PER_PROCESS
from postroom.subscribers import normalize_address


@pytest.fixture
def server() -> Iterator[MailServer]:
    with MailServer() as running:
        yield running


def emails(count: int) -> list[str]:
    return [f"reader{i:03d}@example.org" for i in range(count)]


def site_with_digest(root: Path, port: int | None, readers: int, **overrides: dict) -> MailSite:
    site = MailSite.create(root, smtp_port=port, **overrides)
    site.write_post("news", "News")
    site.add_subscribers(emails(readers))
    plan = site.create_digest()
    assert plan.recipients == readers
    return site


def test_workers_send_in_parallel_each_on_one_reused_connection(
    tmp_path: Path, server: MailServer
) -> None:
    site = site_with_digest(tmp_path, server.port, 60, smtp={"concurrency": 4})

    stats = site.send()

    assert (stats.sent, stats.failed, stats.retried) == (60, 0, 0)
    sessions = server.greeted_sessions()
    assert len(sessions) == 4, "one connection per worker, opened once"
    assert server.peak_connections == 4, "the four connections were open at the same time"
    per_session = Counter(m.session for m in server.messages())
    assert sorted(per_session) == sorted(s.number for s in sessions)
    assert all(count >= 2 for count in per_session.values()), per_session
    assert sum(per_session.values()) == 60
    assert server.per_recipient() == Counter({e: 1 for e in emails(60)})


def test_a_single_worker_sends_everything_on_one_connection(
    tmp_path: Path, server: MailServer
) -> None:
    site = site_with_digest(tmp_path, server.port, 12, smtp={"concurrency": 1})

    site.send()

    assert len(server.greeted_sessions()) == 1 and server.peak_connections == 1
    assert server.count() == 12


def test_every_delivery_is_recorded_as_sent(tmp_path: Path, server: MailServer) -> None:
    site = site_with_digest(tmp_path, server.port, 5)
    before = datetime.now(UTC)

    site.send()

    received = {m.rcpt_tos[0]: m for m in server.messages()}
    for row in site.deliveries():
        assert row.status == "sent" and row.attempts == 1
        assert row.claimed_by is None
        assert before <= row.sent_at <= datetime.now(UTC)
        assert row.last_reply == "250 OK: queued", "the server's reply, with its code"
        message = received[row.email].parsed()
        assert message["Message-ID"] == row.message_id
        assert received[row.email].mail_from == FROM_ADDRESS


def test_the_return_path_is_the_envelope_sender(tmp_path: Path, server: MailServer) -> None:
    site = site_with_digest(tmp_path, server.port, 2,
                            mail={"return_path": "bounces@notes.example.org"})

    site.send()

    assert {m.mail_from for m in server.messages()} == {"bounces@notes.example.org"}
    assert {str(m.parsed()["From"].addresses[0].addr_spec) for m in server.messages()} == {
        FROM_ADDRESS}


def test_sending_again_sends_nothing(tmp_path: Path, server: MailServer) -> None:
    site = site_with_digest(tmp_path, server.port, 8)
    site.send()

    again = site.send()

    assert (again.sent, again.failed, again.retried) == (0, 0, 0)
    assert server.count() == 8


def test_the_rate_limit_spaces_messages_across_workers(tmp_path: Path, server: MailServer) -> None:
    site = site_with_digest(tmp_path, server.port, 25,
                            smtp={"concurrency": 4, "rate_limit": 50.0})
    started = time.monotonic()

    stats = site.send()

    elapsed = time.monotonic() - started
    assert stats.sent == 25
    # 25 messages at 50/s: the last may start 24 intervals (0.48 s) after the first.
    assert elapsed >= 0.45, elapsed
    accepted = [e.at for e in server.outcomes() if e.stage == "data"]
    assert accepted[-1] - accepted[0] >= 0.4
    assert elapsed < 10, "limited, not stalled"


def test_deliveries_left_sending_by_a_dead_sender_are_sent_again(
    tmp_path: Path, server: MailServer
) -> None:
    site = site_with_digest(tmp_path, server.port, 6)
    now = datetime.now(UTC)
    # A sender on this host that claimed two deliveries and died before sending them: its
    # pid is gone, so the next sender takes them back at once, without waiting for the lease.
    dead = f"{socket.gethostname()}:{dead_pid()}:abc123"
    claimed = outbox.claim_batch(site.engine, dead, now, timedelta(hours=1), 2)
    assert len(claimed) == 2

    stats = site.send()

    assert stats.sent == 6
    assert server.per_recipient() == Counter({e: 1 for e in emails(6)})
    rows = {row.id: row for row in site.deliveries()}
    assert {row.status for row in rows.values()} == {"sent"}
    assert [rows[c.id].attempts for c in claimed] == [2, 2]


def test_a_live_senders_claims_are_left_to_it_until_its_lease_expires(
    tmp_path: Path, server: MailServer
) -> None:
    site = site_with_digest(tmp_path, server.port, 5)
    now = datetime.now(UTC)
    # This very process stands for a live sender elsewhere that holds two deliveries.
    alive = f"{socket.gethostname()}:{os.getpid()}:live01"
    held = outbox.claim_batch(site.engine, alive, now, timedelta(hours=1), 2)

    stats = site.send()

    assert stats.sent == 3, "the held deliveries are not sent by anybody else"
    assert {r.id for r in site.deliveries() if r.status == "sending"} == {c.id for c in held}
    # Once the lease has expired, any sender may take them.
    later = now + timedelta(hours=2)
    taken = outbox.claim_batch(site.engine, "elsewhere:1:x", later, timedelta(minutes=5), 10)
    assert sorted(c.id for c in taken) == sorted(c.id for c in held)


def dead_pid() -> int:
    """Return the pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_an_internationalized_domain_is_sent_in_its_ascii_form(
    tmp_path: Path, server: MailServer
) -> None:
    site = MailSite.create(tmp_path, smtp_port=server.port)
    site.write_post("news", "News")
    address = normalize_address("leser@bücher.example")
    site.add_subscribers(["first@example.org", address, "last@example.org"])
    site.create_digest()

    stats = site.send()

    assert (stats.sent, stats.failed) == (3, 0)
    assert server.per_recipient() == Counter(
        {"first@example.org": 1, "leser@xn--bcher-kva.example": 1, "last@example.org": 1})


def test_the_maildir_transport_stores_every_digest(tmp_path: Path) -> None:
    site = site_with_digest(tmp_path, None, 7, mail={"maildir": "var/out/maildir"})

    stats = site.send()

    assert stats.sent == 7
    files = list((tmp_path / "var" / "out" / "maildir" / "new").iterdir())
    assert len(files) == 7
    tos = []
    for path in files:
        message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        assert message.get_content_type() == "multipart/alternative"
        assert str(message["Subject"]) == "Test Notes: News"
        assert message["Delivered-To"] == message["To"]
        tos.append(str(message["To"]))
    assert sorted(tos) == emails(7)
    assert {row.status for row in site.deliveries()} == {"sent"}
    assert all(row.last_reply.startswith("250 stored as ") for row in site.deliveries())


def test_a_send_gives_up_with_a_clear_error_while_the_database_stays_locked(
    tmp_path: Path, server: MailServer
) -> None:
    site = site_with_digest(tmp_path, server.port, 5, database={"busy_timeout_ms": 50})
    # Another process holds SQLite's write lock for longer than the sender will wait.
    locker = sqlite3.connect(str(site.engine.url.database), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match=r"database stayed unavailable .*locked"):
            asyncio.run(send_outbox(site.settings, site.engine, lambda: datetime.now(UTC),
                                    wait_for_retries=0.0, give_up_after=0.5))
        assert locker.in_transaction, "it gave up while the lock was still held"
    finally:
        locker.rollback()
        locker.close()
    assert server.count() == 0, "nothing was sent that could not be claimed"
    # Once the database is writable, the next send delivers everything, once.
    assert site.send().sent == 5
    assert server.per_recipient() == Counter({e: 1 for e in emails(5)})


@pytest.mark.slow
def test_sender_processes_share_the_outbox_and_send_each_delivery_once(
    tmp_path: Path, server: MailServer
) -> None:
    readers = MIN_DUE_PER_PROCESS + 100  # enough for a second process to be worth starting
    site = MailSite.create(tmp_path, smtp_port=server.port,
                           smtp={"concurrency": 2, "processes": 2})
    site.write_post("news", "News")
    site.add_subscribers(emails(readers))
    site.create_digest()

    finished = site.run("digest", "send", "--verbose", timeout=120)

    assert finished.returncode == 0, finished.stderr
    assert "started 1 more sender process(es)" in finished.stderr
    assert f"sent {readers}, failed 0" in finished.stdout
    assert server.per_recipient() == Counter({e: 1 for e in emails(readers)})
    # Two processes with two connections each: four sessions, each used for many messages.
    per_session = Counter(m.session for m in server.messages())
    assert len(per_session) == 4 and min(per_session.values()) > 1, per_session
    assert {row.status for row in site.deliveries()} == {"sent"}


def test_a_digest_that_cannot_be_rendered_at_send_time_is_handed_back_not_left_leased(
    tmp_path: Path, server: MailServer
) -> None:
    site = site_with_digest(tmp_path, server.port, 4)
    # Broken after the digest was created: the site's own template shadows the default.
    (site.settings.templates_dir).mkdir(parents=True, exist_ok=True)
    (site.settings.templates_dir / "digest.html").write_text("{{ 1 // 0 }}", encoding="utf-8")

    with pytest.raises(TemplateError, match=r"digest\.html"):
        site.send()

    assert server.count() == 0
    assert [(row.status, row.attempts, row.claimed_by) for row in site.deliveries()] == [
        ("pending", 0, None)] * 4

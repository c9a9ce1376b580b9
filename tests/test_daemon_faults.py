"""`postroom run` under faults: SIGTERM mid-send in the scheduled path, another process
holding the SQLite write lock (shorter and longer than the busy timeout), a mail server that
refuses for now or is down across a restart. Real processes, a real SQLite file, a real SMTP
server on loopback."""

from __future__ import annotations

import re
import select
import signal
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from daemonproc import DaemonSite, PostroomProcess, free_port
from mailserver import Fault, MailServer
from postroom.optin import version_of

MakeSite = Callable[..., DaemonSite]


@pytest.fixture
def make_site(tmp_path: Path, sink: MailServer) -> Iterator[MakeSite]:
    """Return a factory: make_site(mail_server=None, smtp_port=None, **config tables).

    Every site's digest slot is far away: only the test makes digests. Every process a
    site started is stopped at the end of the test, whatever happened.
    """
    sites: list[DaemonSite] = []

    def make(mail_server: MailServer | None = None, smtp_port: int | None = None,
             **overrides: dict[str, Any]) -> DaemonSite:
        now = utc_now()
        tables: dict[str, dict[str, Any]] = {
            "digest": {"schedule": f"daily {now - timedelta(hours=2):%H:%M}",
                       "since": now - timedelta(days=1)}}
        for table, values in overrides.items():
            tables.setdefault(table, {}).update(values)
        site = DaemonSite.create(tmp_path / f"site{len(sites)}",
                                 smtp_port=smtp_port or (mail_server or sink).port, **tables)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.close()


def utc_now() -> datetime:
    return datetime.now(UTC)


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until condition() is truthy; return its value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {condition}"
        time.sleep(interval)


def delivery_counts(site: DaemonSite) -> dict[str, int]:
    counts = {"pending": 0, "sending": 0, "sent": 0, "failed": 0}
    for delivery in site.deliveries():
        counts[delivery.status] += 1
    return counts


def readers(count: int) -> list[str]:
    return [f"reader{n:03}@example.org" for n in range(count)]


def subscribe_with_the_form(client: httpx.Client, email: str) -> httpx.Response:
    page = client.get("/subscribe")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token, page.text
    return client.post("/subscribe", data={"csrf": token.group(1), "email": email})


def confirm_link(site: DaemonSite, server: MailServer, email: str) -> str:
    [message] = server.messages_to(email)
    assert message.parsed()["Subject"] == "Confirm your subscription to Daemon Notes"
    return message.link(re.escape(site.url("/confirm/")) + r"\S+")


def write_lock(site: DaemonSite) -> sqlite3.Connection:
    """Open the site's SQLite file as another process would and take its write lock."""
    holder = sqlite3.connect(site.root / "var" / "postroom.db", isolation_level=None,
                             timeout=10.0)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def assert_clean_log(daemon: PostroomProcess) -> None:
    """No traceback and no error in the daemon's log."""
    log = daemon.log()
    assert "Traceback" not in log and " ERROR " not in log, log


# ---- SIGTERM in the scheduled send path ---------------------------------------------------

def test_sigterm_mid_scheduled_send_waits_for_the_messages_in_flight(
        make_site: MakeSite) -> None:
    with MailServer(delay=0.05) as slow:
        site = make_site(mail_server=slow, daemon={"retry_interval": 0.5,
                                                   "shutdown_grace": 10.0})
        site.write_post("big-news", "Big news", utc_now() - timedelta(minutes=10))
        site.add_subscribers(readers(300))
        daemon = site.start("run")
        daemon.wait_healthy()
        # The digest appears while the daemon runs: its interval send job picks it up.
        plan = site.create_digest()
        assert plan.digest_id == 1 and plan.recipients == 300
        assert slow.wait_for(20, timeout=20), daemon.log()

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
        log = daemon.log()
        assert "stopping: no new work" in log and "Traceback" not in log
        assert "grace period over" not in log
        assert "was due while postroom was stopped" not in log  # not the start-up path

        # The messages in flight got their 250 and were recorded; the rest wait.
        counts = delivery_counts(site)
        assert counts["sending"] == 0 and counts["failed"] == 0
        assert counts["sent"] == slow.count()
        assert 0 < counts["pending"] < 300, counts  # it really was stopped mid-send
        assert counts["sent"] + counts["pending"] == 300
        assert set(slow.per_recipient().values()) == {1}


# ---- another process holds the database ---------------------------------------------------

def test_the_web_answers_while_another_process_holds_the_write_lock(
        make_site: MakeSite, sink: MailServer) -> None:
    site = make_site(database={"busy_timeout_ms": 10_000}, daemon={"retry_interval": 0.5})
    site.write_post("hello", "Hello", utc_now() - timedelta(hours=1))
    site.add_subscribers(["waiting@example.org"], status="pending")
    confirm = f"/confirm/{confirmation_token(site, 'waiting@example.org')}"
    daemon = site.start("run")
    daemon.wait_healthy()
    # A loop stalled by a database call would keep every request waiting for the busy
    # timeout (10 s): these requests give up long before that.
    with httpx.Client(base_url=site.base_url, timeout=3.0) as client:
        wait_until(lambda: client.get("/feed.atom").status_code == 200, timeout=10)
        form = client.get("/subscribe")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token
        cookies = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
        holder = write_lock(site)
        try:
            # Requests that must write, and so wait for the lock in worker threads (the send
            # job's claims wait too): a confirmation link, a subscription (its limits and
            # then its record are kept in the database).
            confirming = send_request(site, "GET", confirm)
            subscribing = send_request(
                site, "POST", "/subscribe", urlencode(
                    {"csrf": token.group(1), "email": "during@example.org"}).encode(),
                Cookie=cookies, **{"Content-Type": "application/x-www-form-urlencoded"})
            # Twice round: the second round surely comes after both writers began to wait.
            for _ in range(2):
                feed = client.get("/feed.atom")
                health = client.get("/healthz")
                assert feed.status_code == 200 and b"Hello" in feed.content
                assert health.status_code == 200 and health.json()["database"] is True
            # All that was answered while the lock was held, and the writers still wait.
            assert holder.in_transaction
            assert not answered(confirming) and not answered(subscribing)
        finally:
            holder.rollback()
            holder.close()

    # Released: the waiting writers finish, nothing was lost.
    confirmed = read_reply(confirming)
    assert confirmed.startswith(b"HTTP/1.1 200") and b"You are subscribed" in confirmed
    assert site.status_of("waiting@example.org") == "active"
    subscribed = read_reply(subscribing)
    assert subscribed.startswith(b"HTTP/1.1 200") and b"Almost there" in subscribed
    assert sink.wait_for(1, timeout=10), daemon.log()
    assert httpx.get(confirm_link(site, sink, "during@example.org")).status_code == 200
    assert site.status_of("during@example.org") == "active"
    assert daemon.stop() == 0
    assert_clean_log(daemon)


def confirmation_token(site: DaemonSite, email: str) -> str:
    """Return a genuine confirmation token for a pending subscriber."""
    row = site.subscriber(email)
    assert row is not None
    return site.tokens().confirm(int(row.id), email, version_of(row.status_changed_at))


def send_request(site: DaemonSite, method: str, path: str, body: bytes = b"",
                 **headers: str) -> socket.socket:
    """Send an HTTP request and return its socket without reading the answer (it may be
    long in coming)."""
    connection = socket.create_connection(("127.0.0.1", site.web_port), timeout=10)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{site.web_port}",
             "Connection: close", f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in headers.items())]
    connection.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
    return connection


def answered(connection: socket.socket) -> bool:
    """Whether any answer has arrived on the connection (without waiting for one)."""
    readable, _, _ = select.select([connection], [], [], 0)
    return bool(readable)


def read_reply(connection: socket.socket) -> bytes:
    with connection:
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_lock_past_the_busy_timeout_mid_send_degrades_health_and_loses_nothing(
        make_site: MakeSite) -> None:
    with MailServer(delay=0.02) as slow:
        site = make_site(mail_server=slow, database={"busy_timeout_ms": 500},
                         daemon={"retry_interval": 0.5})
        site.write_post("big-news", "Big news", utc_now() - timedelta(minutes=10))
        site.add_subscribers(readers(300))
        daemon = site.start("run")
        daemon.wait_healthy()
        assert site.create_digest().recipients == 300
        assert slow.wait_for(20, timeout=20), daemon.log()

        holder = write_lock(site)
        try:
            unhealthy = daemon.wait_for_health(
                lambda status, h: status == 503 and h["sender"]["ok"] is False, timeout=20)
            assert unhealthy["status"] == "degraded" and unhealthy["database"] is True
            assert "database is locked" in unhealthy["sender"]["last_error"]
            assert unhealthy["sender"]["failing_since"] is not None
            assert holder.in_transaction
        finally:
            holder.rollback()
            holder.close()

        assert wait_until(lambda: delivery_counts(site)["sent"] == 300, timeout=30), \
            daemon.log()
        healthy = daemon.wait_for_health(
            lambda status, h: status == 200 and h["sender"]["ok"] is True, timeout=20)
        assert healthy["status"] == "ok" and healthy["sender"]["failing_since"] is None
        assert daemon.wait_for_log(r"sender's database is reachable again")
        assert daemon.stop() == 0

    # Every reader exactly once: the outcomes kept through the lock were recorded after it.
    assert slow.per_recipient() == {email: 1 for email in readers(300)}
    assert delivery_counts(site) == {"pending": 0, "sending": 0, "sent": 300, "failed": 0}
    log = daemon.log()
    assert "Traceback" not in log
    # Logged once for the episode, however many times the sender tried meanwhile.
    assert len(re.findall(r"sender cannot .*database is locked", log)) == 1, log
    assert log.count("sender's database is reachable again") == 1, log


# ---- confirmations through the outbox -----------------------------------------------------

def test_a_confirmation_refused_for_now_arrives_after_a_retry(
        make_site: MakeSite, sink: MailServer) -> None:
    site = make_site(daemon={"retry_interval": 0.5})
    sink.fail(Fault("rcpt", "451 4.7.1 greylisted, try again later",
                    recipient="grey@example.org", times=1))
    daemon = site.start("run")
    daemon.wait_healthy()
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        assert subscribe_with_the_form(client, "grey@example.org").status_code == 200
    assert sink.wait_for(1, timeout=20), daemon.log()

    outcomes = [e.outcome for e in sink.outcomes("grey@example.org") if e.stage == "rcpt"]
    assert outcomes == ["451 4.7.1 greylisted, try again later", "250 OK"]
    assert daemon.wait_for_log(r"will retry confirm .* to subscriber \d+ .*451")
    [delivery] = wait_until(lambda: [d for d in site.deliveries() if d.status == "sent"],
                            timeout=10)
    assert (delivery.kind, delivery.attempts) == ("confirm", 2)
    assert httpx.get(confirm_link(site, sink, "grey@example.org")).status_code == 200
    assert site.status_of("grey@example.org") == "active"
    assert daemon.stop() == 0
    assert_clean_log(daemon)


def test_a_confirmation_queued_while_the_mail_server_is_down_survives_a_restart(
        make_site: MakeSite) -> None:
    # Nobody listens on the port: every try fails for now, and stays due again soon.
    site = make_site(smtp_port=free_port(), smtp={"max_attempts": 1000},
                     daemon={"retry_interval": 0.5})
    daemon = site.start("run")
    daemon.wait_healthy()
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        assert subscribe_with_the_form(client, "patient@example.org").status_code == 200
    assert daemon.wait_for_log(r"will retry confirm .* to subscriber \d+ .*: cannot connect",
                               timeout=20), daemon.log()
    assert daemon.stop() == 0
    # Stopped between tries or mid-try: either way it waits in the outbox.
    [queued] = site.deliveries()
    assert (queued.kind, queued.status) == ("confirm", "pending")
    assert queued.attempts >= 1 and "cannot connect" in queued.last_reply

    with MailServer() as server:
        site.configure(smtp={"port": server.port})
        again = site.start("run")
        again.wait_healthy()
        assert server.wait_for(1, timeout=20), again.log()
        link = confirm_link(site, server, "patient@example.org")
        assert httpx.get(link).status_code == 200
        assert site.status_of("patient@example.org") == "active"
        # Recorded a moment after the server's 250 (outcomes are written in batches).
        assert wait_until(lambda: [(d.id, d.status) for d in site.deliveries()]
                          == [(queued.id, "sent")], timeout=10)
        assert again.stop() == 0
    assert_clean_log(daemon)
    assert_clean_log(again)

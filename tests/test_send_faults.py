"""Sending through an SMTP server that refuses, drops and stalls: each delivery ends as the
issue specifies (retried, failed with the reply, or bounced), and none is lost or left
`sending`. The server is aiosmtpd on loopback; the outcome is read from the SQLite file."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mailserver import Fault, MailServer
from mailsite import MailSite
from postroom import subscribers

ANN, BOB, CAT = "ann@example.org", "bob@example.org", "cat@example.org"


@pytest.fixture
def server() -> Iterator[MailServer]:
    with MailServer() as running:
        yield running


def make_site(root: Path, server: MailServer, readers: list[str], **overrides: Any) -> MailSite:
    site = MailSite.create(root, smtp_port=server.port, **overrides)
    site.write_post("news", "News")
    site.add_subscribers(readers)
    assert site.create_digest().recipients == len(readers)
    return site


def rows_by_email(site: MailSite) -> dict[str, Any]:
    return {row.email: row for row in site.deliveries()}


def assert_nothing_lost(site: MailSite, server: MailServer) -> None:
    """Every delivery ended sent or failed; each sent one reached the server exactly once."""
    rows = site.deliveries()
    assert {row.status for row in rows} <= {"sent", "failed"}, [
        (row.email, row.status) for row in rows]
    received = server.per_recipient()
    for row in rows:
        assert received[row.email] == (1 if row.status == "sent" else 0), row.email
        assert row.claimed_by is None


# ---- transient: retried until sent ------------------------------------------------------


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
def test_421_is_retried_on_a_new_connection(tmp_path: Path, server: MailServer,
                                            stage: str) -> None:
    server.fail(Fault(stage, "421 4.3.2 shutting down", recipient=None if stage == "mail" else BOB,  # type: ignore[arg-type]
                      messages=None if stage != "mail" else (2,), times=1))
    site = make_site(tmp_path, server, [ANN, BOB, CAT], smtp={"concurrency": 1})

    stats = site.send()

    assert (stats.sent, stats.failed, stats.retried) == (3, 0, 1)
    assert_nothing_lost(site, server)
    refused = [e for e in server.outcomes() if e.outcome.startswith("421")]
    assert len(refused) == 1
    retried = rows_by_email(site)[BOB]
    assert retried.attempts == 2 and retried.last_reply == "250 OK: queued"
    [accepted] = [m for m in server.messages() if m.rcpt_tos == (BOB,)]
    assert accepted.parsed()["Message-ID"] == retried.message_id
    assert accepted.session != refused[0].session, "sent again on a new connection"
    later = [e for e in server.outcomes() if e.at > refused[0].at]
    assert all(e.session != refused[0].session for e in later), "the closed one is not reused"


def test_a_server_that_keeps_answering_421_then_recovers(tmp_path: Path,
                                                         server: MailServer) -> None:
    server.fail(Fault("rcpt", "421 4.7.0 too busy", messages=tuple(range(1, 7))))
    site = make_site(tmp_path, server, [ANN, BOB, CAT], smtp={"max_attempts": 5})

    stats = site.send()

    assert stats.sent == 3 and stats.failed == 0
    assert_nothing_lost(site, server)
    assert sum(row.attempts for row in site.deliveries()) == 3 + 6


def test_451_is_retried_with_backoff(tmp_path: Path, server: MailServer) -> None:
    server.fail(Fault("rcpt", "451 4.7.1 greylisted, come back later", recipient=BOB,
                      attempts=(1, 2)))
    site = make_site(tmp_path, server, [ANN, BOB, CAT],
                     smtp={"backoff_base": 0.2, "backoff_max": 1.0})

    stats = site.send()

    assert (stats.sent, stats.retried) == (3, 2)
    assert_nothing_lost(site, server)
    row = rows_by_email(site)[BOB]
    assert row.attempts == 3
    offers = [e for e in server.outcomes(BOB) if e.stage == "rcpt"]
    assert [e.outcome for e in offers] == ["451 4.7.1 greylisted, come back later"] * 2 + [
        "250 OK"]
    # Retry n waits backoff_base * 2**(n-1), jittered down to at most half of that.
    assert offers[1].at - offers[0].at >= 0.2 * 0.5 * 0.9
    assert offers[2].at - offers[1].at >= 0.4 * 0.5 * 0.9


def test_451_on_data_is_retried_and_recorded(tmp_path: Path, server: MailServer) -> None:
    server.fail(Fault("data", "451 4.3.0 local error in processing", recipient=ANN, times=1))
    site = make_site(tmp_path, server, [ANN, BOB])

    site.send()

    assert_nothing_lost(site, server)
    assert rows_by_email(site)[ANN].attempts == 2


def test_a_connection_dropped_mid_data_is_retried(tmp_path: Path, server: MailServer) -> None:
    server.fail(Fault("data", action="drop", recipient=BOB, times=2))
    site = make_site(tmp_path, server, [ANN, BOB, CAT])

    stats = site.send()

    assert stats.sent == 3
    assert_nothing_lost(site, server)
    assert rows_by_email(site)[BOB].attempts == 3
    assert [e.outcome for e in server.outcomes(BOB) if e.stage == "data"] == [
        "drop", "drop", "250 OK"]


@pytest.mark.parametrize("stage", ["rcpt", "data"])
def test_a_stall_past_the_timeout_is_retried(tmp_path: Path, server: MailServer,
                                             stage: str) -> None:
    server.fail(Fault(stage, action="stall", seconds=3.0, recipient=BOB, times=1))  # type: ignore[arg-type]
    site = make_site(tmp_path, server, [ANN, BOB, CAT], smtp={"timeout": 0.5})
    started = time.monotonic()

    stats = site.send()

    assert time.monotonic() - started < 2.5, "the stall cost about one timeout, no more"
    assert (stats.sent, stats.failed) == (3, 0)
    assert_nothing_lost(site, server)
    row = rows_by_email(site)[BOB]
    assert row.attempts == 2


def test_a_server_that_always_stalls_fails_after_max_attempts(tmp_path: Path,
                                                              server: MailServer) -> None:
    server.fail(Fault("rcpt", action="stall", seconds=5.0, recipient=BOB))
    site = make_site(tmp_path, server, [ANN, BOB, CAT],
                     smtp={"timeout": 0.3, "max_attempts": 3})

    stats = site.send()

    assert (stats.sent, stats.failed, stats.retried) == (2, 1, 2)
    assert_nothing_lost(site, server)
    row = rows_by_email(site)[BOB]
    assert (row.status, row.attempts) == ("failed", 3)
    assert "timed out" in row.last_reply.lower() or "timeout" in row.last_reply.lower()
    assert site.subscriber_status(BOB) == "active", "a timeout is not a bounce"


def test_a_retry_due_after_retry_wait_is_left_pending(tmp_path: Path,
                                                      server: MailServer) -> None:
    server.fail(Fault("rcpt", "451 4.3.0 later", recipient=BOB))
    site = make_site(tmp_path, server, [ANN, BOB],
                     smtp={"backoff_base": 60.0, "backoff_max": 60.0, "retry_wait": 0.0})

    stats = site.send()

    assert (stats.sent, stats.retried) == (1, 1)
    row = rows_by_email(site)[BOB]
    assert (row.status, row.attempts) == ("pending", 1), "kept for the next run, not lost"
    assert row.last_reply == "451 4.3.0 later"
    assert row.next_attempt_at > datetime.now(UTC) + timedelta(seconds=25)


# ---- permanent: failed with the reply, bounced after bounce_after ------------------------


def test_550_on_one_recipient_fails_only_that_delivery(tmp_path: Path,
                                                       server: MailServer) -> None:
    server.fail(Fault("rcpt", "550 5.1.1 <bob@example.org>: user unknown", recipient=BOB))
    site = make_site(tmp_path, server, [ANN, BOB, CAT])

    stats = site.send()

    assert (stats.sent, stats.failed, stats.retried) == (2, 1, 0)
    assert_nothing_lost(site, server)
    row = rows_by_email(site)[BOB]
    assert (row.status, row.attempts) == ("failed", 1), "a 5xx is not retried"
    assert row.last_reply == "550 5.1.1 <bob@example.org>: user unknown"
    assert site.subscriber_status(BOB) == "active", "one bounce of bounce_after = 3"
    with site.engine.connect() as connection:
        assert subscribers.find(connection, BOB).bounce_count == 1


def test_550_marks_the_subscriber_bounced_at_bounce_after_1(tmp_path: Path,
                                                            server: MailServer) -> None:
    server.fail(Fault("rcpt", "550 5.1.1 user unknown", recipient=BOB))
    site = make_site(tmp_path, server, [ANN, BOB, CAT], mail={"bounce_after": 1})

    stats = site.send()

    assert stats.bounced == 1
    assert site.subscriber_status(BOB) == "bounced"
    assert site.subscriber_status(ANN) == site.subscriber_status(CAT) == "active"


def test_bounces_add_up_across_digests(tmp_path: Path, server: MailServer) -> None:
    server.fail(Fault("rcpt", "550 5.1.1 user unknown", recipient=BOB))
    site = make_site(tmp_path, server, [ANN, BOB], mail={"bounce_after": 2})
    site.send()
    assert site.subscriber_status(BOB) == "active"

    # Published after the first digest's cutoff: new for the second.
    site.write_post("more-news", "More news", published=datetime.now(UTC))
    second = site.create_digest()
    assert second.recipients == 2
    stats = site.send()

    assert stats.bounced == 1 and site.subscriber_status(BOB) == "bounced"
    site.write_post("even-more", "Even more", published=datetime.now(UTC))
    third = site.create_digest()
    assert third.recipients == 1, "a bounced subscriber gets no further digest"
    site.send()
    assert server.per_recipient() == Counter({ANN: 3})


@pytest.mark.parametrize("stage, reply", [("data", "552 5.3.4 message too big"),
                                          ("mail", "553 5.7.1 sender not allowed")])
def test_a_permanent_refusal_of_the_message_is_not_a_bounce(
    tmp_path: Path, server: MailServer, stage: str, reply: str
) -> None:
    server.fail(Fault(stage, reply, messages=(1,)))  # type: ignore[arg-type]
    site = make_site(tmp_path, server, [ANN, BOB], mail={"bounce_after": 1},
                     smtp={"concurrency": 1})

    stats = site.send()

    assert (stats.sent, stats.failed, stats.bounced) == (1, 1, 0)
    assert_nothing_lost(site, server)
    assert rows_by_email(site)[ANN].last_reply == reply
    assert site.subscriber_status(ANN) == "active"


# ---- everything at once ---------------------------------------------------------------


def test_a_hostile_server_loses_nothing(tmp_path: Path, server: MailServer) -> None:
    readers = [f"r{i:02d}@example.org" for i in range(40)]
    pick = random.Random(3)
    gone = set(pick.sample(readers, 3))
    flaky = pick.sample(sorted(set(readers) - gone), 12)
    faults = [Fault("rcpt", "550 5.1.1 user unknown", recipient=r) for r in sorted(gone)]
    kinds = [
        lambda r: Fault("rcpt", "421 4.3.2 closing", recipient=r, attempts=(1,)),
        lambda r: Fault("rcpt", "451 4.3.0 try later", recipient=r, attempts=(1, 2)),
        lambda r: Fault("data", "451 4.3.0 try later", recipient=r, times=1),
        lambda r: Fault("data", "421 4.3.2 closing", recipient=r, times=1),
        lambda r: Fault("data", action="drop", recipient=r, times=2),
        lambda r: Fault("data", action="stall", seconds=2.0, recipient=r, times=1),
    ]
    faults += [kinds[i % len(kinds)](r) for i, r in enumerate(flaky)]
    server.fail(*faults)
    site = make_site(tmp_path, server, readers, smtp={"timeout": 0.5, "concurrency": 4},
                     mail={"bounce_after": 1})

    stats = site.send()

    assert_nothing_lost(site, server)
    rows = rows_by_email(site)
    assert {e for e, row in rows.items() if row.status == "failed"} == gone
    assert stats.sent == 37 and stats.bounced == 3
    assert all(site.subscriber_status(r) == "bounced" for r in gone)
    assert all(rows[r].attempts >= 2 for r in flaky)

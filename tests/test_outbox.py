"""The outbox: the retry policy, digests and their deliveries, one digest per window, batched
claims under leases, outcomes, hand-backs and retries.

Concurrency is tested with real concurrency: threads with an engine each, and processes, on
a real SQLite file and on the PostgreSQL server of test_store.py (skipped when none answers).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.exc import StatementError

from postroom import outbox, subscribers
from postroom.digest import DigestPost
from postroom.outbox import Claimed, Outcome, RetryPolicy
from postroom.schema import deliveries, digest_posts, digests
from postroom.schema import subscribers as subscribers_table
from postroom.store import migrate, open_engine
from test_store import fresh_pg_database

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
HOST = "blog.example.org"
LEASE = timedelta(minutes=5)
BOUNCE_AFTER = 3


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'postroom.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    """A migrated engine on a fresh PostgreSQL database of its own (skipped without a server)."""
    with fresh_pg_database() as url:
        engine = open_engine(url)
        migrate(engine)
        yield engine
        engine.dispose()


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def post(n: int, published: datetime) -> DigestPost:
    return DigestPost(
        entry_id=f"tag:blog.example.org,{published:%Y-%m-%d}:/posts/post-{n}", slug=f"post-{n}",
        title=f"Post {n}", url=f"https://blog.example.org/posts/post-{n}/",
        summary=f"What post {n} says.", published=published,
    )


def add_subscribers(engine: Engine, statuses: dict[str, str]) -> dict[str, int]:
    """Add {email: status}; return {email: id}."""
    ids = {}
    with engine.begin() as connection:
        for email, status in statuses.items():
            row, _ = subscribers.add(connection, email, T0 - timedelta(days=1), status=status)
            ids[email] = row.id
    return ids


def readers(count: int) -> dict[str, str]:
    return {f"user{n:04d}@example.org": "active" for n in range(count)}


def delivery_rows(engine: Engine, digest_id: int | None = None) -> list[Any]:
    query = select(deliveries).order_by(deliveries.c.id)
    if digest_id is not None:
        query = query.where(deliveries.c.digest_id == digest_id)
    with engine.connect() as connection:
        return list(connection.execute(query))


def rows_by_id(engine: Engine) -> dict[int, Any]:
    return {row.id: row for row in delivery_rows(engine)}


def count_rows(engine: Engine, table: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def make_digest(engine: Engine, at: datetime = T0, posts: int = 1) -> int:
    """Create the next digest as a sender would: its window starts at the last cutoff."""
    with engine.connect() as connection:
        previous = outbox.last_cutoff(connection)
    start = previous or at - timedelta(days=7)
    chosen = [post(n, at - timedelta(hours=n + 1)) for n in range(posts)]
    digest_id, _ = outbox.create_digest(engine, chosen, f"{posts} new", start, at, at,
                                        previous, HOST)
    return digest_id


def claim_all(engine: Engine, worker: str, now: datetime = T0) -> list[Claimed]:
    return outbox.claim_batch(engine, worker, now, LEASE, 10_000)


def sent(claimed: list[Claimed], at: datetime = T0) -> list[Outcome]:
    return [Outcome(c.id, "sent", "250 2.0.0 Ok: queued", at) for c in claimed]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


MIXED = {
    "a@example.org": "active",
    "p@example.org": "pending",
    "b@example.org": "active",
    "u@example.org": "unsubscribed",
    "x@example.org": "bounced",
    "c@example.org": "active",
}


# ---- the retry policy ------------------------------------------------------------------------


class Highest(random.Random):
    """A random source that always draws the top of the range (no jitter)."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Lowest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def test_delay_doubles_with_each_attempt_up_to_the_maximum() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_base=60, backoff_max=3600)
    top = [policy.delay(n, Highest()).total_seconds() for n in range(1, 10)]
    assert top == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    bottom = [policy.delay(n, Lowest()).total_seconds() for n in range(1, 10)]
    assert bottom == [30, 60, 120, 240, 480, 960, 1800, 1800, 1800]
    # Attempt 0 (nothing failed yet) waits like the first retry, not half of it.
    assert policy.delay(0, Highest()) == policy.delay(1, Highest())


@given(
    attempts=st.integers(min_value=1, max_value=200),
    base=st.floats(min_value=0.01, max_value=600),
    maximum=st.floats(min_value=0.01, max_value=86_400),
    seed=st.integers(),
)
def test_delay_has_jitter_within_half_and_whole_of_the_ceiling(
    attempts: int, base: float, maximum: float, seed: int
) -> None:
    policy = RetryPolicy(max_attempts=5, backoff_base=base, backoff_max=maximum)
    ceiling = min(maximum, base * 2.0 ** (attempts - 1))
    seconds = policy.delay(attempts, random.Random(seed)).total_seconds()
    assert 0.5 * ceiling * (1 - 1e-9) - 1e-6 <= seconds <= ceiling * (1 + 1e-9) + 1e-6


def test_jitter_spreads_retries_out() -> None:
    policy = RetryPolicy(max_attempts=5, backoff_base=60, backoff_max=3600)
    rng = random.Random(1)
    delays = {policy.delay(3, rng) for _ in range(50)}
    assert len(delays) > 40
    assert min(delays) >= timedelta(seconds=120) and max(delays) <= timedelta(seconds=240)


# ---- what postroom has seen --------------------------------------------------------------------


def test_first_seen_is_recorded_once(engine: Engine) -> None:
    assert outbox.first_seen(engine, T0) == T0
    assert outbox.first_seen(engine, T0 + timedelta(days=3)) == T0


def test_record_seen_counts_only_new_posts(engine: Engine) -> None:
    first = [("tag:a", "a", T0), ("tag:b", "b", T0)]
    assert outbox.record_seen(engine, first, T0) == 2
    assert outbox.record_seen(engine, [*first, ("tag:c", "c", T0)], T0 + timedelta(hours=1)) == 1
    assert outbox.record_seen(engine, first, T0 + timedelta(hours=2)) == 0


# ---- creating a digest -----------------------------------------------------------------------


def test_create_digest_writes_one_pending_delivery_per_active_subscriber(engine: Engine) -> None:
    ids = add_subscribers(engine, MIXED)
    posts = [post(1, T0 - timedelta(hours=5)), post(2, T0 - timedelta(hours=2))]
    start = T0 - timedelta(days=7)

    digest_id, recipients = outbox.create_digest(
        engine, posts, "Blog: 2 new posts", start, T0, T0, None, HOST)

    assert recipients == 3
    rows = delivery_rows(engine)
    assert [(r.email, r.subscriber_id) for r in rows] == [
        (email, ids[email]) for email in ("a@example.org", "b@example.org", "c@example.org")
    ]
    with engine.connect() as connection:
        links = {
            s.id: f"{s.public_id}.{s.unsubscribe_key}"
            for s in connection.execute(select(subscribers_table))
        }
    for row in rows:
        assert (row.kind, row.digest_id, row.status, row.attempts, row.next_attempt_at) == (
            "digest", digest_id, "pending", 0, T0)
        assert row.claimed_by is None and row.lease_until is None and row.sent_at is None
        # Fixed at creation: the same Message-ID on every attempt, and the recipient's link.
        assert row.message_id == f"<postroom.20250301090000.{digest_id}.{row.subscriber_id}@{HOST}>"
        assert row.unsubscribe_token == links[row.subscriber_id]
        assert row.payload is None
    assert len({row.message_id for row in rows}) == 3
    with engine.connect() as connection:
        digest = connection.execute(select(digests)).one()
        assert (digest.subject, digest.recipients, digest.cutoff, digest.created_at) == (
            "Blog: 2 new posts", 3, T0, T0)
        assert digest.window_start == start
        assert digest.window_key == outbox.window_key(start)
        # The posts are frozen in the digest, in order, as they were.
        assert outbox.digest_posts_of(connection, digest_id) == posts
        assert outbox.last_cutoff(connection) == T0
        assert outbox.already_sent(connection) == {
            posts[0].entry_id, posts[1].entry_id, "post-1", "post-2"}


def test_a_digest_with_no_active_subscriber_has_no_deliveries(engine: Engine) -> None:
    add_subscribers(engine, {"p@example.org": "pending", "u@example.org": "unsubscribed"})
    digest_id, recipients = outbox.create_digest(engine, [post(1, T0)], "s", T0, T0, T0, None,
                                                 HOST)
    assert recipients == 0 and delivery_rows(engine) == []
    [summary] = outbox.status(engine)
    assert summary["id"] == digest_id
    assert (summary["pending"], summary["sending"], summary["sent"], summary["failed"]) == (
        0, 0, 0, 0)


def test_create_digest_is_one_transaction(engine: Engine) -> None:
    add_subscribers(engine, MIXED)
    good = post(1, T0)
    # The second post breaks the INSERT of the digest's posts (a naive time is refused),
    # after the digest row is written: nothing of the digest may remain.
    broken = DigestPost("tag:x", "x", "X", "https://x/", "", datetime(2025, 3, 1, 8, 0))
    with pytest.raises(StatementError, match="naive datetime"):
        outbox.create_digest(engine, [good, broken], "s", T0, T0, T0, None, HOST)
    with engine.connect() as connection:
        assert connection.execute(select(digests)).all() == []
        assert connection.execute(select(digest_posts)).all() == []
        assert outbox.last_cutoff(connection) is None
    assert delivery_rows(engine) == []


def test_later_subscribers_are_not_in_earlier_digests(engine: Engine) -> None:
    add_subscribers(engine, {"a@example.org": "active"})
    first = make_digest(engine, T0)
    add_subscribers(engine, {"late@example.org": "active"})
    second = make_digest(engine, T0 + timedelta(days=7))
    assert [r.email for r in delivery_rows(engine, first)] == ["a@example.org"]
    assert [r.email for r in delivery_rows(engine, second)] == ["a@example.org",
                                                                "late@example.org"]
    with engine.connect() as connection:
        assert outbox.last_cutoff(connection) == T0 + timedelta(days=7)


def test_a_confirmation_goes_through_the_outbox_like_a_digest(engine: Engine) -> None:
    ids = add_subscribers(engine, {"new@example.org": "pending"})
    # Written as the opt-in writes it: a delivery of kind confirm, in no digest.
    with engine.begin() as connection:
        connection.execute(insert(deliveries).values(
            kind="confirm", subscriber_id=ids["new@example.org"], email="new@example.org",
            status="pending", attempts=0, next_attempt_at=T0,
            message_id="<confirm.1@blog.example.org>", payload="signed-token"))
    [row] = delivery_rows(engine)
    assert (row.kind, row.digest_id, row.status, row.payload, row.message_id) == (
        "confirm", None, "pending", "signed-token", "<confirm.1@blog.example.org>")
    assert outbox.count_due(engine, T0) == 1
    [claimed] = claim_all(engine, f"{HOST}:1:aa")
    assert (claimed.kind, claimed.digest_id, claimed.email, claimed.payload) == (
        "confirm", None, "new@example.org", "signed-token")
    # Not a digest's delivery: digest status does not count it.
    assert outbox.status(engine) == []


# ---- exactly one digest per window --------------------------------------------------------------


def test_a_stale_previous_cutoff_raises_digest_exists_and_writes_nothing(engine: Engine) -> None:
    add_subscribers(engine, {"a@example.org": "active", "b@example.org": "active"})
    make_digest(engine, T0)
    before = (count_rows(engine, digests), count_rows(engine, digest_posts),
              count_rows(engine, deliveries))

    # Planned before the first digest existed: its previous cutoff is None, no longer true.
    with pytest.raises(outbox.DigestExists):
        outbox.create_digest(engine, [post(9, T0 + timedelta(hours=1))], "late", T0,
                             T0 + timedelta(hours=2), T0 + timedelta(hours=2), None, HOST)

    after = (count_rows(engine, digests), count_rows(engine, digest_posts),
             count_rows(engine, deliveries))
    assert after == before == (1, 1, 2)
    with engine.connect() as connection:
        assert outbox.last_cutoff(connection) == T0


def test_the_window_key_refuses_a_second_digest_of_one_window(engine: Engine) -> None:
    # A caller that passes the recheck but asks for a window already sent (as a racer that
    # checked before the other committed would) meets the unique key: nothing is written.
    add_subscribers(engine, {"a@example.org": "active"})
    start = T0 - timedelta(days=7)
    outbox.create_digest(engine, [post(1, T0)], "first", start, T0, T0, None, HOST)
    later = T0 + timedelta(hours=1)
    with pytest.raises(outbox.DigestExists):
        outbox.create_digest(engine, [post(2, later)], "again", start, later, later, T0, HOST)
    assert (count_rows(engine, digests), count_rows(engine, deliveries)) == (1, 1)


def race_create_digest(url: str, racers: int) -> tuple[list[int], int]:
    """Let `racers` threads, an engine each, create the same window's digest at once.

    Each planned the digest before any was written (previous cutoff None), as concurrent
    `digest send` processes do; return (digest ids created, DigestExists raised).
    """
    barrier = threading.Barrier(racers)
    created: list[int] = []
    refused: list[BaseException] = []
    failures: list[BaseException] = []

    def racer(number: int) -> None:
        own = open_engine(url)
        try:
            barrier.wait(timeout=30)
            digest_id, _ = outbox.create_digest(
                own, [post(1, T0 - timedelta(hours=1))], f"racer {number}",
                T0 - timedelta(days=7), T0, T0, None, HOST)
            created.append(digest_id)
        except outbox.DigestExists as err:
            refused.append(err)
        except BaseException as err:
            failures.append(err)
        finally:
            own.dispose()

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    return created, len(refused)


def assert_one_digest_for_everyone(engine: Engine, digest_id: int, emails: set[str]) -> None:
    with engine.connect() as connection:
        assert connection.execute(select(digests.c.id)).scalars().all() == [digest_id]
    rows = delivery_rows(engine)
    assert {r.digest_id for r in rows} == {digest_id}
    assert sorted(r.email for r in rows) == sorted(emails)


def test_racing_engines_create_exactly_one_digest(engine: Engine, db_url: str) -> None:
    emails = add_subscribers(engine, readers(20))
    for _ in range(5):
        created, refused = race_create_digest(db_url, racers=4)
        assert (len(created), refused) == (1, 3)
        assert_one_digest_for_everyone(engine, created[0], set(emails))
        with engine.begin() as connection:
            connection.execute(digests.delete())


def test_postgresql_racing_connections_create_exactly_one_digest(pg_engine: Engine) -> None:
    emails = add_subscribers(pg_engine, readers(20))
    for _ in range(5):
        created, refused = race_create_digest(url_of(pg_engine), racers=4)
        assert (len(created), refused) == (1, 3)
        assert_one_digest_for_everyone(pg_engine, created[0], set(emails))
        with pg_engine.begin() as connection:
            connection.execute(digests.delete())


def wait_for_lock_waiters(engine: Engine, count: int, seconds: float = 20) -> None:
    """Wait until `count` other sessions of this database wait on a lock."""
    deadline = time.monotonic() + seconds
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND wait_event_type = 'Lock'")
    while True:
        with engine.connect() as connection:
            if connection.execute(query).scalar_one() >= count:
                return
        assert time.monotonic() < deadline, f"{count} sessions never waited on a lock"
        time.sleep(0.01)


def test_postgresql_racers_that_both_pass_the_recheck_meet_the_window_key(
    pg_engine: Engine,
) -> None:
    """Under READ COMMITTED both racers can see no digest yet; the unique key decides.

    A third transaction holds an uncommitted row with the window's key, so both racers pass
    the recheck (they cannot see that row) and wait on the key; it then rolls back.
    """
    emails = add_subscribers(pg_engine, readers(10))
    start = T0 - timedelta(days=7)
    results: dict[int, Any] = {}

    def racer(number: int) -> None:
        own = open_engine(url_of(pg_engine))
        try:
            results[number] = outbox.create_digest(
                own, [post(1, T0 - timedelta(hours=1))], f"racer {number}", start, T0, T0,
                None, HOST)
        except BaseException as err:
            results[number] = err
        finally:
            own.dispose()

    with pg_engine.connect() as blocker:
        blocker.execute(insert(digests).values(
            created_at=T0, window_start=start, cutoff=T0, subject="held", recipients=0,
            window_key=outbox.window_key(start)))
        threads = [threading.Thread(target=racer, args=(n,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        wait_for_lock_waiters(pg_engine, 2)
        blocker.rollback()
    for thread in threads:
        thread.join(timeout=60)

    created = [r for r in results.values() if isinstance(r, tuple)]
    refused = [r for r in results.values() if isinstance(r, outbox.DigestExists)]
    assert (len(created), len(refused)) == (1, 1), results
    assert_one_digest_for_everyone(pg_engine, created[0][0], set(emails))


# ---- claiming deliveries in batches ------------------------------------------------------------


def test_claim_batch_claims_due_deliveries_in_order_under_a_lease(engine: Engine) -> None:
    ids = add_subscribers(engine, readers(5))
    digest_id = make_digest(engine)
    rows = delivery_rows(engine)
    assert outbox.count_due(engine, T0 - timedelta(seconds=1)) == 0
    assert outbox.claim_batch(engine, "w", T0 - timedelta(seconds=1), LEASE, 10) == []
    assert outbox.count_due(engine, T0) == 5

    first = outbox.claim_batch(engine, "host:1:aa", T0, LEASE, 2)
    second = outbox.claim_batch(engine, "host:1:aa", T0, LEASE, 2)
    third = outbox.claim_batch(engine, "host:1:aa", T0, LEASE, 2)

    assert [c.id for c in first + second + third] == [r.id for r in rows]
    assert outbox.claim_batch(engine, "host:1:aa", T0, LEASE, 2) == []
    assert outbox.count_due(engine, T0) == 0
    one = first[0]
    assert (one.kind, one.digest_id, one.subscriber_id, one.email, one.attempts,
            one.lease_until) == (
        "digest", digest_id, ids["user0000@example.org"], "user0000@example.org", 1, T0 + LEASE)
    assert (one.message_id, one.unsubscribe_token) == (rows[0].message_id,
                                                       rows[0].unsubscribe_token)
    for row in delivery_rows(engine):
        assert (row.status, row.claimed_by, row.claimed_at, row.lease_until, row.attempts) == (
            "sending", "host:1:aa", T0, T0 + LEASE, 1)


def claim_until_empty_blocking(url: str, worker: str, limit: int,
                               start: threading.Barrier) -> list[list[int]]:
    """Claim batches on an engine of this thread's own, recording each sent; return them."""
    own = open_engine(url)
    batches = []
    try:
        start.wait(timeout=30)
        while batch := outbox.claim_batch(own, worker, T0, LEASE, limit):
            batches.append([c.id for c in batch])
            time.sleep(0.002)  # the sends, as it were: the other senders claim meanwhile
            outbox.record_outcomes(own, worker, sent(batch), BOUNCE_AFTER)
    finally:
        own.dispose()
    return batches


def assert_disjoint_and_complete(engine: Engine, claimed: dict[str, list[int]]) -> None:
    everyone = [i for ids in claimed.values() for i in ids]
    assert len(everyone) == len(set(everyone)), "a delivery was handed to two senders"
    rows = delivery_rows(engine)
    assert sorted(everyone) == [r.id for r in rows]
    assert {(r.status, r.attempts, r.claimed_by) for r in rows} == {("sent", 1, None)}


def test_concurrent_batched_claims_never_share_a_delivery(engine: Engine, db_url: str) -> None:
    add_subscribers(engine, readers(300))
    make_digest(engine)
    claimed: dict[str, list[int]] = {}
    start = threading.Barrier(3)

    def sender(name: str) -> None:
        batches = claim_until_empty_blocking(db_url, name, 7, start)
        claimed[name] = [i for batch in batches for i in batch]

    threads = [threading.Thread(target=sender, args=(f"{HOST}:1:{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(claimed) == 3, "a sender thread failed"
    assert_disjoint_and_complete(engine, claimed)


SENDER_PROCESS = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, timedelta
    from postroom import outbox
    from postroom.store import open_engine

    url, worker, now = sys.argv[1], sys.argv[2], datetime.fromisoformat(sys.argv[3])
    engine = open_engine(url)
    print("ready", flush=True)
    sys.stdin.readline()  # the go: both senders start together
    while batch := outbox.claim_batch(engine, worker, now, timedelta(minutes=5), 5):
        print(" ".join(str(c.id) for c in batch), flush=True)
        time.sleep(0.002)  # the sends, as it were: the other sender claims meanwhile
        outbox.record_outcomes(
            engine, worker, [outbox.Outcome(c.id, "sent", "250 ok", now) for c in batch], 3)
    engine.dispose()
    """
)


def race_two_sender_processes(url: str) -> dict[str, list[int]]:
    """Run two sender processes on the database at once; return the ids each claimed."""
    processes = {}
    for number in (1, 2):
        worker = f"{HOST}:{number}:proc"
        processes[worker] = subprocess.Popen(
            [sys.executable, "-c", SENDER_PROCESS, url, worker, T0.isoformat()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for process in processes.values():
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line == "ready\n", (line, process.communicate(timeout=30))
        for process in processes.values():
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        claimed = {}
        for worker, process in processes.items():
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            claimed[worker] = [int(i) for i in out.split()]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return claimed


def test_two_sender_processes_on_one_sqlite_file_claim_disjoint_batches(
    engine: Engine, db_url: str
) -> None:
    add_subscribers(engine, readers(400))
    make_digest(engine)
    claimed = race_two_sender_processes(db_url)
    assert_disjoint_and_complete(engine, claimed)


def test_two_sender_processes_on_postgresql_claim_disjoint_batches(pg_engine: Engine) -> None:
    add_subscribers(pg_engine, readers(400))
    make_digest(pg_engine)
    claimed = race_two_sender_processes(url_of(pg_engine))
    assert_disjoint_and_complete(pg_engine, claimed)


def test_postgresql_concurrent_batched_claims_never_share_a_delivery(pg_engine: Engine) -> None:
    add_subscribers(pg_engine, readers(300))
    make_digest(pg_engine)
    claimed: dict[str, list[int]] = {}
    start = threading.Barrier(3)

    def sender(name: str) -> None:
        batches = claim_until_empty_blocking(url_of(pg_engine), name, 7, start)
        claimed[name] = [i for batch in batches for i in batch]

    threads = [threading.Thread(target=sender, args=(f"{HOST}:1:{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(claimed) == 3, "a sender thread failed"
    assert_disjoint_and_complete(pg_engine, claimed)


# ---- leases ----------------------------------------------------------------------------------


def test_an_expired_lease_hands_an_abandoned_batch_to_another_sender(engine: Engine) -> None:
    add_subscribers(engine, readers(6))
    make_digest(engine)
    a, b = f"{HOST}:100:aa", f"{HOST}:200:bb"
    abandoned = outbox.claim_batch(engine, a, T0, LEASE, 4)
    assert len(abandoned) == 4
    rest = outbox.claim_batch(engine, b, T0, LEASE, 10)  # B takes the rest and sends them
    outbox.record_outcomes(engine, b, sent(rest), BOUNCE_AFTER)
    # The lease is when the abandoned batch is due again.
    assert outbox.next_due(engine) == T0 + LEASE

    assert outbox.claim_batch(engine, b, T0 + timedelta(minutes=4), LEASE, 10) == []
    later = T0 + timedelta(minutes=6)
    taken = outbox.claim_batch(engine, b, later, LEASE, 10)

    assert [c.id for c in taken] == [c.id for c in abandoned]
    assert {c.attempts for c in taken} == {2}  # A's attempt counts: it may have sent
    assert {c.message_id for c in taken} == {c.message_id for c in abandoned}
    # A wakes up and records its outcomes: they are B's now, nothing changes.
    outbox.record_outcomes(
        engine, a, [Outcome(c.id, "failed", "550 from a stale sender", later)
                    for c in abandoned], BOUNCE_AFTER)
    outbox.release(engine, a, [c.id for c in abandoned], later)
    rows = rows_by_id(engine)
    for claimed in taken:
        row = rows[claimed.id]
        assert (row.status, row.claimed_by, row.attempts, row.lease_until) == (
            "sending", b, 2, later + LEASE)
    outbox.record_outcomes(engine, b, sent(taken, later), BOUNCE_AFTER)
    assert {r.status for r in delivery_rows(engine)} == {"sent"}


# ---- outcomes --------------------------------------------------------------------------------


def test_record_outcomes_records_sent_retry_and_failed_in_one_call(engine: Engine) -> None:
    add_subscribers(engine, {"a@example.org": "active", "b@example.org": "active",
                             "c@example.org": "active"})
    make_digest(engine)
    worker = f"{HOST}:1:aa"
    a, b, c = (claimed.id for claimed in claim_all(engine, worker))
    later = T0 + timedelta(minutes=1)
    retry_at = later + timedelta(minutes=5)

    bounced = outbox.record_outcomes(engine, worker, [
        Outcome(a, "sent", "250 2.0.0 Ok: queued", later),
        Outcome(b, "failed", "550 5.1.1 no such user", later),
        Outcome(c, "retry", "451 4.3.0 try again later", retry_at),
    ], BOUNCE_AFTER)

    assert bounced == []
    rows = rows_by_id(engine)
    assert (rows[a].status, rows[a].sent_at, rows[a].last_reply) == (
        "sent", later, "250 2.0.0 Ok: queued")
    assert (rows[b].status, rows[b].last_reply) == ("failed", "550 5.1.1 no such user")
    assert (rows[c].status, rows[c].next_attempt_at, rows[c].last_reply) == (
        "pending", retry_at, "451 4.3.0 try again later")
    assert all(row.claimed_by is None and row.lease_until is None for row in rows.values())
    # The retry waits: not due before its time, due at it, and next_due says when.
    assert outbox.count_due(engine, later) == 0
    assert outbox.claim_batch(engine, worker, later, LEASE, 10) == []
    assert outbox.next_due(engine) == retry_at
    [again] = outbox.claim_batch(engine, worker, retry_at, LEASE, 10)
    assert (again.id, again.attempts) == (c, 2)
    outbox.record_outcomes(engine, worker, sent([again], retry_at), BOUNCE_AFTER)
    # Sent and failed deliveries are never claimed again.
    assert outbox.claim_batch(engine, worker, retry_at + timedelta(days=1), LEASE, 10) == []


def test_record_outcomes_is_one_transaction(engine: Engine) -> None:
    add_subscribers(engine, {"a@example.org": "active", "b@example.org": "active"})
    make_digest(engine)
    worker = f"{HOST}:1:aa"
    a, b = (claimed.id for claimed in claim_all(engine, worker))
    # The retry's naive time is refused after the sent one was written: neither may stay.
    with pytest.raises(StatementError, match="naive datetime"):
        outbox.record_outcomes(engine, worker, [
            Outcome(a, "sent", "250 ok", T0),
            Outcome(b, "retry", "451 later", datetime(2025, 3, 1, 10, 0)),
        ], BOUNCE_AFTER)
    assert {(r.status, r.claimed_by) for r in delivery_rows(engine)} == {("sending", worker)}


def test_record_outcomes_touches_only_the_workers_own_claims(engine: Engine) -> None:
    add_subscribers(engine, {"a@example.org": "active"})
    make_digest(engine)
    [mine] = claim_all(engine, f"{HOST}:1:aa")
    outbox.record_outcomes(engine, f"{HOST}:2:bb", sent([mine]), BOUNCE_AFTER)
    [row] = delivery_rows(engine)
    assert (row.status, row.claimed_by) == ("sending", f"{HOST}:1:aa")


def test_hard_bounces_are_counted_until_the_subscriber_bounces(engine: Engine) -> None:
    ids = add_subscribers(engine, {"gone@example.org": "active", "ok@example.org": "active"})
    gone = ids["gone@example.org"]
    worker = f"{HOST}:1:aa"

    def bounce_next_digest(at: datetime) -> list[int]:
        make_digest(engine, at)
        outcomes = [
            Outcome(c.id, "failed", "550 5.1.1 no such user", at, bounced_subscriber=gone)
            if c.subscriber_id == gone else Outcome(c.id, "sent", "250 ok", at)
            for c in claim_all(engine, worker, at)
        ]
        return outbox.record_outcomes(engine, worker, outcomes, bounce_after=2)

    def subscriber(subscriber_id: int) -> Any:
        with engine.connect() as connection:
            return connection.execute(select(subscribers_table).where(
                subscribers_table.c.id == subscriber_id)).one()

    assert bounce_next_digest(T0) == []
    assert (subscriber(gone).status, subscriber(gone).bounce_count) == ("active", 1)
    second = T0 + timedelta(days=7)
    assert bounce_next_digest(second) == [gone]
    bounced = subscriber(gone)
    assert (bounced.status, bounced.bounce_count, bounced.bounced_at) == ("bounced", 2, second)
    assert subscriber(ids["ok@example.org"]).status == "active"
    # A bounced subscriber is in no later digest.
    third = make_digest(engine, T0 + timedelta(days=14))
    assert [r.email for r in delivery_rows(engine, third)] == ["ok@example.org"]


def test_release_hands_unsent_claims_back_uncounted(engine: Engine) -> None:
    add_subscribers(engine, readers(3))
    make_digest(engine)
    worker = f"{HOST}:1:aa"
    one, two, three = (c.id for c in claim_all(engine, worker))
    later = T0 + timedelta(seconds=30)

    outbox.release(engine, f"{HOST}:2:bb", [one], later)  # not its claim: nothing
    outbox.release(engine, worker, [], later)
    outbox.release(engine, worker, [one, two], later)

    rows = rows_by_id(engine)
    for delivery_id in (one, two):
        row = rows[delivery_id]
        # Its due time is kept: it stays first in line.
        assert (row.status, row.attempts, row.claimed_by, row.lease_until,
                row.next_attempt_at) == ("pending", 0, None, None, T0)
    assert (rows[three].status, rows[three].attempts) == ("sending", 1)
    assert [c.id for c in claim_all(engine, f"{HOST}:2:bb", later)] == [one, two]


def test_release_dead_workers_hands_back_only_the_claims_of_dead_processes_on_this_host(
    engine: Engine,
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    assert not pid_alive(gone.pid) and pid_alive(os.getpid())
    add_subscribers(engine, readers(6))  # two claims for each worker below
    make_digest(engine)
    workers = {
        "dead": f"{HOST}:{gone.pid}:aa",
        "alive": f"{HOST}:{os.getpid()}:bb",
        "elsewhere": f"other-host:{gone.pid}:cc",  # left to its lease: its pid is not ours
    }
    claims = {name: [c.id for c in outbox.claim_batch(engine, worker, T0, LEASE, 2)]
              for name, worker in workers.items()}
    restart = T0 + timedelta(minutes=1)

    assert outbox.release_dead_workers(engine, HOST, pid_alive, restart) == 2

    rows = rows_by_id(engine)
    for delivery_id in claims["dead"]:
        row = rows[delivery_id]
        # Its due time is kept: the next sender sends it first, before untouched ones.
        assert (row.status, row.claimed_by, row.lease_until, row.next_attempt_at) == (
            "pending", None, None, T0)
        assert row.attempts == 1  # the interrupted attempt still counts
        assert "interrupted" in row.last_reply
    for name in ("alive", "elsewhere"):
        assert {rows[i].status for i in claims[name]} == {"sending"}
        assert {rows[i].claimed_by for i in claims[name]} == {workers[name]}
    assert outbox.release_dead_workers(engine, HOST, pid_alive, restart) == 0
    assert [c.id for c in claim_all(engine, f"{HOST}:1:new", restart)] == claims["dead"]


# ---- when the next delivery is due -------------------------------------------------------------


def test_next_due_is_none_when_nothing_is_pending(engine: Engine) -> None:
    assert outbox.next_due(engine) is None
    add_subscribers(engine, {"a@example.org": "active"})
    make_digest(engine)
    assert outbox.next_due(engine) == T0
    [claimed] = claim_all(engine, f"{HOST}:1:aa")
    assert outbox.next_due(engine) == T0 + LEASE
    outbox.record_outcomes(engine, f"{HOST}:1:aa", sent([claimed]), BOUNCE_AFTER)
    assert outbox.next_due(engine) is None


# ---- retrying failed deliveries ----------------------------------------------------------------


def finish_all(engine: Engine, now: datetime, outcome_for: Callable[[Claimed], str]) -> None:
    worker = f"{HOST}:1:aa"
    outcomes = [Outcome(c.id, outcome_for(c), "reply", now) for c in claim_all(engine, worker, now)]
    outbox.record_outcomes(engine, worker, outcomes, BOUNCE_AFTER)


def test_retry_failed_requeues_only_active_subscribers(engine: Engine) -> None:
    ids = add_subscribers(engine, {"a@example.org": "active", "b@example.org": "active",
                                   "c@example.org": "active", "d@example.org": "active"})
    first = make_digest(engine, T0)
    second = make_digest(engine, T0 + timedelta(days=7))
    finish_all(engine, T0 + timedelta(days=7),
               lambda c: "sent" if c.email == "d@example.org" else "failed")
    with engine.begin() as connection:
        subscribers.set_status(connection, ids["b@example.org"], "unsubscribed", T0)
        subscribers.set_status(connection, ids["c@example.org"], "bounced", T0)
    retry_at = T0 + timedelta(days=8)

    assert outbox.retry_failed(engine, retry_at, digest_id=second) == 1

    def states(digest_id: int) -> dict[str, tuple[str, int]]:
        return {r.email: (r.status, r.attempts) for r in delivery_rows(engine, digest_id)}

    assert states(second) == {
        "a@example.org": ("pending", 0), "b@example.org": ("failed", 1),
        "c@example.org": ("failed", 1), "d@example.org": ("sent", 1),
    }
    assert states(first)["a@example.org"] == ("failed", 1)
    assert outbox.retry_failed(engine, retry_at) == 1  # the first digest's, now
    assert states(first)["a@example.org"] == ("pending", 0)
    assert outbox.retry_failed(engine, retry_at) == 0
    assert [c.email for c in claim_all(engine, f"{HOST}:1:aa", retry_at)] == [
        "a@example.org"] * 2


# ---- status ----------------------------------------------------------------------------------


def test_status_counts_deliveries_per_digest_newest_first(engine: Engine) -> None:
    add_subscribers(engine, readers(5))
    first = make_digest(engine, T0, posts=1)
    second = make_digest(engine, T0 + timedelta(days=7), posts=3)
    worker = f"{HOST}:1:aa"
    mine = outbox.claim_batch(engine, worker, T0 + timedelta(days=7), LEASE, 6)
    of_first, of_second = mine[:5], mine[5:]
    assert {c.digest_id for c in of_first} == {first}
    assert {c.digest_id for c in of_second} == {second}
    outbox.record_outcomes(engine, worker, [
        *sent(of_first[:3]), Outcome(of_first[3].id, "failed", "550 no", T0)], BOUNCE_AFTER)

    report = outbox.status(engine)

    assert [d["id"] for d in report] == [second, first]
    counts = [(d["pending"], d["sending"], d["sent"], d["failed"]) for d in report]
    assert counts == [(4, 1, 0, 0), (0, 1, 3, 1)]
    assert [d["subject"] for d in report] == ["3 new", "1 new"]
    assert report[1]["created_at"] == T0

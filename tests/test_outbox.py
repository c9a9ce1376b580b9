"""The outbox: the retry policy, digests and their deliveries, claims, recovery and retries."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.exc import StatementError

from postroom import outbox, subscribers
from postroom.digest import DigestPost
from postroom.outbox import RetryPolicy
from postroom.schema import deliveries, digest_posts, digests
from postroom.store import migrate, open_engine

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'postroom.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


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


def delivery_rows(engine: Engine, digest_id: int | None = None) -> list[Any]:
    query = select(deliveries).order_by(deliveries.c.id)
    if digest_id is not None:
        query = query.where(deliveries.c.digest_id == digest_id)
    with engine.connect() as connection:
        return list(connection.execute(query))


def make_digest(engine: Engine, at: datetime = T0, posts: int = 1) -> int:
    chosen = [post(n, at - timedelta(hours=n + 1)) for n in range(posts)]
    digest_id, _ = outbox.create_digest(engine, chosen, f"{posts} new", at - timedelta(days=7),
                                        at, at)
    return digest_id


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

    digest_id, recipients = outbox.create_digest(
        engine, posts, "Blog: 2 new posts", T0 - timedelta(days=7), T0, T0)

    assert recipients == 3
    rows = delivery_rows(engine)
    assert [(r.email, r.subscriber_id) for r in rows] == [
        (email, ids[email]) for email in ("a@example.org", "b@example.org", "c@example.org")
    ]
    for row in rows:
        assert (row.digest_id, row.status, row.attempts, row.next_attempt_at) == (
            digest_id, "pending", 0, T0)
        assert row.claimed_by is None and row.sent_at is None and row.message_id is None
    with engine.connect() as connection:
        digest = connection.execute(select(digests)).one()
        assert (digest.subject, digest.recipients, digest.cutoff, digest.created_at) == (
            "Blog: 2 new posts", 3, T0, T0)
        assert digest.window_start == T0 - timedelta(days=7)
        # The posts are frozen in the digest, in order, as they were.
        assert outbox.digest_posts_of(connection, digest_id) == posts
        assert outbox.last_cutoff(connection) == T0
        assert outbox.already_sent(connection) == {
            posts[0].entry_id, posts[1].entry_id, "post-1", "post-2"}


def test_a_digest_with_no_active_subscriber_has_no_deliveries(engine: Engine) -> None:
    add_subscribers(engine, {"p@example.org": "pending", "u@example.org": "unsubscribed"})
    digest_id, recipients = outbox.create_digest(engine, [post(1, T0)], "s", T0, T0, T0)
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
        outbox.create_digest(engine, [good, broken], "s", T0, T0, T0)
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


# ---- claiming and finishing deliveries --------------------------------------------------------


def test_a_delivery_is_claimed_once(engine: Engine) -> None:
    add_subscribers(engine, {"a@example.org": "active"})
    make_digest(engine)
    [delivery] = outbox.due(engine, T0, 0, 10)

    assert outbox.claim(engine, delivery.id, "host:1", "<1@blog.example.org>", T0)
    assert not outbox.claim(engine, delivery.id, "host:2", "<2@blog.example.org>", T0)

    [row] = delivery_rows(engine)
    assert (row.status, row.claimed_by, row.claimed_at, row.message_id, row.attempts) == (
        "sending", "host:1", T0, "<1@blog.example.org>", 1)
    assert outbox.due(engine, T0, 0, 10) == []


def test_concurrent_claims_never_share_a_delivery(engine: Engine, db_url: str) -> None:
    add_subscribers(engine, {f"user{n:03d}@example.org": "active" for n in range(120)})
    make_digest(engine)
    ids = [d.id for d in outbox.due(engine, T0, 0, 1000)]
    won: dict[str, list[int]] = {"w1": [], "w2": [], "w3": []}

    def worker(name: str) -> None:
        # Each worker its own engine: its own connections, as another process would have.
        own = open_engine(db_url)
        for delivery_id in ids:
            if outbox.claim(own, delivery_id, name, f"<{delivery_id}.{name}@x>", T0):
                won[name].append(delivery_id)
        own.dispose()

    threads = [threading.Thread(target=worker, args=(name,)) for name in won]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    claimed = sorted(i for mine in won.values() for i in mine)
    assert claimed == ids
    owners = {row.id: row.claimed_by for row in delivery_rows(engine)}
    for name, mine in won.items():
        assert all(owners[i] == name for i in mine)
    assert {row.attempts for row in delivery_rows(engine)} == {1}


def test_due_pages_through_pending_deliveries_in_order(engine: Engine) -> None:
    add_subscribers(engine, {f"user{n}@example.org": "active" for n in range(5)})
    make_digest(engine)
    ids = [row.id for row in delivery_rows(engine)]
    first = outbox.due(engine, T0, 0, 2)
    second = outbox.due(engine, T0, first[-1].id, 2)
    third = outbox.due(engine, T0, second[-1].id, 2)
    assert [d.id for d in first + second + third] == ids
    assert outbox.due(engine, T0 - timedelta(seconds=1), 0, 10) == []  # not due yet
    assert first[0].email == "user0@example.org" and first[0].attempts == 0


def test_sent_failed_and_retried_deliveries(engine: Engine) -> None:
    add_subscribers(engine, {"a@example.org": "active", "b@example.org": "active",
                             "c@example.org": "active"})
    make_digest(engine)
    a, b, c = (d.id for d in outbox.due(engine, T0, 0, 10))
    for delivery_id in (a, b, c):
        assert outbox.claim(engine, delivery_id, "w", f"<{delivery_id}@x>", T0)
    later = T0 + timedelta(minutes=1)
    outbox.mark_sent(engine, a, "250 2.0.0 Ok: queued", later)
    outbox.mark_failed(engine, b, "550 5.1.1 no such user")
    outbox.mark_retry(engine, c, "451 4.3.0 try again later", later + timedelta(minutes=5))

    rows = {row.id: row for row in delivery_rows(engine)}
    assert (rows[a].status, rows[a].sent_at, rows[a].last_reply) == (
        "sent", later, "250 2.0.0 Ok: queued")
    assert (rows[b].status, rows[b].last_reply) == ("failed", "550 5.1.1 no such user")
    assert (rows[c].status, rows[c].next_attempt_at) == ("pending", later + timedelta(minutes=5))
    assert all(row.claimed_by is None for row in rows.values())
    # The retry waits: not due before its time, due at it, and next_due says when.
    assert outbox.due(engine, later, 0, 10) == []
    assert [d.id for d in outbox.due(engine, later + timedelta(minutes=5), 0, 10)] == [c]
    assert outbox.next_due(engine) == later + timedelta(minutes=5)
    # A sent delivery cannot be claimed again.
    assert not outbox.claim(engine, a, "w", "<again@x>", later)


def test_next_due_is_none_when_nothing_is_pending(engine: Engine) -> None:
    assert outbox.next_due(engine) is None
    add_subscribers(engine, {"a@example.org": "active"})
    make_digest(engine)
    assert outbox.next_due(engine) == T0


# ---- recovery after a crash ------------------------------------------------------------------


def test_recover_in_flight_hands_sending_back_to_pending(engine: Engine) -> None:
    add_subscribers(engine, {f"user{n}@example.org": "active" for n in range(4)})
    make_digest(engine)
    one, two, three, four = (d.id for d in outbox.due(engine, T0, 0, 10))
    for delivery_id in (one, two, three):
        outbox.claim(engine, delivery_id, "dead:1", f"<{delivery_id}@x>", T0)
    outbox.mark_sent(engine, one, "250 ok", T0)
    restart = T0 + timedelta(minutes=10)

    assert outbox.recover_in_flight(engine, restart) == 2

    rows = {row.id: row for row in delivery_rows(engine)}
    assert rows[one].status == "sent"
    for delivery_id in (two, three):
        row = rows[delivery_id]
        assert (row.status, row.claimed_by, row.next_attempt_at) == ("pending", None, restart)
        assert row.attempts == 1  # the interrupted attempt still counts
        assert "interrupted" in row.last_reply
    assert rows[four].status == "pending" and rows[four].attempts == 0
    assert [d.id for d in outbox.due(engine, restart, 0, 10)] == [two, three, four]
    assert outbox.recover_in_flight(engine, restart) == 0


# ---- retrying failed deliveries ----------------------------------------------------------------


def test_retry_failed_requeues_only_active_subscribers(engine: Engine) -> None:
    ids = add_subscribers(engine, {"a@example.org": "active", "b@example.org": "active",
                                   "c@example.org": "active", "d@example.org": "active"})
    first = make_digest(engine, T0)
    second = make_digest(engine, T0 + timedelta(days=7))
    for delivery in outbox.due(engine, T0 + timedelta(days=7), 0, 100):
        outbox.claim(engine, delivery.id, "w", "<m@x>", T0)
        if delivery.email == "d@example.org":
            outbox.mark_sent(engine, delivery.id, "250 ok", T0)
        else:
            outbox.mark_failed(engine, delivery.id, "550 no")
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
    assert [d.email for d in outbox.due(engine, retry_at, 0, 10)] == ["a@example.org"] * 2


# ---- status ----------------------------------------------------------------------------------


def test_status_counts_deliveries_per_digest_newest_first(engine: Engine) -> None:
    add_subscribers(engine, {f"user{n}@example.org": "active" for n in range(5)})
    first = make_digest(engine, T0, posts=1)
    second = make_digest(engine, T0 + timedelta(days=7), posts=3)
    mine = [d.id for d in outbox.due(engine, T0 + timedelta(days=7), 0, 100)]
    first_ids, second_ids = mine[:5], mine[5:]
    for delivery_id in first_ids:
        outbox.claim(engine, delivery_id, "w", "<m@x>", T0)
    for delivery_id in first_ids[:3]:
        outbox.mark_sent(engine, delivery_id, "250 ok", T0)
    outbox.mark_failed(engine, first_ids[3], "550 no")
    outbox.claim(engine, second_ids[0], "w", "<m@x>", T0)

    report = outbox.status(engine)

    assert [d["id"] for d in report] == [second, first]
    counts = [(d["pending"], d["sending"], d["sent"], d["failed"]) for d in report]
    assert counts == [(4, 1, 0, 0), (0, 1, 3, 1)]
    assert [d["subject"] for d in report] == ["3 new", "1 new"]
    assert report[1]["created_at"] == T0

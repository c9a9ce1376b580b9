"""The outbox: digests and their deliveries in the database, and the retry policy.

A delivery is written with its Message-ID fixed, recorded before it is sent (claimed in a
batch: status `sending` under a lease, attempt counted) and after (sent, failed or to
retry, with the server's reply; outcomes are recorded in batches). A sender killed between
the two leaves its claims `sending`; they are handed back when their lease expires, or at
once by the next sender on the same host, which sees the process is gone. So only
messages handed to the server whose outcome was not yet recorded can be sent twice.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    String,
    bindparam,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from postroom import subscribers as subscribers_rules
from postroom.digest import DigestPost
from postroom.schema import deliveries, digest_posts, digests, seen_posts, subscribers
from postroom.store import get_meta, reading, set_meta

FIRST_SEEN_KEY = "collection_first_seen"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    backoff_base: float
    backoff_max: float

    def delay(self, attempts: int, rng: random.Random | None = None) -> timedelta:
        """Return how long to wait after the n-th failed attempt: exponential, with jitter.

        Jitter spreads retries out, so a relay that failed everyone at once is not hit
        by everyone again at the same second.
        """
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** max(attempts - 1, 0))
        return timedelta(seconds=ceiling * (rng or random).uniform(0.5, 1.0))


def first_seen(engine: Engine, now: datetime) -> datetime:
    """Return when postroom first saw the collection, recording `now` the first time."""
    with engine.begin() as connection:
        value = get_meta(connection, FIRST_SEEN_KEY)
        if value is None:
            set_meta(connection, FIRST_SEEN_KEY, now.isoformat())
            return now
    return datetime.fromisoformat(value)


def record_seen(engine: Engine, posts: Sequence[tuple[str, str, datetime]], now: datetime) -> int:
    """Record (entry_id, slug, published) of posts not seen before; return how many were new."""
    with engine.begin() as connection:
        known = set(connection.execute(select(seen_posts.c.entry_id)).scalars())
        fresh = [
            dict(entry_id=e, slug=s, published_at=p, first_seen_at=now)
            for e, s, p in posts
            if e not in known
        ]
        if fresh:
            connection.execute(insert(seen_posts), fresh)
    return len(fresh)


def last_cutoff(connection: Connection) -> datetime | None:
    return connection.execute(select(func.max(digests.c.cutoff))).scalar()


def first_seen_after(connection: Connection, moment: datetime) -> set[str]:
    """Return the entry IDs of posts postroom first saw published after `moment`."""
    query = select(seen_posts.c.entry_id).where(seen_posts.c.first_seen_at > moment)
    return set(connection.execute(query).scalars())


def already_sent(connection: Connection) -> set[str]:
    """Return the entry IDs and slugs of every post in an earlier digest."""
    rows = connection.execute(select(digest_posts.c.entry_id, digest_posts.c.slug)).all()
    return {value for row in rows for value in row}


class DigestExists(Exception):
    """Another process created the digest of this window first."""


def create_digest(
    engine: Engine, posts: Sequence[DigestPost], subject: str, start: datetime, cutoff: datetime,
    now: datetime, previous_cutoff: datetime | None, host: str,
) -> tuple[int, int]:
    """Write a digest, its frozen posts and a delivery per active subscriber, atomically.

    Returns (digest id, recipients), or raises DigestExists when the window's digest was
    created since it was planned: the previous cutoff is checked again inside this write
    transaction, and the window's unique key stops a racer that checked at the same time.
    The deliveries are written by one INSERT … SELECT, with their fixed Message-ID and
    the recipient's link, so a list of any size costs one statement.
    """
    try:
        with engine.begin() as connection:
            if last_cutoff(connection) != previous_cutoff:
                raise DigestExists(start)
            digest_id = _insert_digest(connection, posts, subject, start, cutoff, now)
            recipients = _insert_deliveries(connection, digest_id, now, host)
            connection.execute(
                update(digests).where(digests.c.id == digest_id).values(recipients=recipients)
            )
    except IntegrityError as err:
        raise DigestExists(start) from err
    return digest_id, recipients


def window_key(start: datetime) -> str:
    return start.astimezone(UTC).isoformat()


def _insert_digest(
    connection: Connection, posts: Sequence[DigestPost], subject: str, start: datetime,
    cutoff: datetime, now: datetime,
) -> int:
    inserted = connection.execute(
        insert(digests).values(
            created_at=now, window_start=start, cutoff=cutoff, subject=subject, recipients=0,
            window_key=window_key(start),
        )
    ).inserted_primary_key
    assert inserted is not None
    digest_id = int(inserted[0])
    connection.execute(
        insert(digest_posts),
        [
            dict(
                digest_id=digest_id, position=i, entry_id=p.entry_id, slug=p.slug,
                title=p.title, url=p.url, summary=p.summary, published_at=p.published,
            )
            for i, p in enumerate(posts)
        ],
    )
    return digest_id


def _insert_deliveries(connection: Connection, digest_id: int, now: datetime, host: str) -> int:
    prefix = f"<postroom.{now:%Y%m%d%H%M%S}.{digest_id}."
    active = select(
        literal("digest"), literal(digest_id), subscribers.c.id, subscribers.c.email,
        literal("pending"), literal(0), literal(now, type_=deliveries.c.next_attempt_at.type),
        literal(prefix) + cast(subscribers.c.id, String) + literal(f"@{host}>"),
        subscribers.c.public_id + literal(".") + subscribers.c.unsubscribe_key,
    ).where(subscribers.c.status == "active")
    connection.execute(
        insert(deliveries).from_select(
            ["kind", "digest_id", "subscriber_id", "email", "status", "attempts",
             "next_attempt_at", "message_id", "unsubscribe_token"],
            active,
        )
    )
    # Counted, not read from rowcount: psycopg's is -1 for an INSERT … SELECT by then.
    return int(connection.execute(
        select(func.count()).select_from(deliveries).where(deliveries.c.digest_id == digest_id)
    ).scalar_one())


def digest_posts_of(connection: Connection, digest_id: int) -> list[DigestPost]:
    rows = connection.execute(
        select(digest_posts).where(digest_posts.c.digest_id == digest_id)
        .order_by(digest_posts.c.position)
    ).all()
    return [
        DigestPost(r.entry_id, r.slug, r.title, r.url, r.summary, r.published_at) for r in rows
    ]


@dataclass(frozen=True)
class Claimed:
    """A delivery a sender holds under lease, with everything needed to send it."""

    id: int
    kind: str
    digest_id: int | None
    subscriber_id: int
    email: str
    message_id: str
    unsubscribe_token: str | None
    payload: str | None
    attempts: int  # counting this one
    lease_until: datetime


@dataclass(frozen=True)
class Outcome:
    """What happened to one claimed delivery: sent, retry (at `at`) or failed."""

    delivery_id: int
    status: str
    reply: str
    at: datetime
    bounced_subscriber: int | None = None


def claim_batch(
    engine: Engine, worker: str, now: datetime, lease: timedelta, limit: int
) -> list[Claimed]:
    """Claim up to `limit` due deliveries for `worker` in one statement; return them.

    Claimed deliveries are `sending` under a lease until `now + lease`; one whose lease
    ran out (its sender died or hung) is due again, for any sender. On PostgreSQL, SKIP
    LOCKED lets concurrent senders claim disjoint batches without waiting on each other;
    SQLite serialises writers, which gives the same guarantee.
    """
    due_ids = (
        select(deliveries.c.id)
        .where(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= now)
        # The order of ix_deliveries_due: the first `limit` rows, not a sort of all due rows.
        .order_by(deliveries.c.next_attempt_at, deliveries.c.id).limit(limit)
        .with_for_update(skip_locked=True)
    )
    with engine.begin() as connection:
        connection.execute(
            update(deliveries)
            # No lease: left `sending` by a sender from before leases (revision 0001).
            .where(deliveries.c.status == "sending",
                   or_(deliveries.c.lease_until < now, deliveries.c.lease_until.is_(None)))
            .values(status="pending", claimed_by=None, lease_until=None,
                    last_reply="lease expired: its sender stopped or stalled mid-send")
        )
        rows = connection.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(due_ids.scalar_subquery()))
            .values(status="sending", claimed_by=worker, claimed_at=now,
                    lease_until=now + lease, attempts=deliveries.c.attempts + 1)
            .returning(deliveries.c.id, deliveries.c.kind, deliveries.c.digest_id,
                       deliveries.c.subscriber_id, deliveries.c.email, deliveries.c.message_id,
                       deliveries.c.unsubscribe_token, deliveries.c.payload,
                       deliveries.c.attempts)
        ).all()
    claimed = [Claimed(**row._mapping, lease_until=now + lease) for row in rows]
    return sorted(claimed, key=lambda c: c.id)


def record_outcomes(engine: Engine, worker: str, outcomes: Sequence[Outcome],
                    bounce_after: int) -> list[int]:
    """Record a batch of outcomes in one transaction; return subscribers now bounced.

    Only this worker's claims are touched: a delivery whose lease expired and that
    another sender claimed since belongs to that sender now.
    """
    mine = (deliveries.c.id == bindparam("b_id"), deliveries.c.claimed_by == worker,
            deliveries.c.status == "sending")
    released = dict(claimed_by=None, lease_until=None)
    statements = {
        "sent": update(deliveries).where(*mine).values(
            status="sent", sent_at=bindparam("b_at"), last_reply=bindparam("b_reply"),
            **released),
        "retry": update(deliveries).where(*mine).values(
            status="pending", next_attempt_at=bindparam("b_at"),
            last_reply=bindparam("b_reply"), **released),
        "failed": update(deliveries).where(*mine).values(
            status="failed", last_reply=bindparam("b_reply"), **released),
    }
    bounced: list[int] = []
    with engine.begin() as connection:
        for status, statement in statements.items():
            rows = [{"b_id": o.delivery_id, "b_at": o.at, "b_reply": o.reply[:1000]}
                    for o in outcomes if o.status == status]
            if rows:
                connection.execute(statement, rows)
        for outcome in outcomes:
            if outcome.bounced_subscriber is not None and subscribers_rules.record_bounce(
                connection, outcome.bounced_subscriber, outcome.at, bounce_after
            ):
                bounced.append(outcome.bounced_subscriber)
    return bounced


def release(engine: Engine, worker: str, delivery_ids: Sequence[int], now: datetime) -> None:
    """Hand claimed deliveries that were never handed to the server back, uncounted.

    They keep their due time, so they stay first in line (`now` is the caller's clock,
    kept for symmetry with the other outbox calls)."""
    if not delivery_ids:
        return
    with engine.begin() as connection:
        connection.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(delivery_ids), deliveries.c.claimed_by == worker,
                   deliveries.c.status == "sending")
            .values(status="pending", claimed_by=None, lease_until=None,
                    attempts=deliveries.c.attempts - 1)
        )


def release_dead_workers(engine: Engine, host: str, is_alive: Callable[[int], bool],
                         now: datetime) -> int:
    """Hand back the claims of senders on this host whose process is gone; return how many.

    Without this a killed `digest send` would leave its claims until their lease ran out;
    senders on other hosts are left to their leases. Worker names are `host:pid:nonce`.
    They keep their due time: the next sender sends them first, so what a kill may have
    made it send twice goes out at once, not at the end of the list.
    """
    with reading(engine) as connection:
        workers = connection.execute(
            select(deliveries.c.claimed_by).distinct()
            .where(deliveries.c.status == "sending",
                   deliveries.c.claimed_by.like(f"{host}:%"))
        ).scalars().all()
    dead = [w for w in workers if not is_alive(_pid_of(w))]
    if not dead:
        return 0
    with engine.begin() as connection:
        result = connection.execute(
            update(deliveries)
            .where(deliveries.c.status == "sending", deliveries.c.claimed_by.in_(dead))
            .values(status="pending", claimed_by=None, lease_until=None,
                    last_reply="interrupted: the sending process stopped mid-send")
        )
    return int(result.rowcount)


def _pid_of(worker: str) -> int:
    try:
        return int(worker.split(":")[1])
    except (IndexError, ValueError):
        return -1


def count_due(engine: Engine, now: datetime) -> int:
    """Return how many pending deliveries are due now."""
    with reading(engine) as connection:
        return int(connection.execute(
            select(func.count()).select_from(deliveries)
            .where(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= now)
        ).scalar_one())


def next_due(engine: Engine) -> datetime | None:
    """Return when the next delivery is due: a pending one, or an expired lease."""
    with reading(engine) as connection:
        pending = connection.execute(
            select(func.min(deliveries.c.next_attempt_at)).where(deliveries.c.status == "pending")
        ).scalar()
        leased = connection.execute(
            select(func.min(deliveries.c.lease_until)).where(deliveries.c.status == "sending")
        ).scalar()
    return min((t for t in (pending, leased) if t is not None), default=None)


@dataclass(frozen=True)
class Backlog:
    """Deliveries not yet finished: how many, when the next is due, the last error."""

    waiting: int
    next_attempt: datetime | None
    last_error: str | None


def backlog(engine: Engine) -> Backlog:
    """Return what is still to send (pending or being sent), for the CLI's last word."""
    unfinished = deliveries.c.status.in_(("pending", "sending"))
    with reading(engine) as connection:
        waiting, next_attempt = connection.execute(
            select(func.count(), func.min(deliveries.c.next_attempt_at)).where(unfinished)
        ).one()
        last_error = connection.execute(
            select(deliveries.c.last_reply)
            .where(unfinished, deliveries.c.attempts > 0, deliveries.c.last_reply.is_not(None))
            .order_by(deliveries.c.claimed_at.desc()).limit(1)
        ).scalar()
    return Backlog(int(waiting), next_attempt, last_error)


def due_now(engine: Engine, now: datetime) -> int:
    """Make every pending delivery due now, ignoring its backoff; return how many moved."""
    with engine.begin() as connection:
        return int(connection.execute(
            update(deliveries)
            .where(deliveries.c.status == "pending", deliveries.c.next_attempt_at > now)
            .values(next_attempt_at=now)
        ).rowcount)


def retry_failed(engine: Engine, now: datetime, digest_id: int | None = None) -> int:
    """Give failed deliveries to still-active subscribers a fresh start; return how many."""
    active = select(subscribers.c.id).where(subscribers.c.status == "active")
    query = (
        update(deliveries)
        .where(deliveries.c.status == "failed", deliveries.c.subscriber_id.in_(active))
        .values(status="pending", attempts=0, next_attempt_at=now)
    )
    if digest_id is not None:
        query = query.where(deliveries.c.digest_id == digest_id)
    with engine.begin() as connection:
        return int(connection.execute(query).rowcount)


def status(engine: Engine) -> list[dict[str, Any]]:
    """Return, per digest (newest first), its subject, delivery counts by status, when the
    next attempt is due and the last error of a delivery still to send or failed."""
    with reading(engine) as connection:
        rows = connection.execute(
            select(digests.c.id, digests.c.created_at, digests.c.subject,
                   deliveries.c.status, func.count(deliveries.c.id),
                   func.min(deliveries.c.next_attempt_at))
            .select_from(digests.outerjoin(deliveries, deliveries.c.digest_id == digests.c.id))
            .group_by(digests.c.id, digests.c.created_at, digests.c.subject, deliveries.c.status)
            .order_by(digests.c.id.desc())
        ).all()
        errors = _last_errors(connection)
    table: dict[int, dict[str, Any]] = {}
    for digest_id, created, subject, state, number, next_at in rows:
        entry = table.setdefault(digest_id, {
            "id": digest_id, "created_at": created, "subject": subject,
            "pending": 0, "sending": 0, "sent": 0, "failed": 0,
            "next_attempt": None, "last_error": errors.get(digest_id),
        })
        if state is not None:
            entry[state] = number
        if state == "pending":
            entry["next_attempt"] = next_at
    return list(table.values())


def _last_errors(connection: Connection) -> dict[int, str]:
    """Return, per digest, the reply of its most recently attempted unsent delivery."""
    latest = (
        select(deliveries.c.digest_id, func.max(deliveries.c.claimed_at).label("at"))
        .where(deliveries.c.status.in_(("pending", "sending", "failed")),
               deliveries.c.attempts > 0, deliveries.c.last_reply.is_not(None))
        .group_by(deliveries.c.digest_id).subquery()
    )
    rows = connection.execute(
        select(deliveries.c.digest_id, deliveries.c.last_reply)
        .join(latest, (latest.c.digest_id == deliveries.c.digest_id)
              & (latest.c.at == deliveries.c.claimed_at))
        .where(deliveries.c.last_reply.is_not(None))
    ).all()
    return {int(d): str(r) for d, r in rows if d is not None}

"""The outbox: digests and their deliveries in the database, and the retry policy.

A delivery is recorded before it is sent (claimed: status `sending`, attempt counted,
Message-ID fixed) and after (sent or failed, with the server's reply). A process killed
between the two leaves it `sending`; the next sender, holding the sender lock, hands those
back to pending, so only messages in flight at the kill can be sent twice.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, literal, select, update

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


def create_digest(
    engine: Engine, posts: Sequence[DigestPost], subject: str, start: datetime, cutoff: datetime,
    now: datetime,
) -> tuple[int, int]:
    """Write a digest, its frozen posts and a delivery per active subscriber, atomically.

    Returns (digest id, recipients). The deliveries are written by one INSERT … SELECT, so
    a list of any size costs one statement, not a row per round trip.
    """
    with engine.begin() as connection:
        inserted = connection.execute(
            insert(digests).values(
                created_at=now, window_start=start, cutoff=cutoff, subject=subject, recipients=0
            )
        ).inserted_primary_key
        assert inserted is not None
        digest_id = inserted[0]
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
        active = select(
            literal(digest_id), subscribers.c.id, subscribers.c.email, literal("pending"),
            literal(0), literal(now, type_=deliveries.c.next_attempt_at.type),
        ).where(subscribers.c.status == "active")
        connection.execute(
            insert(deliveries).from_select(
                ["digest_id", "subscriber_id", "email", "status", "attempts", "next_attempt_at"],
                active,
            )
        )
        # Counted, not read from rowcount: psycopg's is -1 for an INSERT … SELECT by then.
        recipients = connection.execute(
            select(func.count()).select_from(deliveries).where(deliveries.c.digest_id == digest_id)
        ).scalar_one()
        connection.execute(
            update(digests).where(digests.c.id == digest_id).values(recipients=recipients)
        )
    return int(digest_id), int(recipients)


def digest_posts_of(connection: Connection, digest_id: int) -> list[DigestPost]:
    rows = connection.execute(
        select(digest_posts).where(digest_posts.c.digest_id == digest_id)
        .order_by(digest_posts.c.position)
    ).all()
    return [
        DigestPost(r.entry_id, r.slug, r.title, r.url, r.summary, r.published_at) for r in rows
    ]


def recover_in_flight(engine: Engine, now: datetime) -> int:
    """Hand deliveries left `sending` by a dead process back to pending; return how many.

    Only call this while holding the sender lock: then nobody else is sending them.
    """
    with engine.begin() as connection:
        result = connection.execute(
            update(deliveries)
            .where(deliveries.c.status == "sending")
            .values(status="pending", next_attempt_at=now, claimed_by=None,
                    last_reply="interrupted: the sending process stopped mid-send")
        )
    return int(result.rowcount)


def due(engine: Engine, now: datetime, after_id: int, limit: int) -> Sequence[Any]:
    """Return up to `limit` pending deliveries due now with id > after_id, in id order."""
    query = (
        select(deliveries.c.id, deliveries.c.digest_id, deliveries.c.subscriber_id,
               deliveries.c.email, deliveries.c.attempts)
        .where(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= now,
               deliveries.c.id > after_id)
        .order_by(deliveries.c.id)
        .limit(limit)
    )
    with reading(engine) as connection:
        return connection.execute(query).all()


def next_due(engine: Engine) -> datetime | None:
    """Return when the earliest pending delivery is due (None: nothing pending)."""
    with reading(engine) as connection:
        return connection.execute(
            select(func.min(deliveries.c.next_attempt_at)).where(deliveries.c.status == "pending")
        ).scalar()


def claim(engine: Engine, delivery_id: int, worker: str, message_id: str, now: datetime) -> bool:
    """Mark a delivery as being sent by `worker`; False if someone else has it already."""
    with engine.begin() as connection:
        result = connection.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id, deliveries.c.status == "pending")
            .values(status="sending", claimed_by=worker, claimed_at=now, message_id=message_id,
                    attempts=deliveries.c.attempts + 1)
        )
    return result.rowcount == 1


def mark_sent(engine: Engine, delivery_id: int, reply: str, now: datetime) -> None:
    _finish(engine, delivery_id, status="sent", sent_at=now, last_reply=reply)


def mark_failed(engine: Engine, delivery_id: int, reply: str) -> None:
    _finish(engine, delivery_id, status="failed", last_reply=reply)


def mark_retry(engine: Engine, delivery_id: int, reply: str, at: datetime) -> None:
    _finish(engine, delivery_id, status="pending", next_attempt_at=at, last_reply=reply)


def _finish(engine: Engine, delivery_id: int, **values: Any) -> None:
    with engine.begin() as connection:
        connection.execute(
            update(deliveries).where(deliveries.c.id == delivery_id)
            .values(claimed_by=None, **values)
        )


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
    """Return, per digest (newest first), its subject and delivery counts by status."""
    with reading(engine) as connection:
        rows = connection.execute(
            select(digests.c.id, digests.c.created_at, digests.c.subject,
                   deliveries.c.status, func.count(deliveries.c.id))
            .select_from(digests.outerjoin(deliveries, deliveries.c.digest_id == digests.c.id))
            .group_by(digests.c.id, digests.c.created_at, digests.c.subject, deliveries.c.status)
            .order_by(digests.c.id.desc())
        ).all()
    table: dict[int, dict[str, Any]] = {}
    for digest_id, created, subject, state, number in rows:
        entry = table.setdefault(digest_id, {
            "id": digest_id, "created_at": created, "subject": subject,
            "pending": 0, "sending": 0, "sent": 0, "failed": 0,
        })
        if state is not None:
            entry[state] = number
    return list(table.values())

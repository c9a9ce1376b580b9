"""Double opt-in: asking to subscribe, confirming, leaving, and expiring stale requests.

Every function returns the same kind of answer whatever state the address was in, so the
web pages built on them cannot reveal who is subscribed.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, insert, or_, select

from postroom import subscribers
from postroom.schema import deliveries
from postroom.schema import subscribers as subscribers_table
from postroom.store import reading


def version_of(moment: datetime) -> int:
    """Return a status-change time as the integer a confirmation token carries."""
    return int(moment.timestamp() * 1000)


def request_subscription(
    engine: Engine, email: str, now: datetime, source: str
) -> tuple[int, int] | None:
    """Record a request to subscribe; return (id, version) to confirm, or None.

    New addresses become pending. Pending, unsubscribed and bounced ones keep their status
    until they confirm (resubscribing needs a new confirmation). Active ones need nothing.
    """
    with engine.begin() as connection:
        row, _created = subscribers.add(connection, email, now, status="pending", source=source)
    if row.status == "active":
        return None
    return int(row.id), version_of(row.status_changed_at)


def request_and_queue_confirmation(
    engine: Engine, email: str, now: datetime, source: str, host: str,
    make_token: Callable[[int, str, int], str],
    may_send: Callable[[Connection, str, datetime], bool] = lambda *_: True,
) -> str:
    """Record a request to subscribe and queue its confirmation email, in one transaction.

    Returns "queued", "active" (an active address needs no confirmation) or "held" (the
    request is recorded, but `may_send` said no mail now). `may_send` is asked, in the same
    transaction, with the subscriber's id and status version ("12.1767268800000"): a new
    status (after an unsubscribe, say) is a new subscriber to it. The email goes through the
    outbox, so a refusal or a restart cannot lose it.
    """
    with engine.begin() as connection:
        row, _created = subscribers.add(connection, email, now, status="pending", source=source)
        if row.status == "active":
            return "active"
        version = version_of(row.status_changed_at)
        if not may_send(connection, f"{row.id}.{version}", now):
            return "held"
        # The address as first recorded, in whatever case this request used: the link
        # confirms that row, and `confirm` compares the token's address with it.
        token = make_token(int(row.id), row.email, version)
        # One per mail, not per address: a receiver that drops a Message-ID it has seen
        # (the first mail, in the spam folder) must not drop the new link sent later.
        message_id = f"<confirm.{row.public_id}.{version}.{version_of(now)}@{host}>"
        connection.execute(insert(deliveries).values(
            kind="confirm", subscriber_id=row.id, email=row.email, status="pending", attempts=0,
            next_attempt_at=now, message_id=message_id, payload=token,
        ))
    return "queued"


def subscriber_of_link(engine: Engine, token: str) -> int | None:
    """Return the subscriber an unsubscribe link `<public_id>.<key>` names, or None.

    The key is compared in constant time, so response times say nothing about it.
    """
    public_id, dot, key = token.partition(".")
    if not dot or not public_id or not key or len(token) > 100:
        return None
    with reading(engine) as connection:
        row = connection.execute(
            select(subscribers_table.c.id, subscribers_table.c.unsubscribe_key)
            .where(subscribers_table.c.public_id == public_id)
        ).first()
    if row is None or not hmac.compare_digest(row.unsubscribe_key.encode(), key.encode()):
        return None
    return int(row.id)


def confirm(engine: Engine, subscriber_id: int, email: str, version: int, now: datetime) -> str:
    """Activate the subscriber a token names: 'confirmed', 'already' (idempotent) or 'stale'.

    The address is in the token, so a token cannot confirm somebody else; the version
    ties it to the status it was issued for, so an old token cannot undo an unsubscribe.
    """
    with engine.begin() as connection:
        row = connection.execute(
            select(subscribers_table).where(subscribers_table.c.id == subscriber_id)
        ).first()
        if row is None or row.email != email:
            return "stale"
        if row.status == "active":
            return "already"
        if version_of(row.status_changed_at) != version:
            return "stale"
        subscribers.set_status(connection, row.id, "active", now)
    return "confirmed"


def unsubscribe(engine: Engine, subscriber_id: int, now: datetime) -> str | None:
    """Unsubscribe; idempotent. Return the address, or None if there is no such subscriber.

    Pending deliveries to the address are dropped, so nothing more is sent after this.
    """
    with engine.begin() as connection:
        row = connection.execute(
            select(subscribers_table).where(subscribers_table.c.id == subscriber_id)
        ).first()
        if row is None:
            return None
        if row.status != "unsubscribed":
            subscribers.set_status(connection, row.id, "unsubscribed", now)
        connection.execute(
            deliveries.update()
            .where(deliveries.c.subscriber_id == row.id, deliveries.c.status == "pending")
            .values(status="failed", last_reply="unsubscribed before sending")
        )
        return str(row.email)


def expire_pending(engine: Engine, now: datetime, after_days: int) -> int:
    """Forget requests never confirmed, older than `after_days`, whose last confirmation
    mail was queued or sent before that too; return how many.

    By then every link mailed for the request has expired, so its confirmation deliveries
    go with it, and a new request is a new one (with a new mail). A request mailed within
    the window is kept, so its link still confirms. Only never-confirmed rows go: an
    unsubscribed address is kept, so an import can never bring it back.
    """
    cutoff = now - timedelta(days=after_days)
    # Deliveries that keep a request: anything but a confirmation, one being sent right
    # now, and a confirmation queued, retried or sent within the window.
    keeping = select(deliveries.c.subscriber_id).where(or_(
        deliveries.c.kind != "confirm", deliveries.c.status == "sending",
        deliveries.c.next_attempt_at >= cutoff, deliveries.c.sent_at >= cutoff))
    stale = select(subscribers_table.c.id).where(
        subscribers_table.c.status == "pending",
        subscribers_table.c.confirmed_at.is_(None),
        subscribers_table.c.created_at < cutoff,
        ~subscribers_table.c.id.in_(keeping),
    )
    with engine.begin() as connection:
        connection.execute(delete(deliveries).where(deliveries.c.subscriber_id.in_(stale)))
        result = connection.execute(delete(subscribers_table).where(
            subscribers_table.c.id.in_(stale)))
    return int(result.rowcount)

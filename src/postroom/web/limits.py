"""Limits on the public endpoints, kept in the database: sliding windows per key.

In the database rather than in memory, so a restart or a SIGHUP resets none of them, and
several processes on one database share them. Keys are stored as keyed hashes: the table
holds no address and no IP. Each hit prunes its bucket's rows older than the window.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, insert, select

from postroom.config import WebSettings
from postroom.schema import limit_hits


@dataclass(frozen=True)
class Window:
    """At most `limit` hits per key of `bucket` in any `seconds`."""

    bucket: str
    limit: int
    seconds: float

    def wait(self, connection: Connection, key: str, now: datetime) -> float:
        """Return 0 if key has room for a hit now, else the seconds until it will."""
        since = now - timedelta(seconds=self.seconds)
        # Pruning here keeps the table at most one window deep, whatever the traffic.
        connection.execute(delete(limit_hits).where(
            limit_hits.c.bucket == self.bucket, limit_hits.c.at <= since))
        times = connection.execute(
            select(limit_hits.c.at)
            .where(limit_hits.c.bucket == self.bucket, limit_hits.c.key == key,
                   limit_hits.c.at > since)
            .order_by(limit_hits.c.at).limit(self.limit)
        ).scalars().all()
        if len(times) < self.limit:
            return 0.0
        return max((times[0] - since).total_seconds(), 0.001)

    def record(self, connection: Connection, key: str, now: datetime) -> None:
        connection.execute(insert(limit_hits).values(bucket=self.bucket, key=key, at=now))

    def hit(self, connection: Connection, key: str, now: datetime) -> float:
        """Count a hit for key if it has room; return 0 if counted, else seconds to wait."""
        wait = self.wait(connection, key, now)
        if not wait:
            self.record(connection, key, now)
        return wait


class RequestLimits:
    """The subscription endpoints' limits: what a client or a mailbox may ask for, and how
    many confirmation mails go out (one per pending subscriber per cool-down, a cap in all)."""

    def __init__(self, secret: str, web: WebSettings) -> None:
        self._secret = hashlib.sha256(f"postroom.limits:{secret}".encode()).digest()
        self.per_client = Window("client", web.rate_per_client, web.rate_window_seconds)
        self.per_mailbox = Window("mailbox", web.rate_per_email, web.rate_window_seconds)
        # One mail per pending subscriber (and status) per cool-down: by default the whole
        # confirmation window, so asking again for a link that still works sends nothing.
        self.per_subscriber = Window("confirm", 1, web.confirm_cooldown)
        self.confirmations = Window("confirm-all", web.confirmations_per_hour, 3600)

    def key(self, value: str) -> str:
        """Given a client address or a mailbox, return the hash the table keeps for it."""
        return hmac.new(self._secret, value.encode(), hashlib.sha256).hexdigest()[:32]

    def admit_blocking(self, engine: Engine, client: str, mailbox: str | None,
                       now: datetime) -> float:
        """Count a subscription request from client (for mailbox, if it names one); return 0
        if it may proceed, else the seconds until it may."""
        with engine.begin() as connection:
            wait = self.per_client.hit(connection, self.key(client), now)
            if wait or mailbox is None:
                return wait
            return self.per_mailbox.hit(connection, self.key(mailbox), now)

    def may_confirm(self, connection: Connection, subscriber: str, now: datetime) -> bool:
        """Whether a confirmation mail may go to `subscriber` (its id and status version) now;
        if so, it is counted. Runs in the transaction that queues the mail."""
        key = self.key(subscriber)
        if self.per_subscriber.wait(connection, key, now):
            return False
        if self.confirmations.wait(connection, "", now):
            return False
        self.per_subscriber.record(connection, key, now)
        self.confirmations.record(connection, "", now)
        return True


def mailbox_of(email: str) -> str:
    """Given a normalized address, return the mailbox it reaches: lower case, no +tag
    (victim+1@ and victim+2@ land in one inbox, so they share one limit)."""
    local, _, domain = email.rpartition("@")
    return f"{local.split('+', 1)[0] or local}@{domain}".lower()


def retry_after(seconds: float) -> str:
    """Return a Retry-After header value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))

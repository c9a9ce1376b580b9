"""Sending the outbox: a pool of workers, each keeping one connection open for many messages."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment
from sqlalchemy import Engine, Row, select

from postroom import outbox, subscribers
from postroom.config import Settings
from postroom.digest import compose_digest
from postroom.message import PreparedMessage
from postroom.schema import digests
from postroom.store import reading
from postroom.tokens import Tokens
from postroom.transport import Connection, PermanentError, TransientError, Transport

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
BATCH = 500


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class SendStats:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    bounced: int = 0

    @property
    def finished(self) -> int:
        return self.sent + self.failed


class DigestMessages:
    """Per-recipient message bytes for any digest, composing each digest once."""

    def __init__(self, engine: Engine, settings: Settings, environment: Environment,
                 tokens: Tokens) -> None:
        self.engine, self.settings, self.environment, self.tokens = (
            engine, settings, environment, tokens)
        self._prepared: dict[int, tuple[PreparedMessage, str]] = {}

    def message_id(self, digest_id: int, subscriber_id: int) -> str:
        """Return the delivery's Message-ID: the same on every attempt, so a duplicate sent
        after a crash is recognisable as one by the receiving side."""
        _, stamp = self._digest(digest_id)
        return f"<postroom.{stamp}.{digest_id}.{subscriber_id}@{self.settings.site.host}>"

    def unsubscribe_url(self, subscriber_id: int) -> str:
        return f"{self.settings.public_url}/unsubscribe/{self.tokens.unsubscribe(subscriber_id)}"

    def render(self, delivery: Row[Any], message_id: str, now: datetime) -> bytes:
        prepared, _ = self._digest(delivery.digest_id)
        link = self.unsubscribe_url(delivery.subscriber_id)
        urls = [link]
        if self.settings.mail.unsubscribe_mailto:
            urls.append(f"mailto:{self.settings.mail.unsubscribe_mailto}?subject=unsubscribe")
        return prepared.for_recipient(delivery.email, message_id, now, link, tuple(urls))

    def _digest(self, digest_id: int) -> tuple[PreparedMessage, str]:
        if digest_id not in self._prepared:
            with reading(self.engine) as connection:
                created = connection.execute(
                    select(digests.c.created_at).where(digests.c.id == digest_id)
                ).scalar_one()
                posts = outbox.digest_posts_of(connection, digest_id)
            prepared = compose_digest(self.environment, self.settings, posts)
            self._prepared[digest_id] = (prepared, f"{created:%Y%m%d%H%M%S}")
        return self._prepared[digest_id]


class RateLimiter:
    """Spaces sends at most `rate` per second across all workers (0: no limit)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = time.monotonic()
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        await asyncio.sleep(slot - now)


class Sender:
    """Moves due deliveries from pending to sent or failed, recording each step."""

    def __init__(
        self, engine: Engine, settings: Settings, transport: Transport, messages: DigestMessages,
        clock: Clock = utc_now, on_finish: Callable[[SendStats], None] | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.engine, self.settings, self.transport, self.messages = (
            engine, settings, transport, messages)
        self.clock, self.on_finish = clock, on_finish
        smtp = settings.smtp
        self.policy = outbox.RetryPolicy(smtp.max_attempts, smtp.backoff_base, smtp.backoff_max)
        self.limiter = RateLimiter(smtp.rate_limit)
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        self.sender_address = settings.mail.return_path or settings.mail.from_address
        self.stats = SendStats()
        # Set from outside (SIGTERM): take no new delivery, finish the ones in flight.
        self.stopping = stopping or asyncio.Event()

    async def run(self, wait_for_retries: float = 0.0) -> SendStats:
        """Send every due delivery; wait in-process for retries due within the given seconds."""
        while True:
            await self._pass()
            if self.stopping.is_set():
                return self.stats
            upcoming = await asyncio.to_thread(outbox.next_due, self.engine)
            if upcoming is None:
                return self.stats
            delay = (upcoming - self.clock()).total_seconds()
            if delay > wait_for_retries:
                return self.stats
            await asyncio.sleep(max(delay, 0.0))

    async def _pass(self) -> None:
        concurrency = self.settings.smtp.concurrency
        queue: asyncio.Queue[Row[Any] | None] = asyncio.Queue(maxsize=concurrency * 4)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(concurrency)]
        try:
            await self._produce(queue)
        finally:
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)

    async def _produce(self, queue: asyncio.Queue[Row[Any] | None]) -> None:
        last_id = 0
        while not self.stopping.is_set():
            batch = await asyncio.to_thread(outbox.due, self.engine, self.clock(), last_id, BATCH)
            if not batch:
                return
            for delivery in batch:
                await queue.put(delivery)
            last_id = batch[-1].id

    async def _worker(self, queue: asyncio.Queue[Row[Any] | None]) -> None:
        connection: Connection | None = None
        try:
            while (delivery := await queue.get()) is not None:
                if self.stopping.is_set():
                    continue  # not claimed yet: it stays pending for the next run
                connection = await self._deliver(delivery, connection)
        finally:
            if connection is not None:
                await connection.close()

    async def _deliver(
        self, delivery: Row[Any], connection: Connection | None
    ) -> Connection | None:
        message_id = self.messages.message_id(delivery.digest_id, delivery.subscriber_id)
        now = self.clock()
        claimed = await asyncio.to_thread(
            outbox.claim, self.engine, delivery.id, self.worker_name, message_id, now)
        if not claimed:
            return connection
        try:
            message = self.messages.render(delivery, message_id, now)
            await self.limiter.wait()
            connection = connection or await self.transport.connect()
            reply = await connection.send(self.sender_address, delivery.email, message)
        except asyncio.CancelledError:
            # Shutdown ran out of grace: hand the delivery back; it may go out twice.
            outbox.mark_retry(self.engine, delivery.id, "interrupted by shutdown", self.clock())
            raise
        except TransientError as err:
            if err.reconnect and connection is not None:
                await connection.close()
                connection = None
            await asyncio.to_thread(self._transient, delivery, err.reply)
        except PermanentError as err:
            await asyncio.to_thread(self._permanent, delivery, err)
        except Exception as err:
            # A bug must not stop the other deliveries nor leave this one `sending`: it is
            # retried like a transient failure (and fails for good after max_attempts).
            log.exception("unexpected error sending digest %s to %s",
                          delivery.digest_id, delivery.email)
            if connection is not None:
                await connection.close()
                connection = None
            await asyncio.to_thread(self._transient, delivery, f"internal error: {err!r}")
        else:
            await asyncio.to_thread(outbox.mark_sent, self.engine, delivery.id, reply, self.clock())
            self.stats.sent += 1
            log.debug("sent digest %s to %s: %s", delivery.digest_id, delivery.email, reply)
        if self.on_finish:
            self.on_finish(self.stats)
        return connection

    def _transient(self, delivery: Row[Any], reply: str) -> None:
        attempts = delivery.attempts + 1
        if attempts >= self.policy.max_attempts:
            outbox.mark_failed(self.engine, delivery.id, reply)
            self.stats.failed += 1
            log.warning("gave up on digest %s to %s after %d attempts: %s",
                        delivery.digest_id, delivery.email, attempts, reply)
            return
        at = self.clock() + self.policy.delay(attempts)
        outbox.mark_retry(self.engine, delivery.id, reply, at)
        self.stats.retried += 1
        log.info("will retry digest %s to %s at %s: %s",
                 delivery.digest_id, delivery.email, f"{at:%H:%M:%S}", reply)

    def _permanent(self, delivery: Row[Any], err: PermanentError) -> None:
        outbox.mark_failed(self.engine, delivery.id, err.reply)
        self.stats.failed += 1
        log.warning("digest %s to %s failed: %s", delivery.digest_id, delivery.email, err.reply)
        if err.bounce:
            with self.engine.begin() as connection:
                bounced = subscribers.record_bounce(
                    connection, delivery.subscriber_id, self.clock(),
                    self.settings.mail.bounce_after,
                )
            if bounced:
                self.stats.bounced += 1
                log.warning("marked %s bounced", delivery.email)

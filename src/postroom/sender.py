"""Sending the outbox: batched claims, one connection per worker, outcomes recorded in batches.

Everything here runs on one event loop; what blocks (the database, rendering a digest's
templates) runs in threads through `asyncio.to_thread`. The loop owns the queue, the
statistics and the health record: only coroutines of this module change them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from jinja2 import Environment
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from postroom import outbox
from postroom.config import Settings
from postroom.digest import compose_confirmation, compose_digest
from postroom.message import PreparedMessage
from postroom.outbox import Claimed, Outcome
from postroom.schema import digests
from postroom.store import reading
from postroom.transport import Connection, PermanentError, TransientError, Transport

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
T = TypeVar("T")

# Measured (bench/delivery.py): a claim of a few hundred rows costs about what one row did,
# and a flush every 100 ms or 200 outcomes keeps commits (each an fsync) off the hot path
# while bounding what a kill can make us send twice (see README, "How delivery…").
CLAIM_MAX = 500
FLUSH_EVERY = 200
FLUSH_SECONDS = 0.1
DB_RETRY_MAX = 30.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def worker_name() -> str:
    """Return a name for this sender, unique across hosts, processes and runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class SendStats:
    """What a send did; changed only on the sender's event loop."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    bounced: int = 0
    interrupted: int = 0

    @property
    def finished(self) -> int:
        return self.sent + self.failed

    def add(self, other: SendStats) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.retried += other.retried
        self.bounced += other.bounced
        self.interrupted += other.interrupted


@dataclass
class SenderHealth:
    """Whether the sender can reach its database; /healthz reports it. Loop-owned."""

    last_error: str | None = None
    failing_since: datetime | None = None

    def failed(self, error: str, now: datetime) -> bool:
        """Record a failure; return True if it starts a failure episode (log it once)."""
        first = self.failing_since is None
        self.last_error, self.failing_since = error, self.failing_since or now
        return first

    def recovered(self) -> bool:
        was_failing = self.failing_since is not None
        self.failing_since = None
        return was_failing


class MessageFactory:
    """Wire bytes for any claimed delivery; each digest's message is composed once."""

    def __init__(self, engine: Engine, settings: Settings, environment: Environment) -> None:
        self.engine, self.settings, self.environment = engine, settings, environment
        self._digests: dict[int, PreparedMessage] = {}
        # Confirmations name their recipient in the text: one message each (they are few).
        self._confirmations: dict[int, PreparedMessage] = {}
        mailto = settings.mail.unsubscribe_mailto
        self._mailto = (f"mailto:{mailto}?subject=unsubscribe",) if mailto else ()

    async def load(self, claimed: list[Claimed]) -> None:
        """Compose, in a thread, the messages of any digest not seen before."""
        missing = {c.digest_id for c in claimed if c.digest_id is not None} - self._digests.keys()
        for digest_id in sorted(missing):
            self._digests[digest_id] = await asyncio.to_thread(self._compose_blocking, digest_id)
        days = self.settings.web.confirm_expiry_days
        for delivery in claimed:
            if delivery.kind == "confirm" and delivery.id not in self._confirmations:
                self._confirmations[delivery.id] = await asyncio.to_thread(
                    compose_confirmation, self.environment, self.settings, delivery.email, days)

    def _compose_blocking(self, digest_id: int) -> PreparedMessage:
        with reading(self.engine) as connection:
            # The digest must exist (its deliveries point at it); NoResultFound otherwise.
            connection.execute(select(digests.c.id).where(digests.c.id == digest_id)).scalar_one()
            posts = outbox.digest_posts_of(connection, digest_id)
        return compose_digest(self.environment, self.settings, posts)

    def wire(self, claimed: Claimed, now: datetime) -> bytes:
        """Return one delivery's message as SMTP DATA (see MessageTemplate)."""
        base = self.settings.public_url
        if claimed.kind == "confirm":
            link = f"{base}/confirm/{claimed.payload}"
            return self._confirmations.pop(claimed.id).for_wire(
                claimed.email, claimed.message_id, now, link)
        assert claimed.digest_id is not None
        link = f"{base}/unsubscribe/{claimed.unsubscribe_token}"
        return self._digests[claimed.digest_id].for_wire(
            claimed.email, claimed.message_id, now, link, (link, *self._mailto))


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


class OutcomeRecorder:
    """Records outcomes in batches: one transaction per FLUSH_EVERY outcomes or FLUSH_SECONDS.

    It also bounds what a kill can make us send twice: a worker starts a message only while
    the outcomes not yet committed plus the messages in flight stay under FLUSH_EVERY. A
    database error is logged once per episode and the batch kept and tried again with
    backoff, so the sender resumes by itself when the database is writable again.
    """

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.pending: list[Outcome] = []
        self.flushing = 0
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.closing = False

    def add(self, outcome: Outcome) -> None:
        self.pending.append(outcome)
        if len(self.pending) >= FLUSH_EVERY:
            self.wake.set()

    async def wait_for_room(self, in_flight: int) -> None:
        """Wait until one more message may be started (see the class docstring)."""
        while len(self.pending) + self.flushing + in_flight >= FLUSH_EVERY:
            self.room.clear()
            self.wake.set()
            await self.room.wait()

    async def run(self) -> None:
        """Flush until closed, then flush what is left."""
        while not (self.closing and not self.pending):
            if not self.closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), FLUSH_SECONDS)
            self.wake.clear()
            if self.pending:
                await self.flush()

    async def flush(self) -> None:
        batch, self.pending = self.pending, []
        self.flushing += len(batch)
        sender = self.sender
        try:
            bounced = await sender.with_database(
                "record outcomes", outbox.record_outcomes, sender.engine, sender.worker,
                batch, sender.settings.mail.bounce_after)
        except SenderStopped:  # the leases hand these back to a later sender
            sender.unrecorded += len(batch)
            return
        finally:
            self.flushing -= len(batch)
            self.room.set()
        sender.stats.bounced += len(bounced)
        if bounced:
            log.warning("marked %d subscriber(s) bounced", len(bounced))
        if sender.on_finish:
            sender.on_finish(sender.stats)

    def close(self) -> None:
        self.closing = True
        self.wake.set()


class SenderStopped(Exception):
    """Stopping was asked for while the database kept failing."""


class Sender:
    """Moves due deliveries from pending to sent, failed or a later retry."""

    def __init__(
        self, engine: Engine, settings: Settings, transport: Transport,
        messages: MessageFactory, clock: Clock = utc_now,
        on_finish: Callable[[SendStats], None] | None = None,
        stopping: asyncio.Event | None = None, health: SenderHealth | None = None,
        give_up_after: float | None = None,
    ) -> None:
        self.engine, self.settings, self.transport, self.messages = (
            engine, settings, transport, messages)
        self.clock, self.on_finish = clock, on_finish
        smtp = settings.smtp
        self.policy = outbox.RetryPolicy(smtp.max_attempts, smtp.backoff_base, smtp.backoff_max)
        self.limiter = RateLimiter(smtp.rate_limit)
        self.lease = timedelta(seconds=smtp.lease_seconds)
        # A message is started only if it can finish before its lease runs out.
        self.send_time = timedelta(seconds=smtp.timeout * 2)
        self.worker = worker_name()
        self.sender_address = settings.mail.return_path or settings.mail.from_address
        self.stats = SendStats()
        self.health = health or SenderHealth()
        self.unrecorded = 0
        self.give_up_after = give_up_after
        self.gave_up: str | None = None  # the error that made the sender give up
        # Set from outside (SIGTERM): take no new delivery, finish the ones in flight.
        self.stopping = stopping or asyncio.Event()
        self.queue: asyncio.Queue[Claimed | None] = asyncio.Queue()
        self.taken = asyncio.Event()
        self.in_flight: dict[int, Claimed] = {}
        self.unsent: list[int] = []
        self.recorder = OutcomeRecorder(self)
        self.retry_deadline: datetime | None = None

    def claim_size(self) -> int:
        """How many to claim at once: enough to keep every worker busy, but all sendable
        well within the lease even under a rate limit."""
        smtp = self.settings.smtp
        size = min(CLAIM_MAX, max(64, smtp.concurrency * 32))
        if smtp.rate_limit > 0:
            size = min(size, max(1, int(smtp.rate_limit * smtp.lease_seconds / 4)))
        return size

    async def run(self, wait_for_retries: float = 0.0) -> SendStats:
        """Send every due delivery; wait in-process for retries due within the given seconds."""
        recorder = self.recorder
        self.retry_deadline = self.clock() + timedelta(seconds=wait_for_retries)
        recording = asyncio.create_task(recorder.run(), name="outcome-recorder")
        workers = [asyncio.create_task(self._worker(recorder), name=f"smtp-worker-{i}")
                   for i in range(self.settings.smtp.concurrency)]
        cancelled = False
        try:
            await self._claim_until_done(wait_for_retries)
            for _ in workers:
                self.queue.put_nowait(None)
            await asyncio.gather(*workers)
        except SenderStopped:
            pass
        except asyncio.CancelledError:
            # The grace period is over: the sends in flight are cut short, and recorded as
            # retries below (they may have reached the server: the documented duplicates).
            cancelled = True
        finally:
            for worker in workers:
                worker.cancel()
            results = await asyncio.gather(*workers, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error("a send worker failed: %r", result, exc_info=result)
            await self._hand_back(recorder)
            recorder.close()
            await recording
        if cancelled:
            raise asyncio.CancelledError
        return self.stats

    async def _claim_until_done(self, wait_for_retries: float) -> None:
        low_water = self.settings.smtp.concurrency * 2
        while not self.stopping.is_set():
            if self.queue.qsize() >= low_water:
                self.taken.clear()
                await self._until(self.taken.wait())
                continue
            claimed: list[Claimed] = await self.with_database(
                "claim deliveries", outbox.claim_batch, self.engine, self.worker, self.clock(),
                self.lease, self.claim_size())
            if claimed:
                try:
                    await self.messages.load(claimed)
                except Exception:
                    # A template that does not render, say: give the batch back, not leased.
                    await self.with_database(
                        "hand back a batch", outbox.release, self.engine, self.worker,
                        [c.id for c in claimed], self.clock())
                    raise
                for delivery in claimed:
                    self.queue.put_nowait(delivery)
                continue
            if self.queue.qsize() or self.in_flight:
                self.taken.clear()
                await self._until(self.taken.wait(), timeout=FLUSH_SECONDS)
                continue
            if self.recorder.pending:  # a retry may be among them: record, then look again
                await self.recorder.flush()
                continue
            if self.recorder.flushing:  # the recorder is at it: wait for it, then look again
                self.recorder.room.clear()
                await self._until(self.recorder.room.wait())
                continue
            if not await self._wait_for_retry(wait_for_retries):
                return

    async def _wait_for_retry(self, wait_for_retries: float) -> bool:
        """Sleep until the next retry if it is due before the run's retry budget is spent
        (`wait_for_retries` seconds from the start, in all); False: nothing to wait for."""
        if self.retry_deadline is None:
            self.retry_deadline = self.clock() + timedelta(seconds=wait_for_retries)
        upcoming = await self.with_database("look for retries", outbox.next_due, self.engine)
        if upcoming is None or upcoming > self.retry_deadline:
            return False
        await self._until(asyncio.sleep(max((upcoming - self.clock()).total_seconds(), 0.0)))
        return True

    async def _until(self, awaitable: Awaitable[object], timeout: float | None = None) -> None:
        """Await something, but return early when stopping is set."""
        waiting = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({waiting, stop}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            stop.cancel()

    async def with_database(self, what: str, function: Callable[..., T], *args: Any) -> T:
        """Run a database call in a thread; on error, log once, back off and try again.

        Raises SenderStopped if stopping is set while the database keeps failing, or once
        it has failed for longer than `give_up_after` seconds (the CLI's limit; the daemon
        has none and goes on trying, unhealthy, until the database comes back).
        """
        delay = 0.2
        while True:
            try:
                result = await asyncio.to_thread(function, *args)
            except SQLAlchemyError as err:
                cause = getattr(err, "orig", None) or err
                if self.health.failed(f"{what}: {cause}", self.clock()):
                    log.error("sender cannot %s: %s; retrying with backoff", what, cause)
                if self.stopping.is_set() or self._outage_too_long():
                    self.stopping.set()
                    self.gave_up = self.gave_up or self.health.last_error
                    raise SenderStopped(what) from err
                await self._until(asyncio.sleep(delay))
                delay = min(delay * 2, DB_RETRY_MAX)
                continue
            if self.health.recovered():
                log.info("sender's database is reachable again")
            return result

    def _outage_too_long(self) -> bool:
        since = self.health.failing_since
        return (self.give_up_after is not None and since is not None
                and (self.clock() - since).total_seconds() > self.give_up_after)

    async def _worker(self, recorder: OutcomeRecorder) -> None:
        connection: Connection | None = None
        try:
            while (claimed := await self.queue.get()) is not None:
                self.taken.set()
                await recorder.wait_for_room(len(self.in_flight))
                if self.stopping.is_set() or claimed.lease_until - self.send_time <= self.clock():
                    self.unsent.append(claimed.id)  # never handed to the server
                    continue
                self.in_flight[claimed.id] = claimed
                try:
                    connection, outcome = await self._deliver(claimed, connection)
                except asyncio.CancelledError:
                    if connection is not None:
                        connection.abort()  # no polite QUIT: the server may be the problem
                        connection = None
                    raise
                del self.in_flight[claimed.id]
                self._count(outcome, claimed)
                recorder.add(outcome)
        finally:
            if connection is not None:
                await connection.close()

    async def _deliver(
        self, claimed: Claimed, connection: Connection | None
    ) -> tuple[Connection | None, Outcome]:
        now = self.clock()
        try:
            message = self.messages.wire(claimed, now)
            await self.limiter.wait()
            connection = connection or await self.transport.connect()
            reply = await connection.send(self.sender_address, claimed.email, message)
        except TransientError as err:
            if err.reconnect and connection is not None:
                await connection.close()
                connection = None
            return connection, self._transient(claimed, err.reply)
        except PermanentError as err:
            bounced = claimed.subscriber_id if err.bounce else None
            return connection, Outcome(claimed.id, "failed", err.reply, self.clock(), bounced)
        except Exception as err:
            # A bug must not stop the other deliveries nor leave this one `sending`: it is
            # retried like a transient failure (and fails for good after max_attempts).
            log.exception("unexpected error sending %s to subscriber %s", claimed.message_id,
                          claimed.subscriber_id)
            if connection is not None:
                await connection.close()
            return None, self._transient(claimed, f"internal error: {err!r}")
        return connection, Outcome(claimed.id, "sent", reply, self.clock())

    def _transient(self, claimed: Claimed, reply: str) -> Outcome:
        if claimed.attempts >= self.policy.max_attempts:
            return Outcome(claimed.id, "failed", reply, self.clock())
        return Outcome(claimed.id, "retry", reply,
                       self.clock() + self.policy.delay(claimed.attempts))

    def _count(self, outcome: Outcome, claimed: Claimed) -> None:
        # Who, by subscriber id: addresses are personal data, kept out of the logs.
        what = (f"{claimed.kind} {claimed.digest_id or claimed.message_id} "
                f"to subscriber {claimed.subscriber_id}")
        if outcome.status == "sent":
            self.stats.sent += 1
            log.debug("sent %s: %s", what, outcome.reply)
        elif outcome.status == "failed":
            self.stats.failed += 1
            log.warning("%s failed after %d attempt(s): %s", what, claimed.attempts,
                        outcome.reply)
        else:
            self.stats.retried += 1
            log.info("will retry %s at %s: %s", what, f"{outcome.at:%H:%M:%S}", outcome.reply)

    async def _hand_back(self, recorder: OutcomeRecorder) -> None:
        """Give back what was claimed but not sent; record sends cut short as retries."""
        while not self.queue.empty():
            claimed = self.queue.get_nowait()
            if claimed is not None:
                self.unsent.append(claimed.id)
        for claimed in self.in_flight.values():
            # Cancelled mid-send (grace over): it may have reached the server.
            self.stats.interrupted += 1
            recorder.add(Outcome(claimed.id, "retry", "interrupted by shutdown", self.clock()))
        self.in_flight.clear()
        if self.unsent:
            with contextlib.suppress(SenderStopped):
                await self.with_database("hand back unsent deliveries", outbox.release,
                                         self.engine, self.worker, list(self.unsent),
                                         self.clock())
            self.unsent.clear()


"""The newsletter's use cases, composed from the pieces: what the CLI and the daemon call."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine

from postroom import outbox
from postroom.build import SiteBuilder
from postroom.config import Settings
from postroom.digest import DigestPost, compose_digest, new_posts, window_start
from postroom.errors import StorageUnavailable
from postroom.sender import MessageFactory, Sender, SenderHealth, SenderStopped, SendStats
from postroom.senderpool import MIN_DUE_PER_PROCESS, SenderProcesses
from postroom.store import migrate, open_engine, reading
from postroom.templates import template_environment
from postroom.transport import Transport, make_transport

log = logging.getLogger(__name__)


def open_database(settings: Settings) -> Engine:
    """Open the configured database and bring its schema up to date."""
    engine = open_engine(settings.database_url, settings.database.busy_timeout_ms)
    migrate(engine)
    return engine




@dataclass
class DigestPlan:
    """The next digest as it would be created now."""

    posts: list[DigestPost]
    start: datetime
    cutoff: datetime
    subject: str = ""
    digest_id: int | None = None
    recipients: int = 0
    problems: list[str] = field(default_factory=list)
    previous_cutoff: datetime | None = None
    # Set when another process created this window's digest between planning and creation.
    raced: bool = False


def plan_digest(
    settings: Settings, engine: Engine, builder: SiteBuilder, now: datetime
) -> DigestPlan:
    """Scan the posts and return what the next digest would hold if created now."""
    scan = builder.collection.scan()
    published = scan.published(now)
    host = settings.site.host
    outbox.record_seen(engine, [(p.entry_id(host), p.slug, p.published) for p in published], now)
    seen_at = outbox.first_seen(engine, now)
    since, zone = settings.digest.since, settings.site.zone
    floor = window_start(None, seen_at, since, zone)
    with reading(engine) as connection:
        previous = outbox.last_cutoff(connection)
        start = window_start(previous, seen_at, since, zone)
        sent = outbox.already_sent(connection)
        late = outbox.first_seen_after(connection, start)
    fresh = [p for p in published
             if start < p.published or (p.entry_id(host) in late and floor < p.published)]
    rendered = [builder.rendered(p) for p in fresh]
    slugs = {p.entry_id(host): p.slug for p in fresh}
    posts = new_posts(rendered, slugs, start, now, sent, late, floor)
    return DigestPlan(posts, start, now, problems=[str(p) for p in scan.problems],
                      previous_cutoff=previous)


def create_digest(settings: Settings, engine: Engine, builder: SiteBuilder,
                  now: datetime) -> DigestPlan:
    """Create the next digest and its deliveries, unless nothing is new."""
    plan = plan_digest(settings, engine, builder, now)
    if not plan.posts:
        log.info("no new posts since %s: no digest", f"{plan.start:%Y-%m-%d %H:%M %Z}")
        return plan
    environment = template_environment(settings.templates_dir)
    plan.subject = compose_digest(environment, settings, plan.posts).subject
    try:
        plan.digest_id, plan.recipients = outbox.create_digest(
            engine, plan.posts, plan.subject, plan.start, plan.cutoff, now,
            plan.previous_cutoff, settings.site.host)
    except outbox.DigestExists:
        plan.raced = True
        log.info("the digest of the window since %s was created by another process just now: "
                 "not creating a second one", f"{plan.start:%Y-%m-%d %H:%M %Z}")
        return plan
    log.info("digest %s created with %d post(s) for %d subscriber(s)",
             plan.digest_id, len(plan.posts), plan.recipients)
    return plan


def message_factory(settings: Settings, engine: Engine) -> MessageFactory:
    return MessageFactory(engine, settings, template_environment(settings.templates_dir))


def sender_processes(settings: Settings) -> int:
    return settings.smtp.processes or os.cpu_count() or 1


async def send_outbox(
    settings: Settings, engine: Engine, now: Callable[[], datetime],
    on_finish: Callable[[SendStats], None] | None = None, wait_for_retries: float | None = None,
    transport: Transport | None = None, stopping: asyncio.Event | None = None,
    health: SenderHealth | None = None, give_up_after: float | None = None,
) -> SendStats:
    """Send every due delivery: this process, and `smtp.processes - 1` helper processes.

    Senders claim disjoint batches under leases, so any number of them (here, in other
    processes, on other hosts) can share the outbox. Claims left by a killed sender on
    this host are handed back first.
    """
    stopping = stopping or asyncio.Event()
    wait = settings.smtp.retry_wait if wait_for_retries is None else wait_for_retries
    sender = Sender(engine, settings, transport or make_transport(settings),
                    message_factory(settings, engine), clock=now, on_finish=on_finish,
                    stopping=stopping, health=health, give_up_after=give_up_after)
    helpers = SenderProcesses(settings, wait)
    try:
        # Through the sender, so a database error here is retried and reported like any.
        recovered = await sender.with_database(
            "take back interrupted deliveries", outbox.release_dead_workers, engine,
            socket.gethostname(), process_alive, now())
        if recovered:
            log.warning("%d delivery(ies) were interrupted mid-send; sending them again",
                        recovered)
        if transport is None and sender_processes(settings) > 1:
            due = await sender.with_database("count due deliveries", outbox.count_due,
                                             engine, now())
            helpers.start(min(sender_processes(settings), due // MIN_DUE_PER_PROCESS + 1) - 1)
    except SenderStopped:
        pass  # stopping, or gave up: sender.run below returns at once and says why
    stop_helpers = asyncio.create_task(_relay_stop(stopping, helpers))
    try:
        stats = await sender.run(wait_for_retries=wait)
    finally:
        stop_helpers.cancel()
        stats_of_helpers = await asyncio.to_thread(helpers.join)
    stats.add(stats_of_helpers)
    if sender.gave_up:
        where = engine.url.render_as_string(hide_password=True)
        raise StorageUnavailable(
            f"gave up sending: the database stayed unavailable for over {give_up_after:g} s "
            f"({sender.gave_up}; {where}); sent {stats.sent}. "
            f"{sender.unrecorded} outcome(s) could not be recorded: those deliveries go out "
            "again, with the same Message-ID, with the next `postroom digest send` on this "
            f"host (or anywhere once their lease of {settings.smtp.lease_seconds:g} s ends); "
            "the others wait, pending, for it")
    return stats


async def _relay_stop(stopping: asyncio.Event, helpers: SenderProcesses) -> None:
    await stopping.wait()
    helpers.stop()


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

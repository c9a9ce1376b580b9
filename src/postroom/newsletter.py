"""The newsletter's use cases, composed from the pieces: what the CLI and the daemon call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine

from postroom import outbox
from postroom.build import SiteBuilder
from postroom.config import Settings
from postroom.digest import DigestPost, compose_digest, new_posts, window_start
from postroom.sender import DigestMessages, Sender, SendStats
from postroom.store import migrate, open_engine, reading, secret_key, sender_lock
from postroom.templates import template_environment
from postroom.tokens import Tokens
from postroom.transport import MaildirTransport, SmtpTransport, Transport

log = logging.getLogger(__name__)


def open_database(settings: Settings) -> Engine:
    """Open the configured database and bring its schema up to date."""
    engine = open_engine(settings.database_url, settings.database.busy_timeout_ms)
    migrate(engine)
    return engine


def make_transport(settings: Settings) -> Transport:
    if settings.mail.transport == "smtp":
        return SmtpTransport(settings.smtp)
    return MaildirTransport(settings.maildir)


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
        start = window_start(outbox.last_cutoff(connection), seen_at, since, zone)
        sent = outbox.already_sent(connection)
        late = outbox.first_seen_after(connection, start)
    fresh = [p for p in published
             if start < p.published or (p.entry_id(host) in late and floor < p.published)]
    rendered = [builder.rendered(p) for p in fresh]
    slugs = {p.entry_id(host): p.slug for p in fresh}
    posts = new_posts(rendered, slugs, start, now, sent, late, floor)
    return DigestPlan(posts, start, now, problems=[str(p) for p in scan.problems])


def create_digest(settings: Settings, engine: Engine, builder: SiteBuilder,
                  now: datetime) -> DigestPlan:
    """Create the next digest and its deliveries, unless nothing is new."""
    plan = plan_digest(settings, engine, builder, now)
    if not plan.posts:
        log.info("no new posts since %s: no digest", f"{plan.start:%Y-%m-%d %H:%M %Z}")
        return plan
    environment = template_environment(settings.templates_dir)
    plan.subject = compose_digest(environment, settings, plan.posts).subject
    plan.digest_id, plan.recipients = outbox.create_digest(
        engine, plan.posts, plan.subject, plan.start, plan.cutoff, now)
    log.info("digest %s created with %d post(s) for %d subscriber(s)",
             plan.digest_id, len(plan.posts), plan.recipients)
    return plan


def digest_messages(settings: Settings, engine: Engine) -> DigestMessages:
    environment = template_environment(settings.templates_dir)
    return DigestMessages(engine, settings, environment, Tokens(secret_key(engine)))


async def send_outbox(
    settings: Settings, engine: Engine, now: Callable[[], datetime],
    on_finish: Callable[[SendStats], None] | None = None, wait_for_retries: float | None = None,
    transport: Transport | None = None, stopping: asyncio.Event | None = None,
) -> SendStats:
    """Send every due delivery under the sender lock, first recovering interrupted ones."""
    with sender_lock(engine):
        recovered = outbox.recover_in_flight(engine, now())
        if recovered:
            log.warning("%d delivery(ies) were interrupted mid-send; sending them again",
                        recovered)
        sender = Sender(engine, settings, transport or make_transport(settings),
                        digest_messages(settings, engine), clock=now, on_finish=on_finish,
                        stopping=stopping)
        wait = settings.smtp.retry_wait if wait_for_retries is None else wait_for_retries
        return await sender.run(wait_for_retries=wait)

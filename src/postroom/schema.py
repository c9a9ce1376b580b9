"""The database schema (SQLAlchemy Core). Alembic migrations create and evolve it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every database (SQLite has no zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; pass an aware one")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

# Key/value facts about this installation: when the collection was first seen, the secret.
meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", Integer, primary_key=True),
    # What the person typed (the domain lower-cased): shown, and the address mail goes to.
    Column("email", String(320), nullable=False),
    # The identity: the whole address lower-cased (subscribers.address_key), so case
    # variants of one mailbox are one subscriber.
    Column("email_key", String(320), nullable=False, unique=True),
    Column("name", String(200)),
    # pending | active | unsubscribed | bounced
    Column("status", String(16), nullable=False),
    Column("source", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("status_changed_at", UTCDateTime, nullable=False),
    Column("confirmed_at", UTCDateTime),
    Column("unsubscribed_at", UTCDateTime),
    Column("bounced_at", UTCDateTime),
    Column("bounce_count", Integer, nullable=False, default=0),
    # Opaque identifiers for links: an unsubscribe link is "<public_id>.<unsubscribe_key>",
    # so it reveals neither the list's size nor its order, and costs no HMAC per message.
    Column("public_id", String(32), nullable=False, unique=True),
    Column("unsubscribe_key", String(64), nullable=False),
    Index("ix_subscribers_status", "status", "id"),
)

# Every post postroom has seen published, and when it first saw it.
seen_posts = Table(
    "seen_posts",
    metadata,
    Column("entry_id", String(500), primary_key=True),
    Column("slug", String(200), nullable=False),
    Column("published_at", UTCDateTime, nullable=False),
    Column("first_seen_at", UTCDateTime, nullable=False),
)

digests = Table(
    "digests",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    # Posts published in (window_start, cutoff] belong to this digest.
    Column("window_start", UTCDateTime, nullable=False),
    Column("cutoff", UTCDateTime, nullable=False),
    Column("subject", Text, nullable=False),
    Column("recipients", Integer, nullable=False),
    # The window's start, unique: a second digest of the same window cannot be written,
    # whoever races to create it. NULL only on duplicates made before this rule existed.
    Column("window_key", String(64), unique=True),
)

# The posts of a digest, frozen as they were when it was created.
digest_posts = Table(
    "digest_posts",
    metadata,
    Column("digest_id", Integer, ForeignKey("digests.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("entry_id", String(500), nullable=False),
    Column("slug", String(200), nullable=False),
    Column("title", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("summary", Text, nullable=False),
    Column("published_at", UTCDateTime, nullable=False),
    Index("ix_digest_posts_entry", "entry_id"),
    Index("ix_digest_posts_slug", "slug"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    # digest | confirm (transactional mail goes through the same outbox as digests)
    Column("kind", String(16), nullable=False, server_default="digest"),
    Column("digest_id", Integer, ForeignKey("digests.id", ondelete="CASCADE")),
    Column("subscriber_id", Integer, ForeignKey("subscribers.id"), nullable=False),
    Column("email", String(320), nullable=False),
    # pending | sending | sent | failed
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("claimed_by", String(64)),
    Column("claimed_at", UTCDateTime),
    # A claim is a lease: once it expires, any sender may claim the delivery again.
    Column("lease_until", UTCDateTime),
    Column("sent_at", UTCDateTime),
    # Fixed when the delivery is written: the same on every attempt.
    Column("message_id", String(255)),
    # What the recipient's link needs, copied at creation so sending reads nothing else:
    # the unsubscribe token, and for a confirmation its signed token.
    Column("unsubscribe_token", String(100)),
    Column("payload", Text),
    Column("last_reply", Text),
    UniqueConstraint("digest_id", "subscriber_id", name="uq_deliveries_digest_subscriber"),
    Index("ix_deliveries_due", "status", "next_attempt_at", "id"),
    Index("ix_deliveries_lease", "status", "lease_until"),
)

# Recent hits on the public endpoints' limits: requests per client and per mailbox, and
# confirmation mails per subscriber and in all. Kept here, not in memory, so a restart or a
# reload resets none of them; rows older than their bucket's window are pruned as hits come.
# `key` is a keyed hash: no address or IP is stored.
limit_hits = Table(
    "limit_hits",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("bucket", String(16), nullable=False),
    Column("key", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_limit_hits_key", "bucket", "key", "at"),
    Index("ix_limit_hits_age", "bucket", "at"),
)

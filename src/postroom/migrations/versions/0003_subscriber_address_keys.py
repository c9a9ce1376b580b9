"""subscriber identity ignores case: email_key, unique; case duplicates merged

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Of two rows of one mailbox, the one whose status says "send nothing" wins: a reader who
# unsubscribed under one spelling must not get mail under another.
RESTRICTIVENESS = {"unsubscribed": 3, "bounced": 2, "active": 1, "pending": 0}
# What SQLite calls the unnamed UNIQUE (email) of revision 0001 once batch mode names it.
SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
MERGED = "not sent: merged into the subscriber with the same address in another case"


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.add_column(sa.Column("email_key", sa.String(320)))
    _fill_keys()
    for group in _case_duplicates():
        _merge(group)
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("subscribers", naming_convention=SQLITE_NAMES) as batch_op:
        batch_op.alter_column("email_key", existing_type=sa.String(320), nullable=False)
        batch_op.create_unique_constraint("uq_subscribers_email_key", ["email_key"])
        # The key is the identity now; a second unique index on email would only slow writes.
        old_name = "uq_subscribers_email" if sqlite else "subscribers_email_key"
        batch_op.drop_constraint(old_name, type_="unique")


def _fill_keys() -> None:
    """Set every row's key: the address lower-cased, as subscribers.address_key does."""
    bind = op.get_bind()
    bind.execute(sa.text("UPDATE subscribers SET email_key = lower(email)"))
    # SQL's lower() may leave non-ASCII letters as they are (SQLite does); Python's is the
    # rule, so the few such rows are keyed here.
    non_ascii = "email GLOB '*[^ -~]*'" if bind.dialect.name == "sqlite" else "email ~ '[^ -~]'"
    rows = bind.execute(sa.text(f"SELECT id, email FROM subscribers WHERE {non_ascii}")).all()
    if rows:
        bind.execute(sa.text("UPDATE subscribers SET email_key = :k WHERE id = :i"),
                     [{"i": i, "k": email.lower()} for i, email in rows])


def _case_duplicates() -> list[list[Any]]:
    """Return each group of rows that share a key, most restrictive status first."""
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT id, email_key, status, created_at, bounce_count FROM subscribers "
        "WHERE email_key IN (SELECT email_key FROM subscribers GROUP BY email_key "
        "HAVING count(*) > 1)"
    )).all()
    groups: dict[str, list[Any]] = {}
    for row in rows:
        groups.setdefault(row.email_key, []).append(row)
    return [sorted(group, key=_keep_first) for group in groups.values()]


def _keep_first(row: Any) -> tuple[int, Any, int]:
    return (-RESTRICTIVENESS.get(row.status, 0), row.created_at, row.id)


def _merge(group: Sequence[Any]) -> None:
    """Merge a group's rows into its first: its status, the earliest created_at, and every
    delivery (of two deliveries of one digest, the sent one is kept)."""
    bind = op.get_bind()
    kept, others = group[0], group[1:]
    # A confirmation link names the merged row, so it could only fail; and nothing is sent
    # to a mailbox whose kept status is unsubscribed or bounced.
    stopped = RESTRICTIVENESS.get(kept.status, 0) >= RESTRICTIVENESS["bounced"]
    unsent = "status IN ('pending', 'sending')" + ("" if stopped else " AND kind = 'confirm'")
    for other in others:
        bind.execute(sa.text(
            f"UPDATE deliveries SET status = 'failed', last_reply = :r "
            f"WHERE subscriber_id = :i AND {unsent}"
        ), {"r": MERGED, "i": other.id})
        _move_deliveries(other.id, kept.id)
        bind.execute(sa.text("DELETE FROM subscribers WHERE id = :i"), {"i": other.id})
    bind.execute(
        sa.text("UPDATE subscribers SET created_at = :c, bounce_count = :b WHERE id = :i"),
        {"i": kept.id, "c": min(row.created_at for row in group),
         "b": max(row.bounce_count for row in group)},
    )


def _move_deliveries(from_id: int, to_id: int) -> None:
    """Repoint a subscriber's deliveries to another; where both have one of the same digest
    (UNIQUE(digest_id, subscriber_id)), keep a sent one, else the other subscriber's."""
    bind = op.get_bind()
    both = bind.execute(sa.text(
        "SELECT mine.id AS mine, mine.status AS my_status, theirs.id AS theirs, "
        "theirs.status AS their_status FROM deliveries mine JOIN deliveries theirs "
        "ON theirs.digest_id = mine.digest_id AND theirs.subscriber_id = :to "
        "WHERE mine.subscriber_id = :from"
    ), {"from": from_id, "to": to_id}).all()
    for pair in both:
        moved = pair.my_status == "sent" and pair.their_status != "sent"
        dropped = pair.theirs if moved else pair.mine
        bind.execute(sa.text("DELETE FROM deliveries WHERE id = :i"), {"i": dropped})
    bind.execute(sa.text("UPDATE deliveries SET subscriber_id = :to WHERE subscriber_id = :from"),
                 {"from": from_id, "to": to_id})


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.drop_constraint("uq_subscribers_email_key", type_="unique")
        batch_op.drop_column("email_key")
        batch_op.create_unique_constraint(
            "uq_subscribers_email" if sqlite else "subscribers_email_key", ["email"])

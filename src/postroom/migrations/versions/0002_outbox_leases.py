"""outbox leases, transactional mail, one digest per window, opaque subscriber links

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.add_column(sa.Column("public_id", sa.String(32)))
        batch_op.add_column(sa.Column("unsubscribe_key", sa.String(64)))
    _backfill_subscriber_keys()
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.alter_column("public_id", existing_type=sa.String(32), nullable=False)
        batch_op.alter_column("unsubscribe_key", existing_type=sa.String(64), nullable=False)
        batch_op.create_unique_constraint("uq_subscribers_public_id", ["public_id"])

    with op.batch_alter_table("digests") as batch_op:
        batch_op.add_column(sa.Column("window_key", sa.String(64)))
    _backfill_window_keys()
    with op.batch_alter_table("digests") as batch_op:
        batch_op.create_unique_constraint("uq_digests_window_key", ["window_key"])

    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(16), nullable=False, server_default="digest"))
        batch_op.alter_column("digest_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("lease_until", sa.DateTime()))
        batch_op.add_column(sa.Column("unsubscribe_token", sa.String(100)))
        batch_op.add_column(sa.Column("payload", sa.Text()))
        batch_op.create_index("ix_deliveries_lease", ["status", "lease_until"], unique=False)
    # Deliveries still to send get their recipient's new link.
    op.execute(
        "UPDATE deliveries SET unsubscribe_token = (SELECT s.public_id || '.' || "
        "s.unsubscribe_key FROM subscribers s WHERE s.id = deliveries.subscriber_id) "
        "WHERE status IN ('pending', 'sending')"
    )


def _backfill_subscriber_keys() -> None:
    bind = op.get_bind()
    ids = [row[0] for row in bind.execute(sa.text("SELECT id FROM subscribers"))]
    if ids:
        bind.execute(
            sa.text("UPDATE subscribers SET public_id = :p, unsubscribe_key = :k WHERE id = :i"),
            [{"i": i, "p": secrets.token_urlsafe(12), "k": secrets.token_urlsafe(24)}
             for i in ids],
        )


def _backfill_window_keys() -> None:
    # Older versions could race and write two digests of one window: the first keeps the key.
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, window_start FROM digests ORDER BY id")).all()
    seen: set[str] = set()
    for digest_id, start in rows:
        key = str(start)
        if key not in seen:
            seen.add(key)
            bind.execute(sa.text("UPDATE digests SET window_key = :k WHERE id = :i"),
                         {"k": key, "i": digest_id})
        else:  # its readers have the first digest of the window: send them no second one
            bind.execute(
                sa.text("UPDATE deliveries SET status = 'failed', last_reply = :r "
                        "WHERE digest_id = :i AND status IN ('pending', 'sending')"),
                {"i": digest_id, "r": "not sent: a second digest of an earlier digest's window"},
            )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_index("ix_deliveries_lease")
        batch_op.drop_column("payload")
        batch_op.drop_column("unsubscribe_token")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("kind")
    with op.batch_alter_table("digests") as batch_op:
        batch_op.drop_constraint("uq_digests_window_key", type_="unique")
        batch_op.drop_column("window_key")
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.drop_constraint("uq_subscribers_public_id", type_="unique")
        batch_op.drop_column("unsubscribe_key")
        batch_op.drop_column("public_id")

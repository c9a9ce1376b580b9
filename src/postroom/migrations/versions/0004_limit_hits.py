"""limit hits: the public endpoints' rate limits and confirmation caps, kept across restarts

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "limit_hits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.String(16), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_limit_hits_key", "limit_hits", ["bucket", "key", "at"], unique=False)
    op.create_index("ix_limit_hits_age", "limit_hits", ["bucket", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_limit_hits_age", table_name="limit_hits")
    op.drop_index("ix_limit_hits_key", table_name="limit_hits")
    op.drop_table("limit_hits")

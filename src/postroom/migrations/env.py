"""Alembic environment: postroom always hands it an open connection (see store.migrate)."""

from __future__ import annotations

from alembic import context

from postroom.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite alters tables by copying them; batch mode does that
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

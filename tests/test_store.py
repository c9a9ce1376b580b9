"""The database: migrations, SQLite tuning, the secret key and the sender lock, on real databases.

The PostgreSQL tests run against the server on 127.0.0.1:5432 in a database of their own,
created and dropped here; they are skipped only when no server answers there.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import StatementError

from postroom import outbox, subscribers
from postroom.digest import DigestPost
from postroom.errors import StoreError
from postroom.schema import deliveries, digests, meta, metadata
from postroom.store import (
    MIGRATIONS,
    SECRET_ENV,
    get_meta,
    migrate,
    open_engine,
    secret_key,
    sender_lock,
    set_meta,
)

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
TABLES = {"meta", "subscribers", "seen_posts", "digests", "digest_posts", "deliveries"}
HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "postroom.db"


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{db_path}")
    migrate(engine)
    yield engine
    engine.dispose()


def alembic_version(engine: Engine) -> str:
    with engine.connect() as connection:
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()


def schema_differences(engine: Engine) -> list[object]:
    """Return what Alembic's autogenerate sees between the database and schema.py."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


# ---- migrations ------------------------------------------------------------------------------


def test_migrations_build_the_schema_on_a_fresh_sqlite_file(db_path: Path) -> None:
    assert not db_path.exists()
    engine = open_engine(f"sqlite:///{db_path}")  # creates var/ too
    migrate(engine)
    assert db_path.is_file()
    assert set(inspect(engine).get_table_names()) >= TABLES
    assert alembic_version(engine) == HEAD
    # The migrations and schema.py describe the same tables, columns and indexes.
    assert schema_differences(engine) == []
    engine.dispose()


def test_migrating_again_is_harmless(engine: Engine) -> None:
    with engine.begin() as connection:
        set_meta(connection, "kept", "yes")
    migrate(engine)
    migrate(engine)
    assert alembic_version(engine) == HEAD
    with engine.connect() as connection:
        assert get_meta(connection, "kept") == "yes"
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_a_broken_database_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "not-a-database.db"
    path.write_bytes(b"this is not SQLite" * 100)
    engine = open_engine(f"sqlite:///{path}")
    with pytest.raises(StoreError, match=r"not-a-database\.db"):
        migrate(engine)
    engine.dispose()


# ---- SQLite tuning -------------------------------------------------------------------------


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "postroom.db"
    engine = open_engine(f"sqlite:///{path}", busy_timeout_ms=2500)
    migrate(engine)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
    # WAL is a property of the file: any other program opening it sees it too.
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_times_are_stored_as_utc_and_read_back_aware(engine: Engine) -> None:
    berlin_morning = datetime(2025, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    with engine.begin() as connection:
        row, _ = subscribers.add(connection, "a@example.org", berlin_morning)
    assert row.created_at == berlin_morning
    assert row.created_at.tzinfo == UTC and row.created_at.hour == 9
    with engine.begin() as connection, pytest.raises(StatementError, match="naive datetime"):
        subscribers.add(connection, "b@example.org", datetime(2025, 3, 1, 9, 0))


def test_deleting_a_digest_deletes_its_deliveries(engine: Engine) -> None:
    with engine.begin() as connection:
        subscribers.add(connection, "a@example.org", T0)
    post = DigestPost("tag:x,2025-03-01:/posts/a", "a", "A", "https://x/a", "", T0)
    digest_id, _ = outbox.create_digest(engine, [post], "A", T0, T0, T0)
    with engine.begin() as connection:
        connection.execute(digests.delete().where(digests.c.id == digest_id))
        assert connection.execute(select(deliveries)).all() == []


# ---- the secret key ------------------------------------------------------------------------


def test_secret_key_comes_from_the_environment_when_set(engine: Engine) -> None:
    assert secret_key(engine, {SECRET_ENV: "from-the-environment"}) == "from-the-environment"
    with engine.connect() as connection:
        assert get_meta(connection, "secret_key") is None


def test_secret_key_is_generated_once_and_kept(engine: Engine, db_path: Path) -> None:
    first = secret_key(engine, {})
    assert len(first) >= 32
    assert secret_key(engine, {}) == first
    assert secret_key(engine, {SECRET_ENV: ""}) == first  # empty counts as unset
    # Kept in the database: another process (a new engine) gets the same key.
    other = open_engine(f"sqlite:///{db_path}")
    assert secret_key(other, {}) == first
    other.dispose()
    with engine.connect() as connection:
        assert connection.execute(select(meta.c.value).where(meta.c.key == "secret_key")
                                  ).scalar() == first


def test_each_database_has_its_own_secret_key(tmp_path: Path) -> None:
    keys = []
    for name in ("one.db", "two.db"):
        engine = open_engine(f"sqlite:///{tmp_path / name}")
        migrate(engine)
        keys.append(secret_key(engine, {}))
        engine.dispose()
    assert keys[0] != keys[1]


# ---- the sender lock -----------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from postroom.store import open_engine, sender_lock
    engine = open_engine(sys.argv[1])
    with sender_lock(engine):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def start_holder(url: str) -> subprocess.Popen[str]:
    """Start a process that takes the sender lock and keeps it; return once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    line = holder.stdout.readline()
    if line != "locked\n":
        holder.kill()
        pytest.fail(f"the lock holder did not start: {line!r} {holder.communicate()[1]}")
    return holder


def kill_hard(process: subprocess.Popen[str]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def take_lock_within(engine: Engine, seconds: float) -> None:
    """Take and release the sender lock, retrying for a while (a server may notice late)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with sender_lock(engine):
                return
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_the_sender_lock_refuses_a_second_holder(engine: Engine, db_path: Path) -> None:
    # Two engines on one file, as two processes would have; flock also treats two opens of
    # the lock file in one process as two holders.
    other = open_engine(f"sqlite:///{db_path}")
    with sender_lock(engine):
        with (
            pytest.raises(StoreError, match="another postroom process is sending"),
            sender_lock(other),
        ):
            pytest.fail("two holders of the sender lock")
        with pytest.raises(StoreError), sender_lock(engine):
            pytest.fail("the same engine took the lock twice")
    with sender_lock(other):
        pass
    other.dispose()


def test_the_sender_lock_is_released_when_the_body_raises(engine: Engine) -> None:
    with pytest.raises(RuntimeError), sender_lock(engine):
        raise RuntimeError("the send failed")
    with sender_lock(engine):
        pass


def test_the_sender_lock_holds_across_processes_and_dies_with_its_holder(
    engine: Engine, db_path: Path
) -> None:
    holder = start_holder(f"sqlite:///{db_path}")
    try:
        with (
            pytest.raises(StoreError, match=r"postroom\.db\.lock: another postroom process"),
            sender_lock(engine),
        ):
            pytest.fail("took the lock another process holds")
    finally:
        kill_hard(holder)
    # The kernel drops the flock with the process: no stale lock after a SIGKILL.
    with sender_lock(engine):
        pass


# ---- PostgreSQL ----------------------------------------------------------------------------

PG_HOST, PG_PORT = "127.0.0.1", 5432


def _pg_admin() -> tuple[str, Any]:
    """Return (user, autocommit connection to the `postgres` database), or skip."""
    psycopg = pytest.importorskip("psycopg")
    errors = []
    for user in ("postgres", "root"):
        try:
            connection = psycopg.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", autocommit=True,
                connect_timeout=3,
            )
        except psycopg.OperationalError as err:
            errors.append(f"{user}: {err}".strip())
            continue
        return user, connection
    pytest.skip(f"no PostgreSQL server answers on {PG_HOST}:{PG_PORT} ({'; '.join(errors)})")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL to a fresh, uniquely named PostgreSQL database, dropped afterwards."""
    user, admin = _pg_admin()
    name = f"postroom_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = open_engine(pg_url)
    yield engine
    engine.dispose()


def test_postgresql_migrations(pg_engine: Engine) -> None:
    migrate(pg_engine)
    migrate(pg_engine)
    assert set(inspect(pg_engine).get_table_names()) >= TABLES
    assert alembic_version(pg_engine) == HEAD
    assert schema_differences(pg_engine) == []


def test_postgresql_digest_with_deliveries(pg_engine: Engine) -> None:
    migrate(pg_engine)
    with pg_engine.begin() as connection:
        for number, status in enumerate(["active", "active", "pending", "unsubscribed", "active"]):
            subscribers.add(connection, f"user{number}@example.org", T0, status=status)
    posts = [
        DigestPost(f"tag:blog.example.org,2025-03-0{n}:/posts/p{n}", f"p{n}", f"Post {n}",
                   f"https://blog.example.org/posts/p{n}/", f"Summary {n}",
                   T0 + timedelta(days=n))
        for n in (1, 2)
    ]
    later = T0 + timedelta(days=3)

    digest_id, recipients = outbox.create_digest(pg_engine, posts, "Blog: 2 new posts", T0,
                                                 later, later)

    assert recipients == 3
    with pg_engine.connect() as connection:
        rows = connection.execute(
            select(deliveries.c.email, deliveries.c.status, deliveries.c.attempts,
                   deliveries.c.next_attempt_at)
            .where(deliveries.c.digest_id == digest_id).order_by(deliveries.c.id)
        ).all()
        assert outbox.digest_posts_of(connection, digest_id) == posts
        assert outbox.last_cutoff(connection) == later
        assert outbox.already_sent(connection) == {p.entry_id for p in posts} | {"p1", "p2"}
    assert [tuple(r) for r in rows] == [
        (f"user{n}@example.org", "pending", 0, later) for n in (0, 1, 4)
    ]
    first = outbox.due(pg_engine, later, 0, 10)[0]
    assert outbox.claim(pg_engine, first.id, "w1", "<m1@x>", later)
    assert not outbox.claim(pg_engine, first.id, "w2", "<m2@x>", later)
    assert outbox.recover_in_flight(pg_engine, later) == 1
    [summary] = outbox.status(pg_engine)
    assert (summary["id"], summary["pending"], summary["sent"]) == (digest_id, 3, 0)


def test_postgresql_sender_lock_refuses_a_second_holder(pg_engine: Engine, pg_url: str) -> None:
    migrate(pg_engine)
    other = open_engine(pg_url)
    with (
        sender_lock(pg_engine),
        pytest.raises(StoreError, match="another postroom process is sending"),
        sender_lock(other),
    ):
        pytest.fail("two holders of the advisory lock")
    with sender_lock(other):
        pass
    other.dispose()


def test_postgresql_sender_lock_dies_with_its_holder(pg_engine: Engine, pg_url: str) -> None:
    migrate(pg_engine)
    holder = start_holder(pg_url)
    try:
        with pytest.raises(StoreError), sender_lock(pg_engine):
            pytest.fail("took the advisory lock another process holds")
    finally:
        kill_hard(holder)
    # The server ends the dead client's session, and its advisory lock with it.
    take_lock_within(pg_engine, seconds=10)

"""The database: migrations, SQLite tuning, the secret key and the daemon lock, on real databases.

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
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from postroom import outbox, subscribers
from postroom.digest import DigestPost
from postroom.errors import StoreError
from postroom.schema import deliveries, digests, meta, metadata
from postroom.schema import subscribers as subscribers_table
from postroom.store import (
    MIGRATIONS,
    SECRET_ENV,
    daemon_lock,
    get_meta,
    migrate,
    open_engine,
    secret_key,
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


def at(text_time: str) -> str:
    """A naive UTC time as SQLAlchemy stores a DateTime (what revision 0001 wrote)."""
    return f"2025-{text_time}:00.000000"


def fill_a_0001_database(engine: Engine) -> None:
    """Migrate to revision 0001 and write what an older postroom would have written there:
    subscribers without link keys, two digests of one window (an old race could do that),
    and deliveries pending, sent, failed and left `sending` by a sender on another host.
    Rows get ids 1, 2, 3… in the order written (no explicit ids: PostgreSQL's sequences
    would not know of them)."""
    migrate(engine, "0001")
    assert alembic_version(engine) == "0001"
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO subscribers (email, status, source, created_at, status_changed_at, "
            "bounce_count) VALUES (:email, :status, 'cli', :at, :at, 0)"
        ), [
            {"email": "a@example.org", "status": "active", "at": at("02-01 09:00")},
            {"email": "b@example.org", "status": "active", "at": at("02-01 09:00")},
            {"email": "c@example.org", "status": "unsubscribed", "at": at("02-01 09:00")},
        ])
        connection.execute(text(
            "INSERT INTO digests (created_at, window_start, cutoff, subject, recipients) "
            "VALUES (:cutoff, :start, :cutoff, :subject, 2)"
        ), [
            {"start": at("02-22 09:00"), "cutoff": at("03-01 09:00"), "subject": "one"},
            {"start": at("02-22 09:00"), "cutoff": at("03-01 09:01"), "subject": "one, again"},
            {"start": at("03-01 09:01"), "cutoff": at("03-08 09:00"), "subject": "two"},
        ])
        connection.execute(text(
            "INSERT INTO deliveries (digest_id, subscriber_id, email, status, attempts, "
            "next_attempt_at, claimed_by) VALUES (:digest, :subscriber, :email, :status, "
            ":attempts, :at, :claimed_by)"
        ), [
            dict(digest=digest, subscriber=subscriber, email=email, status=status,
                 attempts=attempts, at=at("03-01 09:00"), claimed_by=claimed_by)
            for digest, subscriber, email, status, attempts, claimed_by in [
                (1, 1, "a@example.org", "sent", 1, None),  # delivery 1
                (1, 2, "b@example.org", "pending", 0, None),
                (2, 1, "a@example.org", "pending", 0, None),
                (2, 2, "b@example.org", "sending", 1, "old-host:4242"),
                (3, 1, "a@example.org", "failed", 5, None),
                (3, 2, "b@example.org", "pending", 2, None),  # delivery 6
                (3, 3, "c@example.org", "sending", 1, "old-host:4242"),  # delivery 7
            ]
        ])


def check_the_upgrade_from_0001(engine: Engine) -> None:
    """Upgrade a database filled by fill_a_0001_database to head and check what it holds."""
    migrate(engine)
    assert alembic_version(engine) == HEAD
    assert schema_differences(engine) == []
    with engine.connect() as connection:
        people = {row.id: row for row in connection.execute(text("SELECT * FROM subscribers"))}
        rows = {row.id: row for row in connection.execute(text("SELECT * FROM deliveries"))}
        keys = dict(connection.execute(text("SELECT id, window_key FROM digests")).all())
    # Every subscriber gets link keys of its own.
    assert len({p.public_id for p in people.values()}) == 3
    assert len({p.unsubscribe_key for p in people.values()}) == 3
    assert all(p.public_id and len(p.unsubscribe_key) >= 24 for p in people.values())
    # Deliveries still to send carry their recipient's new link; finished ones need none.
    for row in rows.values():
        link = people[row.subscriber_id]
        expected = (f"{link.public_id}.{link.unsubscribe_key}"
                    if row.status in ("pending", "sending") else None)
        assert row.unsubscribe_token == expected, row
        assert (row.kind, row.lease_until) == ("digest", None)
    # Of the two digests of one window, the first keeps the window's key; the second's
    # readers had the first, so what it still had to send is not sent.
    assert keys[1] is not None and keys[3] is not None and keys[1] != keys[3]
    assert keys[2] is None
    assert [(rows[i].status, rows[i].last_reply) for i in (3, 4)] == [
        ("failed", "not sent: a second digest of an earlier digest's window")] * 2
    # The new code works on the upgraded data: the next digest, and claims.
    with engine.connect() as connection:
        previous = outbox.last_cutoff(connection)
    assert previous == datetime(2025, 3, 8, 9, 0, tzinfo=UTC)
    post = DigestPost("tag:x,2025-03-10:/posts/new", "new", "New", "https://x/new", "",
                      datetime(2025, 3, 10, 9, 0, tzinfo=UTC))
    now = datetime(2025, 3, 15, 9, 0, tzinfo=UTC)
    digest_id, recipients = outbox.create_digest(engine, [post], "three", previous, now, now,
                                                 previous, "x")
    assert recipients == 2
    claimed = outbox.claim_batch(engine, "host:1:new", now, timedelta(minutes=5), 100)
    # Delivery 7, left `sending` by an old sender, has no lease; its sender's host is not
    # ours, so only a lease could hand it back: one without a lease counts as expired.
    assert sorted(c.id for c in claimed if c.digest_id != digest_id) == [2, 6, 7]


def test_a_0001_sqlite_database_upgrades_with_link_keys_tokens_and_window_keys(
    db_path: Path,
) -> None:
    engine = open_engine(f"sqlite:///{db_path}")
    fill_a_0001_database(engine)
    check_the_upgrade_from_0001(engine)
    engine.dispose()


# Case duplicates an older postroom let in: (id, email, status, created), ids 1, 2, 3...
CASE_DUPLICATES = [
    (1, "bob@example.org", "active", "02-01 09:00"),
    (2, "Bob@example.org", "unsubscribed", "02-05 09:00"),  # the most restrictive: kept
    (3, "BOB@example.org", "pending", "01-15 09:00"),        # the earliest: its created_at
    (4, "carol@example.org", "active", "02-01 09:00"),
    (5, "Carol@example.org", "active", "01-20 09:00"),       # equal status, older: kept
    (6, "dave@example.org", "active", "02-01 09:00"),        # no duplicate
]
# (id, kind, digest, subscriber, status): what happens to each is in the test.
CASE_DUPLICATE_DELIVERIES = [
    (1, "digest", 1, 1, "sent"),      # bob's sent copy of digest 1: kept, moved to 2
    (2, "digest", 1, 2, "failed"),    # Bob's copy of digest 1: dropped for the sent one
    (3, "digest", 2, 1, "pending"),   # moved to the unsubscribed 2: not sent
    (4, "digest", 1, 4, "pending"),   # carol's unsent copy of digest 1: dropped, 5 had it sent
    (5, "digest", 1, 5, "sent"),
    (6, "confirm", None, 3, "pending"),  # names the merged row 3: not sent
    (7, "digest", 2, 4, "pending"),   # moved to Carol (5), still to send
    (8, "digest", 2, 6, "pending"),
]


def fill_a_0002_database_with_case_duplicates(engine: Engine) -> None:
    """Migrate to revision 0002 and write subscribers that differ only in case, with
    deliveries, as an older postroom could."""
    migrate(engine, "0002")
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO subscribers (email, status, source, created_at, status_changed_at, "
            "bounce_count, public_id, unsubscribe_key) VALUES (:email, :status, 'cli', :at, "
            ":at, :bounces, :public_id, 'key')"
        ), [dict(email=email, status=status, at=at(created), bounces=number % 2,
                 public_id=f"p{number}")
            for number, email, status, created in CASE_DUPLICATES])
        connection.execute(text(
            "INSERT INTO digests (created_at, window_start, cutoff, subject, recipients, "
            "window_key) VALUES (:at, :at, :at, :subject, 3, :key)"
        ), [{"at": at(day), "subject": subject, "key": day}
            for day, subject in [("03-01 09:00", "one"), ("03-08 09:00", "two")]])
        connection.execute(text(
            "INSERT INTO deliveries (kind, digest_id, subscriber_id, email, status, attempts, "
            "next_attempt_at) VALUES (:kind, :digest, :subscriber, 'x@example.org', :status, "
            "0, :at)"
        ), [dict(kind=kind, digest=digest, subscriber=subscriber, status=status,
                 at=at("03-08 09:00"))
            for _id, kind, digest, subscriber, status in CASE_DUPLICATE_DELIVERIES])


def check_the_case_duplicates_merged(engine: Engine) -> None:
    """Upgrade a database filled by fill_a_0002_database_with_case_duplicates and check it."""
    migrate(engine)
    assert schema_differences(engine) == []
    table = subscribers_table
    with engine.connect() as connection:
        people = {r.id: r for r in connection.execute(select(table).order_by(table.c.id))}
        sent = {r.id: r for r in connection.execute(select(deliveries))}
    assert sorted(people) == [2, 5, 6]
    bob, carol = people[2], people[5]
    assert (bob.email, bob.email_key, bob.status) == (
        "Bob@example.org", "bob@example.org", "unsubscribed")
    assert bob.created_at == datetime(2025, 1, 15, 9, 0, tzinfo=UTC)
    assert (carol.email, carol.status, carol.created_at) == (
        "Carol@example.org", "active", datetime(2025, 1, 20, 9, 0, tzinfo=UTC))
    assert bob.bounce_count == 1 and people[6].email_key == "dave@example.org"
    merged = "not sent: merged into the subscriber with the same address in another case"
    assert {i: (r.subscriber_id, r.status, r.last_reply) for i, r in sent.items()} == {
        1: (2, "sent", None),
        3: (2, "failed", merged),
        5: (5, "sent", None),
        6: (2, "failed", merged),
        7: (5, "pending", None),
        8: (6, "pending", None),
    }
    # The new code finds each person in any case, and the database refuses a new variant.
    with engine.begin() as connection:
        assert subscribers.find(connection, "BOB@EXAMPLE.ORG").id == 2
        row, created = subscribers.add(connection, "CAROL@example.org", T0)
        assert (row.id, created) == (5, False)
    values = subscribers.new_subscriber("DAVE@example.org", T0, status="active", source="cli")
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(table.insert().values(**values))


def test_case_variants_of_one_address_are_merged_by_the_sqlite_migration(db_path: Path) -> None:
    engine = open_engine(f"sqlite:///{db_path}")
    fill_a_0002_database_with_case_duplicates(engine)
    check_the_case_duplicates_merged(engine)
    engine.dispose()


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
    digest_id, _ = outbox.create_digest(engine, [post], "A", T0, T0, T0, None, "x")
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


# ---- the daemon lock -----------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from postroom.store import open_engine, daemon_lock
    engine = open_engine(sys.argv[1])
    with daemon_lock(engine):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def start_holder(url: str) -> subprocess.Popen[str]:
    """Start a process that takes the daemon lock and keeps it; return once it holds it."""
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
    """Take and release the daemon lock, retrying for a while (a server may notice late)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with daemon_lock(engine):
                return
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_the_daemon_lock_refuses_a_second_holder(engine: Engine, db_path: Path) -> None:
    # Two engines on one file, as two processes would have; flock also treats two opens of
    # the lock file in one process as two holders.
    other = open_engine(f"sqlite:///{db_path}")
    with daemon_lock(engine):
        with (
            pytest.raises(StoreError, match="another postroom daemon"),
            daemon_lock(other),
        ):
            pytest.fail("two holders of the daemon lock")
        with pytest.raises(StoreError), daemon_lock(engine):
            pytest.fail("the same engine took the lock twice")
    with daemon_lock(other):
        pass
    other.dispose()


def test_the_daemon_lock_is_released_when_the_body_raises(engine: Engine) -> None:
    with pytest.raises(RuntimeError), daemon_lock(engine):
        raise RuntimeError("the send failed")
    with daemon_lock(engine):
        pass


def test_the_daemon_lock_holds_across_processes_and_dies_with_its_holder(
    engine: Engine, db_path: Path
) -> None:
    holder = start_holder(f"sqlite:///{db_path}")
    try:
        with (
            pytest.raises(StoreError, match=r"postroom\.db\.daemon\.lock: another postroom daemon"),
            daemon_lock(engine),
        ):
            pytest.fail("took the lock another process holds")
    finally:
        kill_hard(holder)
    # The kernel drops the flock with the process: no stale lock after a SIGKILL.
    with daemon_lock(engine):
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


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """Yield the URL of a fresh, uniquely named PostgreSQL database, dropped afterwards
    (test_outbox.py uses it too); skip when no server answers."""
    user, admin = _pg_admin()
    name = f"postroom_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL to a fresh, uniquely named PostgreSQL database, dropped afterwards."""
    with fresh_pg_database() as url:
        yield url


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


def test_a_0001_postgresql_database_upgrades_with_link_keys_tokens_and_window_keys(
    pg_engine: Engine,
) -> None:
    fill_a_0001_database(pg_engine)
    check_the_upgrade_from_0001(pg_engine)


def test_case_variants_of_one_address_are_merged_by_the_postgresql_migration(
    pg_engine: Engine,
) -> None:
    fill_a_0002_database_with_case_duplicates(pg_engine)
    check_the_case_duplicates_merged(pg_engine)


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
                                                 later, later, None, "blog.example.org")

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
    assert outbox.next_due(pg_engine) == later
    # Two senders get disjoint batches; a claim expires into the other sender's hands.
    lease = timedelta(minutes=5)
    [first] = outbox.claim_batch(pg_engine, "host:1:a", later, lease, 1)
    second = outbox.claim_batch(pg_engine, "host:2:b", later, lease, 10)
    assert first.email == "user0@example.org" and first.attempts == 1
    assert first.unsubscribe_token and first.message_id
    assert [c.email for c in second] == ["user1@example.org", "user4@example.org"]
    assert outbox.claim_batch(pg_engine, "host:2:b", later, lease, 10) == []
    outbox.record_outcomes(pg_engine, "host:2:b", [
        outbox.Outcome(second[0].id, "sent", "250 ok", later),
        outbox.Outcome(second[1].id, "failed", "550 no", later, bounced_subscriber=None),
    ], bounce_after=3)
    assert outbox.next_due(pg_engine) == later + lease
    expired = later + lease + timedelta(seconds=1)
    [again] = outbox.claim_batch(pg_engine, "host:2:b", expired, lease, 10)
    assert (again.id, again.attempts) == (first.id, 2)
    [summary] = outbox.status(pg_engine)
    assert (summary["id"], summary["pending"], summary["sending"], summary["sent"],
            summary["failed"]) == (digest_id, 0, 1, 1, 1)
    outbox.release(pg_engine, "host:2:b", [again.id], expired)
    assert outbox.count_due(pg_engine, expired) == 1
    assert outbox.retry_failed(pg_engine, expired, digest_id) == 1
    assert outbox.count_due(pg_engine, expired) == 2


def test_postgresql_daemon_lock_refuses_a_second_holder(pg_engine: Engine, pg_url: str) -> None:
    migrate(pg_engine)
    other = open_engine(pg_url)
    with (
        daemon_lock(pg_engine),
        pytest.raises(StoreError, match="another postroom daemon"),
        daemon_lock(other),
    ):
        pytest.fail("two holders of the advisory lock")
    with daemon_lock(other):
        pass
    other.dispose()


def test_postgresql_daemon_lock_dies_with_its_holder(pg_engine: Engine, pg_url: str) -> None:
    migrate(pg_engine)
    holder = start_holder(pg_url)
    try:
        with pytest.raises(StoreError), daemon_lock(pg_engine):
            pytest.fail("took the advisory lock another process holds")
    finally:
        kill_hard(holder)
    # The server ends the dead client's session, and its advisory lock with it.
    take_lock_within(pg_engine, seconds=10)


def test_the_schema_head_constant_is_alembics_head() -> None:
    # store.migrate skips Alembic when the database is at SCHEMA_HEAD: it must be the head.
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    from postroom.store import SCHEMA_HEAD

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [SCHEMA_HEAD]


def test_a_database_at_the_head_is_not_migrated_again(engine: Engine) -> None:
    from postroom.store import SCHEMA_HEAD, schema_revision

    migrate(engine)
    assert schema_revision(engine) == SCHEMA_HEAD
    # A second process holding the write lock does not stop a command from starting.
    locker = sqlite3.connect(str(engine.url.database), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        migrate(engine)
    finally:
        locker.rollback()
        locker.close()

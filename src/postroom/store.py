"""The database: engine setup, migrations, installation facts, and the daemon lock."""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, select, text
from sqlalchemy.exc import DatabaseError, SQLAlchemyError

from postroom.errors import StorageUnavailable, StoreError
from postroom.schema import meta

MIGRATIONS = Path(__file__).parent / "migrations"
SECRET_ENV = "POSTROOM_SECRET_KEY"
READ_ONLY = "postroom_read_only"
# The newest migration (tests/test_store.py checks it is Alembic's head). Knowing it here
# lets every command see "nothing to migrate" with one query, without importing Alembic.
SCHEMA_HEAD = "0004"


def open_engine(url: str, busy_timeout_ms: int = 10_000) -> Engine:
    """Given a database URL, return an engine; SQLite gets WAL, a busy timeout and FKs."""
    url = _sqlite_location(url)
    try:
        engine = create_engine(url, future=True)
    except (SQLAlchemyError, ImportError) as err:
        raise StoreError(f"database url {url!r}: {err}") from err
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine, busy_timeout_ms)
    return engine


def _sqlite_location(url: str) -> str:
    """Make a SQLite file's folder; open a file on read-only storage read-only.

    A WAL database needs its -shm file, which read-only storage cannot hold: without a -wal
    file (closed cleanly, so no writer is mid-transaction) it is opened as immutable, so
    the read commands still work and a write fails with "attempt to write a readonly
    database". A `sqlite:///file:…?uri=true` URL is the user's own and is left as it is.
    """
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == "sqlite:///:memory:" or url.startswith(
            prefix + "file:"):
        return url
    path = Path(url.removeprefix(prefix))
    if path.is_file() and not os.access(path.parent, os.W_OK):
        immutable = "" if Path(f"{path}-wal").exists() else "&immutable=1"
        return f"{prefix}file:{path}?mode=ro{immutable}&uri=true"
    path.parent.mkdir(parents=True, exist_ok=True)
    return url


def _tune_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (pysqlite's
        # implicit BEGIN would otherwise defer locking and break BEGIN IMMEDIATE below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers (the web pages) never wait for the sender. FULL: a commit survives a
        # power loss (NORMAL may roll the last ones back); batched writes keep it cheap.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A writer takes the write lock at BEGIN, so two writers queue on busy_timeout
        # instead of failing with "database is locked" half-way through a transaction.
        # Readers (see `reading`) take none: in WAL mode they never wait for a writer.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """Yield a connection for reads only: on SQLite it never waits for a writer."""
    with engine.connect() as connection:
        yield connection.execution_options(**{READ_ONLY: True})


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to `revision` with Alembic (idempotent)."""
    sqlite = engine.dialect.name == "sqlite"
    if revision == "head" and schema_revision(engine) == SCHEMA_HEAD:
        return  # a read, so a read-only or busy database still serves the read commands
    # Imported only when there is something to migrate: it costs a tenth of a second.
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.connect() as connection:
            # SQLite alters a table by copying it: with foreign keys on, dropping the old
            # copy fails while other tables point at it. The pragma only takes effect
            # outside a transaction; the check below keeps the promise it suspends.
            driver: Any = connection.connection.driver_connection
            if sqlite:
                driver.execute("PRAGMA foreign_keys=OFF")
            try:
                with connection.begin():
                    config.attributes["connection"] = connection
                    command.upgrade(config, revision)
                    if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
                        raise StoreError(f"{engine.url!r}: a migration broke a foreign key")
            finally:
                if sqlite:
                    driver.execute("PRAGMA foreign_keys=ON")
    except DatabaseError as err:  # OperationalError, or a file that is not SQLite at all
        raise StorageUnavailable(
            f"cannot migrate the database {engine.url!r}: {err.orig}") from err


def schema_revision(engine: Engine) -> str | None:
    """Return the database's schema revision (None: a new or unreadable database)."""
    try:
        with reading(engine) as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DatabaseError:
        return None  # no table yet, or not a database: the migration says which


def get_meta(connection: Connection, key: str) -> str | None:
    return connection.execute(select(meta.c.value).where(meta.c.key == key)).scalar()


def set_meta(connection: Connection, key: str, value: str) -> None:
    if get_meta(connection, key) is None:
        connection.execute(meta.insert().values(key=key, value=value))
    else:
        connection.execute(meta.update().where(meta.c.key == key).values(value=value))


def secret_key(engine: Engine, env: dict[str, str] | None = None) -> str:
    """Return the key that signs links: $POSTROOM_SECRET_KEY, else one generated and kept.

    The generated key lives in the database, so signed links survive restarts on a site
    that has not set one; setting the variable later invalidates older links.
    """
    env = dict(os.environ) if env is None else env
    if env.get(SECRET_ENV):
        return env[SECRET_ENV]
    with engine.begin() as connection:
        key = get_meta(connection, "secret_key")
        if key is None:
            key = secrets.token_urlsafe(32)
            set_meta(connection, "secret_key", key)
    return key


LOCK_KEYS = {"daemon": 7350013}


@contextmanager
def daemon_lock(engine: Engine, busy: str = "another postroom daemon is running on this "
                "database") -> Iterator[None]:
    """Hold the database's daemon lock: one daemon (or cron pass) schedules its work."""
    with process_lock(engine, "daemon", busy):
        yield


@contextmanager
def process_lock(engine: Engine, name: str, busy: str) -> Iterator[None]:
    """Hold a named lock on the database for this process, or raise StoreError(busy).

    SQLite: an flock on a file beside the database, released by the kernel even on SIGKILL.
    PostgreSQL: a session advisory lock, released when the connection drops.
    """
    url = engine.url
    if url.get_backend_name() == "sqlite":
        path = Path(f"{url.database}.{name}.lock")
        with path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"{path}: {busy}") from None
            yield
        return
    key = LOCK_KEYS[name]
    # Autocommit: the lock is held by the session, not by a transaction left open for the
    # whole send (which would block vacuum and meet idle-in-transaction timeouts).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if not connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({key})").scalar():
            raise StoreError(busy)
        try:
            yield
        finally:
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")

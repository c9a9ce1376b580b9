"""Subscribers: address validation, status changes, and CSV import/export."""

from __future__ import annotations

import csv
import itertools
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TextIO

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Connection, Engine, Insert, Row, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from postroom.csvimport import CsvRow, CsvTable, header_key
from postroom.errors import Problem, SubscriberError
from postroom.schema import subscribers
from postroom.store import reading

STATUSES = ("pending", "active", "unsubscribed", "bounced")
EXPORT_COLUMNS = (
    "email", "name", "status", "source", "created_at", "confirmed_at", "unsubscribed_at",
)
BATCH = 1000
IMPORT_BATCH = 3000  # rows per transaction of an import
# The timestamp each status is stamped with when a subscriber moves to it.
STATUS_STAMPS = {
    "active": "confirmed_at", "unsubscribed": "unsubscribed_at", "bounced": "bounced_at",
}
# A spreadsheet runs a cell starting with one of these as a formula; a leading ' marks text.
FORMULA_STARTS = ("=", "+", "-", "@")
# What an import's header may call a column (as csvimport.header_key reads it): postroom's
# export, and what other lists export (Mailchimp: "Email Address", "First Name", ...).
HEADER_COLUMNS = {
    "email": "email", "emailaddress": "email", "mail": "email",
    "name": "name", "firstname": "first_name", "lastname": "last_name",
    "status": "status", "source": "source", "createdat": "created_at",
    "confirmedat": "confirmed_at", "unsubscribedat": "unsubscribed_at",
    # Mailchimp exports those who left, or bounced, with the time: they stay so here.
    "unsubtime": "unsub_time", "cleantime": "clean_time",
}
ADDRESS_HEADERS = tuple(key for key, column in HEADER_COLUMNS.items() if column == "email")
NO_EMAIL_COLUMN = (
    "no email column in the header (one named email, e-mail, email address or mail), "
    "and its first cell is not an address either"
)


def normalize_address(address: str) -> str:
    """Given an address as typed, return its normalized form, or raise SubscriberError.

    No DNS lookups: they are slow, and a run must not depend on the network.
    """
    candidate = address.strip()
    if "\n" in candidate or "\r" in candidate:
        raise SubscriberError(f"{address!r} is not an email address")
    try:
        result = validate_email(candidate, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as err:
        raise SubscriberError(f"{candidate!r} is not a valid email address: {err}") from None
    # The domain is case-insensitive; the local part is kept as typed (RFC 5321 §2.4), and
    # identity ignores its case (address_key). The ASCII form: an internationalized domain
    # as IDNA ("xn--"), which SMTP without SMTPUTF8 and the To header can carry; its
    # Unicode form would stop the sender.
    return str(result.ascii_email)


def address_key(email: str) -> str:
    """Given a normalized address, return its identity: the whole address lower-cased.

    Real providers treat the local part case-insensitively, so `Bob@` and `bob@` are one
    mailbox and one subscriber. Plus tags and dots are kept: some providers ignore them,
    others deliver them to different people, so stripping them would merge strangers.
    """
    return email.lower()


def link_keys() -> dict[str, str]:
    """Return a new subscriber's opaque link identifiers (see schema.subscribers)."""
    return {"public_id": secrets.token_urlsafe(12), "unsubscribe_key": secrets.token_urlsafe(24)}


def find(connection: Connection, email: str) -> Row[Any] | None:
    """Given an address in any case, return its subscriber row, or None."""
    query = select(subscribers).where(subscribers.c.email_key == address_key(email))
    return connection.execute(query).first()


def add(
    connection: Connection, email: str, now: datetime, *, status: str = "active",
    source: str = "cli", name: str | None = None, stamps: Mapping[str, datetime] | None = None,
) -> tuple[Row[Any], bool]:
    """Add an address with a status; return its row and whether it was created.

    An existing address, in any case, is left as it is: re-adding never re-activates an
    unsubscribed or bounced address (that takes a new confirmation). `stamps` carries
    known times (created_at, confirmed_at, unsubscribed_at) over from an export; the rest
    are `now`.
    """
    existing = find(connection, email)
    if existing is not None:
        return existing, False
    values = new_subscriber(email, now, status=status, source=source, name=name, stamps=stamps)
    connection.execute(subscribers.insert().values(**values))
    row = find(connection, email)
    assert row is not None
    return row, True


def new_subscriber(
    email: str, now: datetime, *, status: str, source: str, name: str | None = None,
    stamps: Mapping[str, datetime] | None = None,
) -> dict[str, Any]:
    """Return a new subscriber's row, every column given (so rows insert in batches).

    The status's timestamp is `now` unless `stamps` carries it; each row gets its own
    link keys, since they are per-subscriber secrets.
    """
    values: dict[str, Any] = dict(
        email=email, email_key=address_key(email), name=name, status=status, source=source,
        created_at=now, bounce_count=0, confirmed_at=None, unsubscribed_at=None, bounced_at=None,
        **link_keys(),
    )
    if status in STATUS_STAMPS:
        values[STATUS_STAMPS[status]] = now
    values.update(stamps or {})
    values["status_changed_at"] = values.get(STATUS_STAMPS.get(status, "created_at"), now)
    return values


def set_status(connection: Connection, subscriber_id: int, status: str, now: datetime) -> None:
    """Move a subscriber to a status, stamping the matching timestamp."""
    if status not in STATUSES:
        raise SubscriberError(f"unknown status {status!r} (expected one of {', '.join(STATUSES)})")
    values: dict[str, Any] = {"status": status, "status_changed_at": now}
    if status in STATUS_STAMPS:
        values[STATUS_STAMPS[status]] = now
    if status == "active":
        values["bounce_count"] = 0
    connection.execute(
        subscribers.update().where(subscribers.c.id == subscriber_id).values(**values)
    )


def record_bounce(connection: Connection, subscriber_id: int, now: datetime, limit: int) -> bool:
    """Count a hard bounce; mark the subscriber bounced at `limit`. Return if now bounced."""
    connection.execute(
        subscribers.update()
        .where(subscribers.c.id == subscriber_id)
        .values(bounce_count=subscribers.c.bounce_count + 1)
    )
    count = connection.execute(
        select(subscribers.c.bounce_count).where(subscribers.c.id == subscriber_id)
    ).scalar_one()
    if count >= limit:
        set_status(connection, subscriber_id, "bounced", now)
        return True
    return False


def counts(connection: Connection) -> dict[str, int]:
    """Return how many subscribers are in each status."""
    query = select(subscribers.c.status, func.count()).group_by(subscribers.c.status)
    found = {status: number for status, number in connection.execute(query)}
    return {status: found.get(status, 0) for status in STATUSES}


def iter_subscribers(engine: Engine, status: str | None = None) -> Iterator[Row[Any]]:
    """Yield subscribers in id order, a batch per query, so memory stays flat on big lists."""
    last_id = 0
    while True:
        query = select(subscribers).where(subscribers.c.id > last_id)
        if status is not None:
            query = query.where(subscribers.c.status == status)
        with reading(engine) as connection:
            rows = connection.execute(query.order_by(subscribers.c.id).limit(BATCH)).all()
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id


@dataclass
class ImportReport:
    added: int = 0
    unchanged: int = 0
    kept_status: int = 0  # unsubscribed/bounced addresses that were not re-activated
    problems: list[Problem] = field(default_factory=list)


class _Row(NamedTuple):
    """A good row of an import: its line, its address as typed, and its other facts."""

    line: int
    email: str
    facts: dict[str, Any]


@dataclass
class _Batch:
    """One batch of an import's rows: the first row of each address, and the bad ones.

    Keyed by address_key, so `BOB@` repeats `bob@`; the email kept is the one typed."""

    firsts: dict[str, _Row] = field(default_factory=dict)
    repeats: list[tuple[int, str, str]] = field(default_factory=list)  # line, email, key
    problems: list[Problem] = field(default_factory=list)


def import_csv(
    engine: Engine, label: str, stream: BinaryIO, now: datetime, *, status: str = "active",
    source: str = "import", batch_size: int = IMPORT_BATCH,
    on_progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import subscribers from a CSV file (opened in binary): a header naming the email
    column (see HEADER_COLUMNS), or no header at all when the first cell is an address.

    Every bad row is reported by line number (`label`:line); the good ones are imported.
    Re-importing the same file changes nothing. The columns of an export (status, source,
    created_at, confirmed_at, unsubscribed_at) are honoured when present, so an export
    imports back as it was: above all, an unsubscribed address stays unsubscribed.

    The file is read as a stream and written `batch_size` rows per transaction, so memory
    stays flat and an interrupted import leaves whole batches (run it again to finish).
    `on_progress` is called after each batch with the bytes read so far.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    report = ImportReport()
    path = Path(label)
    table = CsvTable(stream, ADDRESS_HEADERS)
    first = table.first
    if first is None or first.problem:
        report.problems.append(Problem(path, 1, first.problem if first and first.problem
                                       else NO_EMAIL_COLUMN))
        return report
    columns = _header_columns(first.cells)
    rows: Iterator[CsvRow] = table.rows()
    if "email" not in columns:
        if not _is_address(first.cells):
            report.problems.append(Problem(path, 1, NO_EMAIL_COLUMN))
            return report
        # No header: a list of addresses, one a line (other cells are not known to be names).
        columns, rows = {"email": 0}, itertools.chain([first], rows)
    width = len(first.cells)
    with SeenAddresses() as seen:
        while chunk := list(itertools.islice(rows, batch_size)):
            batch = _check_rows(path, chunk, columns, width)
            _report_repeats(path, batch, seen)
            with engine.begin() as connection:
                _insert_new(connection, batch, now, status, source, report)
            report.problems.extend(sorted(batch.problems))
            if on_progress is not None:
                on_progress(table.bytes_read())
    return report


def _header_columns(header: list[str]) -> dict[str, int]:
    """Given a header row, return the columns it names and their indexes (the first wins)."""
    columns: dict[str, int] = {}
    for index, cell in enumerate(header):
        column = HEADER_COLUMNS.get(header_key(cell))
        if column is not None:
            columns.setdefault(column, index)
    return columns


def _is_address(cells: list[str]) -> bool:
    try:
        normalize_address(_unneutralise(cells[0]) if cells else "")
    except SubscriberError:
        return False
    return True


def _check_rows(
    path: Path, chunk: list[CsvRow], columns: Mapping[str, int], width: int,
) -> _Batch:
    """Validate a chunk's rows: each good address once, with its line; the rest as problems."""
    batch = _Batch()
    for line, raw_row, unreadable in chunk:
        if unreadable is not None:
            batch.problems.append(Problem(path, line, unreadable))
            continue
        if not any(cell.strip() for cell in raw_row):
            continue
        row = [_unneutralise(cell) for cell in raw_row]
        try:
            email = _email_cell(row, columns["email"], width)
            facts = _row_facts(row, columns)
        except SubscriberError as err:
            batch.problems.append(Problem(path, line, str(err)))
            continue
        key = address_key(email)
        if key in batch.firsts:
            batch.repeats.append((line, email, key))
        else:
            batch.firsts[key] = _Row(line, email, facts)
    return batch


def _report_repeats(path: Path, batch: _Batch, seen: SeenAddresses) -> None:
    """Drop from the batch the addresses an earlier batch had; report every repeat's line."""
    earlier = seen.record({key: row.line for key, row in batch.firsts.items()})
    for key in earlier:
        row = batch.firsts.pop(key)
        batch.repeats.append((row.line, row.email, key))
    for line, email, key in batch.repeats:
        first = earlier[key] if key in earlier else batch.firsts[key].line
        batch.problems.append(Problem(path, line, f"{email} repeats line {first}"))


def _insert_new(
    connection: Connection, batch: _Batch, now: datetime, status: str, source: str,
    report: ImportReport,
) -> None:
    """Insert the batch's addresses that are not subscribers yet; count the others."""
    if not batch.firsts:
        return
    query = select(subscribers.c.email_key, subscribers.c.status)
    known = subscribers.c.email_key.in_(batch.firsts)
    existing = dict(connection.execute(query.where(known)).all())
    new_rows = [
        new_subscriber(row.email, now, status=row.facts.get("status", status),
                       source=row.facts.get("source", source), name=row.facts.get("name"),
                       stamps={k: v for k, v in row.facts.items() if k.endswith("_at")})
        for key, row in batch.firsts.items() if key not in existing
    ]
    if new_rows:
        connection.execute(_insert_skipping_existing(connection), new_rows)
    report.added += len(new_rows)
    for existing_status in existing.values():
        if existing_status in ("unsubscribed", "bounced"):
            report.kept_status += 1
        else:
            report.unchanged += 1


def _insert_skipping_existing(connection: Connection) -> Insert:
    """Return an INSERT of subscribers that skips an address already there.

    The batch's existing addresses were left out already; this covers one that another
    process (a subscribe form) added since, which is then counted as added, not unchanged.
    """
    if connection.dialect.name == "postgresql":
        return postgresql_insert(subscribers).on_conflict_do_nothing(index_elements=["email_key"])
    if connection.dialect.name == "sqlite":
        return sqlite_insert(subscribers).on_conflict_do_nothing(index_elements=["email_key"])
    return subscribers.insert()


class SeenAddresses:
    """The addresses an import has met so far, each with the line it was first on.

    The addresses are address keys. Kept in a private temporary SQLite file, not a Python
    dict: a million addresses take over 100 MB as Python objects, and only SQLite's small
    page cache here.
    """

    IN_LIST = 500  # addresses per look-up, well below SQLite's limit on parameters

    def __init__(self) -> None:
        # "": a temporary on-disk database, deleted on close; no journal, nothing to recover.
        self._db = sqlite3.connect("", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE seen (email TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")

    def __enter__(self) -> SeenAddresses:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._db.close()

    def record(self, first_lines: Mapping[str, int]) -> dict[str, int]:
        """Given addresses and their lines, return those met before with their earlier line;
        remember the others."""
        emails = list(first_lines)
        earlier: dict[str, int] = {}
        for start in range(0, len(emails), self.IN_LIST):
            part = emails[start:start + self.IN_LIST]
            marks = ",".join("?" * len(part))
            query = f"SELECT email, line FROM seen WHERE email IN ({marks})"
            earlier.update(self._db.execute(query, part))
        self._db.executemany("INSERT INTO seen VALUES (?, ?)", [
            (email, line) for email, line in first_lines.items() if email not in earlier
        ])
        return earlier


def _email_cell(row: list[str], index: int, width: int) -> str:
    """Return the row's normalized address, or raise saying what is wrong with the cell."""
    if index >= len(row):
        raise SubscriberError(
            f"no email: the row has {len(row)} field(s), the first line {width} "
            f"(a missing delimiter?)"
        )
    if not row[index].strip():
        raise SubscriberError("the email is empty")
    return normalize_address(row[index])


def _row_facts(row: list[str], columns: Mapping[str, int]) -> dict[str, Any]:
    """Return the row's optional name, status, source and timestamps that are filled in."""
    cells: dict[str, str] = {}
    for column, index in columns.items():
        if index < len(row) and column != "email" and (text := row[index].strip()):
            cells[column] = text
    if not cells:
        return {}
    if "name" not in cells and ("first_name" in cells or "last_name" in cells):
        cells["name"] = " ".join(cells[c] for c in ("first_name", "last_name") if c in cells)
    facts: dict[str, Any] = {}
    for column in ("name", "status", "source"):
        value = cells.get(column)
        if value is None:
            continue
        if column == "status" and value not in STATUSES:
            raise SubscriberError(f"status {value!r} is not one of {', '.join(STATUSES)}")
        limit = getattr(subscribers.c[column].type, "length", None)
        if limit is not None and len(value) > limit:
            raise SubscriberError(f"{column} is longer than {limit} characters")
        facts[column] = value
    for column in ("created_at", "confirmed_at", "unsubscribed_at"):
        if column in cells:
            facts[column] = _parse_time(column, cells[column])
    for column, status, stamp in (("unsub_time", "unsubscribed", "unsubscribed_at"),
                                  ("clean_time", "bounced", "bounced_at")):
        if column in cells:
            facts.setdefault("status", status)
            facts.setdefault(stamp, _parse_time(column, cells[column]))
    return facts


def _parse_time(column: str, value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise SubscriberError(f"{column} {value!r} is not an ISO 8601 date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _unneutralise(cell: str) -> str:
    """Undo _cell's formula guard: drop the ' that export put before = + - @ or '."""
    if cell.startswith("'") and cell[1:2] in (*FORMULA_STARTS, "'"):
        return cell[1:]
    return cell


def export_csv(engine: Engine, out: TextIO, status: str | None = None) -> int:
    """Write subscribers as CSV with a header; return how many rows were written."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    written = 0
    for row in iter_subscribers(engine, status):
        writer.writerow([_cell(getattr(row, column)) for column in EXPORT_COLUMNS])
        written += 1
    return written


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    # A cell starting with = + - @ is a formula to a spreadsheet: neutralise it (and escape
    # a leading ' as well, so import_csv can undo exactly this).
    return "'" + text if text[:1] in (*FORMULA_STARTS, "'") else text

"""Subscribers: address validation, status changes, and CSV import/export."""

from __future__ import annotations

import codecs
import csv
import io
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Connection, Engine, Row, func, select

from postroom.errors import Problem, SubscriberError
from postroom.schema import subscribers
from postroom.store import reading

STATUSES = ("pending", "active", "unsubscribed", "bounced")
EXPORT_COLUMNS = (
    "email", "name", "status", "source", "created_at", "confirmed_at", "unsubscribed_at",
)
BATCH = 1000
# The timestamp each status is stamped with when a subscriber moves to it.
STATUS_STAMPS = {
    "active": "confirmed_at", "unsubscribed": "unsubscribed_at", "bounced": "bounced_at",
}
# A spreadsheet runs a cell starting with one of these as a formula; a leading ' marks text.
FORMULA_STARTS = ("=", "+", "-", "@")


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
    # The domain is case-insensitive; the local part is kept as given (RFC 5321 §2.4).
    # The ASCII form: an internationalized domain as IDNA ("xn--"), which SMTP without
    # SMTPUTF8 and the To header can carry; its Unicode form would stop the sender.
    return str(result.ascii_email)


def link_keys() -> dict[str, str]:
    """Return a new subscriber's opaque link identifiers (see schema.subscribers)."""
    return {"public_id": secrets.token_urlsafe(12), "unsubscribe_key": secrets.token_urlsafe(24)}


def find(connection: Connection, email: str) -> Row[Any] | None:
    query = select(subscribers).where(subscribers.c.email == email)
    return connection.execute(query).first()


def add(
    connection: Connection, email: str, now: datetime, *, status: str = "active",
    source: str = "cli", name: str | None = None, stamps: Mapping[str, datetime] | None = None,
) -> tuple[Row[Any], bool]:
    """Add an address with a status; return its row and whether it was created.

    An existing address is left as it is: re-adding never re-activates an unsubscribed
    or bounced address (that takes a new confirmation). `stamps` carries known times
    (created_at, confirmed_at, unsubscribed_at) over from an export; the rest are `now`.
    """
    existing = find(connection, email)
    if existing is not None:
        return existing, False
    values: dict[str, Any] = dict(
        email=email, name=name, status=status, source=source, created_at=now, bounce_count=0,
        **link_keys(),
    )
    if status in STATUS_STAMPS:
        values[STATUS_STAMPS[status]] = now
    values.update(stamps or {})
    values["status_changed_at"] = values.get(STATUS_STAMPS.get(status, "created_at"), now)
    connection.execute(subscribers.insert().values(**values))
    row = find(connection, email)
    assert row is not None
    return row, True


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


def decode_csv(raw: bytes) -> str:
    """Given a CSV file's bytes, return its text: UTF-8 (with or without BOM), UTF-16, cp1252.

    Spreadsheets export in all of these; cp1252 decodes any byte, so it goes last.
    """
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    data = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # Lists glued together from two exports mix encodings: decode line by line, so
        # the UTF-8 lines stay right and only the others are read as cp1252.
        return "".join(_decode_line(line) for line in data.splitlines(keepends=True))


def _decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("cp1252", errors="replace")


def import_csv(
    engine: Engine, label: str, text: str, now: datetime, *, status: str = "active",
    source: str = "import",
) -> ImportReport:
    """Import subscribers from CSV text with a header naming an `email` column.

    Every bad row is reported by line number; the good ones are imported. Re-importing
    the same file changes nothing. The columns of an export (status, source, created_at,
    confirmed_at, unsubscribed_at) are honoured when present, so an export imports back
    as it was: above all, an unsubscribed address stays unsubscribed.
    """
    report = ImportReport()
    path = Path(label)
    reader = _csv_reader(text)
    header = [h.strip().lower() for h in next(reader, [])]
    if "email" not in header:
        report.problems.append(Problem(path, 1, "header has no 'email' column"))
        return report
    columns = {name: header.index(name) for name in header}
    seen: dict[str, int] = {}
    with engine.begin() as connection:
        for raw_row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in raw_row):
                continue
            row = [_unneutralise(cell) for cell in raw_row]
            try:
                email = _email_cell(row, columns["email"], len(header))
                facts = _row_facts(row, columns)
            except SubscriberError as err:
                report.problems.append(Problem(path, line, str(err)))
                continue
            if email in seen:
                report.problems.append(Problem(path, line, f"{email} repeats line {seen[email]}"))
                continue
            seen[email] = line
            existing, created = add(
                connection, email, now, status=facts.pop("status", status),
                source=facts.pop("source", source), name=facts.pop("name", None), stamps=facts,
            )
            if created:
                report.added += 1
            elif existing.status in ("unsubscribed", "bounced"):
                report.kept_status += 1
            else:
                report.unchanged += 1
    return report


def _email_cell(row: list[str], index: int, width: int) -> str:
    """Return the row's normalized address, or raise saying what is wrong with the cell."""
    if index >= len(row):
        raise SubscriberError(
            f"no email: the row has {len(row)} field(s), the header {width} (a missing delimiter?)"
        )
    if not row[index].strip():
        raise SubscriberError("the email is empty")
    return normalize_address(row[index])


def _row_facts(row: list[str], columns: Mapping[str, int]) -> dict[str, Any]:
    """Return the row's optional name, status, source and timestamps that are filled in."""
    facts: dict[str, Any] = {}
    for column in ("name", "status", "source", "created_at", "confirmed_at", "unsubscribed_at"):
        index = columns.get(column)
        value = row[index].strip() if index is not None and index < len(row) else ""
        if not value:
            continue
        if column == "status" and value not in STATUSES:
            raise SubscriberError(f"status {value!r} is not one of {', '.join(STATUSES)}")
        limit = getattr(subscribers.c[column].type, "length", None)
        if limit is not None and len(value) > limit:
            raise SubscriberError(f"{column} is longer than {limit} characters")
        if column.endswith("_at"):
            facts[column] = _parse_time(column, value)
        else:
            facts[column] = value
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


def _csv_reader(text: str) -> Any:
    """Return a CSV reader whose delimiter is the one that puts `email` in a header cell.

    Decided by the header alone: guessing from the rows (csv.Sniffer) fails on exactly
    the files an import must cope with, those with short or malformed rows.
    """
    header = next(iter(text.splitlines()), "")
    for delimiter in (",", ";", "\t"):
        cells = next(csv.reader([header], delimiter=delimiter), [])
        if any(cell.strip().lower() == "email" for cell in cells):
            return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    return csv.reader(io.StringIO(text, newline=""))


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

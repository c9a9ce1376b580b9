"""Subscribers: address validation, status changes, and CSV import/export."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Connection, Engine, Row, func, select

from postroom.errors import Problem, SubscriberError
from postroom.schema import subscribers

STATUSES = ("pending", "active", "unsubscribed", "bounced")
EXPORT_COLUMNS = (
    "email", "name", "status", "source", "created_at", "confirmed_at", "unsubscribed_at",
)
BATCH = 1000


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
    return str(result.normalized)


def find(connection: Connection, email: str) -> Row[Any] | None:
    query = select(subscribers).where(subscribers.c.email == email)
    return connection.execute(query).first()


def add(
    connection: Connection, email: str, now: datetime, *, status: str = "active",
    source: str = "cli", name: str | None = None,
) -> tuple[Row[Any], bool]:
    """Add an address with a status; return its row and whether it was created.

    An existing address is left as it is: re-adding never re-activates an unsubscribed
    or bounced address (that takes a new confirmation).
    """
    existing = find(connection, email)
    if existing is not None:
        return existing, False
    values = dict(
        email=email, name=name, status=status, source=source, created_at=now,
        status_changed_at=now, bounce_count=0,
        confirmed_at=now if status == "active" else None,
    )
    connection.execute(subscribers.insert().values(**values))
    row = find(connection, email)
    assert row is not None
    return row, True


def set_status(connection: Connection, subscriber_id: int, status: str, now: datetime) -> None:
    """Move a subscriber to a status, stamping the matching timestamp."""
    if status not in STATUSES:
        raise SubscriberError(f"unknown status {status!r} (expected one of {', '.join(STATUSES)})")
    values: dict[str, Any] = {"status": status, "status_changed_at": now}
    stamp = {"active": "confirmed_at", "unsubscribed": "unsubscribed_at", "bounced": "bounced_at"}
    if status in stamp:
        values[stamp[status]] = now
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
        with engine.connect() as connection:
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
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def import_csv(
    engine: Engine, label: str, text: str, now: datetime, *, status: str = "active",
    source: str = "import",
) -> ImportReport:
    """Import subscribers from CSV text with a header naming an `email` column.

    Every bad row is reported by line number; the good ones are imported. Re-importing
    the same file changes nothing.
    """
    report = ImportReport()
    path = Path(label)
    reader = _csv_reader(text)
    header = [h.strip().lower() for h in next(reader, [])]
    if "email" not in header:
        report.problems.append(Problem(path, 1, "header has no 'email' column"))
        return report
    email_at, name_at = header.index("email"), header.index("name") if "name" in header else None
    seen: dict[str, int] = {}
    with engine.begin() as connection:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            cell = row[email_at] if email_at < len(row) else ""
            try:
                email = normalize_address(cell)
            except SubscriberError as err:
                report.problems.append(Problem(path, line, str(err)))
                continue
            if email in seen:
                report.problems.append(Problem(path, line, f"{email} repeats line {seen[email]}"))
                continue
            seen[email] = line
            name = _optional_cell(row, name_at)
            existing, created = add(
                connection, email, now, status=status, source=source, name=name
            )
            if created:
                report.added += 1
            elif existing.status in ("unsubscribed", "bounced"):
                report.kept_status += 1
            else:
                report.unchanged += 1
    return report


def _optional_cell(row: list[str], index: int | None) -> str | None:
    if index is None or index >= len(row):
        return None
    return row[index].strip() or None


def _csv_reader(text: str) -> Any:
    sample = text[:4096]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    return csv.reader(io.StringIO(text, newline=""), dialect)


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
    # A cell starting with = + - @ is a formula to a spreadsheet: neutralise it.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text

"""Reading a CSV file for import as a stream: its encoding, its delimiter, its rows by line.

Spreadsheets export UTF-8 (with or without a BOM), UTF-16 (with a BOM) and cp1252, and
separate cells with `,`, `;` or tabs; a list of a million addresses is read a line at a
time, so memory stays flat however long the file. A row that cannot be read (a field over
the csv module's size limit, a NUL byte) is returned with the reason, and reading goes on.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
from collections.abc import Collection, Iterator
from typing import Any, BinaryIO, NamedTuple, cast

DELIMITERS = (",", ";", "\t")


def decoded_lines(stream: BinaryIO) -> Iterator[str]:
    """Given a CSV file opened in binary, yield its lines as text, line ends kept.

    Lines end at \\n, \\r\\n or a lone \\r, as in a file opened with newline="" (what the
    csv module expects). UTF-16 is known by its BOM. Anything else is read line by line
    as UTF-8, a line that is not UTF-8 as cp1252: lists glued together from two exports
    mix encodings, so the UTF-8 lines stay right and only the others are read as cp1252
    (which decodes any byte, so it goes last).
    """
    if isinstance(stream, io.BufferedReader):
        yield from _decoded_lines(stream)
        return
    # A buffered reader can peek at the BOM without taking what UTF-16 must decode.
    buffered = io.BufferedReader(cast(io.RawIOBase, stream))
    try:
        yield from _decoded_lines(buffered)
    finally:
        buffered.detach()  # the caller's stream is the caller's to close


def _decoded_lines(buffered: io.BufferedReader[Any]) -> Iterator[str]:
    head = buffered.peek(3)[:3]
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = io.TextIOWrapper(buffered, encoding="utf-16", newline="")
        try:
            yield from text
        finally:
            text.detach()  # leaves `buffered` open, for the caller to close
        return
    if head.startswith(codecs.BOM_UTF8):
        buffered.read(len(codecs.BOM_UTF8))
    for line in buffered:
        # Binary lines end at \n only; an old Mac file ends its lines with a lone \r.
        for part in line.splitlines(keepends=True) if b"\r" in line else (line,):
            yield _decode_line(part)


def _decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("cp1252", errors="replace")


def header_key(cell: str) -> str:
    """Given a header cell, return it as a key: lower-case letters and digits only, so
    "E-Mail", "Email Address" and "email_address" read alike."""
    return "".join(ch for ch in cell.lower() if ch.isalnum())


def header_delimiter(first_line: str, names: Collection[str] = ("email",)) -> str:
    """Given the first line, return the delimiter that puts one of `names` (header keys) in
    a cell; failing that (no header), the first delimiter the line holds; else `,`.

    Decided by the first line alone: guessing from the rows (csv.Sniffer) fails on exactly
    the files an import must cope with, those with short or malformed rows.
    """
    for delimiter in DELIMITERS:
        try:
            cells = next(csv.reader([first_line], delimiter=delimiter), [])
        except csv.Error:  # a cell over the field limit, a NUL: the row reader reports it
            continue
        if any(header_key(cell) in names for cell in cells):
            return delimiter
    return next((d for d in DELIMITERS if d in first_line), ",")


class CsvRow(NamedTuple):
    """One row: its line (a quoted cell may span lines: the row's last line), its cells,
    and why it could not be read, if it could not (its cells are then empty)."""

    line: int
    cells: list[str]
    problem: str | None = None


class CsvTable:
    """A CSV file read as a stream: its first row (the header, or the first row of a list
    without one), then its other rows with their line numbers."""

    def __init__(self, stream: BinaryIO, header_names: Collection[str] = ("email",)) -> None:
        self._stream = stream
        lines = decoded_lines(stream)
        first = next(lines, "")
        self.delimiter = header_delimiter(first, header_names)
        watched = _WatchedLines(itertools.chain([first], lines))
        # A function, not a method: a generator holding `self` would make a cycle, and the
        # garbage collector may then close the stream before decoded_lines lets go of it.
        self._rows = _read_rows(watched, csv.reader(watched, delimiter=self.delimiter))
        self.first: CsvRow | None = next(self._rows, None)
        self.header: list[str] = self.first.cells if self.first else []

    def rows(self) -> Iterator[CsvRow]:
        """Yield each row after the first, the unreadable ones with their problem."""
        return self._rows

    def bytes_read(self) -> int:
        """Return how far into the file reading has got, in bytes (for progress)."""
        return self._stream.tell()


def _read_rows(lines: _WatchedLines, reader: Iterator[list[str]]) -> Iterator[CsvRow]:
    """Yield the reader's rows with their lines; a row it cannot read, with the reason."""
    while True:
        lines.new_row()
        start = lines.count + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            # The reader starts afresh at the next line; if the bad field is a quoted one,
            # its remaining lines are not rows of their own: skip to its end.
            lines.skip_open_quote()
            yield CsvRow(start, [], _unreadable(err, start, lines.count))
            continue
        if lines.nul:
            # The csv module reads NUL as text, which no address holds and PostgreSQL
            # refuses to store: the file is binary, or UTF-16 without its BOM.
            yield CsvRow(lines.count, [], "the row holds a NUL byte (is this a text file?)")
            continue
        yield CsvRow(lines.count, cells)


def _unreadable(err: csv.Error, start: int, end: int) -> str:
    lines = f" (lines {start}-{end} skipped)" if end > start else ""
    if "field larger than field limit" in str(err):
        return f"a field is longer than {csv.field_size_limit()} characters{lines}"
    return f"cannot be read as CSV: {err}{lines}"


class _WatchedLines:
    """The lines the csv reader reads, counted, and watched for what it cannot say itself:
    whether the row being read has an open quote (an odd number of `"` so far), and a NUL."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.count = 0
        self.open_quote = False
        self.nul = False

    def __iter__(self) -> _WatchedLines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.count += 1
        if '"' in line and line.count('"') % 2:
            self.open_quote = not self.open_quote
        if "\x00" in line:
            self.nul = True
        return line

    def new_row(self) -> None:
        self.open_quote = self.nul = False

    def skip_open_quote(self) -> None:
        """Skip lines until the current row's open quote closes (or the file ends)."""
        while self.open_quote and next(self, None) is not None:
            pass

"""Reading a CSV file for import as a stream: its encoding, its delimiter, its rows by line.

Spreadsheets export UTF-8 (with or without a BOM), UTF-16 (with a BOM) and cp1252, and
separate cells with `,`, `;` or tabs; a list of a million addresses is read a line at a
time, so memory stays flat however long the file.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

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


def header_delimiter(header: str) -> str:
    """Given a header line, return the delimiter that puts `email` in a cell (default `,`).

    Decided by the header alone: guessing from the rows (csv.Sniffer) fails on exactly
    the files an import must cope with, those with short or malformed rows.
    """
    for delimiter in DELIMITERS:
        cells = next(csv.reader([header], delimiter=delimiter), [])
        if any(cell.strip().lower() == "email" for cell in cells):
            return delimiter
    return ","


class CsvTable:
    """A CSV file read as a stream: its header cells, then its rows with their line numbers."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        lines = decoded_lines(stream)
        first = next(lines, "")
        self.delimiter = header_delimiter(first)
        self._reader = csv.reader(itertools.chain([first], lines), delimiter=self.delimiter)
        self.header: list[str] = next(self._reader, [])

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """Yield (line number, cells) for each row after the header; a quoted cell may span
        lines, and the number is the row's last line, as csv counts them."""
        for cells in self._reader:
            yield self._reader.line_num, cells

    def bytes_read(self) -> int:
        """Return how far into the file reading has got, in bytes (for progress)."""
        return self._stream.tell()

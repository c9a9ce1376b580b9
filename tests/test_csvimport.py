"""Reading a CSV file for import as a stream: encodings, line ends, delimiters, line numbers."""

from __future__ import annotations

import io

import pytest

from postroom.csvimport import CsvTable, decoded_lines

TEXT = "email,name\r\na@example.org,Zoë\r\n"


@pytest.mark.parametrize(
    "raw",
    [TEXT.encode("utf-8"), TEXT.encode("utf-8-sig"), TEXT.encode("cp1252"),
     TEXT.encode("utf-16"), b"\xfe\xff" + TEXT.encode("utf-16-be")],
    ids=["utf-8", "utf-8 with BOM", "cp1252", "utf-16", "utf-16 big-endian"],
)
def test_decoded_lines_reads_what_spreadsheets_write(raw: bytes) -> None:
    assert list(decoded_lines(io.BytesIO(raw))) == ["email,name\r\n", "a@example.org,Zoë\r\n"]


def test_decoded_lines_reads_each_line_in_its_own_encoding() -> None:
    raw = "email\nzoë@example.org\n".encode() + "Zoë\n".encode("cp1252") + "Ågot\n".encode()
    assert list(decoded_lines(io.BytesIO(raw))) == ["email\n", "zoë@example.org\n", "Zoë\n",
                                                     "Ågot\n"]


def test_decoded_lines_ends_lines_at_a_lone_carriage_return() -> None:
    raw = b"email\ra@example.org\r\nb@example.org\rc@example.org"
    assert list(decoded_lines(io.BytesIO(raw))) == [
        "email\r", "a@example.org\r\n", "b@example.org\r", "c@example.org",
    ]


def test_decoded_lines_streams_a_long_utf16_file_and_leaves_the_stream_open() -> None:
    lines = [f"réader{n}@example.org\r\n" for n in range(20_000)]  # far beyond one buffer
    stream = io.BytesIO("".join(lines).encode("utf-16"))
    assert list(decoded_lines(stream)) == lines
    assert not stream.closed


def test_table_finds_the_delimiter_and_numbers_rows_by_their_last_line() -> None:
    raw = 'name;" Email "\r\n"Two\r\nlines";a@example.org\r\n\r\nB;b@example.org\r\n'
    table = CsvTable(io.BytesIO(raw.encode("utf-8")))
    assert (table.delimiter, table.header) == (";", ["name", " Email "])
    assert list(table.rows()) == [
        (3, ["Two\r\nlines", "a@example.org"]), (4, []), (5, ["B", "b@example.org"]),
    ]
    assert table.bytes_read() == len(raw)


def test_a_header_without_email_is_read_with_commas() -> None:
    table = CsvTable(io.BytesIO(b"name;mail\nA;a@example.org\n"))
    assert (table.delimiter, table.header) == (",", ["name;mail"])

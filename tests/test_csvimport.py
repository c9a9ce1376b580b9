"""Reading a CSV file for import as a stream: encodings, line ends, delimiters, line numbers."""

from __future__ import annotations

import csv
import io

import pytest

from postroom.csvimport import CsvRow, CsvTable, decoded_lines

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
        CsvRow(3, ["Two\r\nlines", "a@example.org"]), CsvRow(4, []),
        CsvRow(5, ["B", "b@example.org"]),
    ]
    assert table.bytes_read() == len(raw)


def test_a_first_line_without_a_known_header_is_split_at_its_first_delimiter() -> None:
    table = CsvTable(io.BytesIO(b"name;address\nA;a@example.org\n"))
    assert (table.delimiter, table.header) == (";", ["name", "address"])
    table = CsvTable(io.BytesIO(b"a@example.org\nb@example.org\n"))
    assert (table.delimiter, table.header) == (",", ["a@example.org"])
    assert list(table.rows()) == [CsvRow(2, ["b@example.org"])]


def test_a_header_is_known_by_any_of_its_names() -> None:
    names = ("email", "emailaddress")
    table = CsvTable(io.BytesIO(b'"Email Address"\tFirst Name, Jr.\n'), names)
    assert (table.delimiter, table.header) == ("\t", ["Email Address", "First Name, Jr."])


def test_a_field_over_the_size_limit_is_a_bad_row_and_reading_goes_on() -> None:
    huge = "x" * (csv.field_size_limit() + 1)
    raw = (f"email,name\na@example.org,A\nb@example.org,{huge}\nc@example.org,C\n"
           f'd@example.org,"{huge}\nstill d\ne@example.org,E"\nf@example.org,F\n')
    table = CsvTable(io.BytesIO(raw.encode()))
    limit = f"a field is longer than {csv.field_size_limit()} characters"
    # A quoted field's other lines are part of the bad row, not rows of their own.
    assert list(table.rows()) == [
        CsvRow(2, ["a@example.org", "A"]),
        CsvRow(3, [], limit),
        CsvRow(4, ["c@example.org", "C"]),
        CsvRow(5, [], f"{limit} (lines 5-7 skipped)"),
        CsvRow(8, ["f@example.org", "F"]),
    ]


def test_a_nul_byte_is_a_bad_row_and_reading_goes_on() -> None:
    table = CsvTable(io.BytesIO(b"email\na@example.org\nb\x00@example.org\nc@example.org\n"))
    assert [(row.line, row.problem) for row in table.rows()] == [
        (2, None), (3, "the row holds a NUL byte (is this a text file?)"), (4, None)]

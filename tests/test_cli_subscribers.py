"""`postroom subscribers add|remove|list|import|export`, run as the real command on a real site."""

from __future__ import annotations

import csv
import io
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from postroom import subscribers
from postroom.schema import subscribers as subscribers_table
from postroom.store import migrate, open_engine

pytestmark = pytest.mark.slow


class Postroom:
    """Runs `postroom --config <site>/postroom.toml …` in a subprocess, as a user would."""

    def __init__(self, command: str, site: Any, env: dict[str, str]) -> None:
        self.command, self.site, self.env = command, site, env

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.command, "--config", str(self.site.config_path), *args],
            env=self.env, cwd=self.site.root, capture_output=True, text=True, timeout=60,
        )

    def raw(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run and return stdout as bytes (no newline translation)."""
        return subprocess.run(
            [self.command, "--config", str(self.site.config_path), *args],
            env=self.env, cwd=self.site.root, capture_output=True, timeout=60,
        )

    def engine(self) -> Engine:
        engine = open_engine(self.site.settings().database_url)
        migrate(engine)
        return engine


@pytest.fixture
def make_postroom(
    make_site: Callable[..., Any], postroom_command: str, clean_env: dict[str, str]
) -> Callable[[str], Postroom]:
    return lambda name: Postroom(postroom_command, make_site(name), clean_env)


def rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        query = select(subscribers_table).order_by(subscribers_table.c.id)
        return [tuple(row) for row in connection.execute(query)]


def assert_no_traceback(result: subprocess.CompletedProcess[Any]) -> None:
    for stream in (result.stdout, result.stderr):
        text = stream.decode() if isinstance(stream, bytes) else stream
        assert "Traceback" not in text, text


# A semicolon-separated cp1252 file with CRLF line ends, as a spreadsheet in Europe saves it.
IMPORT_LINES = [
    "name;email",                 # 1
    "Alice;alice@example.org",    # 2
    "Bob;Bob@Example.ORG",        # 3
    "Nobody;not-an-email",        # 4  bad
    "Empty;",                     # 5  bad
    "Only A Name",                # 6  bad
    "",                           # 7
    "Zoë;zoe@example.org",        # 8
    "Bobby;Bob@EXAMPLE.org",      # 9  bad: repeats line 3
    "Gone;gone@example.org",      # 10 unsubscribed before the import
]


def test_import_reports_bad_rows_by_line_and_is_idempotent(
    make_postroom: Callable[[str], Postroom], tmp_path: Path
) -> None:
    postroom = make_postroom("site")
    assert postroom("subscribers", "add", "gone@example.org").returncode == 0
    assert postroom("subscribers", "remove", "gone@example.org").returncode == 0
    path = tmp_path / "list.csv"
    path.write_bytes("\r\n".join(IMPORT_LINES).encode("cp1252") + b"\r\n")

    first = postroom("subscribers", "import", str(path))

    assert first.returncode == 1, first.stderr
    assert_no_traceback(first)
    problems = first.stderr.splitlines()
    assert [line.split(": ", 1)[0] for line in problems] == [
        f"{path}:4", f"{path}:5", f"{path}:6", f"{path}:9"
    ], first.stderr
    assert "'not-an-email' is not a valid email address" in problems[0]
    assert "Bob@example.org repeats line 3" in problems[3]
    assert "3 added, 0 already subscribed, 1 unsubscribed/bounced left as they are, " \
           "4 bad row(s)" in first.stdout
    engine = postroom.engine()
    with engine.connect() as connection:
        assert subscribers.find(connection, "zoe@example.org").name == "Zoë"
        assert subscribers.find(connection, "gone@example.org").status == "unsubscribed"
    before = rows(engine)

    again = postroom("subscribers", "import", str(path))

    assert again.returncode == 1
    assert again.stderr == first.stderr
    assert "0 added, 3 already subscribed, 1 unsubscribed/bounced left as they are" in again.stdout
    assert rows(engine) == before
    engine.dispose()


def test_import_without_an_email_column(
    make_postroom: Callable[[str], Postroom], tmp_path: Path
) -> None:
    postroom = make_postroom("site")
    path = tmp_path / "list.csv"
    path.write_text("name,address\nAlice,alice@example.org\n", encoding="utf-8")
    result = postroom("subscribers", "import", str(path))
    assert result.returncode == 1
    assert result.stderr == f"{path}:1: {subscribers.NO_EMAIL_COLUMN}\n"
    assert_no_traceback(result)


def test_a_field_over_128_kb_or_a_nul_byte_is_a_bad_row_not_a_traceback(
    make_postroom: Callable[[str], Postroom], tmp_path: Path
) -> None:
    postroom = make_postroom("site")
    path = tmp_path / "list.csv"
    huge = "x" * 200_000
    path.write_text(f"email,notes\na@example.org,\nb@example.org,{huge}\nc@exa\x00mple.org,\n"
                    "d@example.org,\n", encoding="utf-8")

    result = postroom("subscribers", "import", str(path))

    assert_no_traceback(result)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}:3: a field is longer than 131072 characters",
        f"{path}:4: the row holds a NUL byte (is this a text file?)",
    ]
    assert result.stdout.startswith("2 added")


def test_a_mailchimp_export_and_a_headerless_list_import(
    make_postroom: Callable[[str], Postroom], tmp_path: Path
) -> None:
    postroom = make_postroom("site")
    mailchimp = tmp_path / "members.csv"
    mailchimp.write_text('"Email Address","First Name","Last Name",MEMBER_RATING,TAGS\n'
                         'ada@example.org,Ada,Lovelace,2,\n', encoding="utf-8-sig")
    headerless = tmp_path / "addresses.txt"
    headerless.write_text("grace@example.org\r\nADA@example.org\r\n", encoding="utf-8")

    first = postroom("subscribers", "import", str(mailchimp))
    second = postroom("subscribers", "import", str(headerless))

    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert first.stdout.startswith("1 added") and second.stdout.startswith("1 added, 1 already")
    listed = postroom("subscribers", "list", "--quiet").stdout.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["ada@example.org", "grace@example.org"]
    engine = postroom.engine()
    with engine.connect() as connection:
        assert subscribers.find(connection, "ada@example.org").name == "Ada Lovelace"
    engine.dispose()


def test_add_remove_and_list(make_postroom: Callable[[str], Postroom]) -> None:
    postroom = make_postroom("site")

    added = postroom("subscribers", "add", "Alice@Example.ORG", " bob@example.org ", "bad@@x")
    assert added.returncode == 1
    assert added.stdout.splitlines() == ["added Alice@example.org", "added bob@example.org"]
    assert added.stderr.startswith("postroom: 'bad@@x' is not a valid email address")
    assert_no_traceback(added)
    assert postroom("subscribers", "add", "--pending", "carol@example.org").returncode == 0

    removed = postroom("subscribers", "remove", "bob@EXAMPLE.org", "nobody@example.org")
    assert removed.returncode == 1
    assert removed.stdout == "unsubscribed bob@example.org\n"
    assert removed.stderr == "postroom: nobody@example.org: not a subscriber\n"

    readded = postroom("subscribers", "add", "bob@example.org")
    assert (readded.returncode, readded.stdout) == (0, "bob@example.org is already unsubscribed\n")

    listed = postroom("subscribers", "list")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert [line.split("\t")[:2] for line in lines[:-1]] == [
        ["Alice@example.org", "active"], ["bob@example.org", "unsubscribed"],
        ["carol@example.org", "pending"],
    ]
    assert lines[-1] == "1 pending, 1 active, 1 unsubscribed, 0 bounced"
    only_left = postroom("subscribers", "list", "--status", "unsubscribed", "--quiet")
    assert [line.split("\t")[0] for line in only_left.stdout.splitlines()] == ["bob@example.org"]


def test_case_variants_of_one_address_are_one_subscriber(
    make_postroom: Callable[[str], Postroom], tmp_path: Path
) -> None:
    postroom = make_postroom("site")
    added = postroom("subscribers", "add", "alice@example.com", "Alice@example.com",
                     "bob@example.com")
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == [
        "added alice@example.com",
        "Alice@example.com is already active (as alice@example.com)",
        "added bob@example.com",
    ]
    removed = postroom("subscribers", "remove", "BOB@example.com")
    assert (removed.returncode, removed.stdout) == (0, "unsubscribed bob@example.com\n")
    path = tmp_path / "list.csv"
    path.write_text("email\nBOB@example.com\nALICE@EXAMPLE.COM\n", encoding="utf-8")

    imported = postroom("subscribers", "import", str(path))

    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith(
        "0 added, 1 already subscribed, 1 unsubscribed/bounced left as they are")
    listed = postroom("subscribers", "list")
    assert [line.split("\t")[:2] for line in listed.stdout.splitlines()[:-1]] == [
        ["alice@example.com", "active"], ["bob@example.com", "unsubscribed"]]


def test_export_imports_back_identically_into_a_fresh_database(
    make_postroom: Callable[[str], Postroom], tmp_path: Path
) -> None:
    first, second = make_postroom("first"), make_postroom("second")
    assert first("subscribers", "add", "--", "alice@example.org", "=cmd|'/Ccalc'!A0@example.org",
                 "-dash@example.org", "gone@example.org").returncode == 0
    assert first("subscribers", "add", "--pending", "carol@example.org").returncode == 0
    assert first("subscribers", "remove", "gone@example.org").returncode == 0
    engine = first.engine()
    with engine.begin() as connection:
        alice = subscribers.find(connection, "alice@example.org")
        connection.execute(subscribers_table.update().where(subscribers_table.c.id == alice.id)
                           .values(name='=HYPERLINK("https://evil.example/","x")'))
    engine.dispose()
    exported = tmp_path / "export.csv"

    result = first("subscribers", "export", "--output", str(exported))

    assert result.returncode == 0 and "exported 5 subscriber(s)" in result.stderr
    table = list(csv.reader(io.StringIO(exported.read_text(encoding="utf-8"))))
    assert table[0] == list(subscribers.EXPORT_COLUMNS)
    assert not [cell for row in table for cell in row if cell[:1] in ("=", "+", "-", "@")]
    neutralised = [row[0] for row in table if row[0].startswith("'")]
    assert neutralised == ["'=cmd|'/Ccalc'!A0@example.org", "'-dash@example.org"]
    assert {row[0]: row[2] for row in table[1:]}["gone@example.org"] == "unsubscribed"

    imported = second("subscribers", "import", str(exported))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("5 added")
    assert_no_traceback(imported)

    # The same bytes from the second database: statuses, sources and timestamps included.
    assert second.raw("subscribers", "export").stdout == exported.read_bytes()


def test_the_command_line_knows_every_subscriber_status() -> None:
    from postroom import cli, subscribers

    assert cli.STATUSES == subscribers.STATUSES

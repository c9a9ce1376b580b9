"""Subscribers: addresses, statuses and timestamps, CSV import and export, on a real SQLite file."""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from postroom import subscribers
from postroom.errors import SubscriberError
from postroom.schema import subscribers as subscribers_table
from postroom.store import migrate, open_engine

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def make_engine(path: Path) -> Engine:
    """Return an engine on a fresh, migrated SQLite file."""
    engine = open_engine(f"sqlite:///{path}")
    migrate(engine)
    return engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(tmp_path / "postroom.db")
    yield engine
    engine.dispose()


def row_of(engine: Engine, email: str) -> Any:
    with engine.connect() as connection:
        return subscribers.find(connection, email)


def all_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        query = select(subscribers_table).order_by(subscribers_table.c.id)
        return [tuple(row) for row in connection.execute(query)]


def add(engine: Engine, email: str, now: datetime = T0, **kwargs: Any) -> Any:
    with engine.begin() as connection:
        row, _created = subscribers.add(connection, email, now, **kwargs)
    return row


def set_status(engine: Engine, email: str, status: str, now: datetime) -> Any:
    with engine.begin() as connection:
        row = subscribers.find(connection, email)
        subscribers.set_status(connection, row.id, status, now)
    return row_of(engine, email)


# ---- addresses -------------------------------------------------------------------------------


def test_case_variants_of_one_address_are_one_subscriber(engine: Engine) -> None:
    first = add(engine, subscribers.normalize_address("Alice.Smith@Example.com"))
    with engine.begin() as connection:
        again, created = subscribers.add(connection, "alice.smith@example.com", T0, source="web")
        shouted = subscribers.find(connection, "ALICE.SMITH@EXAMPLE.COM")
    assert not created and again.id == shouted.id == first.id
    # What the person typed is kept (to show, and to send to); the key is the identity.
    assert (again.email, again.email_key, again.source) == (
        "Alice.Smith@example.com", "alice.smith@example.com", "cli")
    assert len(all_rows(engine)) == 1


def test_case_variants_of_one_address_stay_unsubscribed(engine: Engine) -> None:
    add(engine, "bob@example.com")
    set_status(engine, "bob@example.com", "unsubscribed", T0 + timedelta(days=1))
    with engine.begin() as connection:
        row, created = subscribers.add(connection, "BOB@example.com", T0 + timedelta(days=2))
    assert (created, row.status, row.email) == (False, "unsubscribed", "bob@example.com")
    assert len(all_rows(engine)) == 1


def test_case_variants_of_one_address_are_refused_by_the_database(engine: Engine) -> None:
    add(engine, "bob@example.com")
    values = subscribers.new_subscriber("Bob@example.com", T0, status="active", source="cli")
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(subscribers_table.insert().values(**values))


def test_plus_tags_and_dots_are_other_addresses(engine: Engine) -> None:
    # Some providers ignore them, others deliver them to other people: never merged.
    for email in ("bob@example.com", "bob+news@example.com", "b.o.b@example.com"):
        add(engine, email)
    assert [row[1] for row in all_rows(engine)] == [
        "bob@example.com", "bob+news@example.com", "b.o.b@example.com"]


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,15}@[A-Za-z0-9]{1,10}\.(org|COM|Net)",
                     fullmatch=True), st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_case_variants_of_one_address_have_one_key(typed: str, random: Any) -> None:
    variant = "".join(c.upper() if random.random() < 0.5 else c.lower() for c in typed)
    try:
        email = subscribers.normalize_address(typed)
    except SubscriberError:
        return
    other = subscribers.normalize_address(variant)
    assert subscribers.address_key(email) == subscribers.address_key(other)
    assert subscribers.address_key(email) == email.lower()
    assert email.split("@")[0] == typed.split("@")[0]  # what was typed is kept


@pytest.mark.parametrize(
    ("typed", "normalized"),
    [
        ("alice@example.org", "alice@example.org"),
        ("  alice@Example.ORG\t", "alice@example.org"),
        ("\nalice@EXAMPLE.org\r\n", "alice@example.org"),
        # The local part is the receiving server's business: its case is kept (RFC 5321 §2.4).
        ("Alice.Smith+news@Example.org", "Alice.Smith+news@example.org"),
        ("bob@Mail.Example.CO.UK", "bob@mail.example.co.uk"),
        # No DNS: a domain nobody registered is still a well-formed address.
        ("carol@No-Such-Domain-Postroom.org", "carol@no-such-domain-postroom.org"),
    ],
)
def test_normalize_strips_whitespace_and_lowercases_the_domain(typed: str, normalized: str) -> None:
    assert subscribers.normalize_address(typed) == normalized


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "   ",
        "alice",
        "alice@",
        "@example.org",
        "alice@@example.org",
        "alice@localhost",
        "alice smith@example.org",
        "alice@exa mple.org",
        "alice@example..org",
        "alice@example.org\r\nBcc: victim@example.org",
        "alice@example.org\nBcc: victim@example.org",
        "alice@example.org\x00",
        "Alice <alice@example.org>",
    ],
)
def test_normalize_rejects_invalid_addresses_with_a_message_naming_them(typed: str) -> None:
    with pytest.raises(SubscriberError) as raised:
        subscribers.normalize_address(typed)
    message = str(raised.value)
    assert "not" in message and ("valid email address" in message or "an email address" in message)
    # The message quotes what was typed (stripped), so the user can find it.
    assert typed.strip()[:5] in message


def _spaced(email: str, before: str, after: str, upper: bool) -> str:
    local, _, domain = email.rpartition("@")
    return f"{before}{local}@{domain.upper() if upper else domain}{after}"


WHITESPACE = st.sampled_from(["", " ", "\t", "\n", "\r\n", "\x0b", "\u00a0", "\u2028", "  \r"])
ADDRESS_LIKE = st.one_of(
    st.text(),
    st.emails(),
    st.builds(_spaced, st.emails(), WHITESPACE, WHITESPACE, st.booleans()),
    st.builds(lambda a, b, c: f"{a}@{b}.{c}", st.text(max_size=12), st.text(max_size=12),
              st.text(max_size=4)),
    st.builds(lambda a, b: f"{a}@example.org{b}", st.text(max_size=8), st.text(max_size=8)),
)
LINE_BREAKS = {"\r", "\n", "\x85", "\u2028", "\u2029"}


@settings(max_examples=400, deadline=None)
@given(ADDRESS_LIKE)
def test_normalize_either_rejects_or_returns_a_clean_fixed_point(typed: str) -> None:
    try:
        normalized = subscribers.normalize_address(typed)
    except SubscriberError:
        return
    assert normalized
    assert not LINE_BREAKS & set(normalized), normalized
    assert all(unicodedata.category(c) != "Cc" for c in normalized), normalized
    assert normalized == normalized.strip()
    assert subscribers.normalize_address(normalized) == normalized


# ---- statuses and their timestamps -------------------------------------------------------------


def test_add_stamps_creation_and_confirmation(engine: Engine) -> None:
    row = add(engine, "alice@example.org", T0, name="Alice", source="cli")
    assert (row.status, row.name, row.source) == ("active", "Alice", "cli")
    assert row.created_at == row.status_changed_at == row.confirmed_at == T0
    assert row.unsubscribed_at is None and row.bounced_at is None
    assert row.bounce_count == 0
    # Datetimes come back aware and in UTC, whatever SQLite stores.
    assert row.created_at.tzinfo is not None


def test_add_pending_is_not_confirmed(engine: Engine) -> None:
    row = add(engine, "pending@example.org", T0, status="pending", source="web")
    assert row.status == "pending"
    assert row.created_at == row.status_changed_at == T0
    assert row.confirmed_at is None


def test_adding_an_existing_address_changes_nothing(engine: Engine) -> None:
    add(engine, "alice@example.org", T0)
    set_status(engine, "alice@example.org", "unsubscribed", T0 + timedelta(days=1))
    before = all_rows(engine)
    with engine.begin() as connection:
        row, created = subscribers.add(
            connection, "alice@example.org", T0 + timedelta(days=2), status="active"
        )
    assert not created
    assert row.status == "unsubscribed"
    assert all_rows(engine) == before


def test_status_changes_stamp_their_timestamps(engine: Engine) -> None:
    add(engine, "alice@example.org", T0, status="pending")
    t1, t2, t3 = (T0 + timedelta(hours=h) for h in (1, 2, 3))

    confirmed = set_status(engine, "alice@example.org", "active", t1)
    assert (confirmed.status, confirmed.confirmed_at, confirmed.status_changed_at) == (
        "active", t1, t1)

    left = set_status(engine, "alice@example.org", "unsubscribed", t2)
    assert (left.status, left.unsubscribed_at, left.status_changed_at) == ("unsubscribed", t2, t2)
    assert left.confirmed_at == t1 and left.created_at == T0

    bounced = set_status(engine, "alice@example.org", "bounced", t3)
    assert (bounced.status, bounced.bounced_at, bounced.status_changed_at) == ("bounced", t3, t3)
    assert bounced.unsubscribed_at == t2


def test_an_unknown_status_is_refused(engine: Engine) -> None:
    row = add(engine, "alice@example.org", T0)
    with engine.begin() as connection, pytest.raises(SubscriberError, match="unknown status"):
        subscribers.set_status(connection, row.id, "deleted", T0)
    assert row_of(engine, "alice@example.org").status == "active"


def test_record_bounce_marks_bounced_at_the_limit(engine: Engine) -> None:
    row = add(engine, "alice@example.org", T0)
    results = []
    for hour in (1, 2, 3):
        with engine.begin() as connection:
            results.append(
                subscribers.record_bounce(connection, row.id, T0 + timedelta(hours=hour), limit=3)
            )
        current = row_of(engine, "alice@example.org")
        assert current.bounce_count == hour
        assert current.status == ("bounced" if hour == 3 else "active")
    assert results == [False, False, True]
    bounced = row_of(engine, "alice@example.org")
    assert bounced.bounced_at == bounced.status_changed_at == T0 + timedelta(hours=3)


def test_reconfirming_resets_the_bounce_count(engine: Engine) -> None:
    row = add(engine, "alice@example.org", T0)
    with engine.begin() as connection:
        subscribers.record_bounce(connection, row.id, T0, limit=5)
        subscribers.record_bounce(connection, row.id, T0, limit=5)
    assert set_status(engine, "alice@example.org", "active", T0).bounce_count == 0


def test_counts_and_iteration_in_batches(engine: Engine) -> None:
    statuses = ["active", "pending", "unsubscribed", "bounced"]
    total = subscribers.BATCH * 2 + 7  # crosses two batch boundaries
    with engine.begin() as connection:
        for number in range(total):
            status = statuses[number % 4]
            subscribers.add(connection, f"user{number:05d}@example.org", T0, status=status)
        assert subscribers.counts(connection) == {
            "active": 502, "pending": 502, "unsubscribed": 502, "bounced": 501,
        }
    everyone = [row.email for row in subscribers.iter_subscribers(engine)]
    assert everyone == [f"user{n:05d}@example.org" for n in range(total)]
    active = list(subscribers.iter_subscribers(engine, "active"))
    assert [row.email for row in active] == [f"user{n:05d}@example.org" for n in range(0, total, 4)]
    assert {row.status for row in active} == {"active"}


# ---- CSV import: the acceptance test -----------------------------------------------------------

# (name, email) rows of the file, None for a blank line; a 1-tuple is a row with too few columns.
ROWS: list[tuple[str, ...] | None] = [
    ("Alice", "alice@example.org"),           # 2
    ("Bob", "Bob@Example.ORG"),               # 3  normalized: Bob@example.org
    ("Nobody", "not-an-email"),               # 4  bad: no @
    ("Empty Cell", ""),                       # 5  bad: the email cell is empty
    ("Only A Name",),                         # 6  bad: too few columns
    None,                                     # 7  blank
    ("Smith, Carol", "carol@example.org"),    # 8  a quoted cell holding a comma
    ("Bobby", "Bob@EXAMPLE.org"),             # 9  bad: repeats line 3 (domain case differs)
    None,                                     # 10 blank
    ("Zoë Ångström", "zoe@example.org"),      # 11 non-ASCII name
    ("Eve", "eve@@example.org"),              # 12 bad: two @
    ("  François  ", " frank@Example.org "),  # 13 whitespace around both cells
    ("Gone", "gone@example.org"),             # 14 unsubscribed in the database
    ("Bounced", "bounced@example.org"),       # 15 bounced in the database
    ("D'Arcy O'Brien", "d'arcy@example.org"), # 16 apostrophes are not quotes
]
BAD_LINES = {
    4: "'not-an-email' is not a valid email address",
    5: "email is empty",
    6: "1 field",
    9: "Bob@example.org repeats line 3",
    12: "'eve@@example.org' is not a valid email address",
}
IMPORTED = {
    "alice@example.org": "Alice",
    "Bob@example.org": "Bob",
    "carol@example.org": "Smith, Carol",
    "zoe@example.org": "Zoë Ångström",
    "frank@example.org": "François",
    "d'arcy@example.org": "D'Arcy O'Brien",
}


def csv_text(delimiter: str = ",", newline: str = "\n", rows: list[Any] = ROWS) -> str:
    """Return the fixture's CSV text: a header, then ROWS (blank lines where ROWS has None)."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=newline)
    writer.writerow(["name", "email"])
    for row in rows:
        if row is None:
            out.write(newline)
        else:
            writer.writerow(row)
    return out.getvalue()


def mixed_encodings() -> bytes:
    """UTF-8 with a BOM, but one line pasted in from a cp1252 export."""
    lines = csv_text().encode("utf-8").split(b"\n")
    lines[10] = "Zoë Ångström,zoe@example.org".encode("cp1252")  # line 11
    return b"\xef\xbb\xbf" + b"\n".join(lines)


ENCODINGS = {
    "utf-8": lambda: csv_text().encode("utf-8"),
    "utf-8 with BOM": lambda: csv_text().encode("utf-8-sig"),
    "utf-8 with BOM and CRLF": lambda: csv_text(newline="\r\n").encode("utf-8-sig"),
    "cp1252 and CRLF": lambda: csv_text(newline="\r\n").encode("cp1252"),
    "latin-1": lambda: csv_text().encode("latin-1"),
    "utf-16 with BOM and CRLF": lambda: csv_text(newline="\r\n").encode("utf-16"),
    "utf-16 with BOM, tab-separated": lambda: csv_text("\t", "\r\n").encode("utf-16"),
    "semicolons": lambda: csv_text(";").encode("utf-8"),
    "semicolons, cp1252, CRLF": lambda: csv_text(";", "\r\n").encode("cp1252"),
    "utf-8 with BOM and a cp1252 line": mixed_encodings,
}


def with_left_and_bounced(engine: Engine) -> None:
    """Put in the database an unsubscribed and a bounced address that the file also lists."""
    add(engine, "gone@example.org", T0 - timedelta(days=30))
    set_status(engine, "gone@example.org", "unsubscribed", T0 - timedelta(days=10))
    add(engine, "bounced@example.org", T0 - timedelta(days=30))
    set_status(engine, "bounced@example.org", "bounced", T0 - timedelta(days=5))


def import_file(
    engine: Engine, path: Path, now: datetime, **options: Any
) -> subscribers.ImportReport:
    """Import a CSV file as the command does: opened in binary, problems labelled by path."""
    with path.open("rb") as stream:
        return subscribers.import_csv(engine, str(path), stream, now, **options)


def import_text(
    engine: Engine, text: str, now: datetime, **options: Any
) -> subscribers.ImportReport:
    """Import CSV text (as UTF-8) labelled list.csv."""
    return subscribers.import_csv(engine, "list.csv", io.BytesIO(text.encode()), now, **options)


def check_problems(report: subscribers.ImportReport, label: str) -> None:
    shown = [str(problem) for problem in report.problems]
    assert [problem.line for problem in report.problems] == sorted(BAD_LINES), shown
    for problem in report.problems:
        assert str(problem).startswith(f"{label}:{problem.line}: "), problem
        assert BAD_LINES[problem.line] in problem.message, problem


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_import_reports_every_bad_row_and_imports_the_good_ones(
    engine: Engine, tmp_path: Path, encoding: str
) -> None:
    with_left_and_bounced(engine)
    path = tmp_path / "subscribers.csv"
    path.write_bytes(ENCODINGS[encoding]())

    report = import_file(engine, path, T0)

    check_problems(report, str(path))
    assert (report.added, report.unchanged, report.kept_status) == (len(IMPORTED), 0, 2)
    for email, name in IMPORTED.items():
        row = row_of(engine, email)
        assert row is not None, email
        assert (row.name, row.status, row.source) == (name, "active", "import")
        assert row.created_at == row.confirmed_at == T0
    assert row_of(engine, "gone@example.org").status == "unsubscribed"
    assert row_of(engine, "bounced@example.org").status == "bounced"
    with engine.connect() as connection:
        assert subscribers.counts(connection) == {
            "active": len(IMPORTED), "pending": 0, "unsubscribed": 1, "bounced": 1,
        }


def test_reimporting_the_same_file_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    with_left_and_bounced(engine)
    path = tmp_path / "subscribers.csv"
    path.write_bytes(csv_text(";", "\r\n").encode("utf-8-sig"))
    first = import_file(engine, path, T0)
    rows = all_rows(engine)

    again = import_file(engine, path, T0 + timedelta(days=1))

    assert (again.added, again.unchanged, again.kept_status) == (0, len(IMPORTED), 2)
    assert again.problems == first.problems
    # Same rows, same ids, same timestamps: nothing was touched.
    assert all_rows(engine) == rows


def test_import_never_reactivates_unsubscribed_or_bounced(engine: Engine, tmp_path: Path) -> None:
    with_left_and_bounced(engine)
    before = {email: tuple(row_of(engine, email)) for email in ("gone@example.org",
                                                                "bounced@example.org")}
    text = "email\nGONE@example.org\ngone@EXAMPLE.ORG\nbounced@example.org\n"
    # GONE@ is gone@ in another case: the same subscriber; gone@EXAMPLE.ORG repeats it.
    report = import_text(engine, text, T0, status="active")
    assert report.kept_status == 2 and report.added == 0
    assert [str(p) for p in report.problems] == [
        "list.csv:3: gone@example.org repeats line 2"]
    for email, row in before.items():
        assert tuple(row_of(engine, email)) == row


def test_case_variants_of_one_address_in_an_import_are_one_subscriber(engine: Engine) -> None:
    add(engine, "bob@example.com")
    set_status(engine, "bob@example.com", "unsubscribed", T0 + timedelta(days=1))
    text = "email\nBOB@example.com\nCarol@example.com\ncarol@example.com\n"
    report = import_text(engine, text, T0 + timedelta(days=2))
    # BOB@ is the unsubscribed bob@: left unsubscribed, not added next to it.
    assert (report.added, report.kept_status) == (1, 1)
    assert [str(p) for p in report.problems] == [
        "list.csv:4: carol@example.com repeats line 3"]
    assert [(r.email, r.status) for r in subscribers.iter_subscribers(engine)] == [
        ("bob@example.com", "unsubscribed"), ("Carol@example.com", "active")]
    # Another file, days later, with carol in yet another case: still the same subscriber.
    again = import_text(engine, "email\nCAROL@EXAMPLE.COM\n", T0 + timedelta(days=3))
    assert (again.added, again.unchanged) == (0, 1)


def test_import_as_pending(engine: Engine) -> None:
    report = import_text(engine, "email\nnew@example.org\n", T0, status="pending")
    assert report.added == 1
    row = row_of(engine, "new@example.org")
    assert (row.status, row.confirmed_at) == ("pending", None)


def test_import_without_an_email_column_says_so(engine: Engine) -> None:
    report = import_text(engine, "name,address\nA,a@example.org\n", T0)
    assert [str(p) for p in report.problems] == [f"list.csv:1: {subscribers.NO_EMAIL_COLUMN}"]
    assert report.added == 0 and all_rows(engine) == []


@pytest.mark.parametrize("header", ["email", "E-mail", "Email Address", "MAIL", "email_address",
                                    " e-mail address "])
def test_common_header_names_for_the_address_are_recognised(engine: Engine, header: str) -> None:
    report = import_text(engine, f"Name;{header}\nAlice;alice@example.org\n", T0)
    assert report.problems == [] and report.added == 1
    assert row_of(engine, "alice@example.org").name == "Alice"


# The head of a Mailchimp audience export (its columns, in its order), and two members.
MAILCHIMP = (
    '"Email Address","First Name","Last Name",Address,"Phone Number",MEMBER_RATING,'
    "OPTIN_TIME,OPTIN_IP,CONFIRM_TIME,CONFIRM_IP,LATITUDE,LONGITUDE,GMTOFF,DSTOFF,TIMEZONE,"
    "CC,REGION,LAST_CHANGED,LEID,EUID,NOTES,TAGS{extra}\n"
    'ada@example.org,Ada,Lovelace,,,2,"2024-01-02 10:00:00",,"2024-01-02 10:05:00",,,,,,,'
    ',,"2024-01-02 10:05:00",11,aa11,,"""Readers""",{first}\n'
    'Grace@Example.org,Grace,,,,2,,,,,,,,,,,,,12,bb22,,,{second}\n'
)


def test_a_mailchimp_export_imports(engine: Engine) -> None:
    report = import_text(engine, MAILCHIMP.format(extra="", first="", second="")
                         .replace(",\n", "\n"), T0)
    assert report.problems == [] and report.added == 2
    assert [(r.email, r.name, r.status) for r in subscribers.iter_subscribers(engine)] == [
        ("ada@example.org", "Ada Lovelace", "active"), ("Grace@example.org", "Grace", "active")]


def test_a_mailchimp_export_of_those_who_left_imports_them_as_left(engine: Engine) -> None:
    text = MAILCHIMP.format(extra=",UNSUB_TIME,UNSUB_REASON,CLEAN_TIME",
                            first='"2024-06-01 08:00:00",No longer interested,',
                            second=',,"2024-07-01 08:00:00"')
    report = import_text(engine, text, T0)
    assert report.problems == [] and report.added == 2
    ada, grace = row_of(engine, "ada@example.org"), row_of(engine, "grace@example.org")
    assert (ada.status, ada.unsubscribed_at) == (
        "unsubscribed", datetime(2024, 6, 1, 8, tzinfo=UTC))
    assert (grace.status, grace.bounced_at) == ("bounced", datetime(2024, 7, 1, 8, tzinfo=UTC))


def test_a_headerless_list_of_addresses_imports(engine: Engine) -> None:
    text = "alice@example.org\n\nBob@Example.org\nnot an address\nALICE@example.org\n"
    report = import_text(engine, text, T0)
    assert [str(p) for p in report.problems] == [
        "list.csv:4: 'not an address' is not a valid email address: "
        "An email address must have an @-sign.",
        "list.csv:5: ALICE@example.org repeats line 1",
    ]
    assert [r.email for r in subscribers.iter_subscribers(engine)] == [
        "alice@example.org", "Bob@example.org"]


def test_a_headerless_list_with_other_cells_imports_the_addresses(engine: Engine) -> None:
    report = import_text(engine, "alice@example.org;Alice\nbob@example.org;Bob\n", T0)
    assert report.problems == [] and report.added == 2
    assert row_of(engine, "bob@example.org").name is None  # not known to be a name


def test_a_field_over_128_kb_is_a_bad_row_and_the_others_are_imported(engine: Engine) -> None:
    huge = "x" * (csv.field_size_limit() + 1)
    text = (f"email,name\na@example.org,A\nb@example.org,{huge}\nc@example.org,C\n"
            f'd@example.org,"{huge}\nnot a row\n"\ne@example.org,E\n')
    report = import_text(engine, text, T0, batch_size=2)
    limit = f"a field is longer than {csv.field_size_limit()} characters"
    assert [str(p) for p in report.problems] == [
        f"list.csv:3: {limit}", f"list.csv:5: {limit} (lines 5-7 skipped)"]
    assert [r.email for r in subscribers.iter_subscribers(engine)] == [
        "a@example.org", "c@example.org", "e@example.org"]


def test_a_nul_byte_is_a_bad_row_and_the_others_are_imported(engine: Engine) -> None:
    text = "email,name\na@example.org,A\nb@example.org,B\x00\nc\x00@example.org\nd@example.org\n"
    report = import_text(engine, text, T0)
    assert [(p.line, p.message) for p in report.problems] == [
        (3, "the row holds a NUL byte (is this a text file?)"),
        (4, "the row holds a NUL byte (is this a text file?)"),
    ]
    assert [r.email for r in subscribers.iter_subscribers(engine)] == [
        "a@example.org", "d@example.org"]


def test_import_finds_the_email_column_wherever_it_is(engine: Engine) -> None:
    text = 'Name;Notes;" Email "\n"Alice";"likes; semicolons";alice@example.org\n'
    report = import_text(engine, text, T0)
    assert report.problems == [] and report.added == 1
    assert row_of(engine, "alice@example.org").name == "Alice"


# ---- imports larger than a batch ---------------------------------------------------------------

BIG_ROWS = 2_500  # lines 2..2501, in 25 batches of 100: lines 2-101, 102-201, ...
BIG_BATCH = 100
BIG_BAD = {line: "is not a valid email address" for line in range(250, 2502, 250)}
# A repeat is reported with the line it repeats, in the same batch or an earlier one.
BIG_REPEATS = {
    102: 101,   # across a batch boundary
    150: 120,   # within one batch
    1999: 3,    # many batches back...
    2001: 3,    # ...and again in the same batch, still the first line (domain case differs)
}
BIG_BLANK = 600
BIG_KNOWN = {1234: "bounced@example.org", 1501: "kept@example.org", 2300: "gone@example.org"}


def big_file(delimiter: str, newline: str) -> str:
    """Return a list of BIG_ROWS rows with bad rows, repeats, a blank line and known addresses."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=newline)
    writer.writerow(["email", "name"])
    for line in range(2, BIG_ROWS + 2):
        if line == BIG_BLANK:
            out.write(newline)
        elif line in BIG_BAD:
            writer.writerow([f"bad{line}@@example.org", "Bad"])
        elif line in BIG_REPEATS:
            first = BIG_REPEATS[line]
            writer.writerow([f"reader{first}@EXAMPLE.org", f"Again {line}"])
        else:
            # Names with a delimiter and letters beyond ASCII that cp1252 also has.
            email = BIG_KNOWN.get(line, f"reader{line}@example.org")
            writer.writerow([email, f"Zoë Reader; {line}, Ångström"])
    return out.getvalue()


BIG_FILES = {
    "utf-8, commas": lambda: big_file(",", "\n").encode("utf-8"),
    "utf-16, tabs, CRLF": lambda: big_file("\t", "\r\n").encode("utf-16"),
    "cp1252, semicolons, CRLF": lambda: big_file(";", "\r\n").encode("cp1252"),
}


@pytest.mark.parametrize("kind", list(BIG_FILES))
def test_an_import_of_many_batches_reports_every_bad_row_and_is_idempotent(
    engine: Engine, tmp_path: Path, kind: str
) -> None:
    with_left_and_bounced(engine)
    add(engine, "kept@example.org", T0 - timedelta(days=3))
    path = tmp_path / "big.csv"
    path.write_bytes(BIG_FILES[kind]())
    read: list[int] = []

    report = import_file(engine, path, T0, batch_size=BIG_BATCH, on_progress=read.append)

    expected = {**BIG_BAD, **{line: f"reader{first}@example.org repeats line {first}"
                               for line, first in BIG_REPEATS.items()}}
    assert [p.line for p in report.problems] == sorted(expected)
    for problem in report.problems:
        assert str(problem).startswith(f"{path}:{problem.line}: ")
        assert expected[problem.line] in problem.message, problem
    added = BIG_ROWS - len(expected) - len(BIG_KNOWN) - 1  # the blank line
    assert (report.added, report.unchanged, report.kept_status) == (added, 1, 2)
    assert row_of(engine, "reader2501@example.org").name == "Zoë Reader; 2501, Ångström"
    assert row_of(engine, "reader3@example.org").name == "Zoë Reader; 3, Ångström"
    assert row_of(engine, "gone@example.org").status == "unsubscribed"
    assert row_of(engine, "bounced@example.org").status == "bounced"
    assert len({row.public_id for row in subscribers.iter_subscribers(engine)}) == added + 3
    # One call per batch of rows read, the last at the end of the file.
    assert len(read) == BIG_ROWS // BIG_BATCH and read == sorted(read)
    assert read[-1] == path.stat().st_size
    rows = all_rows(engine)

    again = import_file(engine, path, T0 + timedelta(days=1), batch_size=BIG_BATCH)

    assert (again.added, again.unchanged, again.kept_status) == (0, added + 1, 2)
    assert again.problems == report.problems
    assert all_rows(engine) == rows


def test_an_import_batch_size_must_be_positive(engine: Engine) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        import_text(engine, "email\na@example.org\n", T0, batch_size=0)


# ---- CSV export --------------------------------------------------------------------------------

HOSTILE_NAME = '=HYPERLINK("https://evil.example/","click me")'


def populate_for_export(engine: Engine) -> None:
    """A list with every status and cells a spreadsheet would run as formulas."""
    add(engine, "alice@example.org", T0, name="Alice", source="cli")
    add(engine, "pending@example.org", T0 + timedelta(hours=1), status="pending", source="web")
    add(engine, "gone@example.org", T0 + timedelta(hours=2), name="Gone", source="import")
    set_status(engine, "gone@example.org", "unsubscribed", T0 + timedelta(days=1))
    add(engine, "bounced@example.org", T0 + timedelta(hours=3))
    set_status(engine, "bounced@example.org", "bounced", T0 + timedelta(days=2))
    add(engine, "formula@example.org", T0 + timedelta(hours=4), name=HOSTILE_NAME)
    # Valid addresses can start with = + - too: they must survive a round trip intact.
    add(engine, "=cmd|'/Ccalc'!A0@example.org", T0 + timedelta(hours=5), name="@SUM(A1)")
    add(engine, "-dash@example.org", T0 + timedelta(hours=6), name="+plus")
    add(engine, "'quoted@example.org", T0 + timedelta(hours=7), name="'=already quoted")


def exported(engine: Engine, status: str | None = None) -> str:
    out = io.StringIO()
    subscribers.export_csv(engine, out, status)
    return out.getvalue()


def test_export_writes_a_header_and_every_subscriber(engine: Engine) -> None:
    populate_for_export(engine)
    rows = list(csv.DictReader(io.StringIO(exported(engine))))
    assert list(rows[0]) == list(subscribers.EXPORT_COLUMNS)
    assert len(rows) == 8
    gone = next(r for r in rows if r["email"] == "gone@example.org")
    assert gone["status"] == "unsubscribed"
    assert datetime.fromisoformat(gone["unsubscribed_at"]) == T0 + timedelta(days=1)
    unsubscribed_only = list(csv.DictReader(io.StringIO(exported(engine, "unsubscribed"))))
    assert [r["email"] for r in unsubscribed_only] == ["gone@example.org"]


def test_export_neutralises_formulas(engine: Engine) -> None:
    populate_for_export(engine)
    cells = [cell for row in csv.reader(io.StringIO(exported(engine))) for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@")]
    assert "'" + HOSTILE_NAME in cells
    assert "'=cmd|'/Ccalc'!A0@example.org" in cells


@pytest.mark.parametrize("batch_size", [subscribers.IMPORT_BATCH, 3])
def test_an_export_imports_back_identically_into_a_fresh_database(
    engine: Engine, tmp_path: Path, batch_size: int
) -> None:
    populate_for_export(engine)
    export = exported(engine)
    fresh = make_engine(tmp_path / "fresh.db")

    report = import_text(fresh, export, T0 + timedelta(days=30), batch_size=batch_size)

    assert report.problems == [] and report.added == 8
    assert exported(fresh) == export
    # Not only the same file: the same facts, unsubscribed and bounced ones included.
    columns = ("email", "name", "status", "source", "created_at", "confirmed_at",
               "unsubscribed_at")
    original = [tuple(getattr(r, c) for c in columns) for r in subscribers.iter_subscribers(engine)]
    copied = [tuple(getattr(r, c) for c in columns) for r in subscribers.iter_subscribers(fresh)]
    assert copied == original
    with fresh.connect() as connection:
        assert subscribers.counts(connection)["active"] == 5
    fresh.dispose()


def test_import_reports_a_bad_status_date_or_overlong_cell_by_line(engine: Engine) -> None:
    text = (
        "email,status,created_at,name\n"
        "a@example.org,active,2025-01-02T03:04:05+00:00,A\n"
        "b@example.org,deleted,,B\n"
        "c@example.org,,yesterday,C\n"
        "d@example.org,unsubscribed,2025-01-02,D\n"
        f"e@example.org,,,{'E' * 201}\n"
    )
    report = import_text(engine, text, T0)
    assert [str(p) for p in report.problems] == [
        "list.csv:3: status 'deleted' is not one of pending, active, unsubscribed, bounced",
        "list.csv:4: created_at 'yesterday' is not an ISO 8601 date-time",
        "list.csv:6: name is longer than 200 characters",
    ]
    assert row_of(engine, "a@example.org").created_at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    # A file's status is a fact about the address: it is created unsubscribed, and stamped.
    left = row_of(engine, "d@example.org")
    assert (left.status, left.unsubscribed_at, left.confirmed_at) == ("unsubscribed", T0, None)
    assert left.created_at == datetime(2025, 1, 2, tzinfo=UTC)
    assert [r.email for r in subscribers.iter_subscribers(engine)] == ["a@example.org",
                                                                      "d@example.org"]

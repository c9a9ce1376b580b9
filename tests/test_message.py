"""Digest messages as a mail client sees them: sent through a real SMTP server (aiosmtpd)
and parsed with the standard `email` package."""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, parsedate_to_datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jinja2 import Environment

from mailserver import MailServer, header_urls
from mailsite import BASE_URL, FROM_ADDRESS, SITE_TITLE, MailSite
from postroom import optin
from postroom.config import Settings, load_settings
from postroom.digest import DigestPost, compose_digest
from postroom.message import (
    LINK_PLACEHOLDER,
    Envelope,
    HeaderInjection,
    PreparedMessage,
    one_line,
    prepare,
)
from postroom.posts import clean_text
from postroom.templates import template_environment
from postroom.transport import as_data

# Every header a digest carries, and nothing else: an extra one would be an injection.
DIGEST_HEADERS = {
    "from", "subject", "list-id", "mime-version", "content-type", "to", "date", "message-id",
    "list-unsubscribe", "list-unsubscribe-post",
}
HOSTILE_TITLES = [
    '<script>alert("x")</script> & friends',
    "Tom & Jerry's \"quoted\" <b>bold</b>",
    "Line one\r\nBcc: victim@example.com",
    "Bell\x07 and\x00null\x1b[31m escape\x7f del\x85nel",
    "Emoji 🎉📬 and RTL \u202eevil\u202c עברית مرحبا",
    "=?utf-8?q?encoded=0D=0ABcc:_injected@example.com?=",
    "Split\u2028line\u2029para\x0bvt\x0cff",
]


@pytest.fixture
def server() -> Iterator[MailServer]:
    with MailServer() as running:
        yield running


@pytest.fixture
def site(tmp_path: Path, server: MailServer) -> MailSite:
    return MailSite.create(tmp_path, smtp_port=server.port)


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def bodies(message: EmailMessage) -> tuple[str, str]:
    """Return the (text, html) parts' decoded content, checking the MIME structure."""
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for part in parts:
        assert part.get_content_charset() == "utf-8"
        assert part.get("Content-Transfer-Encoding") == "quoted-printable"
    assert not message.defects and not any(p.defects for p in parts)
    text, html = (str(p.get_content()) for p in parts)
    return text, html


class LinkTitles(HTMLParser):
    """Collects the text of each <h2><a> (as a browser shows it), every href and <script>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.titles: list[str] = []
        self.hrefs: list[str] = []
        self.scripts = 0
        self.in_h2 = self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        elif tag == "h2":
            self.in_h2 = True
        elif tag == "a":
            self.hrefs.append(dict(attrs).get("href") or "")
            if self.in_h2:
                self.in_title = True
                self.titles.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self.in_title = False
        elif tag == "h2":
            self.in_h2 = False

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.titles[-1] += data


def links_in(html: str) -> LinkTitles:
    parser = LinkTitles()
    parser.feed(html)
    parser.close()
    return parser


def unsubscribe_urls(message: EmailMessage) -> list[str]:
    return header_urls(message["List-Unsubscribe"])


# ---- a digest through a real SMTP server ----------------------------------------------


def test_digest_has_every_header_and_both_parts(site: MailSite, server: MailServer) -> None:
    posts = [("first-post", "First post"), ("second-post", "Second post"),
             ("third-post", "Third post")]
    for minutes, (slug, title) in enumerate(posts, start=1):
        site.write_post(slug, title, published=site.now - timedelta(minutes=30 - minutes),
                        summary=f"What {title.lower()} says.")
    ids = site.add_subscribers(["ann@example.org", "bob@example.net"])
    plan = site.create_digest()
    assert plan.recipients == 2
    before = datetime.now(UTC)

    stats = site.send()

    assert (stats.sent, stats.failed) == (2, 0)
    received = server.messages()
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(ids)
    message_ids = set()
    for accepted in received:
        assert accepted.mail_from == FROM_ADDRESS
        assert accepted.data.isascii(), "7-bit transport: non-ASCII must be encoded"
        assert all(len(line) <= 998 for line in accepted.data.split(b"\r\n"))
        message = accepted.parsed()
        recipient = accepted.rcpt_tos[0]
        assert {k.lower() for k in message} == DIGEST_HEADERS
        assert message["From"].addresses[0].display_name == "Tess of Test Notes"
        assert message["From"].addresses[0].addr_spec == FROM_ADDRESS
        assert [a.addr_spec for a in message["To"].addresses] == [recipient]
        sent_at = parsedate_to_datetime(str(message["Date"]))
        assert sent_at.tzinfo is not None
        assert before - timedelta(seconds=2) <= sent_at <= datetime.now(UTC) + timedelta(seconds=2)
        assert str(message["Subject"]) == f"{SITE_TITLE}: 3 new posts"
        assert str(message["List-Id"]) == f"{SITE_TITLE} <digest.notes.example.org>"
        assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
        message_id = str(message["Message-ID"])
        assert re.fullmatch(r"<[^<>@\s]+@notes\.example\.org>", message_id)
        message_ids.add(message_id)

        [https] = unsubscribe_urls(message)
        assert https.startswith(f"{BASE_URL}/unsubscribe/")
        assert optin.subscriber_of_link(site.engine, https.rsplit("/", 1)[1]) == ids[recipient]

        text, html = bodies(message)
        found = links_in(html)
        assert found.titles == [title for _, title in posts]
        for slug, title in posts:
            url = f"{BASE_URL}/posts/{slug}/"
            assert url in text and url in found.hrefs
            assert title in text
        assert https in text and https in found.hrefs, "the body links to the same unsubscribe"

    assert len(message_ids) == 2, "a unique Message-ID per recipient"
    recorded = {d.email: d.message_id for d in site.deliveries()}
    assert {str(m.parsed()["Message-ID"]) for m in received} == set(recorded.values())


def test_a_digest_of_one_post_is_titled_by_it(site: MailSite, server: MailServer) -> None:
    site.write_post("only", "Ünïcode title — with “quotes” and 🎉")
    site.add_subscribers(["ann@example.org"])
    site.create_digest()
    site.send()

    [accepted] = server.messages()
    message = accepted.parsed()
    assert str(message["Subject"]) == f"{SITE_TITLE}: Ünïcode title — with “quotes” and 🎉"
    head = accepted.data.split(b"\r\n\r\n", 1)[0]
    assert b"=?utf-8?" in head, "a non-ASCII subject is RFC 2047-encoded"
    text, _ = bodies(message)
    assert "A new post since the last letter" in text


def test_list_unsubscribe_has_mailto_when_configured(tmp_path: Path, server: MailServer) -> None:
    site = MailSite.create(tmp_path, smtp_port=server.port,
                           mail={"unsubscribe_mailto": "leave@notes.example.org"})
    site.write_post("post", "A post")
    ids = site.add_subscribers(["ann@example.org"])
    site.create_digest()
    site.send()

    [accepted] = server.messages()
    https, mailto = unsubscribe_urls(accepted.parsed())
    assert https.startswith(f"{BASE_URL}/unsubscribe/"), "RFC 8058: the https URL first"
    assert optin.subscriber_of_link(site.engine, https.rsplit("/", 1)[1]) == ids["ann@example.org"]
    assert mailto.startswith("mailto:leave@notes.example.org")


def test_unsubscribe_links_use_mail_public_url(tmp_path: Path, server: MailServer) -> None:
    site = MailSite.create(tmp_path, smtp_port=server.port,
                           mail={"public_url": "https://mail.example.org/"})
    site.write_post("post", "A post")
    site.add_subscribers(["ann@example.org"])
    site.create_digest()
    site.send()

    [accepted] = server.messages()
    [https] = unsubscribe_urls(accepted.parsed())
    assert https.startswith("https://mail.example.org/unsubscribe/")


def test_hostile_titles_are_escaped_and_never_reach_a_header(
    site: MailSite, server: MailServer
) -> None:
    for minute, title in enumerate(HOSTILE_TITLES):
        site.write_post(f"hostile-{minute}", title,
                        published=site.now - timedelta(minutes=30 - minute),
                        summary=f"<i>{title}</i>")
    site.add_subscribers(["ann@example.org"])
    plan = site.create_digest()
    assert len(plan.posts) == len(HOSTILE_TITLES)

    site.send()

    [accepted] = server.messages()
    message = accepted.parsed()
    assert {k.lower() for k in message} == DIGEST_HEADERS, "no header was added"
    for name, value in message.items():
        assert not re.search(r"[\x00-\x1f\x7f]", str(value)), (name, value)
    text, html = bodies(message)
    expected = [clean_text(t) for t in HOSTILE_TITLES]
    found = links_in(html)
    assert found.titles == expected, "the HTML shows each title as text, exactly"
    assert found.scripts == 0 and "<script>" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;" in html
    for title in expected:
        assert title in text, "the text part carries the title as plain text"
    assert "&lt;" not in text and "&amp;" not in text


def test_a_hostile_single_title_is_the_whole_subject(site: MailSite, server: MailServer) -> None:
    title = "=?utf-8?q?Hi=0D=0ABcc:_injected@example.com?= \r\nX-Evil: 1"
    site.write_post("hostile", title)
    site.add_subscribers(["ann@example.org"])
    site.create_digest()
    site.send()

    [accepted] = server.messages()
    message = accepted.parsed()
    assert {k.lower() for k in message} == DIGEST_HEADERS
    assert str(message["Subject"]) == f"{SITE_TITLE}: {clean_text(title)}"
    assert server.per_recipient() == {"ann@example.org": 1}, "nobody else got a copy"


# ---- composition, property-tested -------------------------------------------------------


@pytest.fixture(scope="module")
def composer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Environment, Settings]:
    root = tmp_path_factory.mktemp("composer")
    config = root / "postroom.toml"
    config.write_text(
        f'[site]\ntitle = "{SITE_TITLE}"\nbase_url = "{BASE_URL}"\n[site.author]\nname = "T"\n',
        encoding="utf-8",
    )
    settings = load_settings(config, env={})
    return template_environment(settings.templates_dir), settings


def digest_post(title: str, summary: str = "A summary.") -> DigestPost:
    return DigestPost("tag:x,2025:/posts/p", "p", title, f"{BASE_URL}/posts/p/", summary,
                      datetime(2025, 10, 3, 9, 0, tzinfo=UTC))


def render_for(prepared: PreparedMessage) -> EmailMessage:
    link = f"{BASE_URL}/unsubscribe/tok"
    raw = prepared.for_recipient("ann@example.org", "<m.1@notes.example.org>",
                                 datetime(2025, 10, 3, tzinfo=UTC), link, (link,))
    assert raw.isascii()
    return parse(raw)


# Titles as a post carries them: any text, cleaned to one line by the post parser.
post_titles = st.text(min_size=1, max_size=200).map(clean_text).filter(bool)


@settings(max_examples=150, deadline=None)
@given(title=post_titles)
@example(title="=?utf-8?q?a=0D=0ABcc:_evil@example.com?=")
@example(title="=?utf-8?b?SGVsbG8NCkJjYzogZXZpbEBleGFtcGxlLmNvbQ==?= tail")
@example(title="x" * 300)
@example(title="日本語日本語日本語日本語 これは テスト")  # folded: the space must survive
@example(title="0𐀀𐀀𐀀𐀀𐀀𐀀𐀀𐀀 ¡ ¡")
@example(title="<script>&amp; \"'")
def test_any_title_gives_exactly_its_subject_and_no_header(
    composer: tuple[Environment, Settings], title: str
) -> None:
    environment, site_settings = composer
    message = render_for(compose_digest(environment, site_settings, [digest_post(title)]))
    assert {k.lower() for k in message} == DIGEST_HEADERS
    assert str(message["Subject"]) == f"{SITE_TITLE}: {title}"
    text, html = bodies(message)
    assert links_in(html).titles == [title]
    assert title in text


@pytest.mark.parametrize(
    "name", ["Tess of Test Notes", "Ahmed's \"notes\"", "Zoë, the tester",
             'Tess «the» "Tester"', "مرحبا 🎉"],
)
def test_from_display_name_reads_back_exactly(name: str) -> None:
    envelope = Envelope(name, "from@example.org", "Notes <digest.example.org>")
    message = render_for(prepare(envelope, "Subject", "text", "<p>html</p>"))
    [sender] = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (name, "from@example.org")
    assert {k.lower() for k in message} == DIGEST_HEADERS


def rfc2047(value: str) -> str:
    """Decode encoded words as RFC 2047 §6.2 says: the space between two of them is ignored.

    (The email package's address parser puts a space there; mail clients do not.)
    """
    return str(make_header(decode_header(value)))


@pytest.mark.parametrize("title", ["日本語のブログ" * 6 + " これは テスト です",
                                   "Ünïcödé wörds " * 8 + "to fold", "مدونة " * 15])
def test_a_long_non_ascii_site_title_survives_from_and_list_id(title: str) -> None:
    envelope = Envelope(title, "from@example.org", f"{title} <digest.example.org>")
    link = f"{BASE_URL}/unsubscribe/tok"
    raw = prepare(envelope, "Subject", "text", "<p>html</p>").for_recipient(
        "ann@example.org", "<m@x>", datetime.now(UTC), link, (link,))

    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    message = parse(raw)
    assert {k.lower() for k in message} == DIGEST_HEADERS
    assert str(message["List-Id"]) == f"{title} <digest.example.org>"
    assert message["From"].addresses[0].addr_spec == "from@example.org"
    head = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    phrase, _, address = str(head["From"]).rpartition(" <")
    assert (rfc2047(phrase), address) == (title, "from@example.org>")


# ---- the header guards ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["a\r\nBcc: x@example.org", "a\nb", "a\rb", "tab\there",
                                   "nul\x00", "del\x7f"])
def test_one_line_rejects_line_breaks_and_controls(value: str) -> None:
    with pytest.raises(HeaderInjection):
        one_line(value)


def test_one_line_accepts_ordinary_text() -> None:
    assert one_line("Tom & Jerry: 🎉 “quoted” עברית") == "Tom & Jerry: 🎉 “quoted” עברית"


ENVELOPE = Envelope("Notes", "from@example.org", "Notes <digest.example.org>")


@pytest.mark.parametrize(
    "envelope, subject",
    [
        (ENVELOPE, "Subject\r\nBcc: x@example.org"),
        (Envelope("Notes\nBcc: x@example.org", "from@example.org", "L <l.example.org>"), "S"),
        (Envelope("Notes", "from@example.org\r\nBcc: x@example.org", "L <l.example.org>"), "S"),
        (Envelope("Notes", "from@example.org", "L\n<l.example.org>"), "S"),
        (Envelope("Notes", "f@example.org", "L <l.example.org>", reply_to="r@x.org\nBcc: y"), "S"),
    ],
)
def test_prepare_rejects_header_injection(envelope: Envelope, subject: str) -> None:
    with pytest.raises(HeaderInjection):
        prepare(envelope, subject, "text", "<p>html</p>")


@pytest.mark.parametrize(
    "to, message_id, link",
    [
        ("ann@example.org\r\nBcc: x@example.org", "<m@x>", "https://x/u"),
        ("ann@example.org", "<m@x>\nBcc: x@example.org", "https://x/u"),
        ("ann@example.org", "<m@x>", "https://x/u\r\nBcc: x@example.org"),
    ],
)
def test_for_recipient_rejects_header_injection(to: str, message_id: str, link: str) -> None:
    prepared = prepare(ENVELOPE, "Subject", "text", "<p>html</p>")
    with pytest.raises(HeaderInjection):
        prepared.for_recipient(to, message_id, datetime.now(UTC), link, (link,))


def test_reply_to_is_written_when_configured() -> None:
    envelope = Envelope("Notes", "from@example.org", "Notes <digest.example.org>",
                        reply_to="me@example.org")
    raw = prepare(envelope, "Subject", "text", "<p>html</p>").for_recipient(
        "ann@example.org", "<m@x>", datetime.now(UTC), "https://x/u", ("https://x/u",))
    assert str(parse(raw)["Reply-To"]) == "me@example.org"


# ---- the spliced message: built once per digest, a splice per recipient -----------------

SPLICE_TEXT = (
    "Hello reader. " * 12 + "\n"
    ".A line that starts with a dot, which SMTP must stuff.\n"
    "Zoë's café — unicode, and a long line " + "x" * 120 + "\n"
    f"Unsubscribe: {LINK_PLACEHOLDER}\n"
)
SPLICE_HTML = (
    "<p>" + "Hello <b>reader</b> é. " * 30 + "</p>\n"
    f'<p><a href="{LINK_PLACEHOLDER}">Unsubscribe</a> or copy {LINK_PLACEHOLDER} here.</p>\n'
    ".dotted\n"
)


def reference_message(envelope: Envelope, subject: str, to: str, message_id: str,
                      date: datetime, link: str) -> EmailMessage:
    """The same message built the slow way: the email package, per recipient, whole."""
    reference = EmailMessage(policy=policy.SMTP)
    reference["From"] = f"{envelope.from_name} <{envelope.from_address}>"
    reference["Subject"] = subject
    reference["List-Id"] = envelope.list_id
    reference["To"] = to
    reference["Date"] = format_datetime(date)
    reference["Message-ID"] = message_id
    reference["List-Unsubscribe"] = f"<{link}>"
    reference["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    reference.set_content(SPLICE_TEXT.replace(LINK_PLACEHOLDER, link), cte="quoted-printable")
    reference.add_alternative(SPLICE_HTML.replace(LINK_PLACEHOLDER, link), subtype="html",
                              cte="quoted-printable")
    return parse(reference.as_bytes())


def lines_of(text: str) -> list[str]:
    return text.splitlines()


links = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.",
                min_size=1, max_size=150).map(lambda t: f"https://notes.example.org/u/{t}")


@settings(max_examples=100, deadline=None)
@given(link=links)
@example(link="https://notes.example.org/unsubscribe/" + "a" * 38 + "." + "b" * 40)
@example(link="https://n.org/" + "." * 100)
def test_a_spliced_message_reads_exactly_as_the_fully_built_reference(link: str) -> None:
    prepared = prepare(ENVELOPE, "Spliced", SPLICE_TEXT, SPLICE_HTML)
    date = datetime(2025, 10, 3, 9, 30, tzinfo=UTC)
    spliced_bytes = prepared.for_recipient("ann@example.org", "<m.1@x>", date, link, (link,))
    spliced = parse(spliced_bytes)
    reference = reference_message(ENVELOPE, "Spliced", "ann@example.org", "<m.1@x>", date, link)

    assert not spliced.defects and not any(p.defects for p in spliced.iter_parts())
    for name in ("From", "Subject", "List-Id", "To", "Date", "Message-ID", "List-Unsubscribe",
                 "List-Unsubscribe-Post"):
        assert str(spliced[name]).strip() == str(reference[name]).strip(), name
    assert [lines_of(p.get_content()) for p in spliced.iter_parts()] == [
        lines_of(p.get_content()) for p in reference.iter_parts()]
    # Quoted-printable's line limit holds in the bodies, whatever the link.
    body = spliced_bytes.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    assert b"\n" not in spliced_bytes.replace(b"\r\n", b"")
    # On the wire it is exactly the message, dot-stuffed and ended, as any SMTP client would.
    wire = prepared.for_wire("ann@example.org", "<m.1@x>", date, link, (link,))
    assert wire == as_data(spliced_bytes)


def test_two_recipients_messages_differ_only_in_their_own_values() -> None:
    prepared = prepare(ENVELOPE, "Spliced", SPLICE_TEXT, SPLICE_HTML)
    date = datetime(2025, 10, 3, 9, 30, tzinfo=UTC)
    ann_link = "https://notes.example.org/unsubscribe/AnnPublicId01.AnnSecretKey" + "1" * 20
    bob_link = "https://notes.example.org/unsubscribe/BobPublicId02.BobSecretKey" + "2" * 20
    ann = prepared.for_recipient("ann@example.org", "<m.1@x>", date, ann_link, (ann_link,))
    bob = prepared.for_recipient("bob@example.org", "<m.2@x>", date, bob_link, (bob_link,))

    def qp(value: str) -> bytes:
        return binascii.b2a_qp(value.encode(), istext=True).replace(b"\n", b"\r\n")

    swapped = (ann.replace(b"ann@example.org", b"bob@example.org")
               .replace(b"<m.1@x>", b"<m.2@x>")
               .replace(ann_link.encode(), bob_link.encode())
               .replace(qp(ann_link), qp(bob_link)))
    assert swapped == bob
    assert ann != bob

"""Read a feed file the way readers do, checking it is well-formed on the way.

Each feed is parsed twice: with lxml (strict XML; the source of the values returned) and
with feedparser (what most readers use; it must not flag the feed as `bozo`, and it must
agree with lxml on every entry). The three formats come back as one shape, so a test
compares them all against the same expected posts.
"""

from __future__ import annotations

import calendar
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime

import feedparser
import lxml.html
from lxml import etree

ATOM = "{http://www.w3.org/2005/Atom}"
DC = "{http://purl.org/dc/elements/1.1/}"
CONTENT = "{http://purl.org/rss/1.0/modules/content/}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"

RFC_3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)")
RFC_822 = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}"
)
RSS_AUTHOR = re.compile(r"(?P<email>\S+@\S+) \((?P<name>.*)\)")


@dataclass
class Entry:
    id: str
    title: str
    link: str
    published: datetime
    updated: datetime | None  # RSS items have no updated time
    summary: str  # plain text (Atom and RSS: the text of summary_html)
    content_html: str | None
    authors: list[str]  # names; Atom and JSON entries inherit the feed's (RSS has no such rule)
    categories: list[str]
    author_emails: list[str] = field(default_factory=list)
    permalink: bool | None = None  # RSS guid isPermaLink
    summary_html: str | None = None  # Atom <summary type="html">, RSS <description>


@dataclass
class Feed:
    format: str
    title: str
    subtitle: str | None
    self_link: str
    alternate_link: str
    language: str
    updated: datetime | None  # JSON Feed has no feed-level time
    generator: str | None
    authors: list[str]
    entries: list[Entry]


def parse_xml(data: bytes) -> etree._Element:
    """Parse bytes as XML 1.0, raising on anything not well-formed; resolve no entities."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, recover=False)
    return etree.fromstring(data, parser)


def rfc_3339(text: str) -> datetime:
    """Given an RFC 3339 date-time with an offset, return it as an aware datetime."""
    assert RFC_3339.fullmatch(text), f"not an RFC 3339 date-time with an offset: {text!r}"
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() is not None
    return parsed


def rfc_822(text: str) -> datetime:
    """Given an RSS date, check it is RFC 822 with a numeric offset and return it."""
    assert RFC_822.fullmatch(text), f"not an RFC 822 date with a numeric offset: {text!r}"
    return parsedate_to_datetime(text)


def read_feed(name: str, data: bytes) -> Feed:
    """Given a feed file's name and bytes, return it read (the suffix names the format)."""
    suffix = name.rsplit(".", 1)[-1]
    readers = {"atom": read_atom, "rss": read_rss, "json": read_json}
    return readers[suffix](data)


def read_atom(data: bytes) -> Feed:
    root = parse_xml(data)
    assert root.tag == f"{ATOM}feed"
    authors = [a.findtext(f"{ATOM}name") or "" for a in root.findall(f"{ATOM}author")]
    links = {link.get("rel", "alternate"): link for link in root.findall(f"{ATOM}link")}
    assert links["self"].get("type") == "application/atom+xml"
    entries = [_atom_entry(e, authors) for e in root.findall(f"{ATOM}entry")]
    for element in [root, *root.findall(f"{ATOM}entry")]:
        # RFC 4287: exactly one id, title and updated per feed and per entry.
        for tag in ("id", "title", "updated"):
            assert len(element.findall(f"{ATOM}{tag}")) == 1, f"not one atom:{tag}"
    feed = Feed(
        format="atom",
        title=_atom_text(root.find(f"{ATOM}title")),
        subtitle=_atom_text(root.find(f"{ATOM}subtitle")),
        self_link=links["self"].get("href"),
        alternate_link=links["alternate"].get("href"),
        language=root.get(XML_LANG),
        updated=rfc_3339(root.findtext(f"{ATOM}updated")),
        generator=root.findtext(f"{ATOM}generator"),
        authors=authors,
        entries=entries,
    )
    _agree_with_feedparser(feed, data)
    return feed


def _atom_text(element: etree._Element | None) -> str | None:
    if element is None:
        return None
    # Text constructs postroom writes are plain text (no type, or type="text").
    assert element.get("type", "text") == "text"
    return element.text or ""


def _atom_entry(element: etree._Element, feed_authors: list[str]) -> Entry:
    links = [
        link.get("href")
        for link in element.findall(f"{ATOM}link")
        if link.get("rel", "alternate") == "alternate"
    ]
    assert len(links) == 1
    content = element.find(f"{ATOM}content")
    if content is not None:
        assert content.get("type") == "html"
    authors = element.findall(f"{ATOM}author")
    summary = element.find(f"{ATOM}summary")
    # postroom's summaries are HTML (rendered from the post's Markdown summary).
    assert summary is not None and summary.get("type") == "html"
    return Entry(
        id=element.findtext(f"{ATOM}id"),
        title=_atom_text(element.find(f"{ATOM}title")) or "",
        link=links[0],
        published=rfc_3339(element.findtext(f"{ATOM}published")),
        updated=rfc_3339(element.findtext(f"{ATOM}updated")),
        summary=html_text(summary.text or ""),
        summary_html=summary.text or "",
        content_html=None if content is None else content.text or "",
        authors=[a.findtext(f"{ATOM}name") for a in authors] or feed_authors,
        author_emails=[a.findtext(f"{ATOM}email") for a in authors if a.find(f"{ATOM}email")
                       is not None],
        categories=[c.get("term") for c in element.findall(f"{ATOM}category")],
    )


def read_rss(data: bytes) -> Feed:
    root = parse_xml(data)
    assert root.tag == "rss" and root.get("version") == "2.0"
    (channel,) = root.findall("channel")
    self_links = [
        link for link in channel.findall(f"{ATOM}link") if link.get("rel") == "self"
    ]
    assert len(self_links) == 1, "RSS needs exactly one atom:link rel=self"
    assert self_links[0].get("type") == "application/rss+xml"
    for tag in ("title", "link", "description"):
        assert channel.findtext(tag), f"RSS channel requires <{tag}>"
    feed = Feed(
        format="rss",
        title=channel.findtext("title"),
        subtitle=channel.findtext("description"),
        self_link=self_links[0].get("href"),
        alternate_link=channel.findtext("link"),
        language=channel.findtext("language"),
        updated=rfc_822(channel.findtext("lastBuildDate")),
        generator=channel.findtext("generator"),
        authors=[],
        entries=[_rss_item(item) for item in channel.findall("item")],
    )
    _agree_with_feedparser(feed, data)
    return feed


def _rss_item(item: etree._Element) -> Entry:
    guid = item.find("guid")
    description = item.findtext("description") or ""  # HTML
    authors = [RSS_AUTHOR.fullmatch(a.text or "") for a in item.findall("author")]
    assert all(authors), "RSS <author> must be 'email (name)'"
    return Entry(
        id=guid.text,
        title=item.findtext("title"),
        link=item.findtext("link"),
        published=rfc_822(item.findtext("pubDate")),
        updated=None,
        summary=html_text(description),
        summary_html=description,
        content_html=item.findtext(f"{CONTENT}encoded"),
        authors=[m["name"] for m in authors if m] + [c.text for c in item.findall(f"{DC}creator")],
        author_emails=[m["email"] for m in authors if m],
        categories=[c.text for c in item.findall("category")],
        permalink=guid.get("isPermaLink", "true") == "true",
    )


def read_json(data: bytes) -> Feed:
    document = json.loads(data.decode("utf-8"))
    assert document["version"] == JSON_FEED_VERSION
    authors = [a["name"] for a in document.get("authors", [])]
    entries = []
    for item in document["items"]:
        # JSON Feed 1.1: every item has an id and content_html or content_text.
        assert isinstance(item["id"], str) and item["id"]
        assert "content_html" in item or "content_text" in item
        entries.append(
            Entry(
                id=item["id"],
                title=item["title"],
                link=item["url"],
                published=rfc_3339(item["date_published"]),
                updated=rfc_3339(item["date_modified"]),
                summary=item["summary"],
                content_html=item.get("content_html"),
                authors=[a["name"] for a in item.get("authors", [])] or authors,
                categories=item.get("tags", []),
            )
        )
    feed = Feed(
        format="json",
        title=document["title"],
        subtitle=document.get("description"),
        self_link=document["feed_url"],
        alternate_link=document["home_page_url"],
        language=document["language"],
        updated=None,
        generator=None,
        authors=authors,
        entries=entries,
    )
    return feed


def _agree_with_feedparser(feed: Feed, data: bytes) -> None:
    """Check feedparser reads the same feed without complaint."""
    parsed = feedparser.parse(data)
    assert not parsed.bozo, f"feedparser: {parsed.get('bozo_exception')!r}"
    assert parsed.feed.get("language") == feed.language
    assert len(parsed.entries) == len(feed.entries)
    for read, entry in zip(parsed.entries, feed.entries, strict=True):
        assert read.id == entry.id
        assert read.link == entry.link
        terms = [t.term for t in read.get("tags", [])]
        if feed.format == "atom":  # an attribute: feedparser leaves it as it is
            assert terms == entry.categories
        else:
            assert terms == [as_feedparser_reads(c) for c in entry.categories]
        assert calendar.timegm(read.published_parsed) == int(entry.published.timestamp())
        # feedparser sanitises a summary's HTML: its text must be the summary's.
        assert html_text(read.summary) == as_feedparser_reads(entry.summary)
        if feed.format == "atom":
            assert read.title == as_feedparser_reads(entry.title)
        else:
            # feedparser sniffs an RSS title for markup; when it reads it as plain text,
            # it must be exactly the title.
            if read.title_detail.type == "text/plain":
                assert read.title == as_feedparser_reads(entry.title)


def html_text(fragment: str) -> str:
    """Given an HTML fragment, return its text as a reader shows it: entities decoded,
    images as their alt text, white space collapsed."""
    if not fragment.strip():
        return ""
    root = lxml.html.fragment_fromstring(fragment, create_parent="div")
    for image in root.iter("img"):
        image.text = image.get("alt", "")
    return " ".join(str(root.text_content()).split())


def as_feedparser_reads(text: str) -> str:
    """Return text as feedparser gives it back from a correct UTF-8 feed.

    feedparser "repairs" text that looks like UTF-8 misread as Latin-1 ('Ã©' → 'é'), for
    every feed: a reader's guess no feed can opt out of, applied here to the expected text.
    """
    try:
        return text.encode("iso-8859-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text

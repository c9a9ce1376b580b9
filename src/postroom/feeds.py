"""Rendered posts → Atom 1.0, RSS 2.0 and JSON Feed 1.1 bytes. Pure and deterministic.

Nothing here reads the clock: a feed's `updated` is its newest entry's, so the same posts
always give the same bytes and a web server's ETag stays stable.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from feedgen.feed import FeedGenerator

from postroom import __version__
from postroom.config import FeedFormat, Settings
from postroom.feedhistory import History
from postroom.historyext import add_history
from postroom.posts import tag_slug
from postroom.render import RenderedPost

GENERATOR_URI = "https://pypi.org/project/postroom/"
# An empty feed still needs an `updated`; "now" would change the bytes on every build.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MEDIA_TYPES: dict[str, str] = {
    "atom": "application/atom+xml",
    "rss": "application/rss+xml",
    "json": "application/feed+json",
}
SUFFIXES: dict[str, str] = {"atom": "atom", "rss": "rss", "json": "json"}
STYLESHEET = "feed.xsl"


def _text_elements(*names: str) -> re.Pattern[bytes]:
    """A pattern for leaf elements holding plain text, by qualified name as lxml writes them."""
    alternatives = "|".join(re.escape(name) for name in names)
    return re.compile(
        rf"(?P<open><(?P<name>{alternatives})(?:\s[^>]*)?>)(?P<text>[^<]+)(?P<close></(?P=name)>)"
        .encode())


# Plain text in the feeds (RSS: everything but an item's <description>, which is HTML, and
# content:encoded; Atom: text constructs and person names; the summary is type="html").
RSS_CHANNEL_TEXT = _text_elements("title", "description", "generator", "category",
                                  "copyright", "managingEditor", "webMaster")
RSS_ITEM_TEXT = _text_elements("title", "author", "category", "dc:creator")
ATOM_TEXT = _text_elements("title", "subtitle", "rights", "name", "generator")


@dataclass(frozen=True)
class FeedSpec:
    """What one feed file is: its format, where it lives, and its feed-level fields."""

    format: FeedFormat
    path: str  # relative to the output folder, e.g. "feed.atom" or "tags/rust.rss"
    title: str
    subtitle: str
    self_url: str
    home_url: str
    language: str
    author_name: str
    author_email: str | None
    author_url: str | None
    full_content: bool
    stylesheet: str | None = None  # XSL shown by browsers that open the feed
    hub: str | None = None  # the WebSub hub the feed advertises (rel="hub")
    history: History | None = None  # RFC 5005: complete, or an archive, and its links


def plan_feeds(settings: Settings, tags: Sequence[str]) -> list[tuple[FeedSpec, str | None]]:
    """Given the settings and the published tags, return each feed to build and its tag."""
    site, feeds = settings.site, settings.feeds
    plans: list[tuple[FeedSpec, str | None]] = []
    scopes: list[tuple[str | None, str, str]] = [(None, "feed", site.title)]
    if feeds.per_tag:
        scopes += [(tag, f"tags/{tag_slug(tag)}", f"{site.title}: {tag}") for tag in tags]
    for tag, stem, title in scopes:
        for fmt in feeds.formats:
            path = f"{stem}.{SUFFIXES[fmt]}"
            spec = FeedSpec(
                format=fmt,
                path=path,
                title=title,
                subtitle=site.subtitle,
                self_url=f"{settings.feeds_url}/{path}",
                home_url=site.base_url + "/",
                language=site.language,
                author_name=site.author.name,
                author_email=site.author.email,
                author_url=site.author.url,
                full_content=feeds.content == "full",
                # Path-absolute: browsers apply only a same-origin stylesheet.
                stylesheet=f"{urlsplit(settings.feeds_url).path}/{STYLESHEET}"
                if feeds.for_browsers == "xsl" else None,
                hub=feeds.hub,
            )
            plans.append((spec, tag))
    return plans


def render_feed(spec: FeedSpec, entries: Sequence[RenderedPost]) -> bytes:
    """Given a feed's spec and its entries (newest first), return the feed file's bytes."""
    if spec.format == "json":
        return _json_feed(spec, entries)
    generator = _feed_generator(spec, entries)
    if spec.history is not None:
        add_history(generator, spec.history)
    if spec.format == "atom":
        xml = plain_text_references(bytes(generator.atom_str(pretty=True, encoding="UTF-8")),
                                    ATOM_TEXT, ATOM_TEXT)
    else:
        rss = plain_text_references(bytes(generator.rss_str(pretty=True, encoding="UTF-8")),
                                    RSS_CHANNEL_TEXT, RSS_ITEM_TEXT)
        xml = _with_rss_hub(rss, spec.hub)
    return _with_stylesheet(xml, spec.stylesheet)


def plain_text_references(xml: bytes, head: re.Pattern[bytes], entries: re.Pattern[bytes]
                          ) -> bytes:
    """Given a feed's bytes as lxml wrote them, return them with '&', '<' and '>' in the
    text of plain-text elements written as &#x26; &#x3C; &#x3E;: the form the RSS Advisory
    Board's profile asks for (readers differ on what &amp;lt; means in an RSS title) and
    the one the W3C validator accepts there. `head` finds those elements before the first
    entry, `entries` after it. The elements are leaves (lxml escapes every '<' in text),
    so their text is exactly what lies between the tags; markup is never touched.
    """
    start = min((i for i in (xml.find(b"<item>"), xml.find(b"<entry>")) if i >= 0),
                default=len(xml))
    return (head.sub(_hex_references, xml[:start])
            + entries.sub(_hex_references, xml[start:]))


def _hex_references(match: re.Match[bytes]) -> bytes:
    text = match["text"].replace(b"&amp;", b"&#x26;").replace(b"&lt;", b"&#x3C;")
    return match["open"] + text.replace(b"&gt;", b"&#x3E;") + match["close"]


def _with_rss_hub(xml: bytes, hub: str | None) -> bytes:
    """Insert an atom:link rel="hub" after the channel's atom:link rel="self" (feedgen
    writes only the self link into RSS)."""
    if not hub:
        return xml
    start = xml.index(b"<atom:link ")
    while b'rel="self"' not in xml[start:xml.index(b"/>", start)]:
        start = xml.index(b"<atom:link ", start + 1)
    end = xml.index(b"/>", start) + 2
    indent = xml[xml.rindex(b"\n", 0, start):start]
    link = f'<atom:link href="{html.escape(hub)}" rel="hub"/>'.encode()
    return xml[:end] + indent + link + xml[end:]


def _with_stylesheet(xml: bytes, href: str | None) -> bytes:
    """Insert an xml-stylesheet instruction after the XML declaration."""
    if not href:
        return xml
    declaration, newline, rest = xml.partition(b"\n")
    instruction = f'<?xml-stylesheet href="{html.escape(href)}" type="text/xsl"?>'
    return declaration + newline + instruction.encode("utf-8") + b"\n" + rest


def feed_updated(entries: Sequence[RenderedPost]) -> datetime:
    """Return a feed's last-updated time: its newest entry's, never the clock's."""
    return max((e.updated for e in entries), default=EPOCH)


def _feed_generator(spec: FeedSpec, entries: Sequence[RenderedPost]) -> FeedGenerator:
    fg = FeedGenerator()
    fg.load_extension("dc", atom=False, rss=True)
    fg.id(spec.self_url)
    fg.title(spec.title)
    # RSS requires a description; Atom's subtitle is optional: write it only when configured.
    if spec.subtitle or spec.format == "rss":
        fg.description(spec.subtitle or spec.title)
    # Order matters: feedgen takes RSS's <link> from the last link set, and it must be the site.
    fg.link(href=spec.self_url, rel="self", type=MEDIA_TYPES[spec.format])
    if spec.hub and spec.format == "atom":
        fg.link(href=spec.hub, rel="hub")  # WebSub discovery; RSS: _with_rss_hub
    fg.link(href=spec.home_url, rel="alternate", type="text/html")
    fg.language(spec.language)
    fg.author(_author_dict(spec.author_name, spec.author_email, spec.author_url))
    fg.generator("postroom", version=__version__, uri=GENERATOR_URI)
    fg.updated(feed_updated(entries))
    for entry in entries:
        _add_entry(fg, spec, entry)
    return fg


def _add_entry(fg: FeedGenerator, spec: FeedSpec, entry: RenderedPost) -> None:
    fe = fg.add_entry(order="append")
    # A tag: URI is not a URL, so RSS must not call it a permalink.
    fe.guid(entry.entry_id, permalink=entry.entry_id == entry.url)
    fe.title(entry.title)
    fe.link(href=entry.url, rel="alternate", type="text/html")
    fe.published(entry.published)
    fe.updated(entry.updated)
    # The summary as HTML: Atom's <summary type="html"> and, through feedgen, RSS's
    # <description> (the spec's "entity-encoded HTML"). A post without one shows its title.
    fe.summary(entry.summary_html or html.escape(entry.title, quote=False), type="html")
    if spec.full_content:
        fe.content(entry.content_html, type="html")
    for tag in entry.tags:
        fe.category(term=tag)
    author = entry.author
    if author is not None:
        fe.author(_author_dict(author.name, author.email, None))
        if not author.email:
            # RSS <author> must be an address; dc:creator carries a bare name.
            fe.dc.dc_creator(author.name)
    else:
        # Atom and JSON Feed entries inherit the feed's author; RSS items inherit nothing,
        # so name the site's author on each (dc is loaded for RSS only).
        fe.dc.dc_creator(spec.author_name)


def _author_dict(name: str, email: str | None, uri: str | None) -> dict[str, str]:
    author = {"name": name}
    if email:
        author["email"] = email
    if uri:
        author["uri"] = uri
    return author


def _json_feed(spec: FeedSpec, entries: Sequence[RenderedPost]) -> bytes:
    feed: dict[str, Any] = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": spec.title,
        "home_page_url": spec.home_url,
        "feed_url": spec.self_url,
        "language": spec.language,
        "authors": [_json_author(spec.author_name, spec.author_url)],
        "items": [_json_item(spec, entry) for entry in entries],
    }
    if spec.subtitle:
        feed["description"] = spec.subtitle
    if spec.hub:
        feed["hubs"] = [{"type": "WebSub", "url": spec.hub}]
    text = json.dumps(feed, ensure_ascii=False, indent=2)
    return (text + "\n").encode("utf-8")


def _json_item(spec: FeedSpec, entry: RenderedPost) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": entry.entry_id,
        "url": entry.url,
        "title": entry.title,
        "summary": entry.summary or entry.title,
        "date_published": entry.published.isoformat(),
        "date_modified": entry.updated.isoformat(),
    }
    # JSON Feed requires content_html or content_text; a summary-only feed gives the summary.
    if spec.full_content:
        item["content_html"] = entry.content_html
    else:
        item["content_text"] = entry.summary or entry.title
    if entry.tags:
        item["tags"] = list(entry.tags)
    if entry.author is not None:
        item["authors"] = [_json_author(entry.author.name, None)]
    return item


def _json_author(name: str, url: str | None) -> dict[str, str]:
    return {"name": name, "url": url} if url else {"name": name}

"""Pages for people: what a browser shows for a feed, and the blog's <head> links to them.

Browsers are removing XSLT, so a feed opened in one is no longer made readable by a
stylesheet. Instead each feed has an HTML page of its own (`feed.html`, `tags/<tag>.html`,
written by the build beside the feeds): the web app answers a browser's request for a feed
with it, and a static host can link to it. `feeds-head.html` holds the `<link
rel="alternate">` lines for the blog's `<head>`, so readers find the feeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

from postroom.config import Settings

if TYPE_CHECKING:
    from jinja2 import Environment

    from postroom.feeds import FeedSpec
    from postroom.render import RenderedPost

PAGE_TEMPLATE = "feed_page.html"
HEAD_SNIPPET = "feeds-head.html"
LABELS = {"atom": "Atom", "rss": "RSS", "json": "JSON Feed"}
MEDIA_TYPES = {"atom": "application/atom+xml", "rss": "application/rss+xml",
               "json": "application/feed+json"}


def page_path(feed_path: str) -> str:
    """Given a feed file's path, return its page's ("tags/rust.atom" → "tags/rust.html")."""
    return feed_path.rsplit(".", 1)[0] + ".html"


def feed_formats(settings: Settings, feed_path: str) -> list[dict[str, str]]:
    """The addresses of one feed in every format the site writes, for a page or a head."""
    stem = feed_path.rsplit(".", 1)[0]
    return [{"format": fmt, "label": LABELS[fmt], "media_type": MEDIA_TYPES[fmt],
             "url": f"{settings.feeds_url}/{stem}.{fmt}"} for fmt in settings.feeds.formats]


def render_feed_page(templates: Environment, settings: Settings, spec: FeedSpec,
                     entries: Sequence[RenderedPost]) -> bytes:
    """Given a feed and its entries (newest first), return its HTML page's bytes."""
    from postroom.templates import render

    site = settings.site
    context = {
        "site": {"title": site.title, "url": site.base_url + "/", "language": site.language},
        "feed": {"title": spec.title, "subtitle": spec.subtitle,
                 "formats": feed_formats(settings, spec.path)},
        "entries": list(entries),
        "subscribe_url": settings.public_url + "/subscribe",
    }
    return render(templates, PAGE_TEMPLATE, context).encode("utf-8")


def head_snippet(settings: Settings) -> bytes:
    """The `<link rel="alternate">` lines that announce the main feed, for the blog's <head>."""
    title = settings.site.title
    lines = [f'<link rel="alternate" type="{f["media_type"]}" '
             f'title="{escape(title)} ({f["label"]})" href="{escape(f["url"])}">'
             for f in feed_formats(settings, "feed.atom")]
    return ("\n".join(lines) + "\n").encode("utf-8")

"""Feeds for people without XSLT: an HTML page per feed, written by the build (for static
hosting) and served by the web app to a browser that asks for the feed; the <head> links."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from lxml import html

from daemonproc import DaemonSite, free_port
from postroom.web.feedfiles import FeedFiles, choose, prefers_html
from sites import NOW, Site

CHROME = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
READER = "application/atom+xml,application/rss+xml;q=0.9,*/*;q=0.8"
IDENTITY = {"Accept-Encoding": "identity"}


@pytest.mark.parametrize(("accept", "html_first"), [
    (CHROME, True),
    ("text/html", True),
    ("application/xhtml+xml;q=0.9, application/xml;q=0.8", True),
    (READER, False),
    ("*/*", False),
    ("", False),
    ("application/atom+xml, text/html;q=0.1", False),
    ("text/html;q=0.5, application/rss+xml;q=0.5", False),  # a tie is the feed's
    ("text/html;q=0", False),
    ("text/html;q=junk, application/json;q=0.1", False),
])
def test_a_browser_is_told_from_a_feed_reader_by_its_accept_header(
        accept: str, html_first: bool) -> None:
    assert prefers_html(accept.encode()) is html_first


def test_the_build_writes_a_page_per_feed_and_the_head_links(site: Site) -> None:
    site.write_post("a.md", "A.\n", title="Fish & <chips>", date=date(2025, 1, 1),
                    tags=["food"], summary="**Crisp**, & <b>hot</b>")
    report = site.build(NOW)
    assert {"feed.html", "tags/food.html", "feeds-head.html"} <= set(report.written)
    assert not (site.output / "feed.xsl").exists()
    assert b"xml-stylesheet" not in site.feed("feed.atom")
    page = html.fromstring(site.feed("feed.html"))
    # Escaped where it is text, rendered where it is the summary's Markdown.
    assert page.xpath("string(//article/h3/a)") == "Fish & <chips>"
    assert page.xpath("string(//article//strong)") == "Crisp"
    assert not page.xpath("//article//b") and not page.xpath("//script")
    addresses = page.xpath("//ul[@class='feeds']//a/@href")
    assert addresses == [f"https://blog.example.org/feed.{f}" for f in ("atom", "rss", "json")]
    assert html.fromstring(site.feed("tags/food.html")).xpath(
        "//ul[@class='feeds']//a/@href")[0] == "https://blog.example.org/tags/food.atom"
    head = site.feed("feeds-head.html").decode()
    assert head.splitlines()[0] == ('<link rel="alternate" type="application/atom+xml" '
                                    'title="Test blog (Atom)" '
                                    'href="https://blog.example.org/feed.atom">')
    assert len(head.splitlines()) == 3


def test_the_xsl_stylesheet_is_an_opt_in(make_site: Callable[..., Site]) -> None:
    site = make_site(feeds={"for_browsers": "xsl"})
    site.write_post("a.md", "A.\n", title="A", date=date(2025, 1, 1))
    report = site.build(NOW)
    assert "feed.xsl" in report.written and "feed.html" not in report.feeds
    assert b'<?xml-stylesheet href="/feed.xsl" type="text/xsl"?>' in site.feed("feed.atom")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonSite]:
    root = tmp_path_factory.mktemp("pages") / "site"
    with DaemonSite.create(root, smtp_port=free_port()) as site:
        site.write_post("first", "First & <best>", datetime.now(UTC) - timedelta(days=1),
                        tags=("rust",))
        assert site.run("build").returncode == 0
        site.start("serve").wait_healthy()
        yield site


@pytest.fixture
def client(served: DaemonSite) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base_url, timeout=10) as session:
        yield session


@pytest.mark.parametrize("path", ["/feed.atom", "/feed.rss", "/feed.json", "/tags/rust.atom"])
def test_a_browser_gets_the_feeds_page_with_its_own_validators(
        client: httpx.Client, served: DaemonSite, path: str) -> None:
    page_name = path.lstrip("/").rsplit(".", 1)[0] + ".html"
    as_page = client.get(path, headers={**IDENTITY, "Accept": CHROME})
    as_feed = client.get(path, headers={**IDENTITY, "Accept": READER})
    assert as_page.status_code == as_feed.status_code == 200
    assert as_page.headers["content-type"] == "text/html; charset=utf-8"
    assert as_page.content == (served.root / "public" / page_name).read_bytes()
    assert as_feed.content == (served.root / "public" / path.lstrip("/")).read_bytes()
    assert as_page.headers["etag"] != as_feed.headers["etag"]
    for response in (as_page, as_feed):
        assert "Accept" in response.headers["vary"]
    # A page may load nothing: the page policy, not the feeds'.
    assert "script-src" not in as_page.headers["content-security-policy"]
    # Each revalidates against its own ETag, and only its own.
    again = client.get(path, headers={"Accept": CHROME, "If-None-Match": as_page.headers["etag"],
                                      **IDENTITY})
    assert again.status_code == 304
    crossed = client.get(path, headers={"Accept": CHROME, "If-None-Match": as_feed.headers["etag"],
                                        **IDENTITY})
    assert crossed.status_code == 200 and crossed.content == as_page.content
    zipped = client.get(path, headers={"Accept": CHROME, "Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == as_page.content  # httpx decodes it


def test_the_page_follows_the_feed_after_a_rebuild(client: httpx.Client,
                                                   served: DaemonSite) -> None:
    before = client.get("/feed.atom", headers={"Accept": CHROME, **IDENTITY})
    served.write_post("second", "A second post", datetime.now(UTC) - timedelta(hours=1))
    assert served.run("build").returncode == 0
    # `serve` reads the new files at its next refresh (each second): wait for the page.
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while b"A second post" not in (after := client.get(
            "/feed.atom", headers={"Accept": CHROME, **IDENTITY})).content:
        assert datetime.now(UTC) < deadline, "the page never showed the new post"
        time.sleep(0.05)
    assert after.headers["etag"] != before.headers["etag"]
    direct = client.get("/feed.html", headers=IDENTITY)  # the page at its own URL too
    assert direct.headers["content-type"] == "text/html; charset=utf-8"
    assert direct.content == after.content


def test_archives_and_pages_are_served_and_a_pages_304_keeps_the_page_policy(
        make_site: Callable[..., Site]) -> None:
    site = make_site(feeds={"entries": 2, "archives": True, "per_tag": False})
    for n in range(1, 6):
        site.write_post(f"p{n}.md", f"Body {n}.\n", title=f"Post {n}", date=date(2025, 1, n))
    site.build(NOW)
    feeds = FeedFiles(site.output, max_age=60)
    feeds.refresh()
    assert {"archive/1.atom", "archive/2.rss", "feed.html"} <= set(feeds.snapshot)
    archive = feeds.lookup("archive/1.atom")
    assert archive is not None and archive.body == site.feed("archive/1.atom")
    feed = feeds.lookup("feed.atom")
    assert feed is not None and feed.page is not None
    page_ok = choose(feed, b"", CHROME.encode(), None, None)
    page_304 = choose(feed, b"", CHROME.encode(), dict(page_ok.wire_headers)[b"etag"], None)
    feed_304 = choose(feed, b"", READER.encode(), feed.representation(False, False).etag, None)
    assert (page_ok.status, page_304.status, feed_304.status) == (200, 304, 304)
    page_policy, page_304_policy, feed_304_policy = (
        dict(reply.wire_headers)[b"content-security-policy"]
        for reply in (page_ok, page_304, feed_304))
    assert page_304_policy == page_policy != feed_304_policy
    assert b"script-src" not in page_policy

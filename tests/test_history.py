"""Feed history (RFC 5005): complete feeds, and archives a reader can walk back through."""

from __future__ import annotations

from datetime import datetime, timedelta

import feedparser
from lxml import etree

from postroom.build import SiteBuilder
from sites import NOW, Site

FH = "{http://purl.org/syndication/history/1.0}"


def posts(site: Site, count: int, start: int = 1) -> None:
    for n in range(start, start + count):
        site.write_post(f"p{n:02}.md", f"Body {n}.\n", title=f"Post {n}",
                        date=datetime(2025, 1, 1, 10) + timedelta(days=n), tags=["t"])


def markers(site: Site, name: str) -> list[str]:
    root = etree.fromstring(site.feed(name))
    channel = root.find("channel")
    parent = channel if channel is not None else root
    return [child.tag.removeprefix(FH) for child in parent if child.tag.startswith(FH)]


def links(site: Site, name: str) -> dict[str, str]:
    feed = feedparser.parse(site.feed(name))
    assert not feed.bozo, feed.bozo_exception
    return {link.rel: link.href for link in feed.feed.links}


def local(url: str) -> str:
    return url.removeprefix("https://blog.example.org/")


def test_a_feed_that_holds_every_post_says_it_is_complete(site: Site) -> None:
    site.configure(feeds={"entries": 5})
    posts(site, 5)
    site.build(NOW)
    for name in ("feed.atom", "feed.rss", "tags/t.atom", "tags/t.rss"):
        assert markers(site, name) == ["complete"], name
    posts(site, 1, start=6)  # one more than the feed shows: no longer complete
    site.build(NOW)
    for name in ("feed.atom", "feed.rss", "tags/t.atom", "tags/t.rss"):
        assert markers(site, name) == [], name
        assert "prev-archive" not in links(site, name)  # archives are off by default


def test_archives_let_a_reader_walk_back_through_every_post(site: Site) -> None:
    site.configure(feeds={"entries": 3, "archives": True, "per_tag": False})
    posts(site, 8)
    site.build(NOW)
    for fmt in ("atom", "rss"):
        seen: list[str] = []
        name: str | None = f"feed.{fmt}"
        documents = 0
        while name is not None:
            feed = feedparser.parse(site.feed(name))
            assert not feed.bozo, (name, feed.bozo_exception)
            seen += [entry.title for entry in feed.entries]
            found = links(site, name)
            if documents:  # an archive: marked, and pointing back at the feed
                assert markers(site, name) == ["archive"]
                assert local(found["current"]) == f"feed.{fmt}"
                assert local(found["self"]) == name
            previous = found.get("prev-archive")
            name = local(previous) if previous else None
            documents += 1
        assert documents == 3  # the feed, then archive/2, then archive/1
        assert sorted(set(seen), key=lambda t: int(t.split()[1])) == [
            f"Post {n}" for n in range(1, 9)]
    assert not (site.output / "archive" / "1.json").exists()  # RFC 5005 is Atom and RSS


def test_archive_pages_are_written_only_when_their_own_posts_change(site: Site) -> None:
    site.configure(feeds={"entries": 3, "archives": True, "per_tag": False})
    posts(site, 7)  # pages: 1-3, 4-6; the feed: 5-7
    builder = SiteBuilder(site.settings())
    builder.build(NOW)
    posts(site, 1, start=8)  # still two full pages
    assert not [n for n in builder.build(NOW).written if n.startswith("archive/")]
    posts(site, 1, start=9)  # page 3 (7-9) appears; page 2 gains its next-archive link
    written = builder.build(NOW).written
    assert sorted(n for n in written if n.startswith("archive/")) == [
        "archive/2.atom", "archive/2.rss", "archive/3.atom", "archive/3.rss"]
    site.write_post("p02.md", "Edited.\n", title="Post 2, edited",
                    date=datetime(2025, 1, 3, 10), tags=["t"])
    written = builder.build(NOW).written
    assert sorted(written) == ["archive/1.atom", "archive/1.rss"]

"""Every feed file against the W3C Feed Validation Service's rules as tests/feedcheck.py
reproduces them, and every JSON Feed against the JSON Feed 1.1 schema (tests/data): the
sample blog and a generated 1,000-post blog (same-day posts, '&' and '<' in titles, tags and
names, Markdown summaries, archives, a WebSub hub) give 0 errors and 0 warnings, and
feedparser reads each XML feed cleanly. The checker itself is checked first: each rule
fires on a feed that breaks it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, timedelta

import pytest

from feedcheck import check_feed, check_json_feed
from feedreader import read_feed
from postroom.build import SiteBuilder
from postroom.config import Settings, load_settings
from sites import NOW, REPO, Site

ATOM_FEED = """<?xml version='1.0' encoding='UTF-8'?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en">
  <id>https://blog.example.org/feed.atom</id>
  <title>Notes</title>
  <updated>2025-09-28T00:00:01+02:00</updated>
  <author><name>Ann</name></author>
  <link href="https://blog.example.org/feed.atom" rel="self" type="application/atom+xml"/>
  <link href="https://blog.example.org/" rel="alternate" type="text/html"/>
  <entry>
    <id>tag:blog.example.org,2025-09-28:/posts/b</id>
    <title>B &#x26; friends</title>
    <updated>2025-09-28T00:00:01+02:00</updated>
    <link href="https://blog.example.org/posts/b/"/>
    <summary type="html">&lt;strong&gt;B&lt;/strong&gt;</summary>
    <published>2025-09-28T00:00:01+02:00</published>
  </entry>
  <entry>
    <id>tag:blog.example.org,2025-09-28:/posts/a</id>
    <title>A</title>
    <updated>2025-09-28T00:00:00+02:00</updated>
    <link href="https://blog.example.org/posts/a/"/>
    <summary type="html">A</summary>
    <published>2025-09-28T00:00:00+02:00</published>
  </entry>
</feed>
"""
RSS_FEED = """<?xml version='1.0' encoding='UTF-8'?>
<rss xmlns:atom="http://www.w3.org/2005/Atom" xmlns:dc="http://purl.org/dc/elements/1.1/" \
version="2.0">
  <channel>
    <title>Notes &#x26; more</title>
    <link>https://blog.example.org/</link>
    <description>About things</description>
    <atom:link href="https://blog.example.org/feed.rss" rel="self" type="application/rss+xml"/>
    <language>en</language>
    <lastBuildDate>Sun, 28 Sep 2025 00:00:01 +0200</lastBuildDate>
    <item>
      <title>B &#x26; &#x3C;friends&#x3E;</title>
      <link>https://blog.example.org/posts/b/</link>
      <description>&lt;a href="https://blog.example.org/x/"&gt;B&lt;/a&gt;</description>
      <guid isPermaLink="false">tag:blog.example.org,2025-09-28:/posts/b</guid>
      <category>C&#x26;C</category>
      <pubDate>Sun, 28 Sep 2025 00:00:01 +0200</pubDate>
      <dc:creator>Ann</dc:creator>
    </item>
    <item>
      <title>A</title>
      <link>https://blog.example.org/posts/a/</link>
      <description>A</description>
      <guid isPermaLink="false">tag:blog.example.org,2025-09-28:/posts/a</guid>
      <pubDate>Sun, 28 Sep 2025 00:00:00 +0200</pubDate>
      <author>ann@blog.example.org (Ann)</author>
    </item>
  </channel>
</rss>
"""
JSON_FEED = """{
  "version": "https://jsonfeed.org/version/1.1",
  "title": "Notes",
  "home_page_url": "https://blog.example.org/",
  "feed_url": "https://blog.example.org/feed.json",
  "authors": [{"name": "Ann"}],
  "hubs": [{"type": "WebSub", "url": "https://hub.example.org/"}],
  "items": [
    {"id": "tag:blog.example.org,2025-09-28:/posts/b", "url": "https://blog.example.org/posts/b/",
     "title": "B", "summary": "B", "content_html": "<p>B</p>",
     "date_published": "2025-09-28T00:00:01+02:00", "date_modified": "2025-09-28T00:00:01+02:00"},
    {"id": "tag:blog.example.org,2025-09-28:/posts/a", "url": "https://blog.example.org/posts/a/",
     "title": "A", "content_text": "A", "tags": ["x"],
     "date_published": "2025-09-28T00:00:00+02:00", "date_modified": "2025-09-28T00:00:00+02:00"}
  ]
}
"""
FEEDS = {"feed.atom": ATOM_FEED, "feed.rss": RSS_FEED, "feed.json": JSON_FEED}


def rules(name: str, text: str) -> set[str]:
    return {f.rule for f in check_feed(name, text.encode("utf-8"), now=NOW)}


@pytest.mark.parametrize("name", FEEDS)
def test_the_checkers_own_examples_are_valid(name: str) -> None:
    assert rules(name, FEEDS[name]) == set()


@pytest.mark.parametrize(
    ("name", "before", "after", "rule"),
    [
        # Two entries with one updated (and one published) time: the sample blog's warning.
        ("feed.atom", "<updated>2025-09-28T00:00:00+02:00</updated>",
         "<updated>2025-09-28T00:00:01+02:00</updated>", "DuplicateUpdated"),
        ("feed.atom", "<published>2025-09-28T00:00:00+02:00",
         "<published>2025-09-28T00:00:01+02:00", "DuplicatePublished"),
        ("feed.atom", 'rel="self"', 'rel="related"', "MissingSelf"),
        ("feed.atom", "<updated>2025-09-28T00:00:00+02:00", "<updated>2025-09-28",
         "InvalidRFC3339Date"),
        ("feed.atom", "<updated>2025-09-28T00:00:00", "<updated>1970-01-01T00:00:00",
         "ImplausibleDate"),
        ("feed.atom", "tag:blog.example.org,2025-09-28:/posts/a", "a post", "InvalidFullLink"),
        ("feed.atom", "tag:blog.example.org,2025-09-28:/posts/a", "tag:Blog.Example.org,x:/a",
         "InvalidTAG"),
        ("feed.atom", "<id>https://blog.example.org/feed.atom", "<id>HTTPS://Blog.example.org",
         "NonCanonicalURI"),
        ("feed.atom", "<title>A</title>", "<title>A &lt;b&gt;x&lt;/b&gt;</title>",
         "ContainsUndeclaredHTML"),
        ("feed.atom", "<title>A</title>", "<title>A &amp;amp; B</title>",
         "ContainsUndeclaredHTML"),
        ("feed.atom", '<summary type="html">A', '<summary type="html">&lt;script&gt;A',
         "SecurityRisk"),
        ("feed.atom", '<summary type="html">A', '<summary type="html">&lt;b onclick="x"&gt;A',
         "SecurityRiskAttr"),
        ("feed.atom", "  <author><name>Ann</name></author>\n", "", "MissingElement"),
        ("feed.atom", '<summary type="html">A</summary>', "", "MissingTextualContent"),
        # RSS: plain text written with &amp; / &lt; rather than hexadecimal references.
        ("feed.rss", "<title>A</title>", "<title>A &amp; B</title>", "CharacterData"),
        ("feed.rss", "<title>A</title>", "<title>A &lt;b</title>", "CharacterData"),
        ("feed.rss", "<dc:creator>Ann", "<dc:creator>Ann &amp; Bob", "CharacterData"),
        ("feed.rss", "<category>C&#x26;C", "<category>C&amp;C", "CharacterData"),
        ("feed.rss", "<title>A</title>", "<title><![CDATA[A & B]]></title>", "CharacterData"),
        ("feed.rss", 'rel="self"', 'rel="related"', "MissingAtomSelfLink"),
        ("feed.rss", "Sun, 28 Sep 2025 00:00:00", "Mon, 28 Sep 2025 00:00:00", "IncorrectDOW"),
        ("feed.rss", "Sun, 28 Sep 2025 00:00:00 +0200", "2025-09-28", "InvalidRFC2822Date"),
        ("feed.rss", "Sun, 28 Sep 2025 00:00:00 +0200", "Sun,  28 Sep 2025 00:00:00 +0200",
         "ProblematicalRFC822Date"),
        ("feed.rss", "Sun, 28 Sep 2025 00:00:00 +0200", "Sun, 28 Sep 2025 00:00:01 +0200",
         "DuplicatePublished"),
        ("feed.rss", '<guid isPermaLink="false">tag:blog.example.org,2025-09-28:/posts/a',
         "<guid>tag:blog.example.org,2025-09-28:/posts/a", "InvalidPermalink"),
        ("feed.rss", "posts/a</guid>", "posts/b</guid>", "DuplicateValue"),
        ("feed.rss", "ann@blog.example.org (Ann)", "ann@blog.example.org", "MissingRealName"),
        ("feed.rss", "<author>ann@blog.example.org (Ann)</author>",
         "<author>a@b.org (A)</author><dc:creator>A</dc:creator>", "DuplicateItemSemantics"),
        ("feed.rss", 'href="https://blog.example.org/x/"', 'href="../x/"', "ContainsRelRef"),
        ("feed.rss", "<description>About things</description>", "", "MissingElement"),
        ("feed.rss", "<language>en</language>", "<updated>x</updated>", "UndefinedElement"),
        ("feed.json", '"id": "tag:blog.example.org,2025-09-28:/posts/a", ', "",
         "JsonFeedSchema"),
        ("feed.json", '"content_text": "A", ', "", "JsonFeedSchema"),
        ("feed.json", '"summary": "B"', '"summary": 1', "JsonFeedSchema"),
        ("feed.json", '"tags": ["x"]', '"tags": ["x"], "extra": 1', "JsonFeedSchema"),
        ("feed.json", '"https://blog.example.org/"', '"/"', "JsonFeedSchema"),
        ("feed.json", '"date_published": "2025-09-28T00:00:00+02:00"',
         '"date_published": "2025-09-28"', "JsonFeedSchema"),
        ("feed.json", '"date_modified": "2025-09-28T00:00:00+02:00"',
         '"date_modified": "2025-09-28T00:00:01+02:00"', "DuplicateUpdated"),
        ("feed.json", "posts/a\", \"url\"", "posts/b\", \"url\"", "DuplicateEntries"),
    ],
)
def test_each_rule_fires_on_a_feed_that_breaks_it(name: str, before: str, after: str,
                                                   rule: str) -> None:
    text = FEEDS[name]
    assert before in text
    assert rule in rules(name, text.replace(before, after, 1))


def test_a_feed_that_is_not_well_formed_is_an_error() -> None:
    [finding] = check_feed("feed.atom", b"<feed><title>x</feed>")
    assert (finding.level, finding.rule) == ("error", "SAXError")
    [finding] = check_json_feed(b"{")
    assert finding.rule == "InvalidJSON"


# --- postroom's feeds ------------------------------------------------------------------------


def assert_clean(feeds: Mapping[str, bytes], settings: Settings) -> int:
    """Check every feed file; return how many there were."""
    checked = 0
    findings: list[str] = []
    for name, data in feeds.items():
        if not name.endswith((".atom", ".rss", ".json")):
            continue
        self_url = f"{settings.feeds_url}/{name}"
        findings += [f"{name}: {f}" for f in check_feed(name, data, self_url=self_url, now=NOW)]
        if not name.endswith(".json"):
            read_feed(name, data)  # well-formed, feedparser not bozo, and the two agree
        checked += 1
    assert not findings, "\n".join(findings[:40])
    return checked


@pytest.mark.parametrize("archives", [False, True])
def test_the_sample_blog_is_valid(tmp_path_factory: pytest.TempPathFactory,
                                  archives: bool) -> None:
    folder = tmp_path_factory.mktemp("sample")
    env = {"POSTROOM__PATHS__OUTPUT": str(folder / "public"),
           "POSTROOM__PATHS__CACHE": str(folder / "cache"),
           "POSTROOM__PATHS__LEDGER": str(folder / "entry-ids.json"),
           "POSTROOM__FEEDS__ARCHIVES": str(archives).lower()}
    settings = load_settings(REPO / "config.example.toml", env=env)
    report = SiteBuilder(settings).build(NOW)
    assert report.problems == []
    # feed.atom, feed.rss, feed.json and 12 tags of three formats (and the archive pages).
    assert assert_clean(report.feeds, settings) >= 39
    assert any(name.startswith("archive/") for name in report.feeds) is archives
    # The four posts of 2025-09-28 are in it, one second apart.
    atom = report.feeds["feed.atom"].decode()
    for second in range(4):
        assert f"<updated>2025-09-28T00:00:0{second}+02:00</updated>" in atom


def write_thousand_posts(site: Site) -> None:
    """1,000 posts, five a day: three dated by day only, two at one shared time; every
    tenth updated on one shared date; '&' and '<' in titles, tags and author names;
    Markdown summaries with footnote marks, or summaries taken from the body."""
    for number in range(1000):
        day = date(2024, 1, 1) + timedelta(days=number // 5)
        when: object = day if number % 5 < 3 else f"{day} 12:00:00"
        front: dict[str, object] = {
            "title": f"Post {number} & <friends>",
            "date": when,
            "tags": ["C&C", f"topic {number % 4}"] + (["<x>"] if number % 9 == 0 else []),
        }
        if number % 10 == 0:
            front["updated"] = date(2025, 6, 1)
        if number % 3 == 0:
            front["summary"] = f"A **bold** claim & `x < y` about [post {number}](../p/).[^1]"
        if number % 11 == 0:
            front["author"] = "Zed & <Co>"
        body = (f"Body of post {number} with *emphasis* & a [link](/about/).[^1]\n\n"
                "![a cat](cat.png)\n\n[^1]: A note.\n")
        site.write_post(f"{day}-post-{number:04d}.md", body, **front)


def test_a_thousand_post_blog_is_valid(make_site: Callable[..., Site]) -> None:
    site = make_site(site={"title": "Ann & Bob's <notes>", "subtitle": "Q&A > FAQ"},
                     feeds={"entries": 100, "archives": True,
                            "hub": "https://hub.example.org/"})
    write_thousand_posts(site)
    report = site.build(NOW)
    assert report.problems == [] and report.published == 1000
    settings = site.settings()
    names = [n for n in report.feeds if n.endswith((".atom", ".rss", ".json"))]
    assert {"feed.atom", "archive/1.atom", "tags/c-c.rss", "tags/x.json"} <= set(names)
    assert assert_clean(report.feeds, settings) == len(names)
    # What the checks looked at: hexadecimal references, distinct times on shared dates.
    rss = report.feeds["feed.rss"].decode()
    assert "<title>Post 999 &#x26; &#x3C;friends&#x3E;</title>" in rss
    updated = re.findall(r"<updated>(.*?)</updated>", report.feeds["feed.atom"].decode())
    assert len(updated) == 101 and len(set(updated[1:])) == 100
    # Two notes a day: three posts by date only, two at one time.
    assert len(report.notices) == 400

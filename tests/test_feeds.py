"""feeds.py: Atom, RSS and JSON Feed files, read back field by field against the source posts."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from html import escape
from pathlib import Path
from urllib.parse import urljoin, urlsplit
from zoneinfo import ZoneInfo

import lxml.html
import pytest
import yaml

from feedreader import Entry, Feed, parse_xml, read_feed
from postroom.build import SiteBuilder
from postroom.config import load_settings
from postroom.feeds import EPOCH, plan_feeds, render_feed, tag_slug
from postroom.render import Renderer
from sites import NOW, REPO, Site

BERLIN = ZoneInfo("Europe/Berlin")
FORMATS = ("atom", "rss", "json")


@dataclass(frozen=True)
class Expected:
    """What a reader must see for one post, written out by hand from its source."""

    id: str
    title: str
    link: str
    published: datetime
    updated: datetime
    summary: str
    tags: tuple[str, ...]
    author: str = "Ahmed"  # the site's author, unless the post names one
    author_email: str | None = None
    content_html: str | None = None  # None: check only that every URL in it is absolute
    summary_html: str | None = None  # Atom and RSS; None: the summary, escaped


def check_entry(feed: Feed, got: Entry, want: Expected) -> None:
    """Assert every field of one entry, as this feed's format carries it."""
    assert got.id == want.id
    assert got.title == want.title
    assert got.link == want.link
    assert got.published == want.published
    assert got.published.utcoffset() == want.published.utcoffset()
    if feed.format == "rss":
        assert got.updated is None  # RSS 2.0 has no per-item updated time
        # A tag: or urn: ID is not a URL a reader could open.
        assert got.permalink is (want.id == want.link)
    else:
        assert got.updated == want.updated
        assert got.updated.utcoffset() == want.updated.utcoffset()
    assert got.summary == want.summary
    if feed.format != "json":  # JSON Feed's summary is plain text; Atom's and RSS's HTML
        assert got.summary_html == (want.summary_html or escape(want.summary, quote=False))
    assert got.authors == [want.author]
    if feed.format != "json":
        assert got.author_emails == ([want.author_email] if want.author_email else [])
    assert got.categories == list(want.tags)
    assert got.content_html is not None
    if want.content_html is not None:
        assert got.content_html == want.content_html
    assert_absolute_urls(got.content_html)


def assert_absolute_urls(content_html: str) -> None:
    """Assert every href and src in an HTML fragment is an absolute http(s) URL."""
    if not content_html.strip():
        return
    for element in lxml.html.fragments_fromstring(content_html):
        if isinstance(element, str):
            continue
        for node in element.iter():
            for attr in ("href", "src"):
                value = node.get(attr)
                if value is not None:
                    parts = urlsplit(value)
                    assert parts.scheme in ("http", "https") and parts.netloc, value


def check_feed(
    feed: Feed, *, path: str, title: str, subtitle: str, language: str, entries: list[Expected]
) -> None:
    """Assert the feed-level fields, then every entry in order."""
    assert feed.title == title
    assert feed.subtitle == subtitle
    assert feed.self_link == f"https://blog.example.org/{path}"
    assert feed.alternate_link == "https://blog.example.org/"
    assert feed.language == language
    if feed.format != "rss":
        assert feed.authors == ["Ahmed"]
    if feed.format != "json":
        assert feed.generator == "postroom"
        # Never the clock: the newest entry's updated time.
        assert feed.updated == max((e.updated for e in entries), default=EPOCH)
    assert [e.id for e in feed.entries] == [e.id for e in entries]
    for got, want in zip(feed.entries, entries, strict=True):
        check_entry(feed, got, want)


# --- a site written for these tests -------------------------------------------------------

MORE_BODY = """Teaser **bold** text.

<!--more-->

<a href="../x/">raw</a> <img src='y.png'>

| a | b |
|---|---|
| 1 | 2 |

~~gone~~[^1]

[^1]: Note.
"""
MORE_HTML = (
    "<p>Teaser <strong>bold</strong> text.</p>\n"
    '<p><a href="https://blog.example.org/2025/03/x/">raw</a> '
    "<img src='https://blog.example.org/2025/03/more/y.png'></p>\n"
    "<table>\n<thead>\n<tr>\n<th>a</th>\n<th>b</th>\n</tr>\n</thead>\n"
    "<tbody>\n<tr>\n<td>1</td>\n<td>2</td>\n</tr>\n</tbody>\n</table>\n"
    '<p><s>gone</s><sup class="footnote-ref">'
    '<a href="https://blog.example.org/2025/03/more/#fn1" id="fnref1">[1]</a></sup></p>\n'
    '<hr class="footnotes-sep" />\n<section class="footnotes">\n<ol class="footnotes-list">\n'
    '<li id="fn1" class="footnote-item"><p>Note. '
    '<a href="https://blog.example.org/2025/03/more/#fnref1" class="footnote-backref">'
    "↩︎</a></p>\n</li>\n</ol>\n</section>\n"
)
LONG_PARAGRAPH = (
    "This first paragraph is deliberately long so that the derived summary has to be cut "
    "somewhere sensible."
)

OLD = Expected(
    id="tag:blog.example.org,2024-12-01:/posts/old-news",
    title="Old news",
    link="https://blog.example.org/2024/12/old-news/",
    published=datetime(2024, 12, 1, tzinfo=BERLIN),
    updated=datetime(2024, 12, 1, tzinfo=BERLIN),
    # First paragraph, cut at a word boundary to at most summary_length (60) characters.
    summary="This first paragraph is deliberately long so that the…",
    tags=("web",),
    content_html=f"<p>{LONG_PARAGRAPH}</p>\n<p>Second paragraph.</p>\n",
)
FIRST = Expected(
    id="tag:blog.example.org,2025-01-10:/posts/first",
    title="First post",
    link="https://blog.example.org/2025/01/first/",
    published=datetime(2025, 1, 10, tzinfo=BERLIN),
    updated=datetime(2025, 1, 10, tzinfo=BERLIN),
    summary="Intro with a link and a cat.",  # plain text: link text and image alt, no markup
    tags=("python", "web"),
    content_html=(
        '<p>Intro with <a href="https://blog.example.org/about/">a link</a> and '
        '<img src="https://blog.example.org/2025/01/first/cat.png" alt="a cat" />.</p>\n'
        "<p>Second <em>para</em> &amp; more.</p>\n"
    ),
)
SECOND = Expected(
    id="tag:blog.example.org,2025-02-01:/posts/second-post",
    title='Quotes "and" <angles> & ampersands',
    link="https://blog.example.org/2025/02/second-post/",
    published=datetime(2025, 2, 1, 9, 30, tzinfo=BERLIN),
    updated=datetime(2025, 3, 10, 12, 0, tzinfo=UTC),
    summary="An explicit summary with <b>markup</b> & spaces.",
    tags=("python",),
    author="Guest Writer",
    content_html="<p>Body of the second post.</p>\n",
)
MORE = Expected(
    id="urn:uuid:5f0c3e1e-0000-4000-8000-000000000001",
    title="More",
    link="https://blog.example.org/2025/03/more/",
    published=datetime(2025, 3, 5, 8, 0, tzinfo=UTC),
    updated=datetime(2025, 3, 5, 8, 0, tzinfo=UTC),
    summary="Teaser bold text.",  # the text before <!--more-->
    tags=("rust",),
    author="Bea",
    author_email="bea@example.org",
    content_html=MORE_HTML,
)
NEWEST_FIRST = [MORE, SECOND, FIRST, OLD]
FUTURE_ID = "tag:blog.example.org,2026-06-01:/posts/future"


@pytest.fixture
def blog(make_site: Callable[..., Site]) -> Site:
    """A site with four published posts, a draft and a future post."""
    site = make_site(
        site={"language": "en-GB", "post_url": "{base_url}/{year}/{month}/{slug}/"},
        feeds={"entries": 3, "summary_length": 60},
    )
    site.write_post(
        "2024-12-01-old-news.md",
        f"{LONG_PARAGRAPH}\n\nSecond paragraph.\n",
        title="Old news", date=date(2024, 12, 1), tags=["web"],
    )
    site.write_post(
        "2025-01-10-first.md",
        "Intro with [a link](/about/) and ![a cat](cat.png).\n\nSecond *para* & more.\n",
        title="First post", date=date(2025, 1, 10), tags=["python", "web"],
    )
    site.write_post(
        "2025-02-01-second.md",
        "Body of the second post.\n",
        title='Quotes "and" <angles> & ampersands',
        date="2025-02-01 09:30:00",  # naive: the site's time zone
        updated=datetime(2025, 3, 10, 12, 0, tzinfo=UTC),
        summary="An explicit   summary\nwith <b>markup</b> & spaces.",
        author="Guest Writer",
        tags=["python"],
        slug="second-post",
    )
    site.write_post(
        "2025-03-05-more.md",
        MORE_BODY,
        title="More",
        date="2025-03-05T08:00:00Z",
        id=MORE.id,
        author={"name": "Bea", "email": "bea@example.org"},
        tags="rust",  # a single tag may be written as a string
    )
    site.write_post(
        "2025-03-06-draft.md", "Not yet.\n",
        title="Draft", date=date(2025, 3, 6), draft=True, tags=["secret"],
    )
    site.write_post(
        "2026-06-01-future.md", "Later.\n",
        title="Future", date=date(2026, 6, 1), tags=["future", "web"],
    )
    return site


@pytest.mark.parametrize("fmt", FORMATS)
def test_main_feed_has_the_newest_published_posts_field_by_field(blog: Site, fmt: str) -> None:
    report = blog.build(NOW)
    assert report.problems == []
    assert report.published == 4
    feed = read_feed(f"feed.{fmt}", blog.feed(f"feed.{fmt}"))
    check_feed(
        feed,
        path=f"feed.{fmt}",
        title="Test blog",
        subtitle="Notes for the tests",
        language="en-GB",
        entries=NEWEST_FIRST[:3],  # entries = 3; no draft, no future post
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tag", ["web", "python", "rust"])
def test_tag_feeds_hold_only_posts_with_that_tag(blog: Site, tag: str, fmt: str) -> None:
    blog.build(NOW)
    path = f"tags/{tag}.{fmt}"
    check_feed(
        read_feed(path, blog.feed(path)),
        path=path,
        title=f"Test blog: {tag}",
        subtitle="Notes for the tests",
        language="en-GB",
        entries=[e for e in NEWEST_FIRST if tag in e.tags][:3],
    )


def test_tag_feeds_exist_only_for_tags_of_published_posts(blog: Site) -> None:
    blog.build(NOW)
    tag_feeds = sorted(p.name for p in (blog.output / "tags").iterdir())
    # Each tag's feed in every format, and its page for browsers.
    assert tag_feeds == sorted(f"{t}.{f}" for t in ("python", "rust", "web")
                               for f in (*FORMATS, "html"))


def test_future_post_appears_once_its_time_has_come(blog: Site) -> None:
    before = blog.build(datetime(2026, 5, 31, 23, 59, 59, tzinfo=BERLIN))
    assert before.published == 4
    assert "tags/future.atom" not in before.feeds
    # A post dated exactly now is published.
    at = blog.build(datetime(2026, 6, 1, 0, 0, tzinfo=BERLIN))
    assert at.published == 5
    feed = read_feed("feed.atom", at.feeds["feed.atom"])
    assert feed.entries[0].id == FUTURE_ID
    assert [e.id for e in read_feed("tags/future.atom", at.feeds["tags/future.atom"]).entries] == [
        FUTURE_ID
    ]


def test_rss_dates_are_rfc_822_and_guids_not_permalinks(blog: Site) -> None:
    blog.build(NOW)
    root = parse_xml(blog.feed("feed.rss"))
    for item in root.iter("item"):
        guid = item.find("guid")
        assert guid.get("isPermaLink") == "false"
        assert re.fullmatch(r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}",
                            item.findtext("pubDate"))
    assert root.findtext("channel/lastBuildDate") == "Mon, 10 Mar 2025 12:00:00 +0000"


def test_json_feed_top_level_fields(blog: Site) -> None:
    blog.build(NOW)
    document = json.loads(blog.feed("feed.json"))
    assert document["version"] == "https://jsonfeed.org/version/1.1"
    assert document["feed_url"] == "https://blog.example.org/feed.json"
    assert document["home_page_url"] == "https://blog.example.org/"
    assert document["description"] == "Notes for the tests"
    assert document["items"][0]["date_published"] == "2025-03-05T08:00:00+00:00"
    assert document["items"][1]["date_published"] == "2025-02-01T09:30:00+01:00"


# --- the shipped posts ------------------------------------------------------------------------


@dataclass(frozen=True)
class ShippedPost:
    slug: str
    front: dict
    body: str
    same_day: int = 0  # how many posts of its date come before it by file name


def shipped_posts() -> list[ShippedPost]:
    """Read posts/ independently of postroom: front matter with yaml, slug from the name."""
    posts = []
    earlier: Counter[date] = Counter()
    for path in sorted((REPO / "posts").glob("*.md")):
        _, front, body = path.read_text(encoding="utf-8").split("---\n", 2)
        slug = re.sub(r"^\d{4}-\d{2}-\d{2}-", "", path.stem)
        meta = yaml.safe_load(front)
        posts.append(ShippedPost(slug, meta, body, earlier[meta["date"]]))
        earlier[meta["date"]] += 1
    return posts


def expected_shipped(post: ShippedPost) -> Expected:
    day = post.front["date"]
    assert isinstance(day, date)
    # Posts dated by day only: the Nth of a date (by file name) is N seconds after midnight.
    published = datetime.combine(day, time(second=post.same_day), tzinfo=BERLIN)
    summary = post.front["summary"]
    return Expected(
        id=f"tag:blog.example.org,{day:%Y-%m-%d}:/posts/{post.slug}",
        title=post.front["title"],
        link=f"https://blog.example.org/posts/{post.slug}/",
        published=published,
        updated=published,
        # The summaries' Markdown: **bold** and footnote marks, which no summary keeps.
        summary=re.sub(r"\[\^\w+\]", "", summary).replace("**", ""),
        summary_html=escape(re.sub(r"\[\^\w+\]", "", summary), quote=False).replace(
            "**", "<strong>", 1).replace("**", "</strong>", 1),
        tags=tuple(post.front.get("tags", ())),
    )


def newest_shipped_first() -> list[ShippedPost]:
    return sorted(shipped_posts(), key=lambda p: (p.front["date"], p.same_day), reverse=True)


@pytest.fixture(scope="module")
def shipped_feeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    output = tmp_path_factory.mktemp("shipped-public")
    state = tmp_path_factory.mktemp("shipped-var")  # not the repository's var/
    env = {"POSTROOM__PATHS__OUTPUT": str(output), "POSTROOM__PATHS__CACHE": str(state),
           "POSTROOM__PATHS__LEDGER": str(state / "entry-ids.json")}
    settings = load_settings(REPO / "config.example.toml", env=env)
    report = SiteBuilder(settings).build(NOW)
    assert report.problems == []
    assert sorted(report.written) == sorted(report.feeds)
    return {name: (output / name).read_bytes() for name in report.feeds}


@pytest.mark.parametrize("fmt", FORMATS)
def test_shipped_posts_feed_field_by_field(shipped_feeds: dict[str, bytes], fmt: str) -> None:
    posts = newest_shipped_first()
    expected = [expected_shipped(p) for p in posts]
    feed = read_feed(f"feed.{fmt}", shipped_feeds[f"feed.{fmt}"])
    check_feed(
        feed,
        path=f"feed.{fmt}",
        title="Ahmed's notes",
        subtitle="I write about programming, music, and other things that interest me.",
        language="en",
        entries=expected[:20],
    )
    check_content_against_markdown(feed, posts[:20])


def check_content_against_markdown(feed: Feed, posts: list[ShippedPost]) -> None:
    """Check each entry's HTML against its Markdown source without re-rendering it."""
    checked = 0
    for entry, post in zip(feed.entries, posts, strict=True):
        html = entry.content_html or ""
        assert "<!--more-->" not in html
        # Every Markdown link and image target, made absolute against the post's URL.
        for target in re.findall(r"\]\(([^)\s]+)\)", post.body):
            assert f'="{urljoin(entry.link, target)}"' in html, target
        # Every "## heading" arrives as an <h2> with the same text.
        headings = re.findall(r"^## (.+)$", post.body, flags=re.MULTILINE)
        rendered = [
            element.text_content()
            for element in lxml.html.fragments_fromstring(html)
            if not isinstance(element, str) and element.tag == "h2"
        ]
        assert rendered == [re.sub(r"[`*]", "", h) for h in headings]
        checked += len(headings)
    assert checked > 0  # the check above did look at some headings


def test_shipped_tag_feeds_hold_every_post_with_the_tag(shipped_feeds: dict[str, bytes]) -> None:
    posts = newest_shipped_first()
    tags = {t for p in posts for t in p.front.get("tags", ())}
    assert {f"tags/{tag_slug(t)}.atom" for t in tags} == {
        n for n in shipped_feeds if n.startswith("tags/") and n.endswith(".atom")
    }
    for tag in tags:
        for fmt in FORMATS:
            path = f"tags/{tag_slug(tag)}.{fmt}"
            feed = read_feed(path, shipped_feeds[path])
            want = [expected_shipped(p) for p in posts if tag in p.front.get("tags", ())][:20]
            check_feed(
                feed,
                path=path,
                title=f"Ahmed's notes: {tag}",
                subtitle="I write about programming, music, and other things that interest me.",
                language="en",
                entries=want,
            )


# --- smaller cases ----------------------------------------------------------------------------


def test_tag_slug() -> None:
    assert tag_slug("Rust") == "rust"
    assert tag_slug("C++") == "c"
    assert tag_slug("Data Structures") == "data-structures"
    assert tag_slug("Ünïcödé") == "unicode"
    # No ASCII letters at all: a stable, safe name from the tag's bytes.
    assert tag_slug("日本語") == "tag-" + "日本語".encode().hex()[:16]
    assert tag_slug("日本語") != tag_slug("中文")


def test_tags_with_the_same_file_name_share_one_feed(site: Site) -> None:
    site.write_post("a.md", "A.\n", title="A", date=date(2025, 1, 1), tags=["C++"])
    site.write_post("b.md", "B.\n", title="B", date=date(2025, 1, 2), tags=["c"])
    report = site.build(NOW)
    assert [n for n in report.feeds if n.startswith("tags/")] == [
        "tags/c.atom", "tags/c.rss", "tags/c.json", "tags/c.html"
    ]
    feed = read_feed("tags/c.atom", report.feeds["tags/c.atom"])
    assert [e.title for e in feed.entries] == ["B", "A"]


def test_empty_site_gives_valid_empty_feeds(site: Site) -> None:
    report = site.build(NOW)
    assert sorted(report.feeds) == [
        "feed.atom", "feed.html", "feed.json", "feed.rss", "feeds-head.html"
    ]
    for name in ("feed.atom", "feed.rss", "feed.json"):
        feed = read_feed(name, report.feeds[name])
        assert feed.entries == []
        if name != "feed.json":
            # Not "now": the same empty site must give the same bytes tomorrow.
            assert feed.updated == EPOCH


def test_summary_only_feeds_carry_no_content(make_site: Callable[..., Site]) -> None:
    site = make_site(feeds={"content": "summary"})
    site.write_post("a.md", "Full text here.\n", title="A", date=date(2025, 1, 1), summary="S.")
    report = site.build(NOW)
    atom = parse_xml(report.feeds["feed.atom"])
    assert atom.find(".//{http://www.w3.org/2005/Atom}content") is None
    assert atom.findtext(".//{http://www.w3.org/2005/Atom}summary") == "S."
    rss = parse_xml(report.feeds["feed.rss"])
    assert rss.find(".//{http://purl.org/rss/1.0/modules/content/}encoded") is None
    (item,) = json.loads(report.feeds["feed.json"])["items"]
    assert item["content_text"] == "S."
    assert "content_html" not in item


def test_pinned_id_equal_to_the_post_url_is_an_rss_permalink(site: Site) -> None:
    url = "https://blog.example.org/posts/a/"
    site.write_post("a.md", "A.\n", title="A", date=date(2025, 1, 1), id=url)
    report = site.build(NOW)
    entry = read_feed("feed.rss", report.feeds["feed.rss"]).entries[0]
    assert entry.id == url
    assert entry.permalink is True


def test_feeds_url_setting_moves_the_self_links_only(make_site: Callable[..., Site]) -> None:
    site = make_site(feeds={"url": "https://feeds.example.org/"})
    site.write_post("a.md", "A.\n", title="A", date=date(2025, 1, 1), tags=["x"])
    report = site.build(NOW)
    for name in ("feed.atom", "feed.rss", "feed.json", "tags/x.rss"):
        feed = read_feed(name, report.feeds[name])
        assert feed.self_link == f"https://feeds.example.org/{name}"
        assert feed.alternate_link == "https://blog.example.org/"
        assert feed.entries[0].link == "https://blog.example.org/posts/a/"


def test_only_the_configured_formats_are_written(make_site: Callable[..., Site]) -> None:
    site = make_site(feeds={"formats": ["json"], "per_tag": False})
    site.write_post("a.md", "A.\n", title="A", date=date(2025, 1, 1), tags=["x"])
    report = site.build(NOW)
    assert list(report.feeds) == ["feed.json", "feed.html", "feeds-head.html"]


def test_feed_without_subtitle(make_site: Callable[..., Site]) -> None:
    site = make_site(site={"subtitle": ""})
    site.write_post("a.md", "A.\n", title="A", date=date(2025, 1, 1))
    report = site.build(NOW)
    # Atom's subtitle is optional: absent, not a copy of the title.
    assert read_feed("feed.atom", report.feeds["feed.atom"]).subtitle is None
    # RSS requires a description: the title stands in.
    assert read_feed("feed.rss", report.feeds["feed.rss"]).subtitle == "Test blog"
    assert read_feed("feed.json", report.feeds["feed.json"]).subtitle is None


def test_empty_derived_summary_falls_back_to_the_title(site: Site) -> None:
    site.write_post("a.md", "# Only a heading\n", title="Heading post", date=date(2025, 1, 1))
    report = site.build(NOW)
    for name in ("feed.atom", "feed.rss", "feed.json"):
        assert read_feed(name, report.feeds[name]).entries[0].summary == "Heading post"


def test_render_feed_is_pure(site: Site) -> None:
    site.write_post("a.md", "A [link](x/).\n", title="A", date=date(2025, 1, 1), tags=["t"])
    settings = site.settings()
    post = SiteBuilder(settings).collection.scan().posts[0]
    rendered = Renderer().render(settings, post)
    for spec, _tag in plan_feeds(settings, ["t"]):
        first = render_feed(spec, [rendered])
        assert first == render_feed(spec, [Renderer().render(settings, post)])
        read_feed(spec.path, first)


def test_entry_ids_do_not_depend_on_the_folder_or_the_clock(blog: Site, tmp_path: Path) -> None:
    """An ID is built from the host, the first date and the slug: not paths or build time."""
    moved = Site(tmp_path / "elsewhere")
    shutil.copytree(blog.root, moved.root)
    report = moved.build(datetime(2027, 1, 1, tzinfo=UTC))
    feed = read_feed("feed.atom", report.feeds["feed.atom"])
    assert [e.id for e in feed.entries] == [FUTURE_ID, MORE.id, SECOND.id]


# --- posts of one date, and plain text in RSS -------------------------------------------------


def write_same_day_posts(site: Site) -> None:
    for name in ("c", "a", "b"):
        site.write_post(f"2025-09-28-{name}.md", f"{name}.\n", title=name.upper(),
                        date=date(2025, 9, 28), tags=["day", name])
    site.write_post("2025-09-28-timed.md", "Timed.\n", title="Timed",
                    date="2025-09-28 08:00:00", tags=["day"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_posts_of_one_date_get_distinct_times_in_file_name_order(site: Site, fmt: str) -> None:
    write_same_day_posts(site)
    report = site.build(NOW)
    midnight = datetime(2025, 9, 28, tzinfo=BERLIN)
    # Newest first: the post with a time, then the date-only posts by file name, the last
    # first, each a second after the one before it; the same times in every feed.
    want = [("Timed", midnight.replace(hour=8)), ("C", midnight + timedelta(seconds=2)),
            ("B", midnight + timedelta(seconds=1)), ("A", midnight)]
    for name, titles in ((f"feed.{fmt}", "Timed C B A"), (f"tags/day.{fmt}", "Timed C B A"),
                         (f"tags/b.{fmt}", "B")):
        feed = read_feed(name, report.feeds[name])
        shown = [w for w in want if w[0] in titles.split()]
        assert [(e.title, e.published) for e in feed.entries] == shown
        for entry in feed.entries:
            assert entry.updated in (None, entry.published)
            # IDs and URLs keep the written date and the slug.
            slug = entry.link.rsplit("/", 2)[-2]
            assert entry.id == f"tag:blog.example.org,2025-09-28:/posts/{slug}"
            assert entry.published.utcoffset() == timedelta(hours=2)
    assert [n.message.split(" (")[0] for n in report.notices] == [
        "3 posts are dated 2025-09-28 with no time"]


def test_feed_times_move_with_other_posts_and_match_a_cold_build(site: Site) -> None:
    """A post's feed times follow the posts of its date: a new one sorting first moves the
    others, in every feed that shows them (tags/c.* shows only one), cache or no cache."""
    write_same_day_posts(site)
    builder = SiteBuilder(site.settings())
    builder.build(NOW)
    site.write_post("2025-09-28-0.md", "First.\n", title="Zero", date=date(2025, 9, 28))
    warm = builder.build(NOW)
    cold = SiteBuilder(site.settings(), use_cache=False).build(NOW, write=False)
    assert {n: warm.feeds[n] for n in warm.feeds} == dict(cold.feeds)
    feed = read_feed("tags/c.atom", warm.feeds["tags/c.atom"])
    assert feed.entries[0].published == datetime(2025, 9, 28, 0, 0, 3, tzinfo=BERLIN)


def test_two_posts_with_one_updated_time_get_distinct_updated(site: Site) -> None:
    for name, day in (("a", 1), ("b", 2)):
        site.write_post(f"{name}.md", "x\n", title=name, date=date(2025, 9, day),
                        updated=date(2025, 9, 10))
    report = site.build(NOW)
    for name in ("feed.atom", "feed.json"):
        entries = read_feed(name, report.feeds[name]).entries
        assert [(e.title, e.updated) for e in entries] == [
            ("b", datetime(2025, 9, 10, 0, 0, 1, tzinfo=BERLIN)),
            ("a", datetime(2025, 9, 10, tzinfo=BERLIN))]


def test_plain_text_is_written_with_hexadecimal_references(make_site: Callable[..., Site]
                                                           ) -> None:
    site = make_site(site={"title": "A & B <notes>", "subtitle": "Q&A > FAQ",
                           "author": {"name": "Ann & <Bob>"}})
    site.write_post("a.md", "Body with <b>bold</b> & more.\n", title="Post 3 & <friends>",
                    date=date(2025, 1, 1), tags=["C&C"], author="Zed & <Co>",
                    summary="S & **bold** <i>")
    report = site.build(NOW)
    rss, atom = report.feeds["feed.rss"], report.feeds["feed.atom"]
    for written in (b"<title>A &#x26; B &#x3C;notes&#x3E;</title>",
                    b"<description>Q&#x26;A &#x3E; FAQ</description>",
                    b"<title>Post 3 &#x26; &#x3C;friends&#x3E;</title>",
                    b"<category>C&#x26;C</category>",
                    b"<dc:creator>Zed &#x26; &#x3C;Co&#x3E;</dc:creator>"):
        assert written in rss
    for written in (b"<title>Post 3 &#x26; &#x3C;friends&#x3E;</title>",
                    b"<name>Zed &#x26; &#x3C;Co&#x3E;</name>",
                    b"<name>Ann &#x26; &#x3C;Bob&#x3E;</name>"):
        assert written in atom
    # HTML is not plain text: the summary and the content stay entity-escaped HTML.
    summary = b"S &amp;amp; &lt;strong&gt;bold&lt;/strong&gt; &amp;lt;i&amp;gt;"
    assert b"<description>" + summary + b"</description>" in rss
    assert b'<summary type="html">' + summary + b"</summary>" in atom
    assert b"&lt;b&gt;bold&lt;/b&gt; &amp;amp; more" in rss
    for name in ("feed.rss", "feed.atom", "tags/c-c.rss"):
        feed = read_feed(name, report.feeds[name])  # lxml and feedparser agree on the text
        assert feed.title.startswith("A & B <notes>")
        [entry] = feed.entries
        assert (entry.title, entry.categories) == ("Post 3 & <friends>", ["C&C"])
        assert entry.authors == ["Zed & <Co>"]
        assert entry.summary == "S & bold <i>"

"""Property tests: open-ended titles, summaries, tags and bodies through the whole path.

Posts are written as real files (front matter by yaml.safe_dump), built by SiteBuilder into
real feed files, and read back as a reader would: every feed must be well-formed and give
back the cleaned title, summary and tags (see posts.clean_text).
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import lxml.html
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedreader import parse_xml, read_feed
from postroom.feeds import tag_slug
from postroom.posts import clean_text, parse_post
from postroom.render import Renderer, cut_at_word
from sites import NOW, Site

# Pieces that have broken feeds somewhere: markup, entities, CDATA ends, quotes, emoji,
# right-to-left text and marks, control characters, line and paragraph separators, BOMs.
AWKWARD = [
    "<", ">", "&", "&amp;", "&lt;b&gt;", "<b>bold</b>", "<script>alert(1)</script>", '"', "'",
    "]]>", "<![CDATA[x]]>", "😀", "👩‍👩‍👧", "שלום", "مرحبا بالعالم", "\u202e", "\u200f", "\x00",
    "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\x9f", "\u2028", "\u2029", "\ufeff",
    "\ufffe", "\uffff", "\r", "\t", "\n", " ", "---", "<!--more-->", "\\", "%s", "{slug}", "#",
    "*", "_", "[x](y)", "`",
]
TEXT_PIECE = st.one_of(
    st.sampled_from(AWKWARD),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=10),  # no lone surrogates
)
RICH_TEXT = st.lists(TEXT_PIECE, max_size=8).map("".join)


def as_written(value: object) -> object:
    """Return what a YAML reader gets back from yaml.safe_dump(value).

    PyYAML writes some characters raw that its reader then folds (NEL becomes a space):
    the post means what its file says, so that is what the feeds must give back.
    """
    dumped = yaml.safe_dump({"v": value}, allow_unicode=True, width=10_000)
    return yaml.safe_load(dumped)["v"]


TITLE = RICH_TEXT.filter(lambda t: clean_text(str(as_written(t))) != "")
TAGS = st.lists(RICH_TEXT, max_size=3)
# python-frontmatter's closing '---' pattern also takes whitespace-only lines after it (even
# a lone NEL, which Markdown would call a paragraph): bodies start with something visible.
BODY = st.lists(st.one_of(TEXT_PIECE, st.sampled_from(["\n\n", "\n", "# ", "- ", "> "])),
                max_size=20).map(lambda parts: "".join(parts).lstrip())


@st.composite
def post_sources(draw: st.DrawFn) -> dict:
    return {
        "title": draw(TITLE),
        "summary": draw(st.none() | RICH_TEXT),
        "tags": draw(TAGS),
        "author": draw(st.none() | TITLE),
        "body": draw(BODY),
    }


def expected_tags(tags: list[str]) -> list[str]:
    cleaned: list[str] = []
    for tag in (clean_text(str(as_written(t))) for t in tags):
        if tag and tag not in cleaned:
            cleaned.append(tag)
    return cleaned


def expected_summary(source: dict) -> str:
    """The summary as plain text: a summary of the front matter is Markdown (its text is
    what test_render.py pins down), else the body's first paragraph."""
    explicit = clean_text(str(as_written(source["summary"] or "")))
    if explicit:
        return Renderer().summary_text(explicit)
    return Renderer().summary_of(source["body"], 300)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sources=st.lists(post_sources(), min_size=1, max_size=3))
def test_arbitrary_posts_give_well_formed_feeds_that_round_trip(
    tmp_path_factory: pytest.TempPathFactory, sources: list[dict]
) -> None:
    site = Site(tmp_path_factory.mktemp("prop"))
    site.posts.mkdir()
    site.configure()
    for index, source in enumerate(sources):
        front = {"title": source["title"], "date": date(2025, 1, index + 1), "tags": source["tags"]}
        for key in ("summary", "author"):
            if source[key] is not None:
                front[key] = source[key]
        site.write_post(f"post-{index}.md", source["body"], **front)

    report = site.build(NOW)
    assert report.problems == []
    assert report.published == len(sources)

    # Every file written is well-formed: XML 1.0 (lxml, feedparser) or JSON.
    for name, data in report.feeds.items():
        assert (site.output / name).read_bytes() == data
        if name.endswith((".atom", ".rss")):
            read_feed(name, data)  # lxml, feedparser without bozo, and the two agree
        elif name.endswith(".json"):
            json.loads(data.decode("utf-8"))
        elif name == "feeds-head.html":
            assert all(line.startswith(b"<link ") for line in data.splitlines())
        elif name.endswith(".html"):
            # A feed's page for browsers: whatever the titles hold, they are text there,
            # the same text as in its Atom feed.
            atom_name = name.removesuffix(".html") + ".atom"
            atom = read_feed(atom_name, report.feeds[atom_name])
            page = lxml.html.fromstring(data)
            assert [a.text_content() for a in page.xpath("//article/h3/a")] == [
                e.title for e in atom.entries]
        else:
            parse_xml(data)

    newest_first = list(reversed(sources))
    for name in ("feed.atom", "feed.rss", "feed.json"):
        feed = read_feed(name, report.feeds[name])
        assert len(feed.entries) == len(sources)
        for entry, source in zip(feed.entries, newest_first, strict=True):
            title = clean_text(str(as_written(source["title"])))
            summary = expected_summary(source)
            assert entry.title == title
            # A summary is never empty: the title stands in for a post without one.
            assert entry.summary == (summary or title)
            assert entry.categories == expected_tags(source["tags"])
            author = source["author"]
            assert entry.authors == [clean_text(str(as_written(author))) if author else "Ahmed"]

    for tag in {t for s in sources for t in expected_tags(s["tags"])}:
        path = f"tags/{tag_slug(tag)}.json"
        items = json.loads(report.feeds[path])["items"]
        assert items and all(tag_slug(tag) in map(tag_slug, i["tags"]) for i in items)


@settings(max_examples=200, deadline=None)
@given(raw=st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([
        "---\n", "title: T\n", "date: 2025-01-01\n", "date: 2025-02-30\n", "date: [\n",
        "tags: [a, 1]\n", "- x\n", "\n", "id: 'x:y'\n", "slug: a b\n", "\xff", "\ufeff", ": :\n",
        "draft: maybe\n", "updated: 9999-99-99\n", "author: {name: 1}\n", "summary: ]]>\n",
    ]), max_size=12).map(lambda parts: "".join(parts).encode("utf-8")),
))
def test_parse_post_never_raises_and_points_at_real_lines(raw: bytes) -> None:
    outcome = parse_post(Path("p.md"), raw, zone=NOW.tzinfo)  # type: ignore[arg-type]
    assert (outcome.post is None) == bool(outcome.problems)
    lines = raw.count(b"\n") + 1
    for problem in outcome.problems:
        assert 1 <= problem.line <= lines
        assert str(problem).startswith(f"p.md:{problem.line}: ")


@given(text=st.text(), limit=st.integers(min_value=2, max_value=80))
def test_cut_at_word(text: str, limit: int) -> None:
    text = clean_text(text)
    cut = cut_at_word(text, limit)
    assert len(cut) <= limit
    if len(text) <= limit:
        assert cut == text
        return
    assert cut.endswith("…")
    kept = cut[:-1]
    assert text.startswith(kept)
    if " " in text[: limit - 1].lstrip():
        # Cut between words: what follows the kept text starts a new word or is punctuation.
        assert re.match(r"[\s,;:.\-–—]", text[len(kept):]) or kept == ""


@given(text=st.text())
def test_clean_text_is_one_clean_line(text: str) -> None:
    cleaned = clean_text(text)
    assert clean_text(cleaned) == cleaned
    assert cleaned == cleaned.strip()
    assert not re.search("[\x00-\x1f\x7f-\x9f]", cleaned)
    assert "  " not in cleaned


@given(tag=st.text(min_size=1))
def test_tag_slug_is_a_safe_file_name(tag: str) -> None:
    slug = tag_slug(tag)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug)
    assert tag_slug(tag) == slug

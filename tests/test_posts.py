"""posts.py: parsing one post file, and every kind of bad input reported as path:line: message."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from feedreader import read_feed
from postroom.build import BuildReport
from postroom.errors import Problem
from postroom.posts import (
    Author,
    Post,
    clean_text,
    feed_times,
    is_post_file,
    iter_post_files,
    later,
    parse_post,
    same_time_notices,
    slug_from_filename,
)
from sites import NOW, Site, post_text

BERLIN = ZoneInfo("Europe/Berlin")
EASTERN_SUMMER = timezone(-timedelta(hours=4))
GOOD_IDS = [
    "tag:blog.example.org,2025-01-02:/posts/good-two",
    "tag:blog.example.org,2025-01-01:/posts/good-one",
]


def parse(text: str | bytes, name: str = "2025-01-05-post.md", zone: ZoneInfo = BERLIN) -> Post:
    """Parse a post that must be valid, and return it."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    outcome = parse_post(Path(name), raw, zone)
    assert outcome.problems == []
    assert outcome.post is not None
    return outcome.post


def problems_of(text: str | bytes, name: str = "p.md") -> list[str]:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    outcome = parse_post(Path(name), raw, BERLIN)
    assert outcome.post is None
    return [str(p) for p in outcome.problems]


# --- valid posts --------------------------------------------------------------------------------


def test_minimal_post() -> None:
    post = parse("---\ntitle: Hello\ndate: 2025-01-05\n---\n\nBody text.\n")
    assert post.title == "Hello"
    assert post.slug == "post"
    assert post.published == datetime(2025, 1, 5, tzinfo=BERLIN)
    assert post.updated == post.published
    assert "Body text." in post.body
    assert (post.summary, post.tags, post.draft, post.pinned_id, post.author) == (
        None, (), False, None, None
    )


def test_every_field() -> None:
    post = parse(
        post_text(
            {
                "title": "  A   title\twith\nspaces ",
                "date": "2025-01-05T10:00:00+05:30",
                "updated": datetime(2025, 2, 1, 8, 0, tzinfo=UTC),
                "summary": "Short.",
                "tags": ["python", " python ", "web", ""],
                "draft": True,
                "slug": "custom-slug",
                "id": "urn:uuid:00000000-0000-4000-8000-000000000000",
                "author": {"name": "Bea", "email": "bea@example.org"},
            },
            "Body.\n",
        )
    )
    assert post.title == "A title with spaces"
    assert post.published == datetime(2025, 1, 5, 10, 0, tzinfo=timezone(timedelta(hours=5.5)))
    assert post.published.utcoffset() == timedelta(hours=5, minutes=30)
    assert post.updated == datetime(2025, 2, 1, 8, 0, tzinfo=UTC)
    assert post.summary == "Short."
    assert post.tags == ("python", "web")  # cleaned, de-duplicated, empty ones dropped
    assert post.draft is True
    assert post.slug == "custom-slug"
    assert post.pinned_id == "urn:uuid:00000000-0000-4000-8000-000000000000"
    assert post.author == Author("Bea", "bea@example.org")


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2025-01-05", datetime(2025, 1, 5, tzinfo=BERLIN)),
        ("2025-07-05 09:30:00", datetime(2025, 7, 5, 9, 30, tzinfo=BERLIN)),  # naive: site zone
        ("'2025-07-05T09:30'", datetime(2025, 7, 5, 9, 30, tzinfo=BERLIN)),
        ("2025-07-05T09:30:00Z", datetime(2025, 7, 5, 9, 30, tzinfo=UTC)),
        ("'2025-07-05T09:30:00-04:00'", datetime(2025, 7, 5, 9, 30, tzinfo=EASTERN_SUMMER)),
    ],
)
def test_dates(written: str, expected: datetime) -> None:
    post = parse(f"---\ntitle: T\ndate: {written}\n---\n")
    assert post.published == expected
    assert post.published.utcoffset() == expected.utcoffset()


def test_updated_before_published_is_published() -> None:
    post = parse("---\ntitle: T\ndate: 2025-03-01\nupdated: 2025-01-01\n---\n")
    assert post.updated == post.published


def test_tags_may_be_one_string() -> None:
    assert parse("---\ntitle: T\ndate: 2025-03-01\ntags: rust\n---\n").tags == ("rust",)


def test_author_as_a_name() -> None:
    post = parse("---\ntitle: T\ndate: 2025-03-01\nauthor: ' Bea  B. '\n---\n")
    assert post.author == Author("Bea B.")


def test_utf8_bom_and_crlf_line_ends_are_fine() -> None:
    post = parse(b"\xef\xbb\xbf---\r\ntitle: T\r\ndate: 2025-03-01\r\n---\r\nBody\r\n")
    assert post.title == "T"


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("2025-10-03-hello-world.md", "hello-world"),
        ("2025-10-03_Hello World!.md", "hello-world"),
        ("Ünïcödé Post.markdown", "unicode-post"),
        ("日本語.md", "post"),
        ("plain.md", "plain"),
    ],
)
def test_slug_from_filename(name: str, slug: str) -> None:
    assert slug_from_filename(Path(name)) == slug


def test_entry_id_is_a_tag_uri_that_ignores_edits() -> None:
    post = parse("---\ntitle: T\ndate: 2025-03-01\n---\nBody", name="2025-03-01-x.md")
    assert post.entry_id("blog.example.org") == "tag:blog.example.org,2025-03-01:/posts/x"
    edited = parse(
        "---\ntitle: New title\ndate: 2025-03-01\nupdated: 2025-04-01\n---\nNew body",
        name="2025-03-01-x.md",
    )
    assert edited.entry_id("blog.example.org") == post.entry_id("blog.example.org")


def test_pinned_id_wins() -> None:
    post = parse("---\ntitle: T\ndate: 2025-03-01\nid: 'tag:old.example,2010:1'\n---\n")
    assert post.entry_id("blog.example.org") == "tag:old.example,2010:1"


def test_is_published() -> None:
    post = parse("---\ntitle: T\ndate: 2025-03-01\n---\n")
    at = datetime(2025, 3, 1, tzinfo=BERLIN)
    assert post.is_published(at)
    assert not post.is_published(at - timedelta(seconds=1))
    draft = parse("---\ntitle: T\ndate: 2025-03-01\ndraft: true\n---\n")
    assert not draft.is_published(NOW)


def test_clean_text() -> None:
    assert clean_text(" a\tb\n\nc\x00\x07\x1b d\x85e\u2028f ") == "a b c de f"
    assert clean_text("\x01\x02\x7f") == ""
    assert clean_text("שלום 😀 <&>") == "שלום 😀 <&>"


@pytest.mark.parametrize(
    "name", ["post.md", "post.MD", "post.markdown", "2025-01-01-a.b.md"]
)
def test_post_file_names(name: str) -> None:
    assert is_post_file(name)


@pytest.mark.parametrize(
    "name",
    [".hidden.md", ".#post.md", "post.md~", "#post.md#", ".post.md.swp", "post.txt",
     "post.md.bak", "~post.md", "README"],
)
def test_ignored_file_names(name: str) -> None:
    assert not is_post_file(name)


def test_iter_post_files_is_sorted_and_skips_hidden_folders(tmp_path: Path) -> None:
    for name in ["b.md", "a.md", "sub/c.md", ".git/d.md", "_drafts/e.md", "sub/.f.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    found = [Path(e.path).relative_to(tmp_path).as_posix() for e in iter_post_files(tmp_path)]
    assert found == ["a.md", "b.md", "sub/c.md"]


# --- bad input: one test per case, through a whole build -----------------------------------


@pytest.fixture
def good_site(site: Site) -> Site:
    """A site with two good posts, beside which each test puts one bad file."""
    site.write_post("2025-01-01-good-one.md", "One.\n", title="Good one", date=date(2025, 1, 1),
                    tags=["a"])
    site.write_post("2025-01-02-good-two.md", "Two.\n", title="Good two", date=date(2025, 1, 2),
                    tags=["b"])
    return site


def assert_only_problem(report: BuildReport, path: Path, line: int, message: str) -> Problem:
    """Assert the build reported exactly one problem, at path:line, containing message."""
    assert len(report.problems) == 1, [str(p) for p in report.problems]
    (problem,) = report.problems
    assert problem.path == path
    assert problem.line == line
    assert message in problem.message
    assert str(problem) == f"{path}:{line}: {problem.message}"
    return problem


def assert_good_posts_built(site: Site, report: BuildReport) -> None:
    """Assert the good posts made it into every feed, written to disk."""
    assert report.published == 2
    for name in ("feed.atom", "feed.rss", "feed.json"):
        feed = read_feed(name, site.feed(name))
        assert [e.id for e in feed.entries] == GOOD_IDS
    assert (site.output / "tags" / "a.atom").is_file()
    assert (site.output / "tags" / "b.json").is_file()


def build_with(site: Site, name: str, data: str | bytes, line: int, message: str) -> Problem:
    path = site.write_raw(name, data)
    report = site.build(NOW)
    problem = assert_only_problem(report, path, line, message)
    assert_good_posts_built(site, report)
    return problem


def test_invalid_yaml(good_site: Site) -> None:
    text = "---\ndate: 2025-01-03\ntitle: Broken: post\ntags: [a]\n---\nBody\n"
    build_with(good_site, "bad.md", text, 3, "invalid YAML in front matter")


def test_invalid_yaml_after_blank_lines_counts_them(good_site: Site) -> None:
    text = "---\n\n\ndate: 2025-01-03\ntitle: Broken: post\n---\nBody\n"
    build_with(good_site, "bad.md", text, 5, "invalid YAML in front matter")


@pytest.mark.parametrize(
    ("front", "kind"), [("- just\n- a list\n", "list"), ("just a sentence\n", "str")]
)
def test_front_matter_not_a_mapping(good_site: Site, front: str, kind: str) -> None:
    problem = build_with(good_site, "bad.md", f"---\n{front}---\nBody\n", 2, "must be a mapping")
    assert problem.message.endswith(f"not a {kind}")


def test_missing_title(good_site: Site) -> None:
    # Nothing to point at but the front matter itself: its opening line.
    text = "---\ndate: 2025-01-03\ntags: [a]\n---\nBody\n"
    build_with(good_site, "bad.md", text, 1, "title is missing")


@pytest.mark.parametrize("title", ["", "   ", "\x01\x02"])
def test_empty_title(good_site: Site, title: str) -> None:
    text = post_text({"date": "2025-01-03", "title": title, "tags": ["a"]}, "Body\n")
    assert text.splitlines()[2].startswith("title:")
    build_with(good_site, "bad.md", text, 3, "title is empty")


def test_empty_title_after_blank_lines_is_found_on_its_line(good_site: Site) -> None:
    text = "---\n\ndate: 2025-01-03\n\ntitle: ''\n---\nBody\n"
    build_with(good_site, "bad.md", text, 5, "title is empty")


def test_missing_date(good_site: Site) -> None:
    build_with(good_site, "bad.md", "---\ntitle: No date\n---\nBody\n", 1, "date is missing")


@pytest.mark.parametrize(
    "written", ["tomorrow", "2025-13-45", "2025-02-30", "2025-01-01 25:00:00", "03/10/2025", "[]"]
)
def test_unparseable_date(good_site: Site, written: str) -> None:
    text = f"---\ntitle: Bad date\ntags: [a]\ndate: {written}\n---\nBody\n"
    problem = build_with(good_site, "bad.md", text, 4, "is not a date")
    assert "expected YYYY-MM-DD or ISO 8601" in problem.message


def test_unparseable_updated(good_site: Site) -> None:
    text = "---\ntitle: T\ndate: 2025-01-03\nupdated: soon\n---\nBody\n"
    build_with(good_site, "bad.md", text, 4, "updated 'soon' is not a date")


@pytest.mark.parametrize(
    ("tags", "message"),
    [("[python, 42]", "tags[1] 42 is not a string"),
     ("[python, {a: b}]", "tags[1] {'a': 'b'} is not a string"),
     ("[true]", "tags[0] True is not a string"),
     ("{a: b}", "tags must be a list of strings")],
)
def test_tag_not_a_string(good_site: Site, tags: str, message: str) -> None:
    text = f"---\ntitle: T\ndate: 2025-01-03\ntags: {tags}\n---\nBody\n"
    build_with(good_site, "bad.md", text, 4, message)


def test_not_utf8_in_front_matter(good_site: Site) -> None:
    data = "---\ndate: 2025-01-03\ntitle: Café\n---\nBody\n".encode("latin-1")
    problem = build_with(good_site, "bad.md", data, 3, "not valid UTF-8 (byte 0xe9)")
    assert "save as UTF-8" in problem.message


def test_not_utf8_in_body(good_site: Site) -> None:
    data = b"---\ntitle: T\ndate: 2025-01-03\n---\n\nfine\nstill fine\n\x80 here\n"
    build_with(good_site, "bad.md", data, 8, "not valid UTF-8 (byte 0x80)")


def test_not_utf8_after_a_bom(good_site: Site) -> None:
    data = b"\xef\xbb\xbf---\ntitle: T\ndate: 2025-01-03\n---\n\xff\n"
    build_with(good_site, "bad.md", data, 5, "not valid UTF-8 (byte 0xff)")


@pytest.mark.parametrize("data", [b"", b"\n  \n\t\n", b"\xef\xbb\xbf"])
def test_empty_file(good_site: Site, data: bytes) -> None:
    build_with(good_site, "empty.md", data, 1, "file is empty")


def test_no_front_matter(good_site: Site) -> None:
    build_with(good_site, "bad.md", "Just some text.\n", 1, "no front matter")


def test_front_matter_not_closed(good_site: Site) -> None:
    build_with(good_site, "bad.md", "---\ntitle: T\ndate: 2025-01-03\n", 1, "not closed")


def test_unreadable_file(good_site: Site) -> None:
    # Tests may run as root, which chmod 000 does not stop: a dangling symlink named like a
    # post is listed as a file and cannot be read by anyone.
    link = good_site.posts / "2025-01-03-gone.md"
    os.symlink(good_site.root / "missing.md", link)
    report = good_site.build(NOW)
    problem = assert_only_problem(report, link, 1, "cannot be read")
    assert "No such file or directory" in problem.message
    assert_good_posts_built(good_site, report)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("draft: yes please", "draft must be true or false"),
        ("slug: Not A Slug", "slug 'Not A Slug' must be lowercase"),
        ("id: not a uri", "id 'not a uri' must be a URI"),
        ("author: [a, b]", "author must be a name"),
        ("summary: [a, b]", "summary must be text, not a list"),
        ("title: {a: b}", "title must be text, not a mapping"),
        # Characters XML cannot carry would stop every feed, not just this post's entry.
        ('id: "tag:x,2025:\\x01a"', "must be a URI"),
        ('author: {name: B, email: "b\\x02@example.org"}', "author must be a name"),
        ('author: {name: "\\x01"}', "author must be a name"),
    ],
)
def test_other_bad_fields(good_site: Site, line: str, message: str) -> None:
    lines = ["title: T", "date: 2025-01-03", "tags: [a]"]
    lines = [x for x in lines if not x.startswith(line.split(":")[0] + ":")] + [line]
    text = "---\n" + "\n".join(lines) + "\n---\nBody\n"
    build_with(good_site, "bad.md", text, len(lines) + 1, message)


def test_every_bad_field_of_one_post_is_reported(tmp_path: Path) -> None:
    text = "---\ntitle: ''\ndate: never\ntags: [1]\ndraft: maybe\n---\n"
    assert problems_of(text) == [
        "p.md:2: title is empty",
        "p.md:3: date 'never' is not a date (expected YYYY-MM-DD or ISO 8601)",
        "p.md:4: tags[0] 1 is not a string (quote it)",
        "p.md:5: draft must be true or false, not 'maybe'",
    ]


def test_ignored_files_are_never_read(good_site: Site) -> None:
    garbage = b"\xff\xfe not a post at all"
    for name in ["notes.txt", "image.png", ".hidden.md", ".#2025-x.md", "2025-x.md~",
                 "#2025-x.md#", ".2025-x.md.swp", ".git/HEAD.md", "_drafts/x.md"]:
        good_site.write_raw(name, garbage)
    report = good_site.build(NOW)
    assert report.problems == []
    assert_good_posts_built(good_site, report)


# --- posts that share a date: the times the feeds give them ------------------------------------


def dated(name: str, when: str, **front: object) -> Post:
    """A post `name` dated `when` as written in front matter (a date alone is midnight)."""
    return parse(f"---\ntitle: {name}\ndate: {when}\n" + "".join(
        f"{key}: {value}\n" for key, value in front.items()) + "---\nBody.\n", name=name)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN)


def moved(posts: list[Post]) -> dict[str, tuple[datetime, datetime]]:
    """The (published, updated) the feeds show for the posts feed_times moves, by path."""
    by_path = {str(p.path): p for p in posts}
    return {path: (later(by_path[path].published, shift[0]),
                   later(by_path[path].updated, shift[1]))
            for path, shift in feed_times(posts).items()}


def test_posts_of_one_date_are_a_second_apart_in_file_name_order() -> None:
    posts = [dated(n, "2025-09-28") for n in ("c.md", "a.md", "b.md")]
    alone = dated("d.md", "2025-09-29")
    times = moved([*posts, alone])
    # The first by file name keeps its time (and is left out); the others follow it.
    assert times == {
        "b.md": (at("2025-09-28T00:00:01"), at("2025-09-28T00:00:01")),
        "c.md": (at("2025-09-28T00:00:02"), at("2025-09-28T00:00:02")),
    }
    assert times["b.md"][0].tzinfo is BERLIN  # in the post's own zone: +02:00 in a feed
    # The written dates do not move: entry IDs and URLs are made from them.
    assert [p.entry_id("blog.example.org") for p in posts] == [
        f"tag:blog.example.org,2025-09-28:/posts/{n}" for n in "cab"]


def test_a_given_time_orders_a_post_and_a_shared_one_pushes_the_next() -> None:
    posts = [
        dated("z.md", "2025-09-28"),  # midnight: before the posts with a time
        dated("b.md", "2025-09-28T08:00:00"),  # naive: the site's zone
        dated("a.md", "2025-09-28T08:00:00+02:00"),  # the same instant, written otherwise
        dated("c.md", "2025-09-28T08:00:01"),  # one second later: now taken, so pushed on
    ]
    assert moved(posts) == {
        "b.md": (at("2025-09-28T08:00:01"), at("2025-09-28T08:00:01")),
        "c.md": (at("2025-09-28T08:00:02"), at("2025-09-28T08:00:02")),
    }


def test_a_shared_updated_time_is_spread_after_the_posts_never_updated() -> None:
    posts = [
        dated("x.md", "2025-01-01", updated="2025-03-01"),
        dated("y.md", "2025-02-01", updated="2025-03-01"),
        dated("z.md", "2025-03-01"),  # published then, never updated: keeps its time
    ]
    times = moved(posts)
    assert times == {
        "x.md": (at("2025-01-01T00:00:00"), at("2025-03-01T00:00:01")),
        "y.md": (at("2025-02-01T00:00:00"), at("2025-03-01T00:00:02")),
    }


def test_feed_times_are_the_same_in_any_order_and_never_before_publication() -> None:
    posts = [dated(f"{n}.md", "2025-09-28", updated="2025-09-28") for n in "abcdef"]
    posts.append(dated("g.md", "2025-09-20", updated="2025-09-28T00:00:03"))
    times = moved(posts)
    assert times == moved(list(reversed(posts)))
    shown = {str(p.path): times.get(str(p.path), (p.published, p.updated)) for p in posts}
    assert len({published for published, _ in shown.values()}) == len(posts)
    assert len({updated for _, updated in shown.values()}) == len(posts)
    assert all(updated >= published for published, updated in shown.values())


def test_posts_sharing_a_date_with_no_time_are_noted_by_file() -> None:
    posts = [dated(n, "2025-09-28") for n in ("b.md", "a.md")]
    posts += [dated(n, "2025-10-01T09:30:00") for n in ("d.md", "c.md")]
    posts.append(dated("e.md", "2025-10-02"))
    notes = [str(n) for n in same_time_notices(posts)]
    assert notes == [
        "a.md: 2 posts are dated 2025-09-28 with no time (a.md, b.md): the feeds order them "
        "by file name, one second apart; give each its time (date: 2025-09-28T09:30:00) to "
        "choose their order",
        "c.md: 2 posts are dated 2025-10-01 09:30:00 (c.md, d.md): the feeds order them by "
        "file name, one second apart; give each its time (date: 2025-10-01T09:30:00) to "
        "choose their order",
    ]

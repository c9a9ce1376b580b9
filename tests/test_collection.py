"""collection.py: scanning the posts folder, its cache, and posts that clash with each other."""

from __future__ import annotations

import os
import re
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from feedreader import read_feed
from postroom.collection import PostCollection, PostsFolderError, newest_first
from sites import NOW, Site

BERLIN = ZoneInfo("Europe/Berlin")


def collection(site: Site) -> PostCollection:
    return PostCollection(site.posts, BERLIN, "blog.example.org")


def test_rescan_with_nothing_changed_parses_nothing(site: Site) -> None:
    for day in range(1, 6):
        site.write_post(f"2025-01-0{day}-p{day}.md", "Body.\n", title=f"P{day}",
                        date=date(2025, 1, day))
    posts = collection(site)
    first = posts.scan()
    assert (first.parsed, first.changed, len(first.posts)) == (5, True, 5)
    second = posts.scan()
    assert (second.parsed, second.changed) == (0, False)
    assert second.posts == first.posts


def test_rescan_parses_only_the_changed_file(site: Site) -> None:
    a = site.write_post("a.md", "A.\n", title="A", date=date(2025, 1, 1))
    site.write_post("b.md", "B.\n", title="B", date=date(2025, 1, 2))
    posts = collection(site)
    posts.scan()
    site.write_post("a.md", "A, edited at length.\n", title="A2", date=date(2025, 1, 1))
    assert a.stat().st_size != len("A.\n")
    scan = posts.scan()
    assert (scan.parsed, scan.changed) == (1, True)
    assert sorted(p.title for p in scan.posts) == ["A2", "B"]


def test_same_size_edit_is_seen_through_the_mtime(site: Site) -> None:
    path = site.write_post("a.md", "Body.\n", title="AAA", date=date(2025, 1, 1))
    posts = collection(site)
    posts.scan()
    before = path.stat()
    site.write_post("a.md", "Body.\n", title="BBB", date=date(2025, 1, 1))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert path.stat().st_size == before.st_size
    scan = posts.scan()
    assert scan.parsed == 1
    assert [p.title for p in scan.posts] == ["BBB"]


def test_removed_and_added_files_are_changes(site: Site) -> None:
    a = site.write_post("a.md", "A.\n", title="A", date=date(2025, 1, 1))
    posts = collection(site)
    posts.scan()
    a.unlink()
    removed = posts.scan()
    assert (removed.parsed, removed.changed, removed.posts) == (0, True, [])
    site.write_post("b.md", "B.\n", title="B", date=date(2025, 1, 1))
    added = posts.scan()
    assert (added.parsed, added.changed) == (1, True)


def test_a_missing_posts_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "nowhere"
    with pytest.raises(PostsFolderError, match=re.escape(
            f"{folder}: the posts folder does not exist")):
        PostCollection(folder, BERLIN, "h").scan()
    folder.write_text("a file where the folder should be")
    with pytest.raises(PostsFolderError, match=re.escape(
            f"{folder}: the posts folder is not a folder")):
        PostCollection(folder, BERLIN, "h").scan()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_an_unreadable_posts_folder_is_an_error_naming_it(site: Site) -> None:
    site.write_post("a.md", "A.\n", title="A", date=date(2025, 1, 1))
    hidden = site.posts / "2024"
    hidden.mkdir()
    hidden.chmod(0)
    try:
        with pytest.raises(PostsFolderError, match=re.escape(f"{hidden}: cannot read")):
            collection(site).scan()
    finally:
        hidden.chmod(0o755)


def test_a_missing_posts_folder_keeps_the_cache_for_its_return(site: Site) -> None:
    site.write_post("a.md", "A.\n", title="A", date=date(2025, 1, 1))
    posts = collection(site)
    first = posts.scan()
    site.posts.rename(site.root / "posts.away")
    with pytest.raises(PostsFolderError):
        posts.scan()
    (site.root / "posts.away").rename(site.posts)
    back = posts.scan()
    # Nothing changed on disk, so nothing is parsed again (and the feeds are not rebuilt).
    assert (back.parsed, back.changed, back.files) == (0, False, 1)
    assert back.posts == first.posts


def test_published_excludes_drafts_and_future_posts_newest_first(site: Site) -> None:
    site.write_post("old.md", "", title="Old", date=date(2024, 5, 1))
    site.write_post("new.md", "", title="New", date=date(2025, 5, 1))
    site.write_post("draft.md", "", title="Draft", date=date(2025, 1, 1), draft=True)
    site.write_post("future.md", "", title="Future", date=date(2026, 5, 1))
    scan = collection(site).scan()
    assert len(scan.posts) == 4
    assert [p.title for p in scan.published(NOW)] == ["New", "Old"]
    assert [p.title for p in scan.published(datetime(2026, 5, 1, tzinfo=BERLIN))] == [
        "Future", "New", "Old"
    ]


def test_newest_first_breaks_ties_by_slug(site: Site) -> None:
    for slug in ["b", "c", "a"]:
        site.write_post(f"{slug}.md", "", title=slug, date=date(2025, 1, 1))
    site.write_post("z.md", "", title="z", date=date(2024, 1, 1))
    posts = collection(site).scan().posts
    ordered = [p.slug for p in newest_first(posts)]
    assert ordered == ["c", "b", "a", "z"]
    assert ordered == [p.slug for p in newest_first(reversed(posts))]


def test_problems_are_sorted_by_path_and_line(site: Site) -> None:
    site.write_raw("b.md", "---\ntitle: ''\ndate: x\n---\n")
    site.write_raw("a.md", "")
    problems = collection(site).scan().problems
    assert [(p.path.name, p.line) for p in problems] == [("a.md", 1), ("b.md", 2), ("b.md", 3)]


# --- duplicates: one test per case, through a whole build -------------------------------------


def good_posts(site: Site) -> None:
    site.write_post("2025-01-01-good-one.md", "One.\n", title="Good one", date=date(2025, 1, 1))
    site.write_post("2025-01-02-good-two.md", "Two.\n", title="Good two", date=date(2025, 1, 2))


def feed_ids(site: Site) -> dict[str, list[str]]:
    return {n: [e.id for e in read_feed(n, site.feed(n)).entries]
            for n in ("feed.atom", "feed.rss", "feed.json")}


def test_two_posts_with_the_same_slug(site: Site) -> None:
    good_posts(site)
    older = site.write_post("2025-02-01-same.md", "Older.\n", title="First", date=date(2025, 2, 1))
    newer = site.write_post("2025-03-01-same.md", "Newer.\n", title="Second", date=date(2025, 3, 1))
    report = site.build(NOW)
    # The newer file is the one reported: readers have already seen the older post.
    assert [str(p) for p in report.problems] == [
        f"{newer}:1: slug 'same' is already used by {older}"
    ]
    expected = [
        "tag:blog.example.org,2025-02-01:/posts/same",
        "tag:blog.example.org,2025-01-02:/posts/good-two",
        "tag:blog.example.org,2025-01-01:/posts/good-one",
    ]
    assert feed_ids(site) == dict.fromkeys(("feed.atom", "feed.rss", "feed.json"), expected)


def test_same_slug_from_front_matter(site: Site) -> None:
    good_posts(site)
    older = site.write_post("x.md", "", title="X", date=date(2025, 2, 1), slug="good-one")
    report = site.build(NOW)
    # good-one (2025-01-01) is older than x.md (2025-02-01): x.md is the duplicate.
    assert [str(p) for p in report.problems] == [
        f"{older}:1: slug 'good-one' is already used by {site.posts / '2025-01-01-good-one.md'}"
    ]
    assert report.published == 2


def test_two_posts_with_the_same_pinned_id(site: Site) -> None:
    good_posts(site)
    pinned = "urn:uuid:11111111-1111-4111-8111-111111111111"
    first = site.write_post("first.md", "", title="First", date=date(2025, 2, 1), id=pinned)
    second = site.write_post("second.md", "", title="Second", date=date(2025, 2, 2), id=pinned)
    report = site.build(NOW)
    assert [str(p) for p in report.problems] == [
        f"{second}:1: entry id '{pinned}' is already used by {first}"
    ]
    ids = feed_ids(site)
    assert ids["feed.atom"] == [
        pinned,
        "tag:blog.example.org,2025-01-02:/posts/good-two",
        "tag:blog.example.org,2025-01-01:/posts/good-one",
    ]
    assert ids["feed.rss"] == ids["feed.json"] == ids["feed.atom"]


def test_pinned_id_clashing_with_a_generated_one(site: Site) -> None:
    good_posts(site)
    clash = site.write_post(
        "other.md", "", title="Other", date=date(2025, 3, 1),
        id="tag:blog.example.org,2025-01-01:/posts/good-one",
    )
    report = site.build(NOW)
    assert len(report.problems) == 1
    assert report.problems[0].path == clash
    assert "is already used by" in report.problems[0].message
    assert report.published == 2


def test_duplicate_is_reported_again_on_a_cached_rescan(site: Site) -> None:
    site.write_post("2025-02-01-same.md", "", title="A", date=date(2025, 2, 1))
    site.write_post("2025-03-01-same.md", "", title="B", date=date(2025, 3, 1))
    posts = collection(site)
    first = posts.scan()
    second = posts.scan()
    assert second.parsed == 0
    assert second.problems == first.problems
    assert len(second.problems) == 1
    assert [p.title for p in second.posts] == ["A"]

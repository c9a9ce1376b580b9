"""build.py: a whole build on disk: what is written, what is left alone, what is removed."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from feedreader import read_feed
from postroom.build import SiteBuilder
from postroom.collection import PostsFolderError
from postroom.output import MANIFEST
from sites import NOW, Site

FEEDS_OF = {
    "main": ["feed.atom", "feed.json", "feed.rss"],
    "a": ["tags/a.atom", "tags/a.json", "tags/a.rss"],
    "b": ["tags/b.atom", "tags/b.json", "tags/b.rss"],
}
# Each feed's files: its formats and its HTML page for browsers (feeds.for_browsers).
FILES_OF = {stem: sorted([*names, names[0].rsplit(".", 1)[0] + ".html"])
            for stem, names in FEEDS_OF.items()}
OLD_MTIME = 1_000_000_000_000_000_000  # 2001: any rewrite shows, whatever the clock's grain


def two_tag_site(site: Site) -> Site:
    site.write_post("2025-01-01-alpha.md", "Alpha body.\n", title="Alpha", date=date(2025, 1, 1),
                    tags=["a"])
    site.write_post("2025-01-02-beta.md", "Beta body.\n", title="Beta", date=date(2025, 1, 2),
                    tags=["b"])
    return site


def age_output(site: Site) -> None:
    """Set every output file's mtime far in the past, so any rewrite is visible."""
    for path in site.output.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(OLD_MTIME, OLD_MTIME))


def rewritten(site: Site) -> list[str]:
    return sorted(name for name, mtime in site.output_files().items() if mtime != OLD_MTIME)


def test_first_build_writes_every_feed(site: Site) -> None:
    two_tag_site(site)
    report = site.build(NOW)
    expected = sorted(FEEDS_OF["main"] + FEEDS_OF["a"] + FEEDS_OF["b"])
    feeds = sorted(n for n in report.feeds if n.rsplit(".", 1)[-1] in ("atom", "rss", "json"))
    assert feeds == expected
    assert sorted(report.written) == sorted(report.feeds)
    assert (report.unchanged, report.removed, report.problems) == ([], [], [])
    for name in report.feeds:
        assert site.feed(name) == report.feeds[name]


def test_rebuild_with_no_change_rewrites_nothing(site: Site) -> None:
    two_tag_site(site)
    builder = SiteBuilder(site.settings())
    builder.build(NOW)
    age_output(site)
    again = builder.build(NOW)
    assert again.parsed == 0  # the cache answered: stat calls only
    assert again.written == []
    assert sorted(again.unchanged) == sorted(again.feeds)
    assert rewritten(site) == []


def test_rebuild_by_a_new_builder_rewrites_nothing(site: Site) -> None:
    two_tag_site(site)
    site.build(NOW)
    age_output(site)
    report = site.build(datetime(2026, 9, 1, tzinfo=UTC))  # a later clock changes nothing
    assert report.parsed == 2
    assert report.written == []
    assert rewritten(site) == []


def test_editing_a_post_rewrites_only_its_feeds(site: Site) -> None:
    two_tag_site(site)
    builder = SiteBuilder(site.settings())
    builder.build(NOW)
    age_output(site)
    site.write_post("2025-01-01-alpha.md", "Alpha body, edited.\n", title="Alpha",
                    date=date(2025, 1, 1), tags=["a"])
    report = builder.build(NOW)
    assert report.parsed == 1
    assert sorted(report.written) == sorted(FILES_OF["main"] + FILES_OF["a"])
    assert rewritten(site) == sorted(FILES_OF["main"] + FILES_OF["a"])
    for name in FEEDS_OF["b"]:
        assert name in report.unchanged
    assert "Alpha body, edited." in site.feed("tags/a.json").decode()


def test_entry_ids_survive_edits_to_title_body_and_updated(site: Site) -> None:
    two_tag_site(site)
    site.build(NOW)
    before = {n: [e.id for e in read_feed(n, site.feed(n)).entries] for n in FEEDS_OF["main"]}
    site.write_post("2025-01-01-alpha.md", "A whole new body.\n", title="Alpha, retitled",
                    date=date(2025, 1, 1), updated=date(2025, 6, 1), tags=["a"])
    site.build(NOW)
    for name in FEEDS_OF["main"]:
        entries = read_feed(name, site.feed(name)).entries
        assert [e.id for e in entries] == before[name]
        assert "Alpha, retitled" in [e.title for e in entries]


def test_output_is_byte_identical_across_builders(make_site: Callable[..., Site]) -> None:
    one, two = make_site("one"), make_site("two")
    for site in (one, two):
        two_tag_site(site)
        site.write_post("2025-02-01-gamma.md", "Gamma [link](x/).\n\n[^1]\n\n[^1]: Note.\n",
                        title="Gamma & <co>", date="2025-02-01 10:00:00", tags=["a", "b"],
                        summary="Ünïcode 😀 שלום")
    one.build(NOW)
    two.build(datetime(2030, 1, 1, tzinfo=UTC))
    files_one = {n: (one.output / n).read_bytes() for n in one.output_files()}
    files_two = {n: (two.output / n).read_bytes() for n in two.output_files()}
    assert files_one == files_two
    assert len(files_one) >= 10


def test_builds_leave_no_temporary_files(site: Site) -> None:
    two_tag_site(site)
    builder = SiteBuilder(site.settings())
    builder.build(NOW)
    site.write_post("2025-01-03-c.md", "C.\n", title="C", date=date(2025, 1, 3), tags=["c"])
    builder.build(NOW)
    names = list(site.output_files())
    assert MANIFEST in names
    hidden = [n for n in names if Path(n).name.startswith(".") and n != MANIFEST]
    assert (hidden, [n for n in names if n.endswith(".tmp")]) == ([], [])


def test_stale_tag_feed_is_removed_but_unrelated_files_are_not(site: Site) -> None:
    two_tag_site(site)
    site.output.mkdir()
    (site.output / "tags").mkdir()
    mine = {
        site.output / "index.html": "home page",
        site.output / "tags" / "notes.txt": "my notes",
        site.output / "tags" / "c.atom": "a file postroom never wrote",
    }
    for path, text in mine.items():
        path.write_text(text)
    site.build(NOW)
    age_output(site)
    site.write_post("2025-01-02-beta.md", "Beta body.\n", title="Beta", date=date(2025, 1, 2),
                    tags=["c"])
    report = site.build(NOW)
    assert sorted(report.removed) == FILES_OF["b"]
    for name in FILES_OF["b"]:
        assert not (site.output / name).exists()
    # tags/c.atom is postroom's now (the new tag's feed); the others were never its files.
    assert (site.output / "tags" / "c.atom").read_bytes() == report.feeds["tags/c.atom"]
    for path in [site.output / "index.html", site.output / "tags" / "notes.txt"]:
        assert path.read_text() == mine[path]
        assert path.stat().st_mtime_ns == OLD_MTIME


def test_a_removed_post_leaves_the_feeds(site: Site) -> None:
    two_tag_site(site)
    site.build(NOW)
    (site.posts / "2025-01-02-beta.md").unlink()
    report = site.build(NOW)
    assert sorted(report.removed) == FILES_OF["b"]
    assert [e.title for e in read_feed("feed.atom", site.feed("feed.atom")).entries] == ["Alpha"]


def output_state(site: Site) -> dict[str, tuple[int, bytes]]:
    """Every output file with its mtime and bytes: what a feed reader would be served."""
    return {name: (mtime, site.feed(name)) for name, mtime in site.output_files().items()}


def test_a_missing_posts_folder_leaves_the_feeds_as_they_were(site: Site) -> None:
    two_tag_site(site)
    builder = SiteBuilder(site.settings())  # one builder, as the daemon keeps
    builder.build(NOW)
    before = output_state(site)
    site.posts.rename(site.root / "posts.away")

    # The daemon's rebuild job, and `postroom build`, both end up here.
    for attempt in (builder, site.builder()):
        with pytest.raises(PostsFolderError) as raised:
            attempt.build(NOW)
        assert str(raised.value) == (
            f"{site.posts}: the posts folder does not exist; "
            f"the feeds in {site.output} are left as they were")
    assert output_state(site) == before

    # Back where it was: the next scan builds as before, rewriting nothing.
    (site.root / "posts.away").rename(site.posts)
    report = builder.build(NOW)
    assert (report.written, report.removed, report.published) == ([], [], 2)
    assert output_state(site) == before


def test_a_posts_folder_suddenly_empty_leaves_the_feeds_as_they_were(site: Site) -> None:
    two_tag_site(site)
    builder = SiteBuilder(site.settings())
    builder.build(NOW)
    before = output_state(site)
    away = site.root / "away"
    away.mkdir()
    for post in site.posts.iterdir():  # an unmounted disk, a checkout half-way: no files
        post.rename(away / post.name)

    with pytest.raises(PostsFolderError, match=re.escape(
            f"{site.posts}: the posts folder has no post files, but the last build had 2; "
            f"the feeds in {site.output} are left as they were")):
        builder.build(NOW)
    assert output_state(site) == before
    with pytest.raises(PostsFolderError):
        site.build(NOW)  # a new process knows it from the manifest
    assert output_state(site) == before
    # Checking writes nothing, so it may say what it sees: no posts.
    assert site.build(NOW, write=False).published == 0

    # Emptied on purpose: say so once; from then on an empty folder is what is expected.
    emptied = site.builder().build(NOW, allow_empty=True)
    assert sorted(emptied.removed) == FILES_OF["a"] + FILES_OF["b"]
    assert read_feed("feed.atom", site.feed("feed.atom")).entries == []
    assert site.build(NOW).published == 0


def test_a_new_site_with_no_posts_builds_empty_feeds(site: Site) -> None:
    report = site.build(NOW)
    assert report.published == 0 and "feed.atom" in report.written
    assert site.build(NOW).unchanged


def test_a_manifest_of_an_older_version_still_removes_stale_feeds(site: Site) -> None:
    two_tag_site(site)
    site.build(NOW)
    # Older versions wrote the list of files alone.
    (site.output / MANIFEST).write_text('["feed.atom", "tags/b.atom", "tags/b.json"]')
    (site.posts / "2025-01-02-beta.md").unlink()
    report = site.build(NOW)
    assert sorted(report.removed) == ["tags/b.atom", "tags/b.json"]


def test_check_mode_writes_nothing(site: Site) -> None:
    two_tag_site(site)
    report = site.build(NOW, write=False)
    assert report.published == 2
    assert "feed.atom" in report.feeds
    assert report.written == []
    assert not site.output.exists()


def test_entries_limit_per_feed(make_site: Callable[..., Site]) -> None:
    site = make_site(feeds={"entries": 2})
    for day in range(1, 6):
        site.write_post(f"2025-01-0{day}-p{day}.md", "", title=f"P{day}", date=date(2025, 1, day),
                        tags=["t"] if day % 2 else [])
    report = site.build(NOW)
    assert [e.title for e in read_feed("feed.rss", report.feeds["feed.rss"]).entries] == [
        "P5", "P4"
    ]
    assert [e.title for e in read_feed("tags/t.json", report.feeds["tags/t.json"]).entries] == [
        "P5", "P3"
    ]


def test_every_bad_input_at_once(site: Site) -> None:
    """All the problems of one run are reported together, and the good posts still build."""
    site.write_post("2025-01-01-good.md", "Good.\n", title="Good", date=date(2025, 1, 1),
                    tags=["a"])
    bad = {
        "yaml.md": ("---\ndate: 2025-01-03\ntitle: Broken: post\n---\n", 3, "invalid YAML"),
        "list.md": ("---\n- a\n---\n", 2, "must be a mapping"),
        "notitle.md": ("---\ndate: 2025-01-03\n---\n", 1, "title is missing"),
        "emptytitle.md": ("---\ndate: 2025-01-03\ntitle: ''\n---\n", 3, "title is empty"),
        "nodate.md": ("---\ntitle: T\n---\n", 1, "date is missing"),
        "baddate.md": ("---\ntitle: T\ndate: 2025-13-45\n---\n", 3, "is not a date"),
        "tag.md": ("---\ntitle: T\ndate: 2025-01-03\ntags: [1]\n---\n", 4, "is not a string"),
        "latin1.md": ("---\ntitle: Caf\xe9\ndate: 2025-01-03\n---\n".encode("latin-1"), 2,
                      "not valid UTF-8"),
        "empty.md": ("", 1, "file is empty"),
        "2025-02-01-good.md": ("---\ntitle: Same slug\ndate: 2025-02-01\n---\n", 1,
                               "slug 'good' is already used"),
        "pinned-1.md": ("---\ntitle: P1\ndate: 2025-01-05\nid: 'urn:x:1'\n---\n", None, None),
        "pinned-2.md": ("---\ntitle: P2\ndate: 2025-01-06\nid: 'urn:x:1'\n---\n", 1,
                        "entry id 'urn:x:1' is already used"),
    }
    for name, (data, _, _) in bad.items():
        site.write_raw(name, data)
    os.symlink(site.root / "missing", site.posts / "unreadable.md")
    report = site.build(NOW)
    found = {p.path.name: p for p in report.problems}
    assert len(report.problems) == len(found) == 12
    for name, (_, line, message) in bad.items():
        if line is None:
            assert name not in found
            continue
        assert found[name].line == line, name
        assert message in found[name].message, name
        assert str(found[name]).startswith(f"{site.posts / name}:{line}: ")
    assert found["unreadable.md"].line == 1
    assert report.published == 2  # good.md and pinned-1.md
    titles = [e.title for e in read_feed("feed.atom", site.feed("feed.atom")).entries]
    assert titles == ["P1", "Good"]


def test_site_moved_to_another_folder_builds_the_same(site: Site, tmp_path: Path) -> None:
    two_tag_site(site)
    site.build(NOW)
    copy = Site(tmp_path / "copy")
    shutil.copytree(site.root, copy.root)
    shutil.rmtree(copy.output)
    copy.build(NOW)
    assert {n: copy.feed(n) for n in copy.output_files()} == {
        n: site.feed(n) for n in site.output_files()
    }

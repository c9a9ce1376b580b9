"""Work that follows change: the parse cache, per-feed input keys, and parsing on every core
must never change a byte of what is built."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from postroom.build import SiteBuilder
from postroom.posts import PostChanged, read_post_file
from sites import NOW, Site, run_postroom

BERLIN = ZoneInfo("Europe/Berlin")
LONG_AGO_NS = 1_600_000_000 * 10**9  # 2020: older than the parse cache's racy window


def blog(site: Site, count: int = 30) -> Site:
    """Posts with tags, same-day pairs, naive and zoned dates, drafts and a future post,
    written "long ago" (so the parse cache may keep them)."""
    site.configure(site={"timezone": "Europe/Berlin"}, feeds={"entries": 5})
    for n in range(count):
        front = {"title": f"Post {n} & <co>", "tags": ["even" if n % 2 else "odd", f"t{n % 3}"]}
        if n % 4 == 0:
            front["date"] = date(2025, 1, 1) + timedelta(days=n // 2)
        else:
            front["date"] = f"2025-01-{1 + n // 2:02d} {n % 24:02d}:30:00+05:00"
        front["draft"] = n == 7
        site.write_post(f"p{n:02}.md", f"Body of **{n}**, [a link](x{n}/).\n\n[^1]\n\n[^1]: N.\n",
                        **front)
    site.write_post("future.md", "Later.\n", title="Future", date=date(2031, 1, 1))
    for path in site.posts.iterdir():
        os.utime(path, ns=(LONG_AGO_NS, LONG_AGO_NS))
    return site


def output_bytes(site: Site) -> dict[str, bytes]:
    return {name: site.feed(name) for name in site.output_files()}


def test_a_cached_build_gives_byte_identical_feeds_to_a_cold_build(
        make_site: Callable[..., Site]) -> None:
    cold = blog(make_site("cold"))
    SiteBuilder(cold.settings(), use_cache=False).build(NOW)
    warm = blog(make_site("warm"))
    first = warm.build(NOW)  # writes the caches
    assert (warm.root / "var" / "cache" / "posts.json").exists()
    shutil.rmtree(warm.output)
    second = warm.build(NOW)  # every post from the parse cache, every feed rendered again
    assert (first.parsed, second.parsed) == (31, 0)
    assert output_bytes(warm) == output_bytes(cold)
    third = warm.build(NOW)  # nothing changed: nothing parsed, rendered or written
    assert (third.parsed, third.rendered, third.written) == (0, 0, [])
    assert output_bytes(warm) == output_bytes(cold)
    assert {name: third.feeds[name] for name in third.feeds} == {
        name: data for name, data in output_bytes(cold).items() if name in third.feeds}


def test_the_cli_build_with_nothing_changed_parses_and_renders_nothing(site: Site) -> None:
    blog(site)
    assert run_postroom("build", cwd=site.root).returncode == 0
    before = output_bytes(site)
    again = run_postroom("build", "-v", cwd=site.root)
    assert again.returncode == 0, again.stderr
    assert "0 written" in again.stdout
    assert output_bytes(site) == before


def test_an_edit_renders_only_the_feeds_that_show_the_post(site: Site) -> None:
    blog(site)
    builder = SiteBuilder(site.settings())
    builder.build(NOW)
    # The oldest post is in no feed (5 entries each): editing it renders nothing.
    site.write_post("p00.md", "Edited.\n", title="Post 0, edited", date=date(2025, 1, 1),
                    tags=["odd", "t0"])
    report = builder.build(NOW)
    assert (report.parsed, report.rendered, report.written) == (1, 0, [])
    # The newest post is in the main feed and its two tag feeds: 3 feeds × 3 formats.
    site.write_post("p29.md", "Edited.\n", title="Post 29, edited",
                    date="2025-01-15 05:30:00+05:00", tags=["even", "t2"])
    report = builder.build(NOW)
    assert sorted(report.written) == sorted(
        f"{stem}.{fmt}" for stem in ("feed", "tags/even", "tags/t2")
        for fmt in ("atom", "rss", "json", "html"))  # and each feed's page
    assert report.rendered == 12
    assert b"Post 29, edited" in site.feed("feed.atom")


def test_a_corrupt_or_foreign_parse_cache_is_ignored(site: Site) -> None:
    blog(site)
    site.build(NOW)
    expected = output_bytes(site)
    cache = site.root / "var" / "cache" / "posts.json"
    for damaged in (b"{not json", b'{"header": {"format": 1}, "files": {}}', b"[]",
                    cache.read_bytes().replace(b"Europe/Berlin", b"UTC")):
        cache.write_bytes(damaged)
        shutil.rmtree(site.output)
        report = site.build(NOW)
        assert report.parsed == 31
        assert output_bytes(site) == expected


def test_parsing_on_every_core_gives_what_one_process_gives(site: Site) -> None:
    blog(site, count=40)
    paths = sorted(str(p) for p in site.posts.iterdir())
    one = [read_post_file(Path(p), BERLIN) for p in paths]
    # In a process of its own: parse_files forks only where no other thread runs (pytest's
    # plugins may run some), and the posts come back to this one pickled.
    script = (
        "import pickle, sys, threading\n"
        "from zoneinfo import ZoneInfo\n"
        "from postroom import collection\n"
        "collection.PARALLEL_FROM = 10\n"
        "assert threading.active_count() == 1\n"
        "paths = sys.argv[1:]\n"
        "sys.stdout.buffer.write(pickle.dumps(collection.parse_files(paths, "
        "ZoneInfo('Europe/Berlin'))))\n")
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert pickle.loads(done.stdout) == one


def test_a_post_changed_after_the_scan_is_not_read_as_the_old_version(site: Site) -> None:
    blog(site, count=2)
    builder = SiteBuilder(site.settings())
    scan = builder.collection.scan()
    (post,) = [p for p in scan.posts if p.path.name == "p01.md"]
    site.write_post("p01.md", "A different body, longer than before.\n", title="Post 1",
                    date="2025-01-01 01:30:00+05:00")
    with pytest.raises(PostChanged, match=r"p01\.md"):
        post.read_body()
    # A build starts again from a scan: it shows the new body.
    builder.build(datetime(2026, 1, 1, tzinfo=BERLIN))
    assert b"A different body" in site.feed("feed.atom")


def test_a_build_with_nothing_changed_reports_the_same_problems_and_exit_code(
        site: Site) -> None:
    blog(site, count=3)
    site.write_raw("broken.md", "---\ntitle: [unclosed\n---\nBody.\n")
    os.utime(site.posts / "broken.md", ns=(LONG_AGO_NS, LONG_AGO_NS))
    runs = [run_postroom("build", cwd=site.root) for _ in range(2)]
    assert [r.returncode for r in runs] == [1, 1]
    assert "broken.md:3: invalid YAML" in runs[0].stderr
    assert runs[1].stderr == runs[0].stderr
    # "3 published posts; 19 files in …: 0 written, 19 unchanged, 1 problem(s)"
    assert runs[1].stdout.split(";")[0] == runs[0].stdout.split(";")[0]
    assert " 0 written" in runs[1].stdout and "1 problem(s)" in runs[1].stdout


def test_a_post_coming_due_is_published_by_the_next_build_though_no_file_changed(
        site: Site) -> None:
    blog(site, count=3)
    first = site.build(NOW)
    later = site.build(datetime(2031, 1, 2, tzinfo=BERLIN))  # "future.md" is due by then
    assert later.published == first.published + 1
    assert b"<title>Future</title>" in site.feed("feed.atom")
    again = site.build(datetime(2031, 1, 3, tzinfo=BERLIN))
    assert (again.parsed, again.rendered, again.published) == (0, 0, later.published)


def test_a_rebuild_told_what_changed_sees_what_a_whole_walk_sees(
        make_site: Callable[..., Site]) -> None:
    # The daemon's watcher names the changed files: the rebuild looks at them alone.
    told, walked = blog(make_site("told")), blog(make_site("walked"))
    builders = [(told, SiteBuilder(told.settings())), (walked, SiteBuilder(walked.settings()))]
    for _, builder in builders:
        builder.build(NOW)
    edits: list[Callable[[Site], set[Path]]] = [
        lambda s: {s.write_post("p29.md", "Edited.\n", title="Post 29, edited",
                                date="2025-01-15 05:30:00+05:00", tags=["even"])},
        lambda s: {s.write_post("new.md", "New.\n", title="New", date=date(2025, 2, 1))},
        lambda s: (s.posts / "p28.md").unlink() or {s.posts / "p28.md"},
        lambda s: {s.write_raw(".p27.md.swp", "editor state")},  # not a post: nothing
    ]
    for edit in edits:
        reports = []
        for site, builder in builders:
            paths = edit(site)
            reports.append(builder.build(NOW, changed=paths if site is told else None))
            if site is told:
                looked_at = [p for p in paths if p.suffix == ".md" and p.exists()]
        assert reports[0].parsed == len(looked_at)
        assert sorted(reports[0].written) == sorted(reports[1].written)
        assert output_bytes(told) == output_bytes(walked)
    told_builder = builders[0][1]
    # Looked at alone: a change nobody named waits for the next whole walk.
    told.write_post("p26.md", "Unnamed.\n", title="Post 26, unnamed", date=date(2025, 1, 14))
    told.write_post("p25.md", "Named.\n", title="Post 25, named", date=date(2025, 1, 13))
    named = told_builder.build(NOW, changed={told.posts / "p25.md"})
    assert named.parsed == 1 and told_builder.build(NOW).parsed == 1
    # A folder among the changes: only a walk can tell what is in it.
    (told.posts / "sub").mkdir()
    told.write_post("sub/deep.md", "Deep.\n", title="Deep", date=date(2025, 3, 1))
    report = told_builder.build(NOW, changed={told.posts / "sub"})
    assert b"<title>Deep</title>" in told.feed("feed.atom") and report.parsed == 1

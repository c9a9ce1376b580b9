"""`postroom build`, end to end: a posts folder that is gone or emptied never empties the feeds."""

from __future__ import annotations

from datetime import date

from feedreader import read_feed
from sites import Site, run_postroom


def build(site: Site, *args: str) -> tuple[int, str, str]:
    result = run_postroom("build", "--config", str(site.config_path), *args, cwd=site.root)
    assert "Traceback" not in result.stdout + result.stderr
    return result.returncode, result.stdout, result.stderr


def built_site(site: Site) -> dict[str, bytes]:
    site.write_post("2025-01-01-one.md", "One.\n", title="One", date=date(2025, 1, 1), tags=["a"])
    site.write_post("2025-01-02-two.md", "Two.\n", title="Two", date=date(2025, 1, 2))
    assert build(site)[0] == 0
    return {name: site.feed(name) for name in site.output_files()}


def test_a_missing_posts_folder_is_an_error_and_the_feeds_stay(site: Site) -> None:
    before = built_site(site)
    site.posts.rename(site.root / "posts.away")

    code, out, err = build(site)

    assert (code, out) == (2, "")
    assert err == (f"postroom: {site.posts}: the posts folder does not exist; "
                   f"the feeds in {site.output} are left as they were\n")
    assert {name: site.feed(name) for name in site.output_files()} == before


def test_a_posts_folder_suddenly_empty_is_an_error_until_allowed(site: Site) -> None:
    before = built_site(site)
    for post in site.posts.iterdir():
        post.unlink()

    code, _out, err = build(site)

    assert code == 2
    assert err.startswith(f"postroom: {site.posts}: the posts folder has no post files, but "
                          "the last build had 2;")
    assert "postroom build --allow-empty" in err
    assert {name: site.feed(name) for name in site.output_files()} == before

    code, out, err = build(site, "--allow-empty")
    assert code == 0
    # Only notes (the ledger's): each published post is said to be gone, nothing else.
    assert [line.split(": note: ", 1)[1][:23] for line in err.splitlines()] == [
        "the published post tag:"] * 2
    # The tag feed in its three formats, and its page for browsers.
    assert out.startswith("0 published posts;") and "4 removed" in out
    assert read_feed("feed.atom", site.feed("feed.atom")).entries == []

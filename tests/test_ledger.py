"""Entry IDs that never churn: the ledger of published IDs wins over the rules that make
them, an `id:` in the front matter wins over the ledger, and the author hears about each."""

from __future__ import annotations

import json
from datetime import date

import pytest

from feedreader import read_feed
from postroom.build import SiteBuilder
from postroom.ledger import LedgerError
from sites import NOW, Site, run_postroom


def ids_in_feed(site: Site) -> dict[str, str]:
    """Entry title → entry ID, as a feed reader sees them."""
    return {e.title: e.id for e in read_feed("feed.atom", site.feed("feed.atom")).entries}


def two_posts(site: Site) -> dict[str, str]:
    site.write_post("2025-01-01-alpha.md", "Alpha.\n", title="Alpha", date=date(2025, 1, 1))
    site.write_post("2025-01-02-beta.md", "Beta.\n", title="Beta", date=date(2025, 1, 2))
    site.build(NOW)
    return ids_in_feed(site)


def notes(site: Site) -> list[str]:
    return [str(n) for n in site.build(NOW, write=False).notices]


def test_every_published_entry_id_is_recorded(site: Site) -> None:
    before = two_posts(site)
    recorded = json.loads((site.root / "var" / "entry-ids.json").read_text())
    assert {e["id"]: (e["path"], e["title"]) for e in recorded["entries"]} == {
        before["Alpha"]: ("2025-01-01-alpha.md", "Alpha"),
        before["Beta"]: ("2025-01-02-beta.md", "Beta"),
    }


@pytest.mark.parametrize("edit", ["slug", "date"])
def test_an_edited_slug_or_date_keeps_the_published_id_and_says_so(site: Site, edit: str) -> None:
    before = two_posts(site)
    changed = {"slug": "alpha-renamed"} if edit == "slug" else {"date": date(2024, 12, 31)}
    site.write_post("2025-01-01-alpha.md", "Alpha.\n", **{"title": "Alpha",
                                                           "date": date(2025, 1, 1), **changed})
    report = site.build(NOW)
    assert ids_in_feed(site) == before
    (notice,) = report.notices
    assert "2025-01-01-alpha.md" in str(notice) and before["Alpha"] in str(notice)
    assert "slug or date changed" in notice.message
    assert report.problems == []


def test_a_renamed_file_keeps_its_published_id(site: Site) -> None:
    before = two_posts(site)
    (site.posts / "2025-01-01-alpha.md").rename(site.posts / "2025-01-01-first-post.md")
    report = site.build(NOW)
    assert ids_in_feed(site) == before
    assert any("its file was renamed" in n.message for n in report.notices)
    # Recorded under its new file: renaming it again still finds it.
    (site.posts / "2025-01-01-first-post.md").rename(site.posts / "2025-01-01-x.md")
    site.build(NOW)
    assert ids_in_feed(site) == before


def test_an_id_in_the_front_matter_wins_over_the_ledger_and_is_reported(site: Site) -> None:
    two_posts(site)
    site.write_post("2025-01-01-alpha.md", "Alpha.\n", title="Alpha", date=date(2025, 1, 1),
                    id="tag:example.org,2025:alpha")
    report = site.build(NOW)
    assert ids_in_feed(site)["Alpha"] == "tag:example.org,2025:alpha"
    assert any("will show it as a new post" in n.message for n in report.notices)


def test_a_published_post_that_disappears_is_reported_by_check_and_the_build(
        site: Site) -> None:
    before = two_posts(site)
    (site.posts / "2025-01-02-beta.md").unlink()
    (notice,) = notes(site)
    assert before["Beta"] in notice and "is gone" in notice
    checked = run_postroom("check", cwd=site.root)
    assert checked.returncode == 0, checked.stderr  # a notice, not a problem
    assert f"note: the published post {before['Beta']}" in checked.stderr


def test_two_posts_that_would_share_an_id_are_a_problem(site: Site) -> None:
    two_posts(site)
    site.write_post("2025-01-02-beta-again.md", "Again.\n", title="Beta again",
                    date=date(2025, 1, 2), slug="beta")
    report = site.build(NOW)
    assert any("already used" in p.message for p in report.problems)
    assert "Beta again" not in ids_in_feed(site)


def test_a_new_post_never_takes_a_gone_posts_id(site: Site) -> None:
    before = two_posts(site)
    (site.posts / "2025-01-02-beta.md").unlink()
    site.write_post("2025-02-01-gamma.md", "Gamma.\n", title="Gamma", date=date(2025, 2, 1))
    site.build(NOW)
    assert ids_in_feed(site)["Gamma"] not in before.values()


def test_an_unreadable_ledger_stops_the_build_with_its_name(site: Site) -> None:
    two_posts(site)
    (site.root / "var" / "entry-ids.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(LedgerError, match=r"entry-ids\.json"):
        SiteBuilder(site.settings()).build(NOW)
    built = run_postroom("build", cwd=site.root)
    assert built.returncode == 2, built.stderr
    assert "entry-ids.json" in built.stderr and "Traceback" not in built.stderr

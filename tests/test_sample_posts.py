"""The shipped posts/: one file per entry of the blog's index, with its date and summary."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from datetime import date, datetime
from pathlib import Path

import pytest
import yaml

from feedreader import read_feed
from postroom.build import SiteBuilder
from postroom.config import load_settings
from sites import NOW, REPO

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "blog-index.txt"


@pytest.fixture(scope="module")
def seed() -> tuple[str, list[tuple[date, str]]]:
    """Return the index's tagline and its (date, summary) entries, in order."""
    if not SEED.is_file():
        pytest.skip(f"the blog index {SEED} is not beside the repository (../shared/seed)")
    lines = SEED.read_text(encoding="utf-8").split("\n")
    # Line 1 is the tagline, then a date line and a summary line per post; no final newline.
    tagline, rest = lines[0], lines[1:]
    assert rest and rest[-1] != "", "expected no trailing newline after the last summary"
    assert len(rest) % 2 == 0
    entries = [
        (datetime.strptime(rest[i], "%B %d, %Y").date(), rest[i + 1])
        for i in range(0, len(rest), 2)
    ]
    return tagline, entries


def shipped_front_matter() -> dict[Path, tuple[dict, str]]:
    posts = {}
    for path in sorted((REPO / "posts").iterdir()):
        _, front, body = path.read_text(encoding="utf-8").split("---\n", 2)
        posts[path] = (yaml.safe_load(front), body)
    return posts


def test_one_post_per_index_entry_with_its_date_and_summary(
    seed: tuple[str, list[tuple[date, str]]],
) -> None:
    _, entries = seed
    posts = shipped_front_matter()
    assert len(posts) == len(entries) == 40
    written = Counter((front["date"], front["summary"]) for front, _ in posts.values())
    assert written == Counter(entries)
    for path, (front, _) in posts.items():
        assert path.name.startswith(f"{front['date']:%Y-%m-%d}-"), path.name


def test_each_post_has_a_title_tags_and_a_body() -> None:
    for path, (front, body) in shipped_front_matter().items():
        assert isinstance(front["title"], str) and front["title"].strip(), path
        assert front.get("tags") and all(isinstance(t, str) for t in front["tags"]), path
        assert len(body.split()) >= 30, f"{path}: the body is too short"
        assert not front.get("draft", False), path


def test_the_tagline_is_the_example_config_subtitle(
    seed: tuple[str, list[tuple[date, str]]],
) -> None:
    tagline, _ = seed
    assert load_settings(REPO / "config.example.toml", env={}).site.subtitle == tagline


def as_plain_text(summary: str) -> str:
    """The index's summaries are Markdown: **bold** and footnote marks ('[^1]')."""
    return re.sub(r"\[\^\w+\]", "", summary).replace("**", "")


def test_feeds_carry_each_summary_exactly(
    seed: tuple[str, list[tuple[date, str]]], tmp_path: Path
) -> None:
    _, entries = seed
    env = {"POSTROOM__PATHS__OUTPUT": str(tmp_path / "public"), "POSTROOM__FEEDS__ENTRIES": "100",
           "POSTROOM__PATHS__CACHE": str(tmp_path / "cache"),  # not the repository's var/
           "POSTROOM__PATHS__LEDGER": str(tmp_path / "entry-ids.json")}
    report = SiteBuilder(load_settings(REPO / "config.example.toml", env=env)).build(NOW)
    assert report.problems == []
    assert report.published == len(entries)
    plain = Counter((day, as_plain_text(summary)) for day, summary in entries)
    assert any("**" in summary for _, summary in entries)  # the check below means something
    for name in ("feed.atom", "feed.rss", "feed.json"):
        feed = read_feed(name, report.feeds[name])
        # Each on its date, as text; in Atom and RSS as HTML too, the bold made <strong>.
        assert Counter((e.published.date(), e.summary) for e in feed.entries) == plain
        for entry in feed.entries:
            assert "**" not in (entry.summary_html or "") and "[^" not in entry.summary
        bold = [e for e in feed.entries if "<strong>" in (e.summary_html or "")]
        assert len(bold) == (0 if name == "feed.json" else 2)


def test_postroom_check_finds_no_problems_and_notes_posts_of_one_date(
    postroom_command: str, clean_env: dict[str, str], tmp_path: Path
) -> None:
    # The ledger of this run's own: one left in the repository's var/ by `make run` with
    # other posts would add notes.
    env = {**clean_env, "POSTROOM__PATHS__LEDGER": str(tmp_path / "entry-ids.json")}
    result = subprocess.run(
        [postroom_command, "check", "--config", "config.example.toml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "40 published posts, 0 problem(s)"
    # Posts that share a date with no time are notes, not problems: one per date, on the
    # first file by name, naming every file of the date.
    notes = result.stderr.splitlines()
    assert len(notes) == 6 and all(": note: " in note for note in notes), notes
    [four] = [n for n in notes if "2025-09-28" in n]
    assert four.startswith(f"{REPO / 'posts' / '2025-09-28-arrays-in-rust.md'}: note: 4 posts")
    for name in ("arrays-in-rust", "data-structures-as-warehouses", "linked-lists-in-rust",
                 "vectors-in-rust"):
        assert f"2025-09-28-{name}.md" in four

"""sitefolder.py: `postroom init` lays out a site that builds as it is."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from feedreader import read_feed
from postroom.build import SiteBuilder
from postroom.config import load_settings
from postroom.errors import PostroomError
from postroom.sitefolder import create_site

TODAY = date(2025, 11, 5)


def test_new_site_builds_with_its_sample_post(tmp_path: Path) -> None:
    folder = tmp_path / "blog"
    created = create_site(folder, today=TODAY)
    config, post = folder / "postroom.toml", folder / "posts" / "2025-11-05-hello-world.md"
    assert created[:2] == [config, post]
    assert all(path.is_file() for path in created)
    assert (folder / "templates").is_dir()

    settings = load_settings(config, env={})
    report = SiteBuilder(settings).build(datetime(2025, 11, 5, 0, 0, tzinfo=UTC))
    assert report.problems == []
    (entry,) = read_feed("feed.atom", report.feeds["feed.atom"]).entries
    assert entry.title == "Hello, world"
    assert entry.published == datetime(2025, 11, 5, tzinfo=UTC)
    assert entry.categories == ["meta"]
    assert "tags/meta.rss" in report.feeds


def test_an_empty_existing_folder_is_fine(tmp_path: Path) -> None:
    create_site(tmp_path, today=TODAY)
    assert (tmp_path / "postroom.toml").is_file()


def test_a_folder_with_files_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PostroomError, match="folder is not empty"):
        create_site(tmp_path, today=TODAY)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_file_is_refused_with_a_message(tmp_path: Path) -> None:
    target = tmp_path / "blog"
    target.write_text("a file")
    with pytest.raises(PostroomError, match=f"^{re.escape(str(target))}: is a file, not a folder"):
        create_site(target, today=TODAY)
    assert target.read_text() == "a file"

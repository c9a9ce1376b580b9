"""output.py: atomic, write-only-if-changed files; the manifest; removal of stale files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from postroom.output import (
    MANIFEST,
    read_manifest,
    remove_leftover_temps,
    remove_stale,
    write_atomic,
    write_manifest,
)


def test_write_atomic_creates_folders_and_the_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "feed.atom"
    assert write_atomic(target, b"<feed/>") is True
    assert target.read_bytes() == b"<feed/>"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["feed.atom"]


def test_same_bytes_are_not_written_again(tmp_path: Path) -> None:
    target = tmp_path / "feed.atom"
    write_atomic(target, b"one")
    # An old mtime makes a rewrite visible even on a coarse-grained file system.
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    inode = target.stat().st_ino
    assert write_atomic(target, b"one") is False
    assert target.stat().st_mtime_ns == 1_000_000_000
    assert target.stat().st_ino == inode


def test_changed_bytes_replace_the_file(tmp_path: Path) -> None:
    target = tmp_path / "feed.atom"
    write_atomic(target, b"one")
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    old_inode = target.stat().st_ino
    reader = target.open("rb")  # a reader holding the old file keeps seeing all of it
    assert write_atomic(target, b"two, longer") is True
    assert target.read_bytes() == b"two, longer"
    assert target.stat().st_mtime_ns != 1_000_000_000
    # Replaced by rename, not rewritten in place.
    assert target.stat().st_ino != old_inode
    assert reader.read() == b"one"
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feed.atom"]


def test_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "feed.atom"
    write_atomic(target, b"old")
    # Text instead of bytes fails inside the write, after the temporary file was made.
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feed.atom"]


def test_manifest_round_trip(tmp_path: Path) -> None:
    write_manifest(tmp_path, ["tags/b.atom", "feed.atom"])
    assert json.loads((tmp_path / MANIFEST).read_text()) == ["feed.atom", "tags/b.atom"]
    assert read_manifest(tmp_path) == {"feed.atom", "tags/b.atom"}


def test_missing_or_broken_manifest_reads_as_empty(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) == set()
    (tmp_path / MANIFEST).write_text("{not json")
    assert read_manifest(tmp_path) == set()
    (tmp_path / MANIFEST).write_text('{"a": 1}')
    assert read_manifest(tmp_path) == set()
    (tmp_path / MANIFEST).write_text('["ok", 3, null]')
    assert read_manifest(tmp_path) == {"ok"}


def test_remove_stale_deletes_only_listed_files_inside_the_folder(tmp_path: Path) -> None:
    output = tmp_path / "public"
    (output / "tags").mkdir(parents=True)
    (output / "tags" / "old.atom").write_text("old")
    (output / "index.html").write_text("mine")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    removed = remove_stale(
        output, ["tags/old.atom", "tags/gone.atom", "../precious.txt", str(outside)]
    )
    assert removed == ["tags/old.atom"]
    assert not (output / "tags" / "old.atom").exists()
    assert (output / "index.html").read_text() == "mine"
    assert outside.read_text() == "keep"


def test_temporary_files_a_killed_write_left_are_removed(tmp_path: Path) -> None:
    (tmp_path / "tags").mkdir()
    leftovers = [tmp_path / ".feed.atom.k3j2h1.tmp", tmp_path / "tags" / ".rust.rss.x9y8.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a feed")
    mine = tmp_path / ".notes.txt.tmp"  # not beside a file postroom writes: left alone
    mine.write_text("keep")

    removed = remove_leftover_temps(tmp_path, ["feed.atom", "tags/rust.rss", "feed.rss"])

    assert sorted(removed) == sorted(leftovers)
    assert not any(p.exists() for p in leftovers)
    assert mine.exists()

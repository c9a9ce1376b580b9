"""The output folder: atomic, write-only-if-changed files, and removal of feeds no longer built."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

# Lists the files postroom wrote, so a stale tag feed can be removed without ever touching
# a file of the blog's own that shares the folder; and how many post files they were built
# from, so a posts folder that is suddenly empty can be told from one emptied on purpose.
# Older versions wrote the list alone, which still reads.
MANIFEST = ".postroom-manifest.json"


def write_files(folder: Path, files: Mapping[str, bytes]) -> list[str]:
    """Write each file (relative path → bytes) atomically unless it already holds those
    bytes; return the names written. One folder fsync per folder, after every rename."""
    written: list[str] = []
    folders: set[Path] = set()
    for name, data in sorted(files.items()):
        path = folder / name
        if _write_temp_and_rename(path, data):
            written.append(name)
            folders.add(path.parent)
    for parent in sorted(folders):
        _fsync_dir(parent)
    return written


def write_atomic(path: Path, data: bytes) -> bool:
    """Write bytes to path atomically unless the file already holds them; return if written.

    Temporary file in the same folder, flush, fsync, rename: a reader sees the old file or
    the new one, never half of one. Skipping identical bytes keeps mtime (Last-Modified) stable.
    """
    if not _write_temp_and_rename(path, data):
        return False
    _fsync_dir(path.parent)
    return True


def _write_temp_and_rename(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return True


def write_cache_file(path: Path, data: bytes | Iterable[str]) -> None:
    """Replace a cache file atomically, without fsync: a cache lost in a crash costs only
    time. `data` is bytes, or text in pieces (written as UTF-8 as they come, so a big cache
    is never one string in memory). Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                handle.writelines(piece.encode("utf-8") for piece in data)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk too.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(folder: Path) -> set[str]:
    """Return the relative paths postroom wrote in the folder last time (empty if none)."""
    recorded = _read_manifest_json(folder)
    names = recorded.get("files") if isinstance(recorded, dict) else recorded
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def read_manifest_post_files(folder: Path) -> int | None:
    """Return how many post files the last build in the folder found (None if unknown)."""
    recorded = _read_manifest_json(folder)
    count = recorded.get("post_files") if isinstance(recorded, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def _read_manifest_json(folder: Path) -> object:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_manifest(folder: Path, names: Iterable[str], post_files: int | None = None) -> None:
    """Record the relative paths postroom wrote in the folder, and how many post files
    they were built from when known."""
    recorded: object = sorted(names)
    if post_files is not None:
        recorded = {"files": recorded, "post_files": post_files}
    text = json.dumps(recorded, indent=1) + "\n"
    write_atomic(folder / MANIFEST, text.encode("utf-8"))


def remove_stale(folder: Path, names: Iterable[str]) -> list[str]:
    """Delete files postroom wrote before that are no longer built; return their names."""
    removed = []
    root = folder.resolve()
    for name in sorted(names):
        target = (folder / name).resolve()
        # A manifest edited by hand must not become a way to delete outside the folder.
        if root not in target.parents:
            continue
        try:
            target.unlink()
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def remove_leftover_temps(folder: Path, names: Iterable[str]) -> list[Path]:
    """Delete temporary files a killed write left beside these files; return them.

    Only names write_atomic makes (`.<name>.<random>.tmp`, the random part has no dot) next
    to files postroom writes. One listing per folder: this runs on every build.
    """
    by_folder: dict[Path, set[str]] = {}
    for name in names:
        target = folder / name
        by_folder.setdefault(target.parent, set()).add(target.name)
    removed = []
    for parent, written in by_folder.items():
        with contextlib.suppress(FileNotFoundError), os.scandir(parent) as entries:
            for entry in entries:
                if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                    continue
                base = entry.name[1:-4].rpartition(".")[0]
                if base in written:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed.append(parent / entry.name)
    return removed

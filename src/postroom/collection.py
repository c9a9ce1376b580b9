"""Scanning the posts folder, with a cache so a rescan with nothing changed is stat calls only."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path

from postroom.errors import PostroomError, Problem
from postroom.posts import ParsedFile, Post, iter_post_files, read_post_file

# What identifies a file's version without reading it: size and modification time (ns).
FileKey = tuple[int, int]


class PostsFolderError(PostroomError):
    """The posts folder is missing, unreadable, or suddenly empty: nothing is built from it.

    An error, not a problem with a post: building from it would empty the live feeds.
    """


@dataclass
class Scan:
    """One pass over the posts folder: the valid posts, every problem, and what changed."""

    posts: list[Post]
    problems: list[Problem]
    changed: bool
    parsed: int = 0  # files actually read and parsed this pass (the rest came from the cache)
    files: int = 0  # post files found, good or bad

    def published(self, now: datetime) -> list[Post]:
        """Given the current time, return the public posts, newest first."""
        return newest_first(p for p in self.posts if p.is_published(now))


@dataclass
class PostCollection:
    """The posts folder, rescanned on demand; parsed files are cached by path, size and mtime."""

    folder: Path
    zone: tzinfo
    host: str
    _cache: dict[str, tuple[FileKey, ParsedFile]] = field(default_factory=dict)

    def scan(self) -> Scan:
        """Return the collection as it is on disk now, or raise PostsFolderError."""
        if not self.folder.is_dir():
            what = "is not a folder" if self.folder.exists() else "does not exist"
            raise PostsFolderError(f"{self.folder}: the posts folder {what}")
        seen: dict[str, tuple[FileKey, ParsedFile]] = {}
        parsed = 0
        try:
            for entry in iter_post_files(self.folder):
                key = _file_key(entry)
                cached = self._cache.get(entry.path)
                if cached is not None and cached[0] == key:
                    seen[entry.path] = cached
                    continue
                seen[entry.path] = (key, read_post_file(Path(entry.path), self.zone))
                parsed += 1
        except OSError as err:
            # A folder that cannot be listed would drop its posts from the feeds unseen.
            where = err.filename or self.folder
            raise PostsFolderError(
                f"{where}: cannot read the posts folder: {err.strerror or err}") from err
        changed = parsed > 0 or seen.keys() != self._cache.keys()
        self._cache = seen
        outcomes = [outcome for _, outcome in seen.values()]
        posts, problems = check_unique(
            [o.post for o in outcomes if o.post is not None], self.host
        )
        problems += [p for o in outcomes for p in o.problems]
        return Scan(posts, sorted(problems), changed=changed, parsed=parsed, files=len(seen))


def _file_key(entry: os.DirEntry[str]) -> FileKey:
    try:
        stat = entry.stat()  # follows symlinks, like reading the file will
    except OSError:
        return (-1, -1)  # read_post_file reports why
    return (stat.st_size, stat.st_mtime_ns)


def newest_first(posts: Iterable[Post]) -> list[Post]:
    """Return posts ordered newest first; ties broken by slug so the order is stable."""
    return sorted(posts, key=lambda p: (p.published, p.slug), reverse=True)


def check_unique(posts: Sequence[Post], host: str) -> tuple[list[Post], list[Problem]]:
    """Keep the first post (oldest, then by path) of each slug and entry ID; report the others.

    The older post keeps its slug because it is the one readers have already seen.
    """
    kept: list[Post] = []
    problems: list[Problem] = []
    slugs: dict[str, Post] = {}
    ids: dict[str, Post] = {}
    for post in sorted(posts, key=lambda p: (p.published, str(p.path))):
        entry_id = post.entry_id(host)
        if post.slug in slugs:
            other = slugs[post.slug].path
            problems.append(Problem(post.path, 1, f"slug {post.slug!r} is already used by {other}"))
        elif entry_id in ids:
            other = ids[entry_id].path
            message = f"entry id {entry_id!r} is already used by {other}"
            problems.append(Problem(post.path, 1, message))
        else:
            slugs[post.slug], ids[entry_id] = post, post
            kept.append(post)
    return kept, problems

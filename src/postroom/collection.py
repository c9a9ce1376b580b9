"""Scanning the posts folder, with a cache so a rescan with nothing changed is stat calls only."""

from __future__ import annotations

import bisect
import hashlib
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from functools import cached_property
from pathlib import Path

from postroom.errors import PostroomError, Problem
from postroom.ledger import Ledger, apply_ledger
from postroom.parsecache import FileKey, load_parse_cache, save_parse_cache
from postroom.posts import (
    FeedTimes,
    ParsedFile,
    Post,
    feed_times,
    is_post_file,
    read_post_file,
    same_time_notices,
)


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
    notices: list[Problem] = field(default_factory=list)  # said, but not problems

    @cached_property
    def _newest_first(self) -> list[Post]:
        """Every post that is not a draft, newest first (sorted once per scan)."""
        return newest_first(p for p in self.posts if not p.draft)

    @cached_property
    def feed_times(self) -> dict[str, FeedTimes]:
        """What the feeds add to the times of posts sharing their written times, by path
        (posts.feed_times): worked out once per scan, over every post not a draft."""
        return feed_times(self._newest_first)

    @cached_property
    def _dates(self) -> list[datetime]:
        return [p.published for p in reversed(self._newest_first)]  # ascending, for bisect

    def published(self, now: datetime) -> list[Post]:
        """Given the current time, return the public posts, newest first."""
        # Posts dated after `now` are the head of the list: skip them without a sort.
        future = len(self._dates) - bisect.bisect_right(self._dates, now)
        return self._newest_first[future:]


@dataclass
class PostCollection:
    """The posts folder, rescanned on demand; parsed files are cached by path, size and mtime.

    With a `cache_file`, the parsed files survive the process too (a CLI build with
    nothing changed reads no post); the file is a cache only: any problem with it means
    parsing again.
    """

    folder: Path
    zone: tzinfo
    host: str
    cache_file: Path | None = None
    # Seconds between writes of the cache file (0: after every scan that parsed a file).
    # A daemon writes it now and then, and at exit: writing 10,000 parses takes ~50 ms.
    save_every: float = 0.0
    _cache: dict[str, tuple[FileKey, ParsedFile]] = field(default_factory=dict)
    _unsaved: bool = False
    _saved_at: float = float("-inf")
    _last: Scan | None = None
    _loaded: bool = False
    ledger: Ledger = field(default_factory=Ledger)  # the published entry IDs

    def scan(self, changed: Iterable[Path] | None = None) -> Scan:
        """Return the collection as it is on disk now, or raise PostsFolderError.

        `changed`: the paths a watcher saw change since the last scan, when it saw them
        all; only those are looked at (any doubt — a folder among them — and the whole
        folder is walked). None: walk the whole folder.
        """
        if not self.folder.is_dir():
            what = "is not a folder" if self.folder.exists() else "does not exist"
            raise PostsFolderError(f"{self.folder}: the posts folder {what}")
        if not self._loaded:
            self._loaded = True
            if self.cache_file is not None:
                self._cache = load_parse_cache(self.cache_file, self.folder, self.zone)
        looked = self._look_at(changed) if changed is not None and self._last else None
        seen, parsed = looked if looked is not None else self._walk()
        if parsed == 0 and seen.keys() == self._cache.keys() and self._last is not None:
            # Nothing changed: the same scan, already checked and sorted.
            self._last.changed, self._last.parsed = False, 0
            return self._last
        self._unsaved = self._unsaved or parsed > 0 or seen.keys() != self._cache.keys()
        self._cache = seen
        if time.monotonic() - self._saved_at >= self.save_every:
            self.save()
        outcomes = [outcome for _, outcome in seen.values()]
        applied = apply_ledger(self.ledger, [o.post for o in outcomes if o.post is not None],
                               self.host, self.folder)
        posts, problems = check_unique(applied.posts, self.host, applied.was_published)
        problems += [p for o in outcomes for p in o.problems]
        self._last = Scan(posts, sorted(problems), changed=True, parsed=parsed, files=len(seen),
                          notices=applied.notices + same_time_notices(
                              p for p in posts if not p.draft))
        return self._last

    def fingerprint(self, *, of_last_scan: bool = False) -> tuple[str, int]:
        """Return a hash of every post file's path, size and mtime, and how many there are:
        what a build compares with the last one's before reading anything. Walks the
        folder, or (`of_last_scan`) takes what the last scan saw."""
        if of_last_scan:
            return _fingerprint(self.folder, ((p, k) for p, (k, _) in self._cache.items()))
        try:
            return _fingerprint(self.folder, _walk_keys(str(self.folder)))
        except OSError:
            return "", 0  # the scan says why

    def newest_mtime_ns(self) -> int:
        """Return the newest modification time (ns) among the files of the last scan."""
        return max((key[1] for key, _ in self._cache.values()), default=0)

    def save(self) -> None:
        """Write the cache file if the cache changed since it was last written."""
        if self._unsaved and self.cache_file is not None:
            save_parse_cache(self.cache_file, self.folder, self.zone, self._cache)
            self._saved_at = time.monotonic()
        self._unsaved = False

    def forget(self, paths: Iterable[Path]) -> None:
        """Parse these files again at the next scan, whatever their size and mtime say
        (they changed: a second write within one clock tick leaves both as they were)."""
        for path in paths:
            self._cache.pop(str(path), None)

    def _look_at(self, changed: Iterable[Path]
                 ) -> tuple[dict[str, tuple[FileKey, ParsedFile]], int] | None:
        """The last scan's files with these paths stat'ed and parsed again; None when only
        a walk can tell (a folder, or a path outside the posts folder)."""
        prefix = str(self.folder) + os.sep
        seen = dict(self._cache)
        fresh: list[str] = []
        for changed_path in changed:
            path = str(changed_path)
            if not path.startswith(prefix):
                return None
            *folders, name = path[len(prefix):].split(os.sep)
            if any(part.startswith((".", "_")) for part in folders):
                continue  # a folder the walk skips
            try:
                found = os.stat(path)
            except FileNotFoundError:
                if any(other.startswith(path + os.sep) for other in seen):
                    return None  # a folder of posts went: walk
                seen.pop(path, None)
                continue
            except OSError:
                return None
            if stat.S_ISDIR(found.st_mode):
                return None  # a folder came or changed: walk
            if is_post_file(name):
                seen[path] = ((found.st_size, found.st_mtime_ns), _NOT_READ)
                fresh.append(path)
        return self._parse(seen, fresh), len(fresh)

    def _walk(self) -> tuple[dict[str, tuple[FileKey, ParsedFile]], int]:
        cache = self._cache
        seen: dict[str, tuple[FileKey, ParsedFile]] = {}
        fresh: list[str] = []
        try:
            _stat_walk(str(self.folder), cache, seen, fresh)
        except OSError as err:
            # A folder that cannot be listed would drop its posts from the feeds unseen.
            where = err.filename or self.folder
            raise PostsFolderError(
                f"{where}: cannot read the posts folder: {err.strerror or err}") from err
        return self._parse(seen, fresh), len(fresh)

    def _parse(self, seen: dict[str, tuple[FileKey, ParsedFile]], fresh: list[str]
               ) -> dict[str, tuple[FileKey, ParsedFile]]:
        for path, outcome in zip(fresh, parse_files(fresh, self.zone), strict=True):
            # The post's own version is what was read: a file written since the stat is
            # parsed again next time rather than trusted under the older key.
            key = outcome.post.version if outcome.post is not None else seen[path][0]
            seen[path] = (key, outcome)
        return seen


_NOT_READ = ParsedFile(None)
# Below this many files to parse, one process is quicker than starting another.
PARALLEL_FROM = 1000


def parse_files(paths: Sequence[str], zone: tzinfo) -> list[ParsedFile]:
    """Parse the files, on every core when there are many (a cold build of a big blog is
    mostly YAML), in the caller's process otherwise. Same results, same order."""
    workers = min(os.cpu_count() or 1, 8)
    # Forking is safe only with no other thread running (the daemon has several).
    if len(paths) < PARALLEL_FROM or workers < 2 or threading.active_count() > 1:
        return [read_post_file(Path(path), zone) for path in paths]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = -(-len(paths) // workers)
    chunks = [paths[start:start + size] for start in range(0, len(paths), size)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(len(chunks) - 1, mp_context=context) as pool:
        others = [pool.submit(_parse_chunk, chunk, zone) for chunk in chunks[1:]]
        outcomes = _parse_chunk(chunks[0], zone)  # this process does its share meanwhile
        for future in others:
            outcomes += future.result()
    return outcomes


def _parse_chunk(paths: Sequence[str], zone: tzinfo) -> list[ParsedFile]:
    return [read_post_file(Path(path), zone) for path in paths]


def _stat_walk(folder: str, cache: dict[str, tuple[FileKey, ParsedFile]],
               seen: dict[str, tuple[FileKey, ParsedFile]], fresh: list[str]) -> None:
    """Stat every post file under `folder`: a cached parse of the same size and mtime goes
    into `seen`, any other path into `fresh` (to be parsed). This loop is most of a rescan."""
    for path, key in _walk_keys(folder):
        cached = cache.get(path)
        if cached is not None and cached[0] == key:
            seen[path] = cached
        else:
            seen[path] = (key, _NOT_READ)
            fresh.append(path)


def _walk_keys(folder: str) -> Iterator[tuple[str, FileKey]]:
    """Yield each post file's path and (size, mtime) (stat follows symlinks, as reading the
    file will; (-1, -1) if it cannot be stat'ed: reading it says why), in directory order:
    the files `posts.iter_post_files` finds, without its sort."""
    with os.scandir(folder) as listing:
        for entry in listing:
            name = entry.name
            if entry.is_dir():
                if not name.startswith((".", "_")):
                    yield from _walk_keys(entry.path)
            elif is_post_file(name):
                try:
                    stat = entry.stat()
                    yield entry.path, (stat.st_size, stat.st_mtime_ns)
                except OSError:
                    yield entry.path, (-1, -1)


def _fingerprint(folder: Path, keys: Iterable[tuple[str, FileKey]]) -> tuple[str, int]:
    digest = hashlib.sha256(str(folder).encode())
    count = 0
    for path, (size, mtime) in keys:
        digest.update(f"{path}\0{size}\0{mtime}\n".encode())
        count += 1
    return digest.hexdigest(), count


def newest_first(posts: Iterable[Post]) -> list[Post]:
    """Return posts ordered newest first; posts of one date and time by file name, the
    last first (the order of the times the feeds give them: posts.feed_times)."""
    return sorted(posts, key=lambda p: (p.instant, str(p.path)), reverse=True)


def check_unique(posts: Sequence[Post], host: str,
                 published: Callable[[Post], bool] = lambda post: False
                 ) -> tuple[list[Post], list[Problem]]:
    """Keep the first post of each slug and entry ID; report the others. First: a post the
    ledger says was published under its ID (`published`), then the oldest, then by path.

    That post keeps its slug and ID because it is the one readers have already seen.
    """
    if len({p.slug for p in posts}) == len({p.entry_id(host) for p in posts}) == len(posts):
        return list(posts), []  # every slug and ID once: the common case, in two passes
    slugs = Counter(p.slug for p in posts)
    ids = Counter(p.entry_id(host) for p in posts)
    contested = [p for p in posts if slugs[p.slug] > 1 or ids[p.entry_id(host)] > 1]
    kept = [p for p in posts if slugs[p.slug] == 1 and ids[p.entry_id(host)] == 1]
    problems: list[Problem] = []
    first_slug: dict[str, Post] = {}
    first_id: dict[str, Post] = {}
    for post in sorted(contested, key=lambda p: (not published(p), p.instant, str(p.path))):
        entry_id = post.entry_id(host)
        if post.slug in first_slug:
            other = first_slug[post.slug].path
            problems.append(Problem(post.path, 1, f"slug {post.slug!r} is already used by {other}"))
        elif entry_id in first_id:
            other = first_id[entry_id].path
            message = f"entry id {entry_id!r} is already used by {other}"
            problems.append(Problem(post.path, 1, message))
        else:
            first_slug[post.slug], first_id[entry_id] = post, post
            kept.append(post)
    return kept, problems

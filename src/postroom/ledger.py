"""The entry-ID ledger: every entry ID postroom has published, so that no ID ever changes.

Feed readers know an entry by its ID: a new ID is a new post, shown again as unread. IDs
are made from what does not change when a post is edited (host, first publication date,
slug), but a slug can be edited, a date corrected, a file renamed. The ledger remembers,
per published entry, its ID, its file and its title; a post whose made-up ID is new but
whose file (or, for a renamed file, whose title) is in the ledger keeps its old ID. The
ledger wins over the rules; an `id:` in the front matter wins over the ledger.

Pure apart from `load_ledger` and `save_ledger`. Not a cache: back it up with the database.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from postroom.errors import PostroomError, Problem
from postroom.output import write_atomic
from postroom.posts import Post

FORMAT = 1


class LedgerError(PostroomError):
    """The ledger file cannot be read: building on would give published posts new IDs."""


@dataclass(frozen=True)
class Entry:
    id: str
    path: str  # the post's file, relative to the posts folder
    title: str


@dataclass(frozen=True)
class Ledger:
    entries: dict[str, Entry] = field(default_factory=dict)  # by ID

    @property
    def by_path(self) -> dict[str, Entry]:
        return {entry.path: entry for entry in self.entries.values()}


@dataclass
class Applied:
    """The posts with the ledger's IDs, and what the author should hear about."""

    posts: list[Post]
    notices: list[Problem]
    # Whether a post is, by the ledger, the very entry published under its ID.
    was_published: Callable[[Post], bool] = lambda post: False


def load_ledger(file: Path) -> Ledger:
    """Return the ledger in `file` (empty if there is none); raise LedgerError if unreadable."""
    try:
        recorded = json.loads(file.read_bytes())
        entries = [Entry(**item) for item in recorded["entries"]]
    except FileNotFoundError:
        return Ledger()
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise LedgerError(
            f"{file}: the entry-ID ledger cannot be read ({err}); fix or restore it from a "
            "backup (deleting it lets an edited slug or date give a published post a new ID)"
        ) from err
    return Ledger({entry.id: entry for entry in entries})


def save_ledger(file: Path, ledger: Ledger) -> None:
    """Write the ledger atomically and durably (sorted: the same entries, the same bytes)."""
    # One entry a line (readable in a diff), made line by line: a big blog's ledger is never
    # a second time in memory as dicts.
    encode = json.JSONEncoder(ensure_ascii=False).encode
    lines = [encode({"id": e.id, "path": e.path, "title": e.title})
             for _, e in sorted(ledger.entries.items())]
    text = f'{{"format": {FORMAT}, "entries": [\n' + ",\n".join(lines) + "\n]}\n"
    write_atomic(file, text.encode("utf-8"))


def apply_ledger(ledger: Ledger, posts: Sequence[Post], host: str, folder: Path) -> Applied:
    """Given the ledger and the scanned posts, return the posts with their published IDs."""
    if not ledger.entries:
        return Applied(list(posts), [])
    def was_published(post: Post) -> bool:
        entry = ledger.entries.get(post.entry_id(host))
        return entry is not None and entry.path == _relative(post, folder)

    unknown = [p for p in posts if p.entry_id(host) not in ledger.entries]
    if not unknown:  # the common case: every ID is a published one
        return Applied(list(posts), _gone(ledger, {p.entry_id(host) for p in posts}, folder),
                       was_published)
    known = [p for p in posts if p.entry_id(host) in ledger.entries]
    claimed = {p.entry_id(host) for p in known}
    present = {_relative(p, folder) for p in posts}
    by_path = ledger.by_path
    notices: list[Problem] = []
    for post in sorted(unknown, key=lambda p: (p.instant, str(p.path))):  # oldest first
        kept, notice = _published_id(ledger, by_path, post, host, folder, present, claimed)
        if notice is not None:
            notices.append(notice)
        if kept is not None:
            claimed.add(kept)
            post = dataclasses.replace(post, pinned_id=kept)
        known.append(post)
    notices += _gone(ledger, {p.entry_id(host) for p in known}, folder)
    return Applied(known, notices, was_published)


def _published_id(ledger: Ledger, by_path: dict[str, Entry], post: Post, host: str,
                  folder: Path, present: set[str], claimed: set[str]
                  ) -> tuple[str | None, Problem | None]:
    """For a post whose ID is not in the ledger: the published ID it keeps (if any), and
    what to tell the author."""
    old = by_path.get(_relative(post, folder))
    if post.pinned_id is not None:
        if old is None or old.id in claimed:
            return None, None
        return None, Problem(post.path, 1, (
            f"its id: {post.pinned_id} replaces the published ID {old.id}: feed readers "
            "will show it as a new post"))
    why = "its slug or date changed"
    if old is None or old.id in claimed:
        old, why = _renamed_from(ledger, post, present, claimed), "its file was renamed"
    if old is None:
        return None, None  # a new post: recorded once published
    return old.id, Problem(post.path, 1, (
        f"keeps its published entry ID {old.id} ({why}; the new one would be "
        f"{post.entry_id(host)}, and feed readers would show the post again as new)"))


def record(ledger: Ledger, published: Iterable[Post], host: str, folder: Path) -> Ledger:
    """Return the ledger with these published posts' IDs, files and titles (the same
    ledger object if it already had them all)."""
    entries = dict(ledger.entries)
    for post in published:
        entry = Entry(post.entry_id(host), _relative(post, folder), post.title)
        if entries.get(entry.id) != entry:
            entries[entry.id] = entry
    return ledger if entries == ledger.entries else Ledger(entries)


def _renamed_from(ledger: Ledger, post: Post, present: set[str], claimed: set[str]
                  ) -> Entry | None:
    """The entry of a file that is gone and had this post's title (one, or none)."""
    matches = [e for e in ledger.entries.values()
               if e.title == post.title and e.path not in present and e.id not in claimed]
    return matches[0] if len(matches) == 1 else None


def _gone(ledger: Ledger, current: set[str], folder: Path) -> list[Problem]:
    return [Problem(folder / entry.path, 0, (
        f"the published post {entry.id} ({entry.title!r}) is gone: feed readers keep "
        "their copy; if it is back under a new name, give it `id: " + entry.id + "`"))
        for entry in sorted(ledger.entries.values(), key=lambda e: e.path)
        if entry.id not in current]


def _relative(post: Post, folder: Path) -> str:
    # By string: Path.relative_to costs ~10 µs, and a big blog has 10,000 posts.
    path, prefix = str(post.path), str(folder) + os.sep
    relative = path[len(prefix):] if path.startswith(prefix) else path
    return relative.replace(os.sep, "/")

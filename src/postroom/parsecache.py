"""The parsed posts kept on disk between runs, so a build with nothing changed parses nothing.

A cache only: keyed by each file's path, size and mtime (ns); written whole and atomically;
any problem reading it (missing, corrupt, another postroom version, another posts folder or
time zone) means an empty cache and a full parse. JSON rather than pickle: loading the
file must never be able to run code.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from postroom import __version__
from postroom.errors import Problem
from postroom.output import write_cache_file
from postroom.posts import Author, ParsedFile, Post

log = logging.getLogger(__name__)

# What identifies a file's version without reading it: size and modification time (ns).
FileKey = tuple[int, int]
FORMAT = 1
RACY_NS = 2_000_000_000  # 2 s: coarser than any file system's mtime granularity (FAT's)


Parses = dict[str, tuple[FileKey, ParsedFile]]


def load_parse_cache(file: Path, folder: Path, zone: tzinfo) -> Parses:
    """Return the cached parses of the posts in `folder`, or {} if the cache is not usable."""
    try:
        recorded = json.loads(file.read_bytes())
        if recorded.get("header") != _header(folder, zone):
            return {}
        return {path: ((size, mtime), _outcome(Path(path), data, zone))
                for path, (size, mtime, data) in recorded["files"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        log.info("ignoring the parse cache %s (%s): every post is parsed again", file, err)
        return {}


def save_parse_cache(file: Path, folder: Path, zone: tzinfo,
                     parsed: Parses) -> None:
    """Write the parses to the cache file; a failure costs only the next run's time."""
    # A file written within RACY_NS of now could be written again within the same clock
    # tick with the same size, and look unchanged: it is not kept (parsed again next run).
    racy_after = time.time_ns() - RACY_NS
    kept = [(path, key, outcome) for path, (key, outcome) in parsed.items()
            if key[0] >= 0 and key[1] < racy_after]
    data = _pieces(_header(folder, zone), kept, zone)
    try:
        write_cache_file(file, data)
    except OSError as err:
        log.warning("cannot write the parse cache %s: %s (the next run parses every post)",
                    file, err.strerror or err)


def _pieces(header: dict[str, Any], kept: list[tuple[str, FileKey, ParsedFile]],
            zone: tzinfo) -> Iterator[str]:
    """The cache file's JSON, one file at a time (10,000 posts never make one string)."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    yield '{"header":' + encode(header) + ',"files":{'
    for index, (path, key, outcome) in enumerate(kept):
        entry = encode(path) + ":" + encode([key[0], key[1], _record(outcome, zone)])
        yield entry if index == 0 else "," + entry
    yield "}}"


def _header(folder: Path, zone: tzinfo) -> dict[str, Any]:
    return {"format": FORMAT, "postroom": __version__, "folder": str(folder.absolute()),
            "zone": str(zone)}


def _record(outcome: ParsedFile, zone: tzinfo) -> dict[str, Any]:
    post = outcome.post
    if post is None:
        return {"problems": [[p.line, p.message] for p in outcome.problems]}
    author = [post.author.name, post.author.email] if post.author else None
    return {"post": [post.slug, post.title, _when(post.published, zone),
                     _when(post.updated, zone), post.summary, list(post.tags), post.draft,
                     post.pinned_id, author, list(post.version), post.body_offset]}


def _outcome(path: Path, data: dict[str, Any], zone: tzinfo) -> ParsedFile:
    if "problems" in data:
        problems = [Problem(path, line, message) for line, message in data["problems"]]
        return ParsedFile(None, problems)
    (slug, title, published, updated, summary, tags, draft, pinned_id, author, version,
     offset) = data["post"]
    return ParsedFile(Post(
        path=path, slug=slug, title=title, published=_datetime(published, zone),
        updated=_datetime(updated, zone), summary=summary, tags=tuple(tags), draft=draft,
        pinned_id=pinned_id, author=Author(*author) if author else None,
        version=(version[0], version[1]), body_offset=offset))


def _when(value: datetime, zone: tzinfo) -> str:
    # A date in the site's zone is kept as wall-clock time, so it comes back in that zone
    # (not as a fixed offset): the same object a fresh parse gives.
    return value.replace(tzinfo=None).isoformat() if value.tzinfo is zone else value.isoformat()


def _datetime(text: str, zone: tzinfo) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=zone)

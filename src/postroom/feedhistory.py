"""Feed history (RFC 5005): a complete feed, and archives a reader can walk back through.

A feed that holds every post says so (`fh:complete`, section 2): a reader may then drop
entries it no longer finds there. A blog with more posts than the feed shows can also
publish archive documents (section 4): pages of `feeds.entries` posts each, counted from the
oldest post, so a full page keeps its posts as new posts arrive and is written again only
when one of its own posts changes. The subscription feed links to the newest archive
(`prev-archive`), each archive to the one before and after it and to the feed (`current`).

Pure: which documents there are and what they link to. `historyext` writes it into XML.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

ARCHIVE_FOLDER = "archive"
T = TypeVar("T")


@dataclass(frozen=True)
class History:
    """What a feed document says of its history: complete, an archive, or neither, and
    its history links as (rel, href)."""

    marker: Literal["complete", "archive"] | None = None
    links: tuple[tuple[str, str], ...] = ()


def archive_pages(published: Sequence[T], size: int) -> list[list[T]]:
    """Given the published posts newest first and the page size, return the full archive
    pages, oldest page first, each newest first (the order of a feed)."""
    oldest_first = list(reversed(published))
    full = len(oldest_first) // size
    return [list(reversed(oldest_first[k * size:(k + 1) * size])) for k in range(full)]


def archive_path(page: int, suffix: str) -> str:
    """The relative path of archive page `page` (1 = the oldest posts)."""
    return f"{ARCHIVE_FOLDER}/{page}.{suffix}"


def archive_history(page: int, pages: int, url_of: Any, current: str) -> History:
    """The history of archive page `page` of `pages`: links to its neighbours and the feed.

    `url_of(page)` gives a page's absolute URL; `current` is the subscription feed's.
    """
    links = [("current", current)]
    if page > 1:
        links.append(("prev-archive", url_of(page - 1)))
    if page < pages:
        links.append(("next-archive", url_of(page + 1)))
    return History("archive", tuple(links))

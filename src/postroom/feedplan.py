"""Planning a build: which files it writes, what each shows, and each one's input key.

Pure but for a few stats (the code's and the templates' files, for the keys). The key of a
file is a hash of what shapes its bytes: the settings, postroom's code, the versions of the
posts it shows (and the times the feeds give them), its history links, and for pages and
the stylesheet the templates. A file whose key is the one the last build wrote needs no
rendering.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from postroom import __version__
from postroom.config import Settings
from postroom.feedhistory import History, archive_history, archive_pages, archive_path
from postroom.posts import FeedTimes, Post, tag_slug

if TYPE_CHECKING:
    from postroom.feeds import FeedSpec

STYLESHEET = "feed.xsl"
ARCHIVED = ("atom", "rss")  # the formats RFC 5005 history applies to
# postroom's own files whose code shapes a feed's bytes: a change to them is a new key.
CODE = ("feeds.py", "render.py", "posts.py", "build.py", "feedplan.py", "feedpages.py")
Planned = list[tuple[str, "PlannedFeed"]]


@dataclass(frozen=True)
class PlannedFeed:
    """One feed file of a build: its spec, its entries (newest first) and its input key."""

    spec: FeedSpec | None  # None: the XSL stylesheet, the head snippet
    entries: tuple[Post, ...]
    key: str
    # "feed"; "archive" (an RFC 5005 archive: its renderings are not kept); "page" (the
    # feed's HTML page, of `spec`'s feed); "stylesheet" (XSL); "snippet" (the <head> links)
    kind: str = "feed"


class FeedPlanner:
    """Works out a build's files from the published posts, for one site's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stamp = _settings_stamp(settings)
        # What the feeds add to the times of posts whose written times others share, by
        # path (the scan's: Scan.feed_times), for the keys.
        self._feed_times: Mapping[str, FeedTimes] = {}

    def plan(self, published: Sequence[Post], feed_times: Mapping[str, FeedTimes]
             ) -> Planned:
        """Given the published posts (newest first), return every file to build."""
        from postroom.feeds import plan_feeds

        self._feed_times = feed_times
        limit = self.settings.feeds.entries
        names: dict[str, str] = {}  # tag slug -> the tag as its newest post spells it
        for post in published:
            for tag in post.tags:
                names.setdefault(tag_slug(tag), tag)
        chosen, totals = _newest_per_tag(published, limit, self.settings.feeds.per_tag)
        pages = archive_pages(published, limit) if self.settings.feeds.archives else []
        planned: Planned = []
        for spec, scope in plan_feeds(self.settings, sorted(names.values(), key=tag_slug)):
            slug = _slug_of(scope)
            entries = tuple(chosen.get(slug, ()))
            spec = self._with_history(spec, totals.get(slug, 0), len(pages))
            planned.append((spec.path, self._planned(spec, entries)))
            if scope is None and spec.format in ARCHIVED and pages:
                planned += self._archives(spec, pages)
        return planned + self._for_browsers(planned)

    def _planned(self, spec: FeedSpec, entries: tuple[Post, ...], kind: str = "feed"
                 ) -> PlannedFeed:
        key = self._key(spec.path, entries, repr(spec.history))
        return PlannedFeed(spec, entries, key, kind)

    def browser_templates_key(self) -> str:
        """The key of the templates of what browsers get: the pages', or the stylesheet."""
        from postroom.feedpages import PAGE_TEMPLATE

        if self.settings.feeds.for_browsers == "xsl":
            return self.templates_key(STYLESHEET)
        return self.templates_key(PAGE_TEMPLATE, "_page.html")

    def _for_browsers(self, feeds: Planned) -> Planned:
        """The files for people: an HTML page per feed (one for its formats) and the
        <head> snippet; or, where the site asks for it, the XSL stylesheet."""
        from postroom.feedpages import HEAD_SNIPPET, page_path

        formats = self.settings.feeds.formats
        templates = self.browser_templates_key()
        if self.settings.feeds.for_browsers == "xsl":
            if not any(fmt in ARCHIVED for fmt in formats):
                return []
            return [(STYLESHEET, PlannedFeed(None, (), templates, "stylesheet"))]
        planned = [(page_path(name), PlannedFeed(
            feed.spec, feed.entries, self._key(page_path(name), feed.entries, templates),
            "page"))
            for name, feed in feeds if feed.kind == "feed" and feed.spec is not None
            and feed.spec.format == formats[0]]
        return [*planned, (HEAD_SNIPPET, PlannedFeed(None, (), self._key(HEAD_SNIPPET, ()),
                                                     "snippet"))]

    def _with_history(self, spec: FeedSpec, total: int, pages: int) -> FeedSpec:
        """A feed that shows every post says so; with archives, the main feed links to the
        newest one (RFC 5005). JSON Feed has neither."""
        if spec.format not in ARCHIVED:
            return spec
        if total <= self.settings.feeds.entries:
            return dataclasses.replace(spec, history=History("complete"))
        if pages and spec.path.startswith("feed."):
            newest = self._archive_url(pages, spec.format)
            return dataclasses.replace(spec, history=History(None, (("prev-archive", newest),)))
        return spec

    def _archives(self, main: FeedSpec, pages: list[list[Post]]) -> Planned:
        """The archive documents of the main feed in its format, oldest page first."""
        planned = []
        for number, page in enumerate(pages, start=1):
            path = archive_path(number, main.format)
            spec = dataclasses.replace(
                # No hub: the hub is told of the feeds, and archives change rarely.
                main, path=path, self_url=f"{self.settings.feeds_url}/{path}", hub=None,
                # Not "of N": a new page would change every archive.
                title=f"{main.title} (archive {number})",
                history=archive_history(number, len(pages),
                                        lambda n: self._archive_url(n, main.format),
                                        main.self_url))
            planned.append((path, self._planned(spec, tuple(page), "archive")))
        return planned

    def _archive_url(self, page: int, fmt: str) -> str:
        return f"{self.settings.feeds_url}/{archive_path(page, fmt)}"

    def _key(self, path: str, entries: Sequence[Post], extra: str = "") -> str:
        digest = hashlib.sha256(f"{self.stamp}\0{path}\0{extra}".encode())
        for post in entries:
            digest.update(f"\0{post.path}\0{post.version[0]}\0{post.version[1]}".encode())
            moved = self._feed_times.get(str(post.path))
            if moved is not None:  # its feed times follow other posts too: part of the key
                digest.update(f"\0{moved[0]}\0{moved[1]}".encode())
        return digest.hexdigest()

    def templates_key(self, *names: str) -> str:
        """A key of the settings, the code and the template files of these names (the
        site's own and the defaults): an edited template is a new key."""
        from postroom.templates import DEFAULT_TEMPLATES

        digest = hashlib.sha256(self.stamp.encode())
        for name in names:
            for folder in (self.settings.templates_dir, DEFAULT_TEMPLATES):
                digest.update(f"\0{name}\0{_stat_stamp(folder / name)}".encode())
        return digest.hexdigest()


def _newest_per_tag(published: Sequence[Post], limit: int, per_tag: bool
                    ) -> tuple[dict[str | None, list[Post]], dict[str | None, int]]:
    """Return the newest `limit` posts overall (key None) and per tag slug, and how many
    posts each has, in one pass."""
    chosen: dict[str | None, list[Post]] = {None: list(published[:limit])}
    totals: dict[str | None, int] = {None: len(published)}
    if not per_tag:
        return chosen, totals
    for post in published:
        for slug in post.tag_slugs:
            entries = chosen.setdefault(slug, [])
            totals[slug] = totals.get(slug, 0) + 1
            if len(entries) < limit:
                entries.append(post)
    return chosen, totals


def _slug_of(tag: str | None) -> str | None:
    return None if tag is None else tag_slug(tag)


def _settings_stamp(settings: Settings) -> str:
    """What, besides the posts, shapes the feeds: the settings and postroom's code."""
    here = Path(__file__).parent
    code = ",".join(_stat_stamp(here / name) for name in CODE)
    return f"{__version__}\0{code}\0{settings.model_dump_json()}"


def _stat_stamp(path: Path) -> str:
    try:
        stat = os.stat(path)
    except OSError:
        return "-"
    return f"{stat.st_size}:{stat.st_mtime_ns}"

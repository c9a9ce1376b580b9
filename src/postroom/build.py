"""Building the feeds: scan the collection, render what a feed shows, write what changed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from postroom.collection import PostCollection, PostsFolderError, Scan
from postroom.config import Settings
from postroom.errors import Problem
from postroom.feeds import STYLESHEET, plan_feeds, render_feed, tag_slug
from postroom.output import (
    MANIFEST,
    read_manifest,
    read_manifest_post_files,
    remove_leftover_temps,
    remove_stale,
    write_atomic,
    write_manifest,
)
from postroom.posts import Post
from postroom.render import RenderedPost, Renderer
from postroom.templates import render, template_environment

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    """What one build did, for the CLI's summary and the daemon's log line."""

    published: int = 0
    feeds: dict[str, bytes] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    parsed: int = 0
    post_files: int = 0  # good or bad: what the next build compares an empty folder with


class SiteBuilder:
    """Keeps the scan cache and rendered posts between builds (the daemon rebuilds often)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        site = settings.site
        self.collection = PostCollection(settings.posts_dir, site.zone, site.host)
        self.renderer = Renderer()
        self.templates = template_environment(settings.templates_dir)
        self._rendered: dict[Post, RenderedPost] = {}
        self.last_scan: Scan | None = None
        self._last_published: list[Post] = []
        self._last_files: dict[str, bytes] | None = None

    def rendered(self, post: Post) -> RenderedPost:
        """Return the post rendered, from the cache when the post has not changed."""
        cached = self._rendered.get(post)
        if cached is None:
            cached = self._rendered[post] = self.renderer.render(self.settings, post)
        return cached

    def feeds(self, scan: Scan, now: datetime) -> dict[str, bytes]:
        """Given a scan and the time, return every feed file's relative path and bytes."""
        published = scan.published(now)
        # Unchanged posts are the very same cached objects, so identity says "nothing new"
        # (the previous list is kept alive, so no id can have been reused).
        previous = self._last_published
        if self._last_files is not None and len(previous) == len(published) and all(
            a is b for a, b in zip(previous, published, strict=True)
        ):
            return self._last_files
        files = self._render_feeds(published)
        self._last_published, self._last_files = published, files
        return files

    def _render_feeds(self, published: list[Post]) -> dict[str, bytes]:
        limit = self.settings.feeds.entries
        by_slug: dict[str, str] = {}
        for post in published:
            for tag in post.tags:
                by_slug.setdefault(tag_slug(tag), tag)
        files: dict[str, bytes] = {}
        used: set[Post] = set()
        for spec, scope in plan_feeds(self.settings, sorted(by_slug.values(), key=tag_slug)):
            chosen = _newest_with_tag(published, scope, limit)
            used.update(chosen)
            files[spec.path] = render_feed(spec, [self.rendered(p) for p in chosen])
        # Forget renderings of posts that left every feed, so memory follows the feeds' size.
        self._rendered = {p: r for p, r in self._rendered.items() if p in used}
        if any(fmt in ("atom", "rss") for fmt in self.settings.feeds.formats):
            files[STYLESHEET] = self.stylesheet()
        return files

    def stylesheet(self) -> bytes:
        """Return the XSL stylesheet that makes a feed readable in a browser."""
        context = {"site": {"title": self.settings.site.title,
                            "url": self.settings.site.base_url + "/",
                            "subscribe_url": self.settings.public_url + "/subscribe"}}
        return render(self.templates, STYLESHEET, context).encode("utf-8")

    def build(self, now: datetime, *, write: bool = True, allow_empty: bool = False
              ) -> BuildReport:
        """Scan, render and (unless write is False) write the feeds; return what happened.

        Raises PostsFolderError, writing nothing, when the posts folder is missing or
        unreadable, or has no post files while the last build had some (a folder moved or
        a disk not mounted must not empty the live feeds); `allow_empty` writes them empty.
        """
        output = self.settings.output_dir
        try:
            scan = self.collection.scan()
        except PostsFolderError as err:
            raise PostsFolderError(f"{err}; the feeds in {output} are left as they were") from err
        if write and not allow_empty and scan.files == 0:
            before = read_manifest_post_files(output)
            if before:
                raise PostsFolderError(
                    f"{self.settings.posts_dir}: the posts folder has no post files, but the "
                    f"last build had {before}; the feeds in {output} are left as they were "
                    f"(if every post was removed on purpose: postroom build --allow-empty)")
        self.last_scan = scan
        report = BuildReport(problems=scan.problems, parsed=scan.parsed, post_files=scan.files)
        report.published = len(scan.published(now))
        report.feeds = self.feeds(scan, now)
        if write:
            self.write(report)
        return report

    def write(self, report: BuildReport) -> None:
        """Write the report's feeds into the output folder, removing feeds no longer built."""
        folder = self.settings.output_dir
        folder.mkdir(parents=True, exist_ok=True)
        # A build killed mid-write leaves its temporary files: the next one clears them.
        remove_leftover_temps(folder, [*report.feeds, MANIFEST])
        for name, data in sorted(report.feeds.items()):
            changed = write_atomic(folder / name, data)
            (report.written if changed else report.unchanged).append(name)
        report.removed = remove_stale(folder, read_manifest(folder) - report.feeds.keys())
        write_manifest(folder, report.feeds, report.post_files)


def _newest_with_tag(published: Sequence[Post], tag: str | None, limit: int) -> list[Post]:
    if tag is None:
        return list(published[:limit])
    slug = tag_slug(tag)
    chosen: list[Post] = []
    for post in published:
        if any(tag_slug(t) == slug for t in post.tags):
            chosen.append(post)
            if len(chosen) == limit:
                break
    return chosen

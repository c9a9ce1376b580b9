"""Building the feeds: scan the collection, render the feeds whose entries changed, write them.

Work follows change. Each file has an input key (`feedplan`: a hash of the settings,
postroom's code and the versions of the post files it shows); a file whose key and size on
disk are as the last build left them is neither rendered nor written. So a rescan with nothing
changed costs the stat walk, an edit re-renders only the feeds that show the post (or that
it leaves), and a CLI build with nothing changed reads no post (the parse cache) and
renders nothing. Markdown, feedgen and Jinja are imported only when something is rendered.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from postroom.buildstate import BuildState, Outcome, load_build_state, save_build_state
from postroom.collection import PostCollection, PostsFolderError, Scan
from postroom.config import Settings
from postroom.errors import Problem
from postroom.feedplan import STYLESHEET, FeedPlanner, Planned, PlannedFeed
from postroom.ledger import load_ledger, record, save_ledger
from postroom.output import (
    MANIFEST,
    read_manifest,
    read_manifest_post_files,
    remove_leftover_temps,
    remove_stale,
    write_files,
    write_manifest,
)
from postroom.parsecache import RACY_NS
from postroom.posts import FeedTimes, Post, PostChanged, later

if TYPE_CHECKING:
    from jinja2 import Environment

    from postroom.render import RenderedPost, Renderer

log = logging.getLogger(__name__)

# How often a long-running builder writes the parse cache (seconds): writing 10,000
# parses costs ~50 ms, too much for every edit.
CACHE_SAVE_SECONDS = 300.0
# Rescans when a post changes while its body is being read (an editor saving as we build).
ATTEMPTS = 3


@dataclass
class BuildReport:
    """What one build did, for the CLI's summary and the daemon's log line."""

    published: int = 0
    feeds: Mapping[str, bytes] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    parsed: int = 0
    post_files: int = 0  # good or bad: what the next build compares an empty folder with
    rendered: int = 0  # feed files rendered this build (the rest were known unchanged)
    notices: list[Problem] = field(default_factory=list)  # worth saying, not problems


class FeedBytes(Mapping[str, bytes]):
    """A build's feed files by relative path; files the build did not render are read from
    the output folder when asked for (the daemon and the CLI rarely ask)."""

    def __init__(self, folder: Path, known: dict[str, bytes], names: Sequence[str]) -> None:
        self._folder, self._known, self._names = folder, known, list(names)

    def __getitem__(self, name: str) -> bytes:
        if name in self._known:
            return self._known[name]
        if name not in self._names:
            raise KeyError(name)
        data = self._known[name] = (self._folder / name).read_bytes()
        return data

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class SiteBuilder:
    """Keeps the scan cache, rendered posts and feed bytes between builds (the daemon
    rebuilds often). Not thread-safe: one owner (the daemon's builder thread, or the CLI)."""

    def __init__(self, settings: Settings, *, use_cache: bool = True,
                 save_cache_every: float = 0.0, remember_outcome: bool = True) -> None:
        self.settings = settings
        site = settings.site
        cache = settings.cache_dir
        self.collection = PostCollection(settings.posts_dir, site.zone, site.host,
                                         cache / "posts.json" if use_cache else None,
                                         save_every=save_cache_every)
        self.state_file = cache / "feeds.json" if use_cache else None
        self._ledger_loaded = False
        # For the next CLI build's "nothing changed" answer; a daemon has no use for it.
        self.remember_outcome = remember_outcome
        self._recorded: tuple[Scan, int] | None = None  # the scan and count last recorded
        self._recorded_posts: set[Post] = set()
        self.last_scan: Scan | None = None
        self._renderer: Renderer | None = None
        self._templates: Environment | None = None
        self._rendered: dict[Post, RenderedPost] = {}
        self._bytes: dict[str, tuple[str, bytes]] = {}  # path -> (key, bytes) last built
        self._plan: tuple[Scan, int, Planned] | None = None
        # What the feeds add to the times of posts whose written times others share, by
        # path (the plan's scan's: Scan.feed_times).
        self._feed_times: Mapping[str, FeedTimes] = {}
        self._state: BuildState | None = None
        self.planner = FeedPlanner(settings)
        self.renders = 0  # feed files rendered by this builder, for reports and tests

    @classmethod
    def long_running(cls, settings: Settings) -> SiteBuilder:
        """The builder of a process that rebuilds again and again (the daemon): the parse
        cache is written now and then (and by `collection.save()` at exit), not after
        every edit, and no "nothing changed" answer is kept for CLI builds."""
        return cls(settings, save_cache_every=CACHE_SAVE_SECONDS, remember_outcome=False)

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            from postroom.render import Renderer

            self._renderer = Renderer()
        return self._renderer

    def rendered(self, post: Post) -> RenderedPost:
        """Return the post rendered, from the cache when the post has not changed.

        Raises PostChanged if its file changed since the scan."""
        cached = self._rendered.get(post)
        if cached is None:
            cached = self._rendered[post] = self.renderer.render(self.settings, post)
        return cached

    # ---- planning --------------------------------------------------------------------

    def plan(self, scan: Scan, now: datetime) -> Planned:
        """Given a scan and the time, return every feed file to build, by relative path."""
        published = scan.published(now)
        self._feed_times = scan.feed_times
        if self._plan is not None and self._plan[0] is scan and self._plan[1] == len(published):
            return self._plan[2]  # same scan, no post came due: the same feeds
        planned = self.planner.plan(published, scan.feed_times)
        self._plan = (scan, len(published), planned)
        return planned

    # ---- rendering -------------------------------------------------------------------

    def feed_bytes(self, name: str, planned: PlannedFeed) -> bytes:
        """Return one planned file's bytes, rendering it unless this builder has them."""
        known = self._bytes.get(name)
        if known is not None and known[0] == planned.key:
            return known[1]
        data = self._render(planned)
        self._bytes[name] = (planned.key, data)
        self.renders += 1
        return data

    def _render(self, planned: PlannedFeed) -> bytes:
        if planned.kind == "stylesheet":
            return self.stylesheet()
        if planned.kind == "snippet":
            from postroom.feedpages import head_snippet

            return head_snippet(self.settings)
        assert planned.spec is not None
        if planned.kind == "archive":  # rendered once in a long while: not worth the memory
            rendered = [self._rendered.get(p) or self.renderer.render(self.settings, p)
                        for p in planned.entries]
        else:
            rendered = [self.rendered(p) for p in planned.entries]
        shown = self._at_feed_times(planned.entries, rendered)
        if planned.kind == "page":
            from postroom.feedpages import render_feed_page

            return render_feed_page(self.templates, self.settings, planned.spec, shown)
        from postroom.feeds import render_feed

        return render_feed(planned.spec, shown)

    def _at_feed_times(self, posts: Sequence[Post], rendered: list[RenderedPost]
                       ) -> list[RenderedPost]:
        """The rendered posts with the published and updated times the feeds show: a
        post written with another's date and time is seconds later (posts.feed_times)."""
        times = self._feed_times
        if not times:
            return rendered
        return [entry if (moved := times.get(str(post.path))) is None
                else replace(entry, published=later(entry.published, moved[0]),
                             updated=later(entry.updated, moved[1]))
                for post, entry in zip(posts, rendered, strict=True)]

    def stylesheet(self) -> bytes:
        """Return the XSL stylesheet that makes a feed readable in a browser."""
        from postroom.templates import render

        context = {"site": {"title": self.settings.site.title,
                            "url": self.settings.site.base_url + "/",
                            "subscribe_url": self.settings.public_url + "/subscribe"}}
        return render(self.templates, STYLESHEET, context).encode("utf-8")

    @property
    def templates(self) -> Environment:
        """The site's templates (loaded when a page or the stylesheet is first rendered)."""
        if self._templates is None:
            from postroom.templates import template_environment

            self._templates = template_environment(self.settings.templates_dir)
        return self._templates

    def feeds(self, scan: Scan, now: datetime) -> dict[str, bytes]:
        """Given a scan and the time, return every feed file's relative path and bytes."""
        return {name: self.feed_bytes(name, planned) for name, planned in self.plan(scan, now)}

    def _forget_unused(self, planned: Planned) -> None:
        # Memory follows the feeds' size: renderings of posts that left every feed go.
        used = {post for _, p in planned if p.kind != "archive" for post in p.entries}
        if len(self._rendered) > len(used):
            self._rendered = {p: r for p, r in self._rendered.items() if p in used}
        names = {name for name, _ in planned}
        for name in [n for n in self._bytes if n not in names]:
            del self._bytes[name]

    # ---- building --------------------------------------------------------------------

    def build(self, now: datetime, *, write: bool = True, allow_empty: bool = False,
              changed: Iterable[Path] | None = None) -> BuildReport:
        """Scan, render and (unless write is False) write the feeds; return what happened.

        Raises PostsFolderError, writing nothing, when the posts folder is missing or
        unreadable, or has no post files while the last build had some (a folder moved or
        a disk not mounted must not empty the live feeds); `allow_empty` writes them empty.
        `changed`: the paths a watcher saw change (the scan looks at those alone).
        """
        for attempt in range(ATTEMPTS):
            try:
                return self._build_once(now, write=write, allow_empty=allow_empty,
                                        changed=changed if attempt == 0 else None)
            except PostChanged as err:
                # Scanned, then changed before its body was read: scan again.
                self.collection.forget([err.path])
                if attempt == ATTEMPTS - 1:
                    raise PostsFolderError(f"{err}; the posts kept changing during "
                                           f"{ATTEMPTS} builds, so none was written") from err
        raise AssertionError("unreachable")

    def _build_once(self, now: datetime, *, write: bool, allow_empty: bool,
                    changed: Iterable[Path] | None = None) -> BuildReport:
        output = self.settings.output_dir
        if write and self.last_scan is None:
            unchanged = self._nothing_changed(now)
            if unchanged is not None:
                return unchanged
        if not self._ledger_loaded:
            self.collection.ledger = load_ledger(self.settings.ledger_file)
            self._ledger_loaded = True
        try:
            scan = self.collection.scan(changed)
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
        planned = self.plan(scan, now)
        report = BuildReport(problems=scan.problems, parsed=scan.parsed, post_files=scan.files,
                             published=len(scan.published(now)), notices=scan.notices)
        renders = self.renders
        if write:
            # Before any reader can see a new ID: recorded, then published.
            self._record_ids(scan, now)
            self._write(report, planned, scan, now)
        else:
            report.feeds = {name: self.feed_bytes(name, p) for name, p in planned}
        report.rendered = self.renders - renders
        self._forget_unused(planned)
        return report

    def _nothing_changed(self, now: datetime) -> BuildReport | None:
        """A first build of this builder (a CLI build): if the posts folder, the settings
        and the output are as the last build left them and no post came due since, return
        its report again, having read no post. Else None: build."""
        last = self._last_state()
        outcome = last.outcome
        if outcome is None or outcome.stamp != self.planner.browser_templates_key() or (
                outcome.until is not None and datetime.fromisoformat(outcome.until) <= now):
            return None
        walk, count = self.collection.fingerprint()
        folder = self.settings.output_dir
        if walk != outcome.walk or count == 0 or any(
                _size(folder / name) != size for name, size in last.sizes.items()):
            return None
        names = sorted(last.inputs)
        return BuildReport(
            published=outcome.published, post_files=outcome.post_files, unchanged=names,
            feeds=FeedBytes(folder, {}, names),
            problems=[Problem(Path(path), line, message)
                      for path, line, message in outcome.problems],
            notices=[Problem(Path(path), line, message)
                     for path, line, message in outcome.notices])

    def _record_ids(self, scan: Scan, now: datetime) -> None:
        published = scan.published(now)
        if self._recorded == (scan, len(published)):
            return  # nothing new since the last record
        ledger = self.collection.ledger
        # Only posts not recorded by this builder yet (unchanged posts are the same objects).
        fresh = [p for p in published if p not in self._recorded_posts]
        recorded = record(ledger, fresh, self.settings.site.host, self.settings.posts_dir)
        if recorded is not ledger:
            save_ledger(self.settings.ledger_file, recorded)
            self.collection.ledger = recorded
        self._recorded = (scan, len(published))
        if len(self._recorded_posts) > 2 * len(published):
            self._recorded_posts = set(published)  # forget edited posts' old versions
        else:
            self._recorded_posts.update(fresh)

    def _outcome(self, scan: Scan, report: BuildReport, now: datetime) -> Outcome | None:
        if self.state_file is None or not self.remember_outcome or \
                self.collection.newest_mtime_ns() > time.time_ns() - RACY_NS:
            # A post written within the clock's grain could change again unseen by its
            # size and mtime: the next build reads the folder rather than trust them.
            return None
        walk, _ = self.collection.fingerprint(of_last_scan=True)
        upcoming = [p.published for p in scan.posts if not p.draft and p.published > now]
        return Outcome(walk=walk, stamp=self.planner.browser_templates_key(),
                       until=min(upcoming).isoformat() if upcoming else None,
                       published=report.published, post_files=report.post_files,
                       problems=[(str(p.path), p.line, p.message) for p in report.problems],
                       notices=[(str(p.path), p.line, p.message) for p in report.notices])

    def _last_state(self) -> BuildState:
        # Read once: from then on this builder is what changes the output folder (another
        # writer's files differ in size or are re-rendered after a key mismatch anyway).
        if self._state is None:
            self._state = BuildState() if self.state_file is None else \
                load_build_state(self.state_file, self.settings.output_dir)
        return self._state

    def _write(self, report: BuildReport, planned: Planned, scan: Scan,
               now: datetime) -> None:
        """Write the planned files that changed, remove feeds no longer built, and record
        what was built."""
        folder = self.settings.output_dir
        folder.mkdir(parents=True, exist_ok=True)
        last = self._last_state()
        changed: dict[str, bytes] = {}
        known: dict[str, bytes] = {}
        for name, feed in planned:
            if last.inputs.get(name) == feed.key and _size(folder / name) == last.sizes.get(name):
                report.unchanged.append(name)  # as the last build left it: nothing to do
                if name in self._bytes and self._bytes[name][0] == feed.key:
                    known[name] = self._bytes[name][1]
                continue
            known[name] = changed[name] = self.feed_bytes(name, feed)
        names = [name for name, _ in planned]
        if changed:
            # A build killed mid-write leaves its temporary files: the next one clears them.
            remove_leftover_temps(folder, [*changed, MANIFEST])
            written = write_files(folder, changed)
            report.written = sorted(written)
            report.unchanged = sorted([*report.unchanged, *(n for n in changed
                                                           if n not in written)])
        report.removed = remove_stale(folder, read_manifest(folder) - set(names))
        report.feeds = FeedBytes(folder, known, names)
        write_manifest(folder, names, report.post_files)
        # What a CLI build with nothing changed reports again: worked out when it changes.
        outcome = last.outcome
        if scan.changed or outcome is None or outcome.published != report.published:
            outcome = self._outcome(scan, report, now)
        state = BuildState(inputs={name: feed.key for name, feed in planned},
                           sizes={name: len(data) for name, data in changed.items()}
                           | {name: last.sizes[name] for name in names
                              if name not in changed and name in last.sizes},
                           outcome=outcome)
        if state != last and self.state_file is not None:
            save_build_state(self.state_file, folder, state)
        self._state = state


def _size(path: Path) -> int:
    # Size only: the mtime of an unchanged file may be touched by others (backups, rsync),
    # and a file cut short or removed is what this must catch.
    try:
        return os.stat(path).st_size
    except OSError:
        return -1

"""The tables of bench/feeds.py: runs in, Markdown out (its section of bench/RESULTS.md)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

POSTROOM, HUGO, PELICAN, FLOOR, NGINX = "postroom", "hugo", "pelican", "stat floor", "nginx"
BIG, SMALL = 10_000, 1_000
MAIN, OLD = "main", "old"
CASES = {MAIN: "a post in the main feed", OLD: "the oldest post (in no feed)"}
SHORT_CASES = {MAIN: "in the main feed", OLD: "in no feed"}

# Issue 9's targets, stated next to the figures.
COLD_BIG_TARGET = 0.8  # postroom / Hugo, cold build of 10,000 posts
COLD_SMALL_TARGET = 1.0  # ... of 1,000 posts
RESCAN_TARGET_MS = 50.0
EDIT_TARGET_MS = 100.0
SERVE_200_TARGET = 0.5  # postroom / nginx, req/s
SERVE_304_TARGET = 0.15
MEMORY_TARGET_MB = 80.0
# Other work on the machine, in cores kept busy on average, from which a figure is disturbed.
BUSY_CORES = 0.2
MIN_JUDGED_S = 0.2


@dataclass
class Command:
    """One measured command: a cold or warm build, or the stat-only floor script."""

    phase: str  # "cold" or "warm"
    tool: str  # POSTROOM, HUGO, PELICAN or FLOOR
    size: int  # posts
    repeat: int
    wall: float
    cpu: float
    maxrss_kb: int
    ok: bool
    note: str = ""
    feed_bytes: int = 0  # the main feed it wrote (postroom: feed.atom)
    other_cpu: float = 0.0  # CPU seconds the rest of the machine used meanwhile

    @property
    def rss_mb(self) -> float:
        return self.maxrss_kb / 1024.0


@dataclass
class Rescan:
    """One run of feeds_inprocess.py: one SiteBuilder's rebuilds and edits."""

    size: int
    per_tag: bool
    repeat: int
    ok: bool
    note: str = ""
    first_build: float = 0.0
    rebuilds: list[float] = field(default_factory=list)
    floors: list[float] = field(default_factory=list)
    rebuild_written: list[str] = field(default_factory=list)
    edits: dict[str, list[float]] = field(default_factory=dict)
    edit_written: dict[str, list[list[str]]] = field(default_factory=dict)
    feeds: int = 0
    maxrss_kb: int = 0
    wall: float = 0.0
    other_cpu: float = 0.0


@dataclass
class Served:
    """One wrk run against one server."""

    server: str  # POSTROOM or NGINX
    scenario: str  # "200", "304", "200 gzip", "304 gzip"
    repeat: int
    rate: float
    p99_ms: float
    bytes_per_response: float
    cpu_us_per_request: float
    ok: bool
    note: str = ""
    wall: float = 0.0
    other_cpu: float = 0.0


# --- progress lines -------------------------------------------------------------------------

def command_line(run: Command, repeats: int) -> str:
    status = "ok" if run.ok else f"FAILED ({run.note})"
    return (f"[{run.phase} {run.repeat}/{repeats}] {run.size:>6,} posts  {run.tool:<10} "
            f"wall {run.wall:7.3f} s  cpu {run.cpu:7.3f} s  peak rss {run.rss_mb:6.1f} MB  "
            f"{_beside(run)}{status}")


def rescan_line(run: Rescan, repeats: int) -> str:
    if not run.ok and not run.rebuilds:
        return (f"[rescan {run.repeat}/{repeats}] {run.size:,} posts, per-tag "
                f"{_on(run.per_tag)}: FAILED ({run.note})")
    edits = ", ".join(f"edit {case} {_ms(_med(values))} ms" for case, values in run.edits.items())
    return (f"[rescan {run.repeat}/{repeats}] {run.size:,} posts, per-tag {_on(run.per_tag)}: "
            f"warm-up build {run.first_build:.2f} s; rebuild {_ms(_med(run.rebuilds))} ms "
            f"(floor {_ms(_med(run.floors))} ms); {edits}; peak rss "
            f"{run.maxrss_kb / 1024:.1f} MB  {_beside(run)}"
            f"{'ok' if run.ok else 'FAILED (' + run.note + ')'}")


def served_line(run: Served, repeats: int) -> str:
    status = "ok" if run.ok else f"FAILED ({run.note})"
    return (f"[serve {run.repeat}/{repeats}] {run.scenario:<8} {run.server:<8} "
            f"{run.rate:>9,.0f} req/s  p99 {run.p99_ms:6.1f} ms  "
            f"{run.bytes_per_response:>9,.0f} B/response  server cpu "
            f"{run.cpu_us_per_request:5.0f} µs/request  {_beside(run)}{status}")


def disturbed(run: Command | Rescan | Served) -> bool:
    """Whether the rest of the machine kept BUSY_CORES or more busy during the run.

    /proc/stat counts in 10 ms ticks: one tick in a 20 ms run is half a core, so a run
    shorter than MIN_JUDGED_S is judged only with its row (the tables' column).
    """
    return run.wall >= MIN_JUDGED_S and run.other_cpu / run.wall >= BUSY_CORES


def _beside(run: Command | Rescan | Served) -> str:
    """What else the machine ran meanwhile, when it is enough to disturb the figure."""
    return f"[{run.other_cpu / run.wall:.2f} other cores busy] " if disturbed(run) else ""


def background(runs: Sequence[Command | Rescan | Served]) -> float | None:
    """The cores the rest of the machine kept busy over these runs, on average."""
    wall = sum(r.wall for r in runs)
    return sum(r.other_cpu for r in runs) / wall if wall > 0 else None


def _background_cell(runs: Sequence[Command | Rescan | Served]) -> str:
    cores = background(runs)
    text = _fmt(cores, ".2f")
    return f"**{text}**" if cores is not None and cores >= BUSY_CORES else text


# --- figures --------------------------------------------------------------------------------

def _med(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def _min(values: Iterable[float]) -> float | None:
    return min(values, default=None)


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "–" if value is None else format(value, spec)


def _ms(value: float | None) -> str:
    return _fmt(None if value is None else value * 1000, ".1f")


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _ratio(mine: float | None, theirs: float | None) -> float | None:
    return mine / theirs if mine is not None and theirs else None


def _runs_ok(runs: Sequence[object]) -> str:
    good = sum(1 for r in runs if getattr(r, "ok", False))
    return f"{good}/{len(runs)}" + ("" if good == len(runs) else " **FAILED**")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _verdict(value: float | None, passes: Callable[[float], bool]) -> str:
    if value is None:
        return "not measured"
    return "**met**" if passes(value) else "**not met**"


@dataclass
class Figures:
    """Every run so far, and the figures the tables and the targets take from them."""

    commands: list[Command] = field(default_factory=list)
    rescans: list[Rescan] = field(default_factory=list)
    served: list[Served] = field(default_factory=list)

    def commands_of(self, phase: str, tool: str, size: int) -> list[Command]:
        return [r for r in self.commands
                if r.phase == phase and r.tool == tool and r.size == size]

    def good(self, phase: str, tool: str, size: int) -> list[Command]:
        return [r for r in self.commands_of(phase, tool, size) if r.ok]

    def wall(self, phase: str, tool: str, size: int) -> float | None:
        return _med(r.wall for r in self.good(phase, tool, size))

    def sizes(self, phase: str) -> list[int]:
        return sorted({r.size for r in self.commands if r.phase == phase})

    def rescans_of(self, size: int, per_tag: bool) -> list[Rescan]:
        return [r for r in self.rescans if r.size == size and r.per_tag == per_tag]

    def rescan_samples(self, size: int, per_tag: bool, what: str) -> list[float]:
        samples: list[float] = []
        for run in self.rescans_of(size, per_tag):
            if run.ok:
                samples += getattr(run, what)
        return samples

    def edit_samples(self, size: int, per_tag: bool, case: str) -> list[float]:
        samples: list[float] = []
        for run in self.rescans_of(size, per_tag):
            if run.ok:
                samples += run.edits.get(case, [])
        return samples

    def rescan_size(self) -> int | None:
        return max((r.size for r in self.rescans), default=None)

    def rates(self, server: str, scenario: str) -> list[float]:
        return [r.rate for r in self.served
                if r.server == server and r.scenario == scenario and r.ok]

    def serve_ratio(self, scenario: str) -> float | None:
        return _ratio(_med(self.rates(POSTROOM, scenario)), _med(self.rates(NGINX, scenario)))


# --- tables ---------------------------------------------------------------------------------

def targets_table(figures: Figures) -> list[str]:
    rows = [_cold_target(figures, BIG, COLD_BIG_TARGET),
            _cold_target(figures, SMALL, COLD_SMALL_TARGET),
            _rescan_target(figures), _edit_target(figures),
            _serve_target(figures, "200", SERVE_200_TARGET),
            _serve_target(figures, "304", SERVE_304_TARGET),
            _memory_target(figures)]
    return _table(["target (issue 9)", "figure", "verdict"], rows)


def _cold_target(figures: Figures, size: int, target: float) -> list[str]:
    mine, hugo = figures.wall("cold", POSTROOM, size), figures.wall("cold", HUGO, size)
    ratio = _ratio(mine, hugo)
    figure = (f"{ratio:.2f}× (postroom {mine:.3f} s, Hugo {hugo:.3f} s, medians)"
              if ratio is not None and mine is not None and hugo is not None
              else f"– (needs {size:,} posts)" if size not in figures.sizes("cold") else "–")
    return [f"cold build of {size:,} posts ≤ {target:g} × Hugo (wall)", figure,
            _verdict(ratio, lambda v: v <= target)]


def _rescan_target(figures: Figures) -> list[str]:
    size = figures.rescan_size()
    label = f"in-daemon rescan of {BIG:,} unchanged posts ≤ {RESCAN_TARGET_MS:.0f} ms (median)"
    if size is None:
        return [label, "–", "not measured"]
    rebuild = _med(figures.rescan_samples(size, False, "rebuilds"))
    floor = _med(figures.rescan_samples(size, False, "floors"))
    ratio = _ratio(rebuild, floor)
    figure = (f"{_ms(rebuild)} ms (stat-only floor {_ms(floor)} ms: {_fmt(ratio, '.1f')}×)"
              + ("" if size == BIG else f" at {size:,} posts"))
    value = rebuild * 1000 if rebuild is not None and size == BIG else None
    return [label, figure, _verdict(value, lambda v: v <= RESCAN_TARGET_MS)]


def _edit_target(figures: Figures) -> list[str]:
    size = figures.rescan_size()
    label = (f"one post edited → feeds rebuilt ≤ {EDIT_TARGET_MS:.0f} ms at {BIG:,} posts "
             "(worst median of the four cases)")
    if size is None:
        return [label, "–", "not measured"]
    parts, worst = [], None
    for per_tag in (False, True):
        for case in CASES:
            median = _med(figures.edit_samples(size, per_tag, case))
            if median is not None:
                worst = max(worst or 0.0, median)
            parts.append(f"per-tag {_on(per_tag)}, {SHORT_CASES[case]}: {_ms(median)} ms")
    figure = "; ".join(parts)
    if size != BIG:
        figure += f" (at {size:,} posts)"
    value = worst * 1000 if worst is not None and size == BIG else None
    return [label, figure, _verdict(value, lambda v: v <= EDIT_TARGET_MS)]


def _serve_target(figures: Figures, scenario: str, target: float) -> list[str]:
    ratio = figures.serve_ratio(scenario)
    mine, nginx = _med(figures.rates(POSTROOM, scenario)), _med(figures.rates(NGINX, scenario))
    kind = "200s" if scenario == "200" else "304s (If-None-Match)"
    figure = (f"{ratio:.3f}× (postroom {mine:,.0f} req/s, nginx {nginx:,.0f} req/s, medians)"
              if ratio is not None and mine is not None and nginx is not None else "–")
    return [f"serve /feed.atom, {kind}, ≥ {target:g} × nginx", figure,
            _verdict(ratio, lambda v: v >= target)]


def _memory_target(figures: Figures) -> list[str]:
    peaks = [r.rss_mb for r in figures.good("cold", POSTROOM, BIG)]
    peak = max(peaks, default=None)
    figure = (f"{peak:.1f} MB (largest of the cold builds)" if peak is not None
              else f"– (needs {BIG:,} posts)")
    return [f"peak RSS of a cold build of {BIG:,} posts ≤ {MEMORY_TARGET_MB:.0f} MB", figure,
            _verdict(peak, lambda v: v <= MEMORY_TARGET_MB)]


def cold_table(figures: Figures) -> list[str]:
    header = ["posts", "tool", "wall s median (min)", "CPU s median", "peak RSS MB (max)",
              "× Hugo (median wall)", "× Hugo (best wall)", "main feed KB", "other cores busy",
              "runs ok"]
    rows = []
    for size in figures.sizes("cold"):
        hugo = figures.good("cold", HUGO, size)
        for tool in (POSTROOM, HUGO, PELICAN):
            runs = figures.commands_of("cold", tool, size)
            if not runs:
                continue
            good = [r for r in runs if r.ok]
            walls = [r.wall for r in good]
            rows.append([
                f"{size:,}", tool, f"{_fmt(_med(walls), '.3f')} ({_fmt(_min(walls), '.3f')})",
                _fmt(_med(r.cpu for r in good), ".3f"),
                _fmt(max((r.rss_mb for r in good), default=None), ".1f"),
                _fmt(_ratio(_med(walls), _med(r.wall for r in hugo)), ".2f"),
                _fmt(_ratio(_min(walls), _min(r.wall for r in hugo)), ".2f"),
                _fmt(_med(r.feed_bytes / 1024 for r in good), ",.0f"), _background_cell(runs),
                _runs_ok(runs)])
    return _table(header, rows)


def warm_table(figures: Figures) -> list[str]:
    header = ["posts", "command", "wall ms median (min)", "CPU ms median", "peak RSS MB (max)",
              "× floor (median)", "other cores busy", "runs ok"]
    rows = []
    for size in figures.sizes("warm"):
        floor = _med(r.wall for r in figures.good("warm", FLOOR, size))
        for tool, label in ((POSTROOM, "`postroom build`, nothing changed"),
                            (FLOOR, "stat-only floor (`python bench/feeds_statwalk.py`)")):
            runs = figures.commands_of("warm", tool, size)
            good = [r for r in runs if r.ok]
            walls = [r.wall for r in good]
            rows.append([f"{size:,}", label,
                         f"{_ms(_med(walls))} ({_ms(_min(walls))})",
                         _ms(_med(r.cpu for r in good)),
                         _fmt(max((r.rss_mb for r in good), default=None), ".1f"),
                         _fmt(_ratio(_med(walls), floor), ".2f"), _background_cell(runs),
                         _runs_ok(runs)])
    return _table(header, rows)


def rescan_table(figures: Figures) -> list[str]:
    header = ["posts", "per-tag feeds", "warm-up build s (median)", "rebuild ms median (min)",
              "stat floor ms median (min)", "× floor (median)", "files written by rebuilds",
              "process peak RSS MB", "other cores busy", "runs ok"]
    rows = []
    for size in sorted({r.size for r in figures.rescans}):
        for per_tag in (False, True):
            runs = figures.rescans_of(size, per_tag)
            if not runs:
                continue
            good = [r for r in runs if r.ok]
            rebuilds = figures.rescan_samples(size, per_tag, "rebuilds")
            floors = figures.rescan_samples(size, per_tag, "floors")
            written = sorted({n for r in good for n in r.rebuild_written})
            rows.append([f"{size:,}", _on(per_tag), _fmt(_med(r.first_build for r in good), ".2f"),
                         f"{_ms(_med(rebuilds))} ({_ms(_min(rebuilds))})",
                         f"{_ms(_med(floors))} ({_ms(_min(floors))})",
                         _fmt(_ratio(_med(rebuilds), _med(floors)), ".1f"),
                         ", ".join(written) or "none",
                         _fmt(max((r.maxrss_kb / 1024 for r in good), default=None), ".1f"),
                         _background_cell(runs), _runs_ok(runs)])
    return _table(header, rows)


def edit_table(figures: Figures) -> list[str]:
    header = ["posts", "per-tag feeds", "edited post", "rebuild ms median (min, max)",
              "files written (most often)", "runs ok"]
    rows = []
    for size in sorted({r.size for r in figures.rescans}):
        for per_tag in (False, True):
            runs = figures.rescans_of(size, per_tag)
            if not runs:
                continue
            for case, label in CASES.items():
                samples = figures.edit_samples(size, per_tag, case)
                written = [", ".join(w) or "none" for r in runs if r.ok
                           for w in r.edit_written.get(case, [])]
                common = max(set(written), key=written.count) if written else "–"
                rows.append([f"{size:,}", _on(per_tag), label,
                             f"{_ms(_med(samples))} ({_ms(_min(samples))}, "
                             f"{_ms(max(samples, default=None))})",
                             _shorten(common), _runs_ok(runs)])
    return _table(header, rows)


def _shorten(names: str, most: int = 6) -> str:
    parts = names.split(", ")
    if len(parts) <= most:
        return names
    return ", ".join(parts[:most]) + f" … ({len(parts)} files)"


def serve_table(figures: Figures) -> list[str]:
    header = ["request", "postroom req/s median (min)", "nginx req/s median (min)",
              "× nginx (median)", "p99 ms postroom / nginx (median)",
              "server CPU µs/request postroom / nginx", "bytes/response postroom / nginx",
              "other cores busy", "runs ok postroom / nginx"]
    rows = []
    for scenario in dict.fromkeys(r.scenario for r in figures.served):
        per = {s: [r for r in figures.served if r.server == s and r.scenario == scenario]
               for s in (POSTROOM, NGINX)}
        good = {s: [r for r in runs if r.ok] for s, runs in per.items()}

        def pair(what: str, spec: str, good: dict[str, list[Served]] = good) -> str:
            return " / ".join(_fmt(_med(getattr(r, what) for r in good[s]), spec)
                              for s in (POSTROOM, NGINX))

        rows.append([
            f"GET /feed.atom, {scenario}",
            *(f"{_fmt(_med(figures.rates(s, scenario)))} ({_fmt(_min(figures.rates(s, scenario)))})"
              for s in (POSTROOM, NGINX)),
            _fmt(figures.serve_ratio(scenario), ".3f"), pair("p99_ms", ".1f"),
            pair("cpu_us_per_request", ",.0f"), pair("bytes_per_response", ",.0f"),
            _background_cell([*per[POSTROOM], *per[NGINX]]),
            f"{_runs_ok(per[POSTROOM])} / {_runs_ok(per[NGINX])}"])
    return _table(header, rows)


def failures(figures: Figures) -> list[str]:
    lines = [f"- {r.phase} {r.tool}, {r.size:,} posts, repeat {r.repeat}: {r.note}"
             for r in figures.commands if not r.ok]
    lines += [f"- rescan, {r.size:,} posts, per-tag {_on(r.per_tag)}, repeat {r.repeat}: "
              f"{r.note}" for r in figures.rescans if not r.ok]
    lines += [f"- serve {r.scenario}, {r.server}, repeat {r.repeat}: {r.note}"
              for r in figures.served if not r.ok]
    return lines


METHOD = """\
How it is measured. One synthetic corpus per size (bench/feeds_corpus.py: the same posts for
the three tools; a body of 2–4 KB of Markdown with headings, lists, code, links; 1–3 tags
from a pool of 20), in a temporary folder. Each tool writes its feeds of the newest 50 posts
with their full HTML and nothing else it can be told not to write: postroom Atom + RSS +
JSON (no per-tag feeds), Hugo one RSS feed (its own template with `.Content` instead of
`.Summary`; every other kind and output disabled, pages listed but not written), Pelican
Atom + RSS (FEED_ALL_*, every other page and feed off, no content cache). Hugo's and
Pelican's code highlighting is off: code blocks are plain `<pre><code>` in all three.

*Cold*: a fresh folder (hard links to the corpus's posts and config, so no cache and no
output of an earlier run), then `postroom build`, `hugo --quiet --ignoreCache` (a fresh
`--cacheDir`) or `pelican --ignore-cache`. The OS page cache is warm for all three. Each is
one subprocess: wall time from start to exit; CPU is user + sys of it and its children
(wait4); peak RSS is ru_maxrss, the largest single process, never below the "peak RSS
floor" above. Runs are interleaved: each repeat runs every tool, in an order rotated from
one repeat to the next. *Warm*: `postroom build` again on a built folder with nothing
changed, alternating with the stat-only floor, a Python script (same interpreter) that
walks the posts folder with os.scandir and stats every file.

*Rescan* and *edit* run in one child process per repeat and per-tag setting
(bench/feeds_inprocess.py), as the daemon does: one `SiteBuilder.long_running(settings)`, a first
`build(now)`, then rebuilds with nothing changed, each followed by the same stat walk
in-process; then edits of one post's body (a line appended, a new mtime) each followed by
one timed rebuild, for a post in the main feed and for the oldest post. Figures pool the
samples of every repeat.

*Serve*: `postroom serve` and nginx (a generated config: `worker_processes auto`, `etag
on`, `gzip_static on` with a `.gz` made as postroom makes its own, access log off) serve
the same feed.atom of the largest build; `wrk -t2 -c50 --latency` against each in turn,
both servers up all along. A first request with the run's headers gives the ETag that the
conditional runs send in `If-None-Match` and checks the status; wrk's own totals then give
requests, bytes per response (a 304 run with body-sized responses fails) and errors
(socket errors and non-2xx/3xx). wrk and the server share the machine's cores. Server CPU
is user + sys of the server's process group over the run.

*Other cores busy*: the CPU time the rest of the machine used during a row's runs (from
/proc/stat, less the measured commands' own, and for wrk runs less wrk's and the server's),
divided by their wall time. In bold from 0.2 on: something else was running and the row's
wall times and rates are not to be trusted; its CPU times still are."""


def render(facts: Sequence[tuple[str, str]], figures: Figures, status: str) -> str:
    lines = ["# Feeds and serving benchmark", "",
             f"Written by `bench/feeds.py` ({status}).", ""]
    lines += [f"- **{key}**: {value}" for key, value in facts]
    lines += ["", "## Targets", "", *targets_table(figures)]
    if any(r.phase == "cold" for r in figures.commands):
        lines += ["", "## Cold build: postroom against Hugo and Pelican", "",
                  *cold_table(figures)]
    if any(r.phase == "warm" for r in figures.commands):
        lines += ["", "## Warm CLI build (nothing changed) against the stat-only floor", "",
                  *warm_table(figures)]
    if figures.rescans:
        lines += ["", "## In-daemon rescan (nothing changed), in-process", "",
                  *rescan_table(figures),
                  "", "## One post edited → feeds rebuilt, in-process", "",
                  *edit_table(figures)]
    if figures.served:
        lines += ["", "## Serving /feed.atom: `postroom serve` against nginx", "",
                  *serve_table(figures)]
    bad = failures(figures)
    if bad:
        lines += ["", "## Failed runs", "", *bad]
    lines += ["", "## Method", "", METHOD, ""]
    return "\n".join(lines)

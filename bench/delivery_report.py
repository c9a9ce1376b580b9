"""The tables of bench/delivery.py: runs in, Markdown out (bench/RESULTS.md and stdout)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

REFERENCE, POSTROOM, IMPORT = "smtp-source", "postroom", "import"

# Issue 7's targets, stated next to the figures.
RATIO_TARGET = 0.4  # postroom's sending rate / smtp-source's, at concurrency 8
RATIO_CONCURRENCY = 8
CPU_TARGET_MS = 0.2  # CPU per message
RSS_TARGET_MB = 100.0  # peak RSS of digest send to 1,000,000, and of importing 1,000,000
BIG = 1_000_000
IMPORT_TARGET_S = 90.0
LAG_TARGET_MS = 50.0


@dataclass
class Run:
    """One measured run of one command."""

    kind: str  # REFERENCE, POSTROOM or IMPORT
    count: int  # messages sent, or rows imported
    concurrency: int  # 0 for IMPORT
    repeat: int
    wall: float
    cpu: float
    maxrss_kb: int
    ok: bool
    note: str = ""
    lag_p99_ms: float | None = None
    send_seconds: float | None = None  # postroom's own figure for the sending alone
    processes: int | None = None

    @property
    def rate(self) -> float:
        return self.count / self.wall if self.wall > 0 else 0.0

    @property
    def cpu_ms(self) -> float:
        return 1000.0 * self.cpu / self.count

    @property
    def rss_mb(self) -> float:
        return self.maxrss_kb / 1024.0


def progress_line(run: Run, repeats: int) -> str:
    """What a human watching the benchmark sees after each run."""
    what = (f"import {run.count:>9,} rows" if run.kind == IMPORT
            else f"N={run.count:>9,} C={run.concurrency:<2} {run.kind:<11}")
    unit = "rows/s" if run.kind == IMPORT else "msg/s"
    extra = ""
    if run.lag_p99_ms is not None:
        extra += f", loop lag p99 {run.lag_p99_ms:.1f} ms"
    if run.send_seconds is not None:
        extra += f", sending {run.send_seconds:.1f} s"
    if run.processes is not None:
        extra += f", {run.processes} process(es)"
    status = "ok" if run.ok else f"FAILED ({run.note})"
    return (f"[{run.repeat}/{repeats}] {what} {run.rate:>9,.0f} {unit}, wall {run.wall:7.2f} s, "
            f"cpu {run.cpu_ms:.3f} ms/{'row' if run.kind == IMPORT else 'msg'}, "
            f"peak rss {run.rss_mb:6.1f} MB{extra}  {status}")


def _select(runs: Iterable[Run], kind: str, count: int, concurrency: int = 0) -> list[Run]:
    return [r for r in runs if r.kind == kind and r.count == count
            and r.concurrency == concurrency]


def _good(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if r.ok]


def _med(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "–" if value is None else format(value, spec)


def _runs_ok(runs: Sequence[Run]) -> str:
    good = len(_good(runs))
    return f"{good}/{len(runs)}" + ("" if good == len(runs) else " **FAILED**")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


@dataclass
class Pair:
    """postroom and smtp-source at one (N, C): the figures of the delivery table."""

    count: int
    concurrency: int
    postroom: list[Run]
    reference: list[Run]

    def rates(self, runs: Sequence[Run]) -> list[float]:
        return [r.rate for r in _good(runs)]

    def ratio_median(self) -> float | None:
        mine, theirs = _med(self.rates(self.postroom)), _med(self.rates(self.reference))
        return mine / theirs if mine and theirs else None

    def ratio_best(self) -> float | None:
        mine, theirs = self.rates(self.postroom), self.rates(self.reference)
        return max(mine) / max(theirs) if mine and theirs else None

    def cpu_ms(self, runs: Sequence[Run]) -> float | None:
        return _med([r.cpu_ms for r in _good(runs)])

    def peak_rss_mb(self) -> float | None:
        sizes = [r.rss_mb for r in _good(self.postroom)]
        return max(sizes) if sizes else None

    def send_only_rate(self) -> float | None:
        """N / postroom's own `seconds` (--json): the sending alone, without start-up."""
        return _med([self.count / r.send_seconds for r in _good(self.postroom)
                     if r.send_seconds])

    def processes(self) -> str:
        seen = sorted({r.processes for r in self.postroom if r.processes is not None})
        return ", ".join(map(str, seen)) or "–"

    def lag_ms(self) -> float | None:
        lags = [r.lag_p99_ms for r in _good(self.postroom) if r.lag_p99_ms is not None]
        return max(lags) if lags else None


def pairs(runs: Sequence[Run]) -> list[Pair]:
    keys = sorted({(r.count, r.concurrency) for r in runs if r.kind != IMPORT})
    return [Pair(n, c, _select(runs, POSTROOM, n, c), _select(runs, REFERENCE, n, c))
            for n, c in keys]


def delivery_table(runs: Sequence[Run]) -> list[str]:
    header = ["N", "C", "postroom msg/s median (min)", "smtp-source msg/s median (min)",
              "ratio median", "ratio best", "postroom CPU ms/msg", "smtp-source CPU ms/msg",
              "postroom peak RSS MB", "loop lag p99 ms (max)", "postroom send-only msg/s",
              "postroom processes", "runs ok (postroom / source)"]

    def rates(pair: Pair, runs: Sequence[Run]) -> str:
        values = pair.rates(runs)
        return f"{_fmt(_med(values))} ({_fmt(min(values) if values else None)})"

    rows = [[f"{p.count:,}", str(p.concurrency), rates(p, p.postroom), rates(p, p.reference),
             _fmt(p.ratio_median(), ".3f"), _fmt(p.ratio_best(), ".3f"),
             _fmt(p.cpu_ms(p.postroom), ".3f"), _fmt(p.cpu_ms(p.reference), ".3f"),
             _fmt(p.peak_rss_mb(), ".1f"), _fmt(p.lag_ms(), ".1f"), _fmt(p.send_only_rate()),
             p.processes(), f"{_runs_ok(p.postroom)} / {_runs_ok(p.reference)}"]
            for p in pairs(runs)]
    return _table(header, rows)


def import_table(runs: Sequence[Run]) -> list[str]:
    header = ["rows", "rows/s median (min)", "wall s median (max)", "CPU ms/row", "peak RSS MB",
              "runs ok"]
    rows = []
    for count in sorted({r.count for r in runs if r.kind == IMPORT}):
        mine = _select(runs, IMPORT, count)
        good = _good(mine)
        rates, walls = [r.rate for r in good], [r.wall for r in good]
        rows.append([
            f"{count:,}", f"{_fmt(_med(rates))} ({_fmt(min(rates) if rates else None)})",
            f"{_fmt(_med(walls), '.2f')} ({_fmt(max(walls) if walls else None, '.2f')})",
            _fmt(_med([r.cpu_ms for r in good]), ".3f"),
            _fmt(max((r.rss_mb for r in good), default=None), ".1f"), _runs_ok(mine)])
    return _table(header, rows)


def _verdict(value: float | None, passes: Callable[[float], bool]) -> str:
    if value is None:
        return "not measured"
    return "**met**" if passes(value) else "**not met**"


def _worst_share(*pairs: float | None) -> float | None:
    """max(figure / limit) over (figure, limit) pairs: ≤ 1 when every limit is kept."""
    figures, limits = pairs[0::2], pairs[1::2]
    if any(f is None for f in figures):
        return None
    return max(f / lim for f, lim in zip(figures, limits, strict=True)
               if f is not None and lim)


def targets_table(runs: Sequence[Run]) -> list[str]:
    all_pairs = pairs(runs)
    at_c = [p for p in all_pairs if p.concurrency == RATIO_CONCURRENCY]
    ratios = [(p.count, p.ratio_median()) for p in at_c]
    known_ratios = [r for _, r in ratios if r is not None]
    worst_ratio = min(known_ratios) if known_ratios else None
    cpus = [(p.cpu_ms(p.postroom), p) for p in all_pairs]
    known_cpus = [(c, p) for c, p in cpus if c is not None]
    worst_cpu = max(known_cpus, key=lambda item: item[0]) if known_cpus else None
    big = [p.peak_rss_mb() for p in all_pairs if p.count == BIG]
    big_rss = max((r for r in big if r is not None), default=None)
    big_import = _good(_select(runs, IMPORT, BIG))
    import_wall = _med([r.wall for r in big_import])
    import_rss = max((r.rss_mb for r in big_import), default=None)
    lags = [p.lag_ms() for p in all_pairs]
    lag = max((x for x in lags if x is not None), default=None)
    rows = [
        [f"sending rate ≥ {RATIO_TARGET} × smtp-source at C={RATIO_CONCURRENCY} (median ratio)",
         ", ".join(f"N={n:,}: {_fmt(r, '.3f')}" for n, r in ratios) or "–",
         _verdict(worst_ratio, lambda v: v >= RATIO_TARGET)],
        [f"CPU ≤ {CPU_TARGET_MS} ms/message (postroom, worst median over N and C)",
         (f"{worst_cpu[0]:.3f} (N={worst_cpu[1].count:,}, C={worst_cpu[1].concurrency})"
          if worst_cpu else "–"),
         _verdict(worst_cpu[0] if worst_cpu else None, lambda v: v <= CPU_TARGET_MS)],
        [f"peak RSS of digest send to {BIG:,} ≤ {RSS_TARGET_MB:.0f} MB",
         _fmt(big_rss, ".1f") + (" MB" if big_rss is not None else " (needs --full)"),
         _verdict(big_rss, lambda v: v <= RSS_TARGET_MB)],
        [f"import of {BIG:,} rows ≤ {IMPORT_TARGET_S:.0f} s and ≤ {RSS_TARGET_MB:.0f} MB",
         (f"{import_wall:.1f} s, {import_rss:.1f} MB" if import_wall is not None
          and import_rss is not None else "– (needs --full)"),
         _verdict(_worst_share(import_wall, IMPORT_TARGET_S, import_rss, RSS_TARGET_MB),
                  lambda v: v <= 1.0)],
        [f"event loop lag p99 ≤ {LAG_TARGET_MS:.0f} ms (worst run)",
         _fmt(lag, ".1f") + (" ms" if lag is not None else " (not reported by postroom)"),
         _verdict(lag, lambda v: v <= LAG_TARGET_MS)],
    ]
    return _table(["target (issue 7)", "figure", "verdict"], rows)


def failures(runs: Sequence[Run]) -> list[str]:
    bad = [r for r in runs if not r.ok]
    return [f"- {r.kind} N={r.count:,} C={r.concurrency} repeat {r.repeat}: {r.note}"
            for r in bad]


METHOD = """\
How it is measured: every command is one subprocess in its own process group, with a
timeout. Wall time is from start to exit. CPU is user + sys of the command and every
descendant it waited for (wait4(2), the RUSAGE_CHILDREN delta of the run). Peak RSS is
ru_maxrss of the same: the **largest single process** of the tree, not a sum over
processes, and never below the "peak RSS floor" above. msg/s = N / wall for both commands;
postroom's wall time includes starting Python, creating the digest and its N deliveries,
and sending (its "send-only" rate uses the seconds of its own `--json` report). A run
counts only if it exits 0, reports N sent (postroom) and smtp-sink counted exactly N
messages; anything else is FAILED and left out of the figures. Runs are interleaved: each
repeat goes over every N and C, alternating which of the two commands goes first. smtp-
source sends the same bytes as postroom (`-F` with the preview message) but speaks HELO,
one command at a time, without PIPELINING; smtp-sink announces PIPELINING and 8BITMIME to
both."""


def render(facts: Sequence[tuple[str, str]], runs: Sequence[Run], status: str) -> str:
    lines = ["# Delivery benchmark", "", f"Written by `bench/delivery.py` ({status}).", ""]
    lines += [f"- **{key}**: {value}" for key, value in facts]
    lines += ["", "## Targets", "", *targets_table(runs)]
    lines += ["", "## Digest send: postroom against smtp-source", "", *delivery_table(runs)]
    if any(r.kind == IMPORT for r in runs):
        lines += ["", "## Subscriber import (`postroom subscribers import`)", "",
                  *import_table(runs)]
    bad = failures(runs)
    if bad:
        lines += ["", "## Failed runs", "", *bad]
    lines += ["", "## Method", "", METHOD, ""]
    return "\n".join(lines)

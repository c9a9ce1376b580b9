"""The feed and serving benchmark (issue 9): postroom's builds against Hugo and Pelican on
one synthetic corpus, its rescans against a stat-only floor, and `postroom serve` against
nginx serving the same feed file.

    .venv/bin/python bench/feeds.py [--quick] [--repeats 3] [--pelican-repeats 1]
                                    [--wait-idle 120]
    make bench-feeds

For 1,000 and 10,000 posts, repeated and interleaved: a cold build by postroom, Hugo and
Pelican; a warm `postroom build` (nothing changed) against a script that only stats the
posts. At 10,000: the daemon's rescan with nothing changed and its rebuild after one post
is edited, in-process, with and without per-tag feeds. Then wrk against `postroom serve` and
nginx: plain GETs (200s) and GETs with If-None-Match (304s), with and without gzip.
--quick: 1,000 posts only, one repeat, 3-second wrk runs (a smoke run of under a minute).

Needs hugo, nginx and wrk (Debian packages hugo, nginx-light, wrk; installed when missing
and running as root) and Pelican (pip-installed into bench/.cache/pelican-venv). Writes its
section of bench/RESULTS.md (the other benchmarks' sections stay as they are) and prints it.
Each row says how busy the rest of the machine was meanwhile ("other cores busy"); on a
shared machine, --wait-idle waits for a quiet moment before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from delivery_setup import BenchError, Measured, measure, rss_floor_kb
from facts import busy_cpu_seconds, machine, postroom_command, postroom_version
from feeds_corpus import FEED_ENTRIES, Corpus, fresh_copy, write_corpus
from feeds_report import (
    BUSY_CORES,
    FLOOR,
    HUGO,
    MIN_JUDGED_S,
    NGINX,
    PELICAN,
    POSTROOM,
    Command,
    Figures,
    Rescan,
    Served,
    background,
    command_line,
    disturbed,
    render,
    rescan_line,
    served_line,
)
from feeds_serve import SCENARIOS, NginxServer, PostroomServer, Server, run_wrk
from feeds_tools import ensure_debian_tools, ensure_pelican, version_of
from results_file import write_section

HERE = Path(__file__).resolve().parent
SIZES, QUICK_SIZES = (1_000, 10_000), (1_000,)
PHASES = ("cold", "warm", "rescan", "serve")
# Every command gets 2 minutes plus 30 ms per post: Pelican takes about 8 ms per post.
BASE_TIMEOUT, TIMEOUT_PER_POST = 120.0, 0.03


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="1,000 posts only, one repeat, 3-second wrk runs")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 3)")
    parser.add_argument("--pelican-repeats", type=int, default=None, metavar="R",
                        help="cold Pelican builds per size (default: --repeats; 0: none; "
                             "one of 10,000 posts takes over a minute)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, metavar="N",
                        help="post counts of the cold and warm builds (default 1000 10000); "
                             "the rescan, edit and serve phases use the largest")
    parser.add_argument("--only", nargs="+", choices=PHASES, default=list(PHASES),
                        help="run only these phases (default: all)")
    parser.add_argument("--rebuilds", type=int, default=None,
                        help="rescans per in-process run (default 20; --quick 10)")
    parser.add_argument("--edits", type=int, default=None,
                        help="edits per post per in-process run (default 5; --quick 3)")
    parser.add_argument("--wrk-seconds", type=float, default=None,
                        help="length of each wrk run (default 10; --quick 3)")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--wrk-connections", type=int, default=50)
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each measured run, wait up to SECONDS for the rest of "
                             f"the machine to keep fewer than {BUSY_CORES} cores busy (for a "
                             "shared machine; default 0: do not wait)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the corpora and sites go (default: a temporary folder, "
                             "removed at the end)")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md",
                        help="the file whose feeds section gets the tables "
                             "(default bench/RESULTS.md)")
    args = parser.parse_args(argv)
    args.sizes = sorted(set(args.sizes or (QUICK_SIZES if args.quick else SIZES)))
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.pelican_repeats is None:
        args.pelican_repeats = args.repeats
    args.rebuilds = args.rebuilds or (10 if args.quick else 20)
    args.edits = args.edits or (3 if args.quick else 5)
    args.wrk_seconds = args.wrk_seconds or (3.0 if args.quick else 10.0)
    return args


def timeout_for(posts: int) -> float:
    return BASE_TIMEOUT + TIMEOUT_PER_POST * posts


def command_env() -> dict[str, str]:
    """This environment minus POSTROOM* variables: the site's config alone decides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM")}


def measure_beside(argv: list[str], env: dict[str, str], timeout: float, cwd: Path,
                   wait_idle: float) -> tuple[Measured, float]:
    """`measure` (after up to `wait_idle` seconds of waiting for an idle machine), and the
    CPU seconds the rest of the machine used during the run."""
    wait_for_idle(wait_idle)
    before = busy_cpu_seconds()
    done = measure(argv, env, timeout, cwd=cwd)
    return done, max(0.0, busy_cpu_seconds() - before - done.cpu)


def wait_for_idle(limit: float, probe: float = 0.5) -> None:
    """Wait up to `limit` seconds until the machine keeps fewer than BUSY_CORES cores busy."""
    if limit <= 0:
        return
    started = time.monotonic()
    while True:
        before = busy_cpu_seconds()
        time.sleep(probe)
        cores = (busy_cpu_seconds() - before) / probe
        waited = time.monotonic() - started
        if cores < BUSY_CORES or waited >= limit:
            if waited > 2 * probe:
                print(f"  (waited {waited:.0f} s for an idle machine: {cores:.2f} cores busy)",
                      flush=True)
            return


def problems_of(done: Measured) -> list[str]:
    if done.timed_out:
        return [f"killed after {done.wall:.0f} s"]
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
        return [f"exit {done.returncode}: {tail[0][:200]}"]
    return []


def count_in(path: Path, marker: bytes) -> tuple[int, int]:
    """How often `marker` occurs in the file, and its size; (0, 0) if it is missing."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0, 0
    return data.count(marker), len(data)


class Bench:
    """One benchmark session: the corpora, the tools, and every run so far."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.postroom = postroom_command()
        self.tools: dict[str, str] = {}
        self.pelican: str | None = None
        self.corpora: dict[int, Corpus] = {}
        self.figures = Figures()
        self.rss_floor_kb = 0
        self.env = command_env()

    # --- set-up ---------------------------------------------------------------------------

    def prepare(self) -> None:
        args = self.args
        needed = []
        if "cold" in args.only:
            needed.append("hugo")
        if "serve" in args.only:
            needed += ["nginx-light", "wrk"]
        self.tools = ensure_debian_tools(needed)
        if "cold" in args.only and args.pelican_repeats > 0:
            self.pelican = ensure_pelican()
        for size in args.sizes:
            print(f"writing a corpus of {size:,} posts for postroom, Hugo and Pelican...",
                  flush=True)
            self.corpora[size] = write_corpus(self.workdir / f"corpus-{size}", size)
        self.rss_floor_kb = rss_floor_kb()

    # --- the measured commands ------------------------------------------------------------

    def cold(self, tool: str, size: int, repeat: int) -> Command:
        corpus = self.corpora[size]
        if tool == POSTROOM:
            site = fresh_copy(corpus.postroom, self.workdir / "cold" / tool)
            argv = [*self.postroom, "--config", str(site / "postroom.toml"), "build"]
            feed, marker = site / "public" / "feed.atom", b"<entry>"
        elif tool == HUGO:
            site = fresh_copy(corpus.hugo, self.workdir / "cold" / tool)
            argv = [self.tools["hugo"], "--quiet", "--source", str(site), "--destination",
                    str(site / "public"), "--cacheDir", str(site / ".hugo-cache"),
                    "--ignoreCache"]
            feed, marker = site / "public" / "index.xml", b"<item>"
        else:
            site = fresh_copy(corpus.pelican, self.workdir / "cold" / tool)
            assert self.pelican is not None
            argv = [self.pelican, str(site / "content"), "--output", str(site / "output"),
                    "--settings", str(site / "pelicanconf.py"), "--ignore-cache", "--quiet"]
            feed, marker = site / "output" / "feeds" / "all.atom.xml", b"<entry>"
        done, other = measure_beside(argv, self.env, timeout_for(size), site,
                                     self.args.wait_idle)
        problems = problems_of(done)
        entries, size_bytes = count_in(feed, marker)
        if not problems and entries != FEED_ENTRIES:
            problems.append(f"{feed.name} has {entries} entries, not {FEED_ENTRIES}")
        if tool == PELICAN and not problems:
            items, _ = count_in(site / "output" / "feeds" / "all.rss.xml", b"<item>")
            if items != FEED_ENTRIES:
                problems.append(f"all.rss.xml has {items} items, not {FEED_ENTRIES}")
        return Command("cold", tool, size, repeat, done.wall, done.cpu, done.maxrss_kb,
                       ok=not problems, note="; ".join(problems), feed_bytes=size_bytes,
                       other_cpu=other)

    def warm_site(self, size: int) -> Path:
        """A built postroom site of `size` posts (the warm builds and the servers use it)."""
        site = self.workdir / f"warm-{size}"
        if not (site / "public" / "feed.atom").exists():
            fresh_copy(self.corpora[size].postroom, site)
            done = measure([*self.postroom, "--config", str(site / "postroom.toml"), "build"],
                           self.env, timeout_for(size), cwd=site)
            if problems_of(done):
                raise BenchError(f"postroom build of {site} failed: {problems_of(done)[0]}")
        return site

    def warm(self, tool: str, size: int, repeat: int) -> Command:
        site = self.warm_site(size)
        if tool == POSTROOM:
            argv = [*self.postroom, "--config", str(site / "postroom.toml"), "build"]
        else:
            argv = [sys.executable, str(HERE / "feeds_statwalk.py"), str(site / "posts")]
        feed = site / "public" / "feed.atom"
        before = feed.stat().st_mtime_ns
        done, other = measure_beside(argv, self.env, timeout_for(size), site,
                                     self.args.wait_idle)
        problems = problems_of(done)
        if feed.stat().st_mtime_ns != before:  # postroom writes a file only if it changed
            problems.append("feed.atom was written again with nothing changed")
        return Command("warm", tool, size, repeat, done.wall, done.cpu, done.maxrss_kb,
                       ok=not problems, note="; ".join(problems), other_cpu=other)

    def rescan(self, size: int, per_tag: bool, repeat: int) -> Rescan:
        corpus = self.corpora[size]
        site = self.workdir / f"rescan-{size}"
        if not site.exists():  # a real copy: the edits write into its posts
            shutil.copytree(corpus.postroom, site)
        argv = [sys.executable, str(HERE / "feeds_inprocess.py"), "--config",
                str(site / "postroom.toml"), "--edit-main", corpus.in_main_feed,
                "--edit-old", corpus.in_no_feed, "--rebuilds", str(self.args.rebuilds),
                "--edits", str(self.args.edits)] + (["--per-tag"] if per_tag else [])
        done, other = measure_beside(argv, self.env, timeout_for(size) * 4, site,
                                     self.args.wait_idle)
        run = Rescan(size, per_tag, repeat, ok=False, maxrss_kb=done.maxrss_kb,
                     wall=done.wall, other_cpu=other)
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            run.note = "; ".join(problems_of(done)) or "no JSON from feeds_inprocess.py"
            return run
        if "error" in result:
            print(result.get("traceback", ""), file=sys.stderr, flush=True)
            run.note = result["error"][:300]
            return run
        run.first_build, run.feeds = result["first_build_s"], result["feeds"]
        run.rebuilds, run.floors = result["rebuild_s"], result["floor_s"]
        run.rebuild_written = result["rebuild_written"]
        run.edits = {case: e["seconds"] for case, e in result["edits"].items()}
        run.edit_written = {case: e["written"] for case, e in result["edits"].items()}
        problems = problems_of(done)
        if run.rebuild_written:
            problems.append(f"rebuilds with nothing changed wrote {run.rebuild_written}")
        if any("feed.atom" not in written for written in run.edit_written.get("main", [])):
            problems.append("an edit of a post in the main feed did not rewrite feed.atom")
        run.ok, run.note = not problems, "; ".join(problems)
        return run

    # --- the session ----------------------------------------------------------------------

    def run(self) -> None:
        args = self.args
        if "cold" in args.only:
            for repeat in range(1, args.repeats + 1):
                for size in args.sizes:
                    for tool in self._cold_order(repeat):
                        self._record(self.cold(tool, size, repeat))
                self.write(f"after cold builds, repeat {repeat} of {args.repeats}")
        if "warm" in args.only:
            for size in args.sizes:
                self.warm_site(size)
                pairs = 3 * args.repeats
                for repeat in range(1, pairs + 1):
                    order = [POSTROOM, FLOOR] if repeat % 2 else [FLOOR, POSTROOM]
                    for tool in order:
                        self._record(self.warm(tool, size, repeat), pairs)
            self.write("after warm builds")
        largest = max(args.sizes)
        if "rescan" in args.only:
            for repeat in range(1, args.repeats + 1):
                for per_tag in ((False, True) if repeat % 2 else (True, False)):
                    run = self.rescan(largest, per_tag, repeat)
                    self.figures.rescans.append(run)
                    print(rescan_line(run, args.repeats), flush=True)
            self.write("after rescans and edits")
        if "serve" in args.only:
            self.serve(self.warm_site(largest))
        self.rss_floor_kb = max(self.rss_floor_kb, rss_floor_kb())

    def _cold_order(self, repeat: int) -> list[str]:
        tools = [POSTROOM, HUGO] + ([PELICAN] if repeat <= self.args.pelican_repeats else [])
        shift = (repeat - 1) % len(tools)  # no tool always goes first
        return tools[shift:] + tools[:shift]

    def serve(self, site: Path) -> None:
        args = self.args
        print(f"starting postroom serve and nginx on {site / 'public' / 'feed.atom'}...",
              flush=True)
        servers: list[Server] = []
        try:
            servers.append(PostroomServer(self.postroom, site / "postroom.toml", self.workdir,
                                          self.env))
            servers.append(NginxServer(self.tools["nginx-light"],
                                       site / "public" / "feed.atom", self.workdir))
            for server in servers:
                server.wait_until_serving()
            for repeat in range(1, args.repeats + 1):
                for scenario in SCENARIOS:
                    order = servers if repeat % 2 else servers[::-1]
                    for server in order:
                        wait_for_idle(args.wait_idle)
                        load = run_wrk(self.tools["wrk"], server, scenario, self.workdir,
                                       args.wrk_seconds, args.wrk_threads,
                                       args.wrk_connections)
                        run = Served(POSTROOM if isinstance(server, PostroomServer)
                                     else NGINX, scenario.label, repeat, load.rate,
                                     load.p99_ms, load.bytes_per_response,
                                     load.cpu_us_per_request, ok=not load.problems,
                                     note="; ".join(load.problems), wall=load.seconds,
                                     other_cpu=load.other_cpu)
                        self.figures.served.append(run)
                        print(served_line(run, args.repeats), flush=True)
                self.write(f"after serving, repeat {repeat} of {args.repeats}")
        finally:
            for server in servers:
                server.stop()

    def _record(self, run: Command, repeats: int | None = None) -> None:
        self.figures.commands.append(run)
        print(command_line(run, repeats or self.args.repeats), flush=True)

    def write(self, status: str) -> str:
        text = render(self.facts(), self.figures, status)
        write_section(self.args.output, "feeds", text)
        return text

    def facts(self) -> list[tuple[str, str]]:
        args = self.args
        tools = self.tools
        versions = [
            ("hugo", version_of([tools["hugo"], "version"]) if "hugo" in tools else None),
            ("pelican", version_of([self.pelican, "--version"]) if self.pelican else None),
            ("nginx", version_of([tools["nginx-light"], "-v"]) if "nginx-light" in tools
             else None),
            ("wrk", version_of([tools["wrk"], "-v"]).split(" [")[0] if "wrk" in tools
             else None),
        ]
        corpus = [f"{size:,} posts, {c.bytes_of_posts() / size / 1024:.1f} KB per post file"
                  for size, c in self.corpora.items()]
        return [
            ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
            ("machine", machine()),
            ("system", f"{platform.system()} {platform.release()}"),
            ("python", platform.python_version()),
            ("postroom", postroom_version(self.postroom)),
            *((name, version) for name, version in versions if version),
            ("corpus", "; ".join(corpus) + f"; feeds of the newest {FEED_ENTRIES}"),
            ("runs", f"{args.repeats} repeat(s) per figure (Pelican: "
                     f"{min(args.pelican_repeats, args.repeats)}); warm builds: "
                     f"{3 * args.repeats} pairs; in-process: {args.rebuilds} rebuilds and "
                     f"{args.edits} edits per post per run; wrk -t{args.wrk_threads} "
                     f"-c{args.wrk_connections} -d{args.wrk_seconds:g}s"),
            ("other cores busy", self._background()),
            ("peak RSS floor", f"{self.rss_floor_kb / 1024:.1f} MB: a child's ru_maxrss "
                               "includes the peak RSS of the process that spawned it (this "
                               "script), so no figure below can be smaller; measured with "
                               "/bin/true"),
        ]


    def _background(self) -> str:
        figures = self.figures
        runs: list[Command | Rescan | Served] = [*figures.commands, *figures.rescans,
                                                 *figures.served]
        cores = background(runs)
        if cores is None:
            return "–"
        busy = [r for r in runs if disturbed(r)]
        judged = [r for r in runs if r.wall >= MIN_JUDGED_S]
        return (f"{cores:.2f} on average while the measured commands ran (CPU time of "
                f"everything else, /proc/stat); {len(busy)} of the {len(judged)} runs of "
                f"{MIN_JUDGED_S} s or more ran beside {BUSY_CORES} or more"
                + (" — **their wall times and rates are disturbed**" if busy else ""))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so a `kill` stops the servers and removes the work folder too


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="postroom-bench-feeds-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, workdir)
    try:
        bench.prepare()
        bench.run()
        text = bench.write("complete")
    except BenchError as err:
        print(f"bench/feeds.py: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench/feeds.py: interrupted; the runs so far are in "
              f"{args.output}", file=sys.stderr)
        return 130
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{text}\nwritten to {args.output}")
    figures = bench.figures
    ok = [run.ok for runs in (figures.commands, figures.rescans, figures.served) for run in runs]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())

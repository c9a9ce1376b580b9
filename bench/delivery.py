"""The delivery benchmark: `postroom digest send` against Postfix's smtp-source, both
sending to one smtp-sink on 127.0.0.1, and `postroom subscribers import` of a large CSV.

    .venv/bin/python bench/delivery.py [--quick] [--full] [--repeats 3] [--processes K]
    make bench-delivery

For each N (10,000 and 100,000; also 1,000,000 with --full) and each concurrency C (1, 8,
32), repeated and interleaved: smtp-source with C sessions sending N messages of the
digest's size, and `postroom digest send` to N active subscribers with
POSTROOM__SMTP__CONCURRENCY=C. Then an import of a 100,000-row CSV (1,000,000 with
--full). --quick: one repeat, N = 10,000, a 10,000-row import.

Needs smtp-sink and smtp-source (Debian package postfix, installed without configuration
if missing and running as root). Writes its section of bench/RESULTS.md (the other
benchmarks' sections stay as they are) and prints the same tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from delivery_report import IMPORT, POSTROOM, REFERENCE, Run, progress_line, render
from delivery_setup import (
    LOOPBACK,
    RECIPIENT,
    SENDER,
    SOURCE,
    BenchError,
    Measured,
    Sink,
    Site,
    count_subscribers,
    create_site,
    digest_message,
    ensure_postfix_tools,
    measure,
    postfix_version,
    rss_floor_kb,
    subscriber_db,
    write_csv,
)
from facts import machine, postroom_command, postroom_version
from results_file import write_section

HERE = Path(__file__).resolve().parent
SIZES, FULL_SIZES, QUICK_SIZES = (10_000, 100_000), (10_000, 100_000, 1_000_000), (10_000,)
CONCURRENCY = (1, 8, 32)
IMPORT_ROWS, FULL_IMPORT_ROWS, QUICK_IMPORT_ROWS = 100_000, 1_000_000, 10_000
# Every command gets 2 minutes plus 10 ms per message or row: slower than 100/s is a failure.
BASE_TIMEOUT, TIMEOUT_PER_ITEM = 120.0, 0.01


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true",
                        help="also N = 1,000,000 and a 1,000,000-row import (memory targets)")
    parser.add_argument("--quick", action="store_true",
                        help="one repeat, N = 10,000 only, a 10,000-row import")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, metavar="N",
                        help="subscriber counts to measure (overrides --quick/--full's)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY),
                        metavar="C", help="concurrencies to measure (default 1 8 32)")
    parser.add_argument("--processes", type=int, default=None, metavar="K",
                        help="pass POSTROOM__SMTP__PROCESSES=K to postroom (default: not set)")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md",
                        help="the file whose delivery section gets the tables "
                             "(default bench/RESULTS.md)")
    args = parser.parse_args(argv)
    if args.quick and args.full:
        parser.error("--quick and --full exclude each other")
    args.sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES if args.full
                                else SIZES)
    args.import_rows = (QUICK_IMPORT_ROWS if args.quick
                        else FULL_IMPORT_ROWS if args.full else IMPORT_ROWS)
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


def timeout_for(items: int) -> float:
    return BASE_TIMEOUT + TIMEOUT_PER_ITEM * items


class Bench:
    """One benchmark session: a site, a sink, the message, and every run so far."""

    def __init__(self, args: argparse.Namespace, workdir: Path, sink: Sink) -> None:
        self.args, self.workdir, self.sink = args, workdir, sink
        self.postroom = postroom_command()
        self.site: Site = create_site(workdir / "site", sink.port, self.postroom)
        self.message = digest_message(self.site, self.postroom)
        # smtp-source -F appends CRLF to every line it reads: give it the lines without it.
        self.message_file = workdir / "digest.txt"
        self.message_file.write_bytes(self.message.replace(b"\r\n", b"\n"))
        self.json_flag: bool | None = None  # does `digest send --json` exist? unknown yet
        self.rss_floor_kb = 0
        self.runs: list[Run] = []

    # --- the three commands -------------------------------------------------------------

    def reference(self, count: int, concurrency: int, repeat: int) -> Run:
        argv = [str(SOURCE), "-s", str(concurrency), "-m", str(count), "-d",
                "-F", str(self.message_file), "-f", SENDER, "-t", RECIPIENT,
                f"{LOOPBACK}:{self.sink.port}"]
        before = self.sink.checkpoint()
        done = measure(argv, os.environ, timeout_for(count))
        delivered = self.sink.checkpoint() - before
        problems = self._problems(done, count, delivered)
        return Run(REFERENCE, count, concurrency, repeat, done.wall, done.cpu, done.maxrss_kb,
                   ok=not problems, note="; ".join(problems))

    def postroom_send(self, count: int, concurrency: int, repeat: int) -> Run:
        extra = {"POSTROOM__SMTP__CONCURRENCY": str(concurrency)}
        if self.args.processes is not None:
            extra["POSTROOM__SMTP__PROCESSES"] = str(self.args.processes)
        before = self.sink.checkpoint()
        done = self._digest_send(subscriber_db(self.site, count), extra, count)
        delivered = self.sink.checkpoint() - before
        report = self._send_report(done)
        sent = report.get("sent")
        problems = self._problems(done, count, delivered)
        if sent != count:
            problems.append(f"postroom reported {sent} sent")
        return Run(POSTROOM, count, concurrency, repeat, done.wall, done.cpu, done.maxrss_kb,
                   ok=not problems, note="; ".join(problems),
                   lag_p99_ms=_number(report.get("loop_lag_p99_ms")),
                   send_seconds=_number(report.get("seconds")),
                   processes=_int(report.get("processes")))

    def import_csv(self, rows: int, repeat: int) -> Run:
        csv = write_csv(self.workdir / f"subscribers-{rows}.csv", rows)
        database = self._fresh_copy(self.site.schema_db, "import.db")
        argv = [*self.postroom, "--config", str(self.site.config), "subscribers", "import",
                str(csv)]
        done = measure(argv, self.site.env(database), timeout_for(rows))
        imported = count_subscribers(database)
        problems = self._problems(done, rows, imported, counted="rows in the database")
        return Run(IMPORT, rows, 0, repeat, done.wall, done.cpu, done.maxrss_kb,
                   ok=not problems, note="; ".join(problems))

    # --- helpers ------------------------------------------------------------------------

    def _digest_send(self, subscribers: Path, extra: dict[str, str], count: int) -> Measured:
        """`digest send` on a fresh copy of the database; with --json while it is accepted."""
        argv = [*self.postroom, "--config", str(self.site.config), "digest", "send"]
        env = self.site.env(self.workdir / "send.db", extra)
        if self.json_flag is not False:
            self._fresh_copy(subscribers, "send.db")
            done = measure([*argv, "--json"], env, timeout_for(count))
            if done.returncode != 2 or "no such option" not in done.stderr.lower():
                self.json_flag = True
                return done
            print("  (`digest send --json` is not supported: timing the wall clock only)",
                  flush=True)
            self.json_flag = False
        self._fresh_copy(subscribers, "send.db")
        return measure(argv, env, timeout_for(count))

    def _send_report(self, done: Measured) -> dict[str, Any]:
        """postroom's own figures: the --json line, else the "sent X, failed Y" summary."""
        lines = done.stdout.strip().splitlines()
        if self.json_flag and lines:
            try:
                report = json.loads(lines[-1])
            except ValueError:
                report = None
            if isinstance(report, dict):
                return report
        found = re.search(r"sent (\d+), failed (\d+)", done.stdout)
        return {"sent": int(found[1]), "failed": int(found[2])} if found else {}

    @staticmethod
    def _problems(done: Measured, count: int, delivered: int,
                  counted: str = "messages at smtp-sink") -> list[str]:
        problems = []
        if done.timed_out:
            problems.append(f"killed after {done.wall:.0f} s")
        elif done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or [""])[-1][:160]
            problems.append(f"exit {done.returncode}" + (f": {tail}" if tail else ""))
        if delivered != count:
            problems.append(f"{delivered:,} {counted}, not {count:,}")
        return problems

    def _fresh_copy(self, source: Path, name: str) -> Path:
        target = self.workdir / name
        for stale in (target, Path(f"{target}-wal"), Path(f"{target}-shm"),
                      Path(f"{target}-journal")):
            stale.unlink(missing_ok=True)
        shutil.copyfile(source, target)
        return target

    # --- the session --------------------------------------------------------------------

    def run(self) -> None:
        args = self.args
        print(f"digest message: {len(self.message):,} bytes; smtp-sink on "
              f"{LOOPBACK}:{self.sink.port} announces {', '.join(self.sink.extensions)}",
              flush=True)
        missing = {"PIPELINING", "8BITMIME"} - set(self.sink.extensions)
        if missing:
            print(f"warning: smtp-sink does not announce {', '.join(sorted(missing))}",
                  flush=True)
        self.rss_floor_kb = rss_floor_kb()
        for size in args.sizes:
            print(f"preparing a database of {size:,} subscribers...", flush=True)
            subscriber_db(self.site, size)
        for repeat in range(1, args.repeats + 1):
            for size in args.sizes:
                for concurrency in args.concurrency:
                    self._pair(size, concurrency, repeat)
            self._record(self.import_csv(args.import_rows, repeat))
            self.write(f"after repeat {repeat} of {args.repeats}")
        self.rss_floor_kb = max(self.rss_floor_kb, rss_floor_kb())

    def _pair(self, count: int, concurrency: int, repeat: int) -> None:
        order = [self.reference, self.postroom_send]
        if repeat % 2 == 0:
            order.reverse()  # neither command always goes first
        for command in order:
            self._record(command(count, concurrency, repeat))

    def _record(self, run: Run) -> None:
        self.runs.append(run)
        print(progress_line(run, self.args.repeats), flush=True)

    def write(self, status: str) -> str:
        text = render(self.facts(), self.runs, status)
        write_section(self.args.output, "delivery", text)  # the other sections stay
        return text

    def facts(self) -> list[tuple[str, str]]:
        return [
            ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
            ("machine", machine()),
            ("system", f"{platform.system()} {platform.release()}"),
            ("python", platform.python_version()),
            ("postfix (smtp-source, smtp-sink)", postfix_version()),
            ("postroom", postroom_version(self.postroom)),
            ("digest message", f"{len(self.message):,} bytes ({self._posts()} posts), "
                               "the same bytes for both senders"),
            ("runs", f"{self.args.repeats} repeat(s) per figure; N = "
                     f"{', '.join(f'{n:,}' for n in self.args.sizes)}; C = "
                     f"{', '.join(map(str, self.args.concurrency))}"
                     + (f"; POSTROOM__SMTP__PROCESSES={self.args.processes}"
                        if self.args.processes is not None else "")),
            ("peak RSS floor", f"{self.rss_floor_kb / 1024:.1f} MB: a child's ru_maxrss "
                               "includes the peak RSS of the process that spawned it (this "
                               "script), so no figure below can be smaller; measured with "
                               "/bin/true"),
            ("postroom's own report", "digest send --json" if self.json_flag
             else "no --json (wall time only)"),
        ]

    def _posts(self) -> int:
        return len(list((self.site.root / "posts").glob("*.md")))


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int) else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        ensure_postfix_tools()
        with tempfile.TemporaryDirectory(prefix="postroom-bench-") as workdir:
            sink = Sink(Path(workdir))
            try:
                bench = Bench(args, Path(workdir), sink)
                bench.run()
                text = bench.write("complete")
            finally:
                sink.stop()
    except BenchError as err:
        print(f"bench/delivery.py: {err}", file=sys.stderr)
        return 2
    print(f"\n{text}\nwritten to {args.output}")
    return 0 if all(run.ok for run in bench.runs) else 1


if __name__ == "__main__":
    sys.exit(main())

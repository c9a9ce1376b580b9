"""Every benchmark, one after the other: delivery (bench/delivery.py), then feeds and
serving (bench/feeds.py). Each writes its own section of bench/RESULTS.md.

    .venv/bin/python bench/run.py [--quick] [--only delivery feeds]
    make bench                      # BENCH_ARGS=--quick for a smoke run of a few minutes

--delivery-args and --feeds-args pass more options to one of them, e.g.
--feeds-args "--pelican-repeats 1". Exits with the worst exit code of the two.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {"delivery": HERE / "delivery.py", "feeds": HERE / "feeds.py"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's --quick")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--delivery-args", default="", help="more options for delivery.py")
    parser.add_argument("--feeds-args", default="", help="more options for feeds.py")
    args = parser.parse_args(argv)
    extra = {"delivery": shlex.split(args.delivery_args), "feeds": shlex.split(args.feeds_args)}
    worst = 0
    for name in args.only:
        command = [sys.executable, str(BENCHMARKS[name]), *(["--quick"] if args.quick else []),
                   *extra[name]]
        print(f"=== {name}: {shlex.join(command)}", flush=True)
        started = time.monotonic()
        code = subprocess.run(command).returncode
        print(f"=== {name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        worst = max(worst, code)
    return worst


if __name__ == "__main__":
    sys.exit(main())

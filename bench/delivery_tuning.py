"""How the sender's knobs were chosen: claim size K, flush size M, pipelining, processes.

    .venv/bin/python bench/delivery_tuning.py [--count 100000] [--repeats 3]

Each variant runs the real `postroom digest send --json` (N subscribers, concurrency 8, one
smtp-sink on loopback) in a child process that sets the knob before the command starts;
variants are interleaved and repeated, and bench/TUNING.md gets min and median send rates,
CPU per message and event-loop lag. The chosen values live in src/postroom/sender.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from delivery_setup import Sink, create_site, ensure_postfix_tools, measure, subscriber_db

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Variant:
    label: str
    claim: int = 256
    flush: int = 200
    pipelining: bool = True
    processes: int = 1


VARIANTS = (
    Variant("K=64", claim=64),
    Variant("K=256 (chosen), M=200 (chosen)"),
    Variant("K=500", claim=500),
    Variant("M=50", flush=50),
    Variant("M=1000", flush=1000),
    Variant("no pipelining", pipelining=False),
    Variant("2 processes", processes=2),
)


@dataclass
class Figures:
    rates: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)


def child(claim: int, flush: int, pipelining: bool, argv: list[str]) -> None:
    """Run the postroom CLI with the sender's knobs set (in this process only)."""
    from postroom import sender, transport
    from postroom.cli import main

    sender.FLUSH_EVERY = flush
    sender.Sender.claim_size = lambda self: claim  # type: ignore[method-assign]
    if not pipelining:
        original = transport._SmtpConnection.__init__

        def without(self: transport._SmtpConnection, *args: object) -> None:
            original(self, *args)  # type: ignore[arg-type]
            self.pipelining = False

        transport._SmtpConnection.__init__ = without  # type: ignore[method-assign]
    main(argv, prog_name="postroom")


def run(args: argparse.Namespace) -> str:
    ensure_postfix_tools()
    workdir = Path(tempfile.mkdtemp(prefix="postroom-tuning-"))
    sink = Sink(workdir)
    try:
        postroom = [str(Path(sys.executable).parent / "postroom")]
        site = create_site(workdir / "site", sink.port, postroom)
        subscribers = subscriber_db(site, args.count)
        figures = {v.label: Figures() for v in VARIANTS}
        for repeat in range(args.repeats):
            order = VARIANTS if repeat % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                database = workdir / "send.db"
                shutil.copyfile(subscribers, database)
                env = site.env(database, {"POSTROOM__SMTP__CONCURRENCY": "8",
                                          "POSTROOM__SMTP__PROCESSES": str(variant.processes)})
                argv = [sys.executable, __file__, "--child", str(variant.claim),
                        str(variant.flush), str(int(variant.pipelining)), "--",
                        "--config", str(site.config), "digest", "send", "--json", "-q"]
                done = measure(argv, env, 120 + args.count / 500)
                report = json.loads(done.stdout.strip().splitlines()[-1])
                if done.returncode != 0 or report["sent"] != args.count:
                    raise SystemExit(f"{variant.label}: {done.returncode} {done.stderr[-500:]}")
                found = figures[variant.label]
                found.rates.append(args.count / report["seconds"])
                found.cpu_ms.append(done.cpu / args.count * 1000)
                found.lag_ms.append(report["loop_lag_p99_ms"] or 0.0)
                print(f"  {variant.label:32} {found.rates[-1]:8,.0f} msg/s  "
                      f"{found.cpu_ms[-1]:.3f} ms CPU/msg  lag p99 {found.lag_ms[-1]:.1f} ms",
                      flush=True)
        return table(args, figures)
    finally:
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def table(args: argparse.Namespace, figures: dict[str, Figures]) -> str:
    lines = [
        "# Sender tuning", "",
        f"`digest send` of {args.count:,} messages at concurrency 8 into smtp-sink, "
        f"{args.repeats} interleaved repeats (`.venv/bin/python bench/delivery_tuning.py`). "
        "Rates are send-only (postroom's own `seconds`); CPU is the whole process tree's, "
        "start-up included.", "",
        "| variant | min msg/s | median msg/s | median CPU ms/msg | median loop lag p99 ms |",
        "|---|---|---|---|---|",
    ]
    for label, found in figures.items():
        lines.append(f"| {label} | {min(found.rates):,.0f} | {statistics.median(found.rates):,.0f}"
                     f" | {statistics.median(found.cpu_ms):.3f}"
                     f" | {statistics.median(found.lag_ms):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if "--child" in sys.argv:
        at = sys.argv.index("--child")
        claim, flush, pipelining = sys.argv[at + 1: at + 4]
        child(int(claim), int(flush), pipelining == "1", sys.argv[sys.argv.index("--") + 1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=HERE / "TUNING.md")
    args = parser.parse_args()
    text = run(args)
    args.output.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

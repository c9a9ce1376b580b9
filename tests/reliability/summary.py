"""Run the fault suite and print its figures: one row per case, with its bound and whether
it holds. Exits 1 if any row fails (or a test failed before measuring), else 0.

    .venv/bin/python tests/reliability/summary.py            # the default (short) variants
    .venv/bin/python tests/reliability/summary.py --long     # … and the long ones
    .venv/bin/python tests/reliability/summary.py --seed 7   # other kill moments

Every other argument goes to pytest as it is (e.g. `-k smtp`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REPORT_ENV = "POSTROOM_RELIABILITY_REPORT"


def run_suite(args: list[str], report: Path) -> int:
    """Run pytest on this folder with the report file named; return its exit code."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               str(HERE.relative_to(REPO)), *args]
    env = {**os.environ, REPORT_ENV: str(report)}
    return subprocess.run(command, cwd=REPO, env=env, check=False).returncode


def read_rows(report: Path) -> list[dict[str, Any]]:
    if not report.exists():
        return []
    return [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """Return (case, figure, bound, holds, note) per figure, plus one FAILED row per test
    that failed without a failing figure to show for it."""
    figures = [r for r in rows if r.get("kind") == "figure"]
    out = []
    for row in figures:
        holds = "skipped" if row["holds"] is None else "yes" if row["holds"] else "FAILED"
        out.append((row["case"], row["figure"], row["bound"], holds, row.get("note", "")))
    explained = {r["test"] for r in figures if r["holds"] is False}
    for row in rows:
        if row.get("kind") == "outcome" and row["outcome"] == "failed" \
                and row["test"] not in explained:
            out.append((f"{row['test']} ({row['when']})", "-", "-", "FAILED", row["message"]))
    return out


def print_table(rows: list[tuple[str, str, str, str, str]]) -> None:
    heads = ("case", "figure", "bound", "holds", "note")
    widths = [max(len(heads[i]), *(len(r[i]) for r in rows)) if rows else len(heads[i])
              for i in range(4)]

    def line(cells: tuple[str, ...]) -> str:
        left = " | ".join(c.ljust(w) for c, w in zip(cells[:4], widths, strict=True))
        return f"| {left} | {cells[4]}"

    print(line(heads))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|------")
    for row in rows:
        print(line(row))


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="postroom-reliability-") as folder:
        report = Path(folder) / "reliability.jsonl"
        started = time.monotonic()
        code = run_suite(argv, report)
        seconds = time.monotonic() - started
        rows = read_rows(report)
    table = table_rows(rows)
    seeds = sorted({r["seed"] for r in rows if r.get("kind") == "figure"})
    print()
    print_table(table)
    failed = sum(r[3] == "FAILED" for r in table)
    print(f"\n{len(table)} rows, {failed} failed; seed {', '.join(map(str, seeds)) or '-'};"
          f" pytest exit {code}; {seconds:.1f} s")
    return 1 if failed or code not in (0, 5) or not table else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

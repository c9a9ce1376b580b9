"""Benchmark: `postroom subscribers import` of a big CSV into a fresh SQLite file.

    .venv/bin/python bench/import_bench.py [--rows N ...] [--dir /tmp/import-bench]

Sizes default to 100,000 and 1,000,000 rows. For each size: write `email,name` rows
(unique addresses), make a config pointing at a fresh SQLite database, and run the real
command under `/usr/bin/time -v`; print the wall seconds, rows/s and peak RSS. Figures
depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

POSTROOM = Path(sys.executable).parent / "postroom"
CONFIG = """[site]
title = "Import bench"
base_url = "https://blog.example.org"

[site.author]
name = "Bench"

[database]
url = "sqlite:///{database}"
"""


def write_csv(path: Path, rows: int) -> None:
    """Write a header and `rows` unique addresses with names."""
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,name\n")
        for start in range(0, rows, 10_000):
            out.write("".join(
                f"reader{i}@list{i % 97}.example.org,Reader Number {i}\n"
                for i in range(start, min(start + 10_000, rows))
            ))


def run_import(folder: Path, csv_path: Path) -> dict[str, float]:
    """Run the import against a fresh database; return seconds and peak RSS in MB."""
    database = folder / "postroom.db"
    for leftover in folder.glob("postroom.db*"):
        leftover.unlink()
    config = folder / "postroom.toml"
    config.write_text(CONFIG.format(database=database), encoding="utf-8")
    # Migrate first, so the figures are the import's alone.
    subprocess.run([str(POSTROOM), "--config", str(config), "subscribers", "list", "-q"],
                   check=True, capture_output=True)
    result = subprocess.run(
        ["/usr/bin/time", "-v", str(POSTROOM), "--config", str(config), "subscribers", "import",
         str(csv_path)],
        capture_output=True, text=True, env={**os.environ},
    )
    if result.returncode not in (0, 1):
        sys.exit(f"import failed ({result.returncode}):\n{result.stderr[-3000:]}")
    elapsed = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", result.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    assert elapsed and rss, result.stderr
    hours, minutes, seconds = (float(part or 0) for part in elapsed.groups())
    return {"seconds": hours * 3600 + minutes * 60 + seconds, "rss_mb": int(rss[1]) / 1024,
            "summary": result.stdout.strip()}  # type: ignore[dict-item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/import-bench"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    for rows in args.rows or [100_000, 1_000_000]:
        csv_path = args.dir / f"subscribers-{rows}.csv"
        if not csv_path.exists():
            write_csv(csv_path, rows)
        figures = run_import(args.dir, csv_path)
        seconds = figures["seconds"]
        print(f"{rows:>9} rows  {seconds:7.1f} s  {rows / seconds:8.0f} rows/s"
              f"  peak RSS {figures['rss_mb']:6.1f} MB  ({figures['summary']})", flush=True)


if __name__ == "__main__":
    main()

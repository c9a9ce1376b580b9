"""The daemon's side of bench/feeds.py, in one child process: rescans and edits in-process.

    .venv/bin/python bench/feeds_inprocess.py --config SITE/postroom.toml \\
        --edit-main posts/A.md --edit-old posts/B.md [--per-tag] [--rebuilds 20] [--edits 5]

One SiteBuilder, as the daemon keeps one: a first build (it parses everything), then
`--rebuilds` rebuilds with nothing changed, each followed by the stat-only floor
(feeds_statwalk.stat_walk of the posts folder), then `--edits` edits of a post in the main
feed and as many of the oldest post (in no feed), each followed by one timed rebuild. Prints
one JSON object; bench/feeds.py runs this script as a measured command, so its peak RSS is
that of a daemon holding the whole collection.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feeds_statwalk import stat_walk

EDIT_LINE = re.compile(r"\n\nEdited by the benchmark \(\d+\)\.\n\Z")


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


class Editor:
    """Changes a post's body the way a writer's save does; each save is a new version."""

    def __init__(self) -> None:
        self.saves = 0
        self.last_mtime_ns = 0

    def edit(self, path: Path) -> None:
        self.saves += 1
        text = EDIT_LINE.sub("\n", path.read_text(encoding="utf-8"))
        path.write_text(text.rstrip("\n") + f"\n\nEdited by the benchmark ({self.saves}).\n",
                        encoding="utf-8")
        # The file system's clock ticks every few ms: make each save's mtime a new one, so
        # a rescan that trusts (size, mtime) cannot miss it.
        mtime = max(time.time_ns(), self.last_mtime_ns + 1_000_000)
        os.utime(path, ns=(mtime, mtime))
        self.last_mtime_ns = mtime


def run(args: argparse.Namespace) -> dict[str, Any]:
    from postroom.build import SiteBuilder
    from postroom.config import load_settings

    env = {"POSTROOM__FEEDS__PER_TAG": "true" if args.per_tag else "false"}
    settings = load_settings(args.config, env)
    posts = str(settings.posts_dir)
    builder = SiteBuilder.long_running(settings)  # the daemon's
    first, report = timed(lambda: builder.build(datetime.now(UTC)))
    result: dict[str, Any] = {
        "per_tag": args.per_tag, "first_build_s": first, "published": report.published,
        "feeds": len(report.feeds), "rebuild_s": [], "floor_s": [], "rebuild_written": [],
        "edits": {},
    }
    for _ in range(args.rebuilds):
        seconds, report = timed(lambda: builder.build(datetime.now(UTC)))
        result["rebuild_s"].append(seconds)
        result["rebuild_written"] += [n for n in report.written
                                      if n not in result["rebuild_written"]]
        result["floor_s"].append(timed(lambda: stat_walk(posts))[0])
    editor = Editor()
    for case, name in (("main", args.edit_main), ("old", args.edit_old)):
        path = settings.posts_dir / name
        seconds_list, written = [], []
        for _ in range(args.edits):
            editor.edit(path)
            # As the daemon does: its watcher tells the rebuild which file changed.
            seconds, report = timed(lambda: builder.build(datetime.now(UTC),
                                                          changed={path}))  # noqa: B023
            seconds_list.append(seconds)
            written.append(sorted(report.written))
        result["edits"][case] = {"post": name, "seconds": seconds_list, "written": written}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--edit-main", required=True, help="a post in the main feed")
    parser.add_argument("--edit-old", required=True, help="a post in no feed")
    parser.add_argument("--per-tag", action="store_true", help="feeds.per_tag = true")
    parser.add_argument("--rebuilds", type=int, default=20)
    parser.add_argument("--edits", type=int, default=5)
    args = parser.parse_args()
    try:
        result = run(args)
    except Exception as err:  # the parent reports it as a failed run, with the traceback
        print(json.dumps({"error": f"{type(err).__name__}: {err}",
                          "traceback": traceback.format_exc()}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

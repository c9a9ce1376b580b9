"""The stat-only floor: walk a folder with os.scandir and stat every file, nothing more.

    .venv/bin/python bench/feeds_statwalk.py FOLDER

It is what a build with nothing changed cannot beat: bench/feeds.py times this script as
a command (against `postroom build`) and `stat_walk` in-process (against a rescan).
"""

from __future__ import annotations

import os
import sys


def stat_walk(folder: str) -> int:
    """Given a folder, stat every file under it (hidden folders skipped); return how many."""
    count = 0
    with os.scandir(folder) as listing:
        for entry in listing:
            if entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith("."):
                    count += stat_walk(entry.path)
            else:
                entry.stat()
                count += 1
    return count


if __name__ == "__main__":
    print(stat_walk(sys.argv[1]))

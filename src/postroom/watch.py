"""Watching the posts folder: inotify (or the platform's equivalent) through watchfiles.

Runs on the event loop; the waiting happens in watchfiles' own thread. A folder that
cannot be watched (missing, a file system without notifications, inotify limits) is an
error for the caller, who falls back to its periodic scan.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

# Longest a burst of writes is grouped for (ms): an editor saving again and again still
# sees its post rebuilt within about a second of the first write.
LONGEST_GROUP_MS = 1000


async def watch_folder(folder: Path, on_change: Callable[[set[Path]], None], *,
                       quiet_seconds: float, stop: asyncio.Event) -> None:
    """Call `on_change(paths)` (on the loop) after each burst of changes under `folder`,
    once no change came for `quiet_seconds`; return when `stop` is set.

    Raises OSError (or watchfiles' errors) when the folder cannot be watched.
    """
    from watchfiles import awatch

    step = max(1, int(quiet_seconds * 1000))
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    async for changes in awatch(folder, stop_event=stop, step=step,
                                debounce=max(LONGEST_GROUP_MS, step), recursive=True):
        on_change({Path(path) for _, path in changes})

"""Progress of a long send or import: a bar with rate and ETA on a terminal; a send also logs."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from postroom.sender import SendStats

log = logging.getLogger(__name__)
LOG_EVERY = 5.0  # seconds between status lines when there is no terminal


@contextmanager
def send_progress(total: int, quiet: bool = False) -> Iterator[Callable[[SendStats], None]]:
    """Yield a callback to call after each delivery; it draws a bar or logs a status line."""
    if quiet or total == 0:
        yield lambda stats: None
        return
    if not sys.stderr.isatty():
        yield _status_lines(total)
        return
    columns = (
        TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[rate]:.0f} msg/s"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("send", total=total, rate=0.0)
        started = time.monotonic()

        def update(stats: SendStats) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            done = stats.finished + stats.retried
            bar.update(task, completed=done, rate=stats.sent / elapsed)

        yield update


def _status_lines(total: int) -> Callable[[SendStats], None]:
    started = last = time.monotonic()

    def update(stats: SendStats) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < LOG_EVERY:
            return
        last = now
        rate = stats.sent / max(now - started, 1e-6)
        log.info("sending: %d/%d sent, %d failed, %d retried, %.0f msg/s",
                 stats.sent, total, stats.failed, stats.retried, rate)

    return update


@contextmanager
def file_progress(
    label: str, total_bytes: int, quiet: bool = False
) -> Iterator[Callable[[int], None]]:
    """Yield a callback taking the bytes read so far; it draws a bar on a terminal only.

    Without a terminal it says nothing: an import's summary line says it all at the end.
    """
    if quiet or total_bytes == 0 or not sys.stderr.isatty():
        yield lambda done: None
        return
    columns = (
        TextColumn(label), BarColumn(), TaskProgressColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total_bytes)
        yield lambda done: bar.update(task, completed=done)

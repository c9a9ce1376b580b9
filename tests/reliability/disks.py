"""Small real disks for the disk-full cases: a size-limited tmpfs mounted on a folder, and a
ballast file that fills it to the last byte.

    with tmpfs(tmp_path / "disk", "4m") as disk:    # MountRefused if this machine says no
        ...
        ballast = fill(disk)                          # the disk is full now
        ...
        ballast.unlink()                              # and has room again

The mount is the machine's (tests run as root), so the test's own code and the postroom
processes it starts see the same small disk; it is unmounted when the block ends, whatever
happened (lazily if a process still holds a file on it).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHUNK = 64 * 1024


class MountRefused(Exception):
    """This machine allows no tmpfs mount here (not root, no mount command, a container)."""


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` (mount's notation: "1m", "512k") on folder for the block."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        raise MountRefused("mounting a tmpfs needs root and the mount command")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                              str(folder)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        raise MountRefused(f"mount -t tmpfs said: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True,
                          check=False).returncode != 0:
            # A process the test started still holds a file there: detach it anyway.
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def fill(disk: Path, name: str = "ballast") -> Path:
    """Write a file on `disk` until the disk refuses another byte; return its path."""
    path = disk / name
    chunk = b"\0" * CHUNK
    # Unbuffered: a buffered file would fail again when closed, with what it still held.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            os.write(fd, chunk)  # the last write is short, then ENOSPC
    except OSError as err:
        if err.errno != errno.ENOSPC:  # the point; anything else is a broken test
            raise
    finally:
        os.close(fd)
    return path


def free_space(disk: Path) -> int:
    """Return the bytes still free on disk."""
    stats = os.statvfs(disk)
    return stats.f_bavail * stats.f_frsize

"""One exception hierarchy; every user-facing error names its file, line or field."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

# A disk that is full, over quota, failing or mounted read-only: the machine's state, which
# passes (exit 3, try again later). Any other refusal (no permission, a file where a folder
# should be) is the user's to fix (exit 2).
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


class PostroomError(Exception):
    """An error a user can act on; the CLI prints it without a traceback (--debug shows it).

    `exit_code` is what the CLI exits with: 2 for usage and configuration, 3 when the work
    could not be finished because something it needs is unavailable (kept for later).
    """

    exit_code = 2


class Unavailable(PostroomError):
    """The mail server or the storage is unavailable: the work is kept, to finish later."""

    exit_code = 3


class ConfigError(PostroomError):
    """The configuration file (or an environment override) is invalid."""


class TemplateError(PostroomError):
    """A template is missing or does not render."""


class StoreError(PostroomError):
    """The database cannot be reached or is in an unexpected state."""


class StorageUnavailable(StoreError, Unavailable):
    """The database or the disk refused a write (locked, full, read-only): try again later."""

    exit_code = 3


class MailUnavailable(Unavailable):
    """The mail server could not take the messages now."""


class OutputError(PostroomError):
    """The feeds could not be written into the output folder."""

    @classmethod
    def of(cls, folder: Path, err: OSError) -> OutputError:
        """Given the output folder and the OSError a write met, return the error to raise:
        OutputUnavailable when the disk is full or failing, else OutputError."""
        kind = OutputUnavailable if err.errno in STORAGE_ERRNOS else OutputError
        # A temporary file's name changes every time: naming it would make the daemon say
        # the same failure again on every scan.
        named = Path(err.filename) if isinstance(err.filename, str) else folder
        where = "" if named == folder or named.name.endswith(".tmp") else f" ({named})"
        return kind(f"{folder}: cannot write the feeds{where}: {err.strerror or err}; every "
                    "feed file there is whole (the old one or the new one), and the next "
                    "build finishes the job")


class OutputUnavailable(OutputError, Unavailable):
    """The disk refused the feeds (full, over quota, failing, read-only): try again later."""

    exit_code = 3


class SubscriberError(PostroomError):
    """A subscriber address or row is invalid."""


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with one input file, located by path and 1-based line."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line > 0 else str(self.path)
        return f"{where}: {self.message}"

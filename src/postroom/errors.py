"""One exception hierarchy; every user-facing error names its file, line or field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

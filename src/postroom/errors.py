"""One exception hierarchy; every user-facing error names its file, line or field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class PostroomError(Exception):
    """An error a user can act on; the CLI prints it without a traceback."""


class ConfigError(PostroomError):
    """The configuration file (or an environment override) is invalid."""


class TemplateError(PostroomError):
    """A template is missing or does not render."""


class StoreError(PostroomError):
    """The database cannot be reached or is in an unexpected state."""


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

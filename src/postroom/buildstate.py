"""What the last build left in the output folder, kept with the caches: per feed file its
input key and size, so the next build (another process, too) skips what has not changed.

A cache only: missing, corrupt or for another output folder means "render everything".
Kept out of the output folder's manifest so that the published files stay the same bytes
for the same posts, wherever and whenever they are built.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from postroom.output import write_cache_file


@dataclass(frozen=True)
class Outcome:
    """What a build with nothing changed would report again, and until when that holds."""

    walk: str  # the posts folder's fingerprint (every post file's path, size and mtime)
    stamp: str  # the settings' and code's (a new config or postroom means a new build)
    until: str | None  # ISO time the next future post comes due (None: none is)
    published: int
    post_files: int
    problems: list[tuple[str, int, str]] = field(default_factory=list)
    notices: list[tuple[str, int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class BuildState:
    inputs: dict[str, str] = field(default_factory=dict)  # relative path -> input key
    sizes: dict[str, int] = field(default_factory=dict)  # relative path -> size written
    outcome: Outcome | None = None


def load_build_state(file: Path, output: Path) -> BuildState:
    """Return the state recorded for this output folder, or an empty one."""
    try:
        recorded = json.loads(file.read_bytes())
        if recorded.get("output") != str(output.absolute()):
            return BuildState()
        inputs, sizes, outcome = recorded["inputs"], recorded["sizes"], recorded.get("outcome")
        return BuildState(
            inputs={k: v for k, v in inputs.items() if isinstance(v, str)},
            sizes={k: v for k, v in sizes.items() if isinstance(v, int)},
            outcome=_outcome(outcome) if isinstance(outcome, dict) else None)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return BuildState()


def save_build_state(file: Path, output: Path, state: BuildState) -> bool:
    """Record the state (atomically; no fsync: losing it costs a render). Return success."""
    outcome = asdict(state.outcome) if state.outcome else None
    data = json.dumps({"output": str(output.absolute()), "inputs": state.inputs,
                       "sizes": state.sizes, "outcome": outcome},
                      separators=(",", ":")).encode("utf-8")
    try:
        write_cache_file(file, data)
    except OSError:
        return False
    return True


def _outcome(recorded: dict[str, Any]) -> Outcome:
    def said(kind: str) -> list[tuple[str, int, str]]:
        return [(str(path), int(line), str(message))
                for path, line, message in recorded.pop(kind, [])]

    problems, notices = said("problems"), said("notices")
    return Outcome(**recorded, problems=problems, notices=notices)

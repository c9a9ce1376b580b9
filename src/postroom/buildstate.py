"""What the last build left in the output folder, kept with the caches: per feed file its
input key and size, so the next build (another process, too) skips what has not changed.

A cache only: missing, corrupt or for another output folder means "render everything".
Kept out of the output folder's manifest so that the published files stay the same bytes
for the same posts, wherever and whenever they are built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from postroom.output import write_cache_file


@dataclass(frozen=True)
class BuildState:
    inputs: dict[str, str] = field(default_factory=dict)  # relative path -> input key
    sizes: dict[str, int] = field(default_factory=dict)  # relative path -> size written


def load_build_state(file: Path, output: Path) -> BuildState:
    """Return the state recorded for this output folder, or an empty one."""
    try:
        recorded = json.loads(file.read_bytes())
        if recorded.get("output") != str(output.absolute()):
            return BuildState()
        inputs, sizes = recorded["inputs"], recorded["sizes"]
        return BuildState(
            inputs={k: v for k, v in inputs.items() if isinstance(v, str)},
            sizes={k: v for k, v in sizes.items() if isinstance(v, int)})
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return BuildState()


def save_build_state(file: Path, output: Path, state: BuildState) -> bool:
    """Record the state (atomically; no fsync: losing it costs a render). Return success."""
    data = json.dumps({"output": str(output.absolute()), "inputs": state.inputs,
                       "sizes": state.sizes}, separators=(",", ":")).encode("utf-8")
    try:
        write_cache_file(file, data)
    except OSError:
        return False
    return True

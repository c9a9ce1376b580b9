"""bench/RESULTS.md is shared: each benchmark owns one marked section and rewrites only it.

    <!-- feeds:begin -->
    ... whatever bench/feeds.py wrote last ...
    <!-- feeds:end -->

A section not in the file yet is appended at its end; text outside every section is kept.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

TITLE = "# Benchmarks\n\nEach section is written by its own command; `make bench` runs them all.\n"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(document: str, name: str, text: str) -> str:
    """Given the file's text, return it with section `name` holding `text` (added if new)."""
    begin, end = markers(name)
    block = f"{begin}\n{text.strip()}\n{end}"
    found = re.search(re.escape(begin) + r".*?" + re.escape(end), document, flags=re.DOTALL)
    if found:
        return document[: found.start()] + block + document[found.end():]
    head = document.rstrip() or TITLE.rstrip()
    return f"{head}\n\n{block}\n"


def write_section(path: Path, name: str, text: str) -> None:
    """Rewrite section `name` of the file at `path`, atomically; the rest stays as it was."""
    try:
        document = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        document = ""
    updated = replace_section(document, name, text)
    if not updated.endswith("\n"):
        updated += "\n"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(updated, encoding="utf-8")
    os.replace(temporary, path)

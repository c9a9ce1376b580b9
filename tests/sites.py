"""Real site folders for the tests: a config file, a posts folder and an output folder, and
the real `postroom` command to run on them.

`Site` is the folder of the feed tests. The writers and the command here serve every kind of
test site: `MailSite` (mailsite.py) and `DaemonSite` (daemonproc.py) write their config with
`toml_text`, their posts with `write_post_file` and run postroom with `run_postroom`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml

from postroom.build import BuildReport, SiteBuilder
from postroom.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
# The clock every test passes in explicitly; posts dated after it are "future" posts.
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

BASE_CONFIG: dict[str, Any] = {
    "site": {
        "title": "Test blog",
        "subtitle": "Notes for the tests",
        "base_url": "https://blog.example.org",
        "language": "en",
        "timezone": "Europe/Berlin",
        "author": {"name": "Ahmed", "email": "ahmed@blog.example.org"},
    },
    "paths": {"posts": "posts", "output": "public"},
    "feeds": {"entries": 20, "per_tag": True},
}


def toml_value(value: Any) -> str:
    """Given a str, bool, int, float, date, datetime or list of them, return it as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string for the characters used here.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, datetime | date):
        return value.isoformat()  # a TOML date-time (or date) literal
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_text(config: Mapping[str, Any], prefix: str = "") -> str:
    """Given nested mappings, return the TOML document: plain keys first, then tables."""
    lines = [f"{key} = {toml_value(v)}" for key, v in config.items() if not isinstance(v, Mapping)]
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, table in config.items():
        if isinstance(table, Mapping):
            name = f"{prefix}{key}"
            text += f"\n[{name}]\n" + toml_text(table, prefix=f"{name}.")
    return text


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Return base with changes applied table by table (None deletes a key)."""
    result = {k: (merged(v, {}) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def post_text(front: Mapping[str, Any], body: str = "") -> str:
    """Return a post file's text: YAML front matter (as yaml.safe_dump writes it), then body."""
    dumped = yaml.safe_dump(dict(front), allow_unicode=True, sort_keys=False, width=10_000)
    return f"---\n{dumped}---\n{body}"


def write_post_file(folder: Path, slug: str, title: str, published: datetime,
                    body: str = "Some words.\n", **front: Any) -> Path:
    """Write <folder>/<slug>.md: title, date (UTC), slug and `front` as front matter, a blank
    line, then `body`; return its path. Any title survives YAML (escaped by PyYAML)."""
    fields = {"title": title, "date": published.astimezone(UTC).isoformat(), "slug": slug,
              **front}
    path = folder / f"{slug}.md"
    path.write_text(post_text(fields, "\n" + body), encoding="utf-8")
    return path


# ---- the real command ------------------------------------------------------------------

def postroom_command() -> list[str]:
    """Return the argv prefix that runs the installed `postroom` console script."""
    script = Path(sys.executable).parent / "postroom"
    if script.exists():
        return [str(script)]
    found = shutil.which("postroom")
    return [found] if found else [sys.executable, "-m", "postroom.cli"]


def postroom_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment minus anything POSTROOM* (the config file alone decides), plus
    `extra` (e.g. POSTROOM__ overrides or a password)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM")}
    env["PYTHONUNBUFFERED"] = "1"  # a log read while the process runs is up to date
    return {**env, **(extra or {})}


def run_postroom(*args: str, cwd: Path, timeout: float = 60.0,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `postroom <args>` in `cwd` to completion; `env` adds variables."""
    return subprocess.run([*postroom_command(), *args], cwd=cwd, env=postroom_env(env),
                          capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


@dataclass
class Site:
    """A real site folder: postroom.toml, posts/, and the output folder public/."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "postroom.toml"

    @property
    def posts(self) -> Path:
        return self.root / "posts"

    @property
    def output(self) -> Path:
        return self.root / "public"

    def configure(self, **changes: Any) -> Settings:
        """Write postroom.toml (BASE_CONFIG with changes per table) and return its settings."""
        self.config_path.write_text(toml_text(merged(BASE_CONFIG, changes)), encoding="utf-8")
        return self.settings()

    def settings(self) -> Settings:
        return load_settings(self.config_path, env={})

    def write_post(self, name: str, body: str = "", **front: Any) -> Path:
        """Write posts/<name> with the given front matter (yaml.safe_dump) and body."""
        return self.write_raw(name, post_text(front, body).encode("utf-8"))

    def write_raw(self, name: str, data: bytes | str) -> Path:
        """Write posts/<name> byte for byte (no newline translation)."""
        path = self.posts / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return path

    def builder(self) -> SiteBuilder:
        return SiteBuilder(self.settings())

    def build(self, now: datetime = NOW, *, write: bool = True) -> BuildReport:
        """Build with a new SiteBuilder, as one `postroom build` does."""
        return self.builder().build(now, write=write)

    def feed(self, name: str) -> bytes:
        return (self.output / name).read_bytes()

    def output_files(self) -> dict[str, int]:
        """Return every file under the output folder (relative path) with its st_mtime_ns."""
        return {
            path.relative_to(self.output).as_posix(): path.stat().st_mtime_ns
            for path in sorted(self.output.rglob("*"))
            if path.is_file()
        }

"""Shared fixtures: real site folders (a config file and a posts folder) in tmp_path."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailserver import MailServer
from sites import Site


@pytest.fixture
def make_site(tmp_path: Path) -> Callable[..., Site]:
    """Return a factory: make_site(name, **config changes) → a configured, empty Site."""

    def make(name: str = "site", **changes: Any) -> Site:
        site = Site(tmp_path / name)
        site.posts.mkdir(parents=True)
        site.configure(**changes)
        return site

    return make


@pytest.fixture
def site(make_site: Callable[..., Site]) -> Site:
    """A configured site with no posts yet."""
    return make_site()


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment minus any POSTROOM* variable, for running the real command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="session")
def postroom_command() -> str:
    """The installed `postroom` console script (beside this Python, else on PATH)."""
    beside = Path(sys.executable).parent / "postroom"
    found = str(beside) if beside.exists() else shutil.which("postroom")
    if found is None:
        pytest.fail("the postroom console script is not installed (pip install -e '.[test]')")
    return found


@pytest.fixture
def sink() -> Iterator[MailServer]:
    """A real SMTP server (aiosmtpd) on a free loopback port, for the sites to mail through."""
    with MailServer() as server:
        yield server

"""A real site with a mailing list for the email tests: a config file, posts, a SQLite file.

    site = MailSite.create(tmp_path, smtp_port=server.port)
    site.write_post("hello", "Hello", published=site.now - timedelta(minutes=5))
    site.add_subscribers(["a@example.org"])
    plan = site.create_digest()
    stats = site.send()

The database starts as if postroom had first seen the (then empty) collection a day ago,
so posts dated after that are new: test setup through postroom's own store API.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Row, select

from postroom import outbox, subscribers
from postroom.build import SiteBuilder
from postroom.config import Settings, load_settings
from postroom.newsletter import DigestPlan, create_digest, open_database, send_outbox
from postroom.schema import deliveries
from postroom.sender import SendStats
from postroom.store import secret_key, set_meta
from postroom.tokens import Tokens
from sites import postroom_command, postroom_env, run_postroom, toml_text, write_post_file

SITE_TITLE = "Test Notes"
BASE_URL = "https://notes.example.org"
FROM_ADDRESS = "letters@notes.example.org"


def write_config(path: Path, tables: Mapping[str, Mapping[str, Any]]) -> Path:
    path.write_text(toml_text(tables), encoding="utf-8")
    return path


def site_tables(root: Path, smtp_port: int | None, **overrides: Mapping[str, Any]
                ) -> dict[str, dict[str, Any]]:
    """Return the config tables of a test site; `overrides` maps a table to keys to set."""
    tables: dict[str, dict[str, Any]] = {
        "site": {"title": SITE_TITLE, "base_url": BASE_URL, "timezone": "UTC"},
        "site.author": {"name": "Tess Ter"},
        "paths": {"posts": "posts", "output": "public"},
        "database": {"url": f"sqlite:///{root / 'db.sqlite'}"},
        "mail": {
            "transport": "smtp" if smtp_port else "maildir",
            "from_address": FROM_ADDRESS,
            "from_name": "Tess of Test Notes",
        },
        "smtp": {
            "host": "127.0.0.1", "port": smtp_port or 2525, "security": "none",
            "timeout": 2.0, "concurrency": 4, "backoff_base": 0.05, "backoff_max": 0.2,
            "retry_wait": 5.0, "max_attempts": 5,
        },
    }
    for table, values in overrides.items():
        tables.setdefault(table.replace("__", "."), {}).update(values)
    return tables


@dataclass
class MailSite:
    root: Path
    config: Path
    settings: Settings
    engine: Engine
    now: datetime

    @classmethod
    def create(cls, root: Path, smtp_port: int | None = None,
               **overrides: Mapping[str, Any]) -> MailSite:
        """Write a site into `root` whose collection postroom first saw a day ago."""
        (root / "posts").mkdir(parents=True, exist_ok=True)
        config = write_config(root / "postroom.toml", site_tables(root, smtp_port, **overrides))
        settings = load_settings(config, env={})
        engine = open_database(settings)
        now = datetime.now(UTC)
        with engine.begin() as connection:
            set_meta(connection, outbox.FIRST_SEEN_KEY, (now - timedelta(days=1)).isoformat())
        return cls(root, config, settings, engine, now)

    def reload(self, **overrides: Mapping[str, Any]) -> None:
        """Rewrite the config with other overrides (same database) and load it again."""
        port = self.settings.smtp.port if self.settings.mail.transport == "smtp" else None
        write_config(self.config, site_tables(self.root, port, **overrides))
        self.settings = load_settings(self.config, env={})

    # ---- posts and subscribers -------------------------------------------------------

    def write_post(self, slug: str, title: str, published: datetime | None = None,
                   summary: str | None = None, body: str = "Some words.\n") -> Path:
        """Write a post file; any title or summary survives YAML (escaped by PyYAML)."""
        published = published or self.now - timedelta(minutes=10)
        front = {} if summary is None else {"summary": summary}
        return write_post_file(self.root / "posts", slug, title, published, body, **front)

    def add_subscribers(self, emails: Iterable[str], status: str = "active") -> dict[str, int]:
        """Add subscribers; return their ids by address."""
        ids = {}
        with self.engine.begin() as connection:
            for email in emails:
                row, _ = subscribers.add(connection, email, self.now, status=status)
                ids[email] = row.id
        return ids

    # ---- the newsletter, in process --------------------------------------------------

    def create_digest(self) -> DigestPlan:
        return create_digest(self.settings, self.engine, SiteBuilder(self.settings),
                             datetime.now(UTC))

    def send(self, wait_for_retries: float | None = None) -> SendStats:
        return asyncio.run(send_outbox(self.settings, self.engine, lambda: datetime.now(UTC),
                                       wait_for_retries=wait_for_retries))

    def tokens(self) -> Tokens:
        """The tokens as the sender signs them (same key source as the sender)."""
        return Tokens(secret_key(self.engine))

    def deliveries(self) -> list[Row[Any]]:
        with self.engine.connect() as connection:
            return list(connection.execute(select(deliveries).order_by(deliveries.c.id)).all())

    def subscriber_status(self, email: str) -> str:
        with self.engine.connect() as connection:
            row = subscribers.find(connection, email)
        assert row is not None, email
        return str(row.status)

    # ---- the command line ------------------------------------------------------------

    def run(self, *args: str, timeout: float = 60.0, config: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run the real `postroom` command on this site and wait for it."""
        return run_postroom(*args, "--config", str(config or self.config), cwd=self.root,
                            timeout=timeout)


def start_postroom(*args: str, cwd: Path, output: Path) -> subprocess.Popen[bytes]:
    """Start the real `postroom` command; its stdout and stderr go to the file `output`
    (a file, not a pipe: a pipe nobody reads would block a chatty process)."""
    with output.open("ab") as sink:
        return subprocess.Popen([*postroom_command(), *args], cwd=cwd, env=postroom_env(),
                                stdout=sink, stderr=subprocess.STDOUT)


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout

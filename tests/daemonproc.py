"""Real postroom servers for the daemon, web and browser tests.

    with DaemonSite.create(tmp_path / "site", smtp_port=sink.port) as site:
        site.write_post("hello", "Hello")
        daemon = site.start("run")       # `postroom run --config …` listening on site.web_port
        daemon.wait_healthy()
        ...
        assert daemon.stop() == 0        # SIGTERM, then its exit code

A DaemonSite is a folder with postroom.toml (loopback ports, SQLite file, short intervals),
posts/ and the output folder. Every process it started is stopped when it is closed (SIGTERM,
then SIGKILL), whatever the test did; each process's stderr is kept in a file (`.log()`).
`site.serve_in_process()` runs the same web app in a uvicorn thread of the test process,
for the page tests that start many small servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import Engine, Row, select

from postroom import subscribers
from postroom.build import SiteBuilder
from postroom.config import Settings, load_settings
from postroom.daemon import send_queued_mail
from postroom.newsletter import DigestPlan, create_digest, open_database
from postroom.schema import deliveries, digests
from postroom.store import get_meta, secret_key, set_meta
from postroom.templates import template_environment
from postroom.tokens import Tokens
from postroom.transport import make_transport
from postroom.web import create_app
from postroom.web.state import WebState
from sites import postroom_command, postroom_env, run_postroom, toml_text, write_post_file

SITE_TITLE = "Daemon Notes"
FROM_ADDRESS = "letters@daemon.example.org"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def utc_now() -> datetime:
    return datetime.now(UTC)


class PostroomProcess:
    """One running `postroom` command; its stderr goes to a log file."""

    def __init__(self, args: list[str], cwd: Path, log_path: Path, health_url: str) -> None:
        self.args, self.log_path, self.health_url = args, log_path, health_url
        self._stderr = log_path.open("wb")
        self._stdout = log_path.with_suffix(".out").open("wb")
        self.popen = subprocess.Popen([*postroom_command(), *args], cwd=cwd, env=postroom_env(),
                                      stdout=self._stdout, stderr=self._stderr,
                                      stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait_healthy(self, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until GET /healthz answers 200; return its JSON. Fails if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(
                    f"postroom {' '.join(self.args)} exited with {self.popen.returncode}:\n"
                    + self.log())
            try:
                response = httpx.get(self.health_url, timeout=1.0)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if response.status_code == 200:
                payload: dict[str, Any] = response.json()
                return payload
            time.sleep(0.05)
        raise AssertionError(f"no healthy /healthz within {timeout} s:\n{self.log()}")

    def health(self) -> tuple[int, dict[str, Any]]:
        """GET /healthz once; return its status code and its JSON."""
        response = httpx.get(self.health_url, timeout=5.0)
        payload: dict[str, Any] = response.json()
        return response.status_code, payload

    def wait_for_health(self, condition: Callable[[int, dict[str, Any]], bool],
                        timeout: float = 20.0) -> dict[str, Any]:
        """Poll /healthz until condition(status code, JSON) holds; return the JSON."""
        deadline = time.monotonic() + timeout
        while True:
            status, payload = self.health()
            if condition(status, payload):
                return payload
            if time.monotonic() >= deadline or not self.running():
                raise AssertionError(f"/healthz never satisfied {condition} within {timeout} s;"
                                     f" last: {status} {payload}\n{self.log()}")
            time.sleep(0.05)

    def wait_for_pass(self, job: str = "send", timeout: float = 20.0) -> None:
        """Wait until a whole pass of a job ("send", "build") began and ended after this call.

        /healthz's `last_<job>` changes when a pass ends. The first change may end a pass
        that was already running; a job's passes never overlap, so the pass whose end is the
        second change began after the first ended: after this call.
        """
        field = f"last_{job}"
        first = self.health()[1][field]
        second = self.wait_for_health(lambda _, h: h[field] != first, timeout)[field]
        self.wait_for_health(lambda _, h: h[field] != second, timeout)

    def wait_for_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> bool:
        """Wait until the log has `count` lines matching the regex; return whether it has."""
        deadline = time.monotonic() + timeout
        while True:
            if len(re.findall(pattern, self.log())) >= count:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def send_signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"postroom {' '.join(self.args)} still running after {timeout} s:\n{self.log()}"
            ) from None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait for the exit code (SIGKILL, and fail, if it does not come)."""
        if self.running():
            self.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.running():
            self.popen.kill()
            self.popen.wait(10)
        self._stderr.close()
        self._stdout.close()


class AppServer:
    """The web app (create_app + WebState.create) under uvicorn in a thread of this process."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.state = WebState.create(settings, engine,
                                     template_environment(settings.templates_dir),
                                     secret_key(engine, env={}), make_transport(settings))
        # As `postroom serve` does: mail the pages queue is sent at once by this server.
        self.sends = send_queued_mail(self.state, asyncio.Event())
        web = settings.web
        config = uvicorn.Config(
            create_app(self.state), host="127.0.0.1", port=web.port, log_level="warning",
            proxy_headers=bool(web.trusted_proxies),
            forwarded_allow_ips=list(web.trusted_proxies) or None, access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def start(self) -> AppServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("the in-process web server did not start")
            time.sleep(0.01)
        return self

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every request so far is done (background tasks too) and no send runs.

        A request that queues mail kicks the sender before its task ends, so once both are
        idle nothing the requests asked for is still to come.
        """
        deadline = time.monotonic() + timeout
        while self.server.server_state.tasks or (
                self.sends.task is not None and not self.sends.task.done()):
            if time.monotonic() >= deadline:
                raise AssertionError(f"the web server was still busy after {timeout} s")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class DaemonSite:
    """A site folder whose postroom listens on loopback and mails through a local server."""

    def __init__(self, root: Path, smtp_port: int, tables: dict[str, dict[str, Any]],
                 web_port: int) -> None:
        self.root, self.smtp_port, self.tables, self.web_port = root, smtp_port, tables, web_port
        self.processes: list[PostroomProcess] = []
        self.servers: list[AppServer] = []
        self._engine: Engine | None = None

    @classmethod
    def create(cls, root: Path, smtp_port: int, **overrides: Mapping[str, Any]) -> DaemonSite:
        """Write the site's folders and config; `overrides` maps a table to keys to set."""
        web_port = free_port()
        base = f"http://127.0.0.1:{web_port}"
        tables: dict[str, dict[str, Any]] = {
            "site": {"title": SITE_TITLE, "base_url": base, "timezone": "UTC"},
            "site.author": {"name": "Dee Mon"},
            "paths": {"posts": "posts", "output": "public", "templates": "templates"},
            "database": {"url": "sqlite:///var/postroom.db"},
            "mail": {"transport": "smtp", "from_address": FROM_ADDRESS, "public_url": base},
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none",
                     "timeout": 5.0, "backoff_base": 0.2, "backoff_max": 1.0},
            "web": {"host": "127.0.0.1", "port": web_port},
            "daemon": {"scan_interval": 1.0, "retry_interval": 1.0, "shutdown_grace": 10.0},
            "digest": {"schedule": "mon 09:00"},
        }
        (root / "posts").mkdir(parents=True, exist_ok=True)
        site = cls(root, smtp_port, tables, web_port)
        site.configure(**overrides)
        return site

    def __enter__(self) -> DaemonSite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for process in self.processes:
            if process.running():
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(10)
            process.kill()
        for server in self.servers:
            server.stop()
        if self._engine is not None:
            self._engine.dispose()

    # ---- the config ------------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.root / "postroom.toml"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def configure(self, **overrides: Mapping[str, Any]) -> None:
        """Change keys (table → keys; "site__author" for [site.author]) and rewrite the file."""
        for table, values in overrides.items():
            self.tables.setdefault(table.replace("__", "."), {}).update(values)
        self.config.write_text(toml_text(self.tables), encoding="utf-8")

    def settings(self) -> Settings:
        return load_settings(self.config, env={})

    # ---- posts -----------------------------------------------------------------------

    def write_post(self, slug: str, title: str, published: datetime | None = None,
                   tags: tuple[str, ...] = (), body: str = "Some words.\n") -> Path:
        published = published or utc_now() - timedelta(seconds=5)
        front = {"tags": list(tags)} if tags else {}
        return write_post_file(self.root / "posts", slug, title, published, body, **front)

    # ---- the database ----------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = open_database(self.settings())
        return self._engine

    def set_meta(self, key: str, value: str) -> None:
        with self.engine.begin() as connection:
            set_meta(connection, key, value)

    def get_meta(self, key: str) -> str | None:
        with self.engine.connect() as connection:
            return get_meta(connection, key)

    def add_subscribers(self, emails: list[str], status: str = "active",
                        at: datetime | None = None) -> dict[str, int]:
        """Add subscribers (as of `at`, default now); return their ids by address."""
        ids = {}
        with self.engine.begin() as connection:
            for email in emails:
                row, _ = subscribers.add(connection, email, at or utc_now(), status=status)
                ids[email] = int(row.id)
        return ids

    def subscriber(self, email: str) -> Row[Any] | None:
        with self.engine.connect() as connection:
            return subscribers.find(connection, email)

    def status_of(self, email: str) -> str | None:
        row = self.subscriber(email)
        return None if row is None else str(row.status)

    def digests(self) -> list[Row[Any]]:
        with self.engine.connect() as connection:
            return list(connection.execute(select(digests).order_by(digests.c.id)).all())

    def deliveries(self) -> list[Row[Any]]:
        with self.engine.connect() as connection:
            return list(connection.execute(select(deliveries).order_by(deliveries.c.id)).all())

    def create_digest(self) -> DigestPlan:
        """Create the next digest from this process, as if the digest job ran now."""
        settings = self.settings()
        return create_digest(settings, self.engine, SiteBuilder(settings), utc_now())

    def tokens(self) -> Tokens:
        """Tokens signed with the key the server uses (the one kept in the database)."""
        return Tokens(secret_key(self.engine, env={}))

    # ---- processes -------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run `postroom <args> --config <this site>` to completion."""
        return run_postroom(*args, "--config", str(self.config), cwd=self.root, timeout=timeout)

    def start(self, *args: str) -> PostroomProcess:
        """Start `postroom <args> --config <this site>` in the background."""
        name = f"{args[0]}-{len(self.processes) + 1}.log"
        process = PostroomProcess([*args, "--config", str(self.config)], self.root,
                                  self.root / name, self.url("/healthz"))
        self.processes.append(process)
        return process

    def serve_in_process(self) -> AppServer:
        server = AppServer(self.settings(), self.engine).start()
        self.servers.append(server)
        return server

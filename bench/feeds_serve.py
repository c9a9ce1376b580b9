"""The serving half of bench/feeds.py: `postroom serve` and nginx serving the same feed file,
and wrk against each.

Both servers stay up for the whole phase, on free loopback ports; only one is under load at
a time. Before each wrk run, one request with the run's headers checks what the server
answers (200 with a body, or 304) and gives the ETag a conditional run sends back; after
it, wrk's own counts (from a `done` hook, nothing per request) say how many requests,
bytes and errors there were, so a run of "304s" whose bytes per response are those of a
body is caught.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from delivery_setup import BenchError, measure
from facts import busy_cpu_seconds

LOOPBACK = "127.0.0.1"
FEED = "feed.atom"
# wrk's summary as one JSON line: called once at the end, so it costs nothing per request.
WRK_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, '
    .. '"max_us": %d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""
NGINX_CONF = """\
# Written by bench/feeds.py: one static file, as a site would serve its feed.
daemon off;
master_process on;
worker_processes auto;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/atom+xml atom; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    etag on;
    gzip_static on;
    gzip_vary on;
    server {{
        listen {host}:{port};
        root {root};
        location / {{ add_header Cache-Control "public, max-age=300"; }}
    }}
}}
"""


@dataclass(frozen=True)
class Scenario:
    """One kind of request: a plain or gzip GET, unconditional (200) or conditional (304)."""

    gzip: bool
    conditional: bool

    @property
    def label(self) -> str:
        return ("304" if self.conditional else "200") + (" gzip" if self.gzip else "")

    @property
    def status(self) -> int:
        return 304 if self.conditional else 200


SCENARIOS = (Scenario(False, False), Scenario(False, True), Scenario(True, False),
             Scenario(True, True))


@dataclass
class Load:
    """One wrk run's figures, and what was wrong with it (empty: a good run)."""

    requests: int
    seconds: float
    bytes_per_response: float
    errors: int  # socket errors plus non-2xx/3xx responses
    p50_ms: float
    p99_ms: float
    server_cpu: float  # CPU seconds of the server's processes during the run
    other_cpu: float  # CPU seconds of everything else but wrk, meanwhile
    problems: list[str]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * self.server_cpu / self.requests if self.requests else 0.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


class Server:
    """A server process in its own process group, answering on LOOPBACK:port."""

    name = "server"

    def __init__(self, argv: Sequence[str], port: int, env: Mapping[str, str],
                 log: Path) -> None:
        self.port, self.log_path = port, log
        self._log = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=dict(env),
                                     start_new_session=True)

    def wait_until_serving(self, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited ({self.proc.returncode}): {self.log()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if get(self.port, {}).status == 200:
                    return
            time.sleep(0.2)
        raise BenchError(f"{self.name} did not serve /{FEED} within {seconds:.0f} s: "
                         f"{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace").strip()[-1500:]

    def cpu_seconds(self) -> float:
        """user + sys of every process in the server's process group (nginx's workers too)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.proc.pid:  # field 5, pgrp, after "pid (comm)"
                    total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


class PostroomServer(Server):
    name = "postroom serve"

    def __init__(self, postroom: Sequence[str], config: Path, workdir: Path,
                 env: Mapping[str, str]) -> None:
        port = free_port()
        super().__init__([*postroom, "--config", str(config), "serve", "--host", LOOPBACK,
                          "--port", str(port)], port, env, workdir / "postroom-serve.log")


class NginxServer(Server):
    name = "nginx"

    def __init__(self, nginx: str, feed: Path, workdir: Path) -> None:
        """Serve a copy of `feed` and its gzip (as postroom makes it) from workdir/nginx."""
        prefix = workdir / "nginx"
        root = prefix / "root"
        shutil.rmtree(prefix, ignore_errors=True)
        root.mkdir(parents=True)
        body = feed.read_bytes()
        (root / FEED).write_bytes(body)
        (root / f"{FEED}.gz").write_bytes(gzip.compress(body, mtime=0))
        port = free_port()
        # As root, nginx's workers would run as nobody, who may not read a private temp dir.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, prefix=prefix, host=LOOPBACK, port=port,
                                          root=root), encoding="utf-8")
        super().__init__([nginx, "-e", str(prefix / "error.log"), "-p", str(prefix), "-c",
                          str(conf)], port, os.environ, prefix / "stdout.log")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body_bytes: int


def get(port: int, headers: Mapping[str, str], path: str = f"/{FEED}") -> Answer:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("GET", path, headers=dict(headers))
        response = conn.getresponse()
        body = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                      len(body))
    finally:
        conn.close()


def prepare(server: Server, scenario: Scenario) -> tuple[dict[str, str], Answer, list[str]]:
    """The headers of the scenario's requests, the answer to one of them, and any problem."""
    headers = {"Accept-Encoding": "gzip"} if scenario.gzip else {}
    first = get(server.port, headers)
    problems = []
    if first.status != 200:
        problems.append(f"GET answered {first.status}")
    if scenario.gzip and first.headers.get("content-encoding") != "gzip":
        problems.append("no gzip body for Accept-Encoding: gzip")
    if scenario.conditional:
        etag = first.headers.get("etag")
        if not etag:
            problems.append("no ETag")
        else:
            headers["If-None-Match"] = etag
    answer = get(server.port, headers)
    if answer.status != scenario.status:
        problems.append(f"expected {scenario.status}, answered {answer.status}")
    return headers, answer, problems


def run_wrk(wrk: str, server: Server, scenario: Scenario, workdir: Path, seconds: float,
            threads: int, connections: int) -> Load:
    """Put `server` under wrk's load for `seconds` with the scenario's requests."""
    headers, answer, problems = prepare(server, scenario)
    script = workdir / "wrk-summary.lua"
    script.write_text(WRK_SCRIPT, encoding="utf-8")
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
            "-s", str(script)]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(f"http://{LOOPBACK}:{server.port}/{FEED}")
    cpu_before, busy_before = server.cpu_seconds(), busy_cpu_seconds()
    done = measure(argv, os.environ, timeout=seconds + 60)
    server_cpu = server.cpu_seconds() - cpu_before
    other_cpu = max(0.0, busy_cpu_seconds() - busy_before - server_cpu - done.cpu)
    summary = _summary(done.stdout)
    if done.returncode != 0 or summary is None:
        tail = (done.stderr or done.stdout).strip()[-300:]
        return Load(0, seconds, 0.0, 0, 0.0, 0.0, server_cpu, other_cpu,
                    [*problems, f"wrk failed (exit {done.returncode}): {tail}"])
    requests = int(summary["requests"])
    errors = sum(int(summary[k]) for k in ("connect", "read", "write", "status", "timeout"))
    if errors:
        problems.append(f"{errors:,} errors (socket or non-2xx/3xx: "
                        + ", ".join(f"{k} {summary[k]}" for k in
                                    ("connect", "read", "write", "status", "timeout")
                                    if summary[k]) + ")")
    per_response = summary["bytes"] / requests if requests else 0.0
    # A 304 is its headers alone; a 200 is at least its body.
    if scenario.conditional and per_response > 2048:
        problems.append(f"{per_response:,.0f} bytes per response: not all 304s")
    if not scenario.conditional and per_response < answer.body_bytes:
        problems.append(f"{per_response:,.0f} bytes per response, body is "
                        f"{answer.body_bytes:,}: not all 200s")
    return Load(requests, summary["duration_us"] / 1e6, per_response, errors,
                summary["p50_us"] / 1000, summary["p99_us"] / 1000, server_cpu, other_cpu,
                problems)


def _summary(stdout: str) -> dict[str, float] | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                return dict(json.loads(line))
    return None

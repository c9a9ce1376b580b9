"""Oversized and slow requests against a real `postroom serve`: a 100 MB POST to
/api/subscribe and to an unsubscribe link is refused with 413 without growing the server's
memory, and 300 half-sent request heads are all closed by the server after its header timeout.

Long variant only (marker `long`): run with `summary.py --long`.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Figures
from daemonproc import DaemonSite
from mailserver import MailServer

pytestmark = [pytest.mark.slow, pytest.mark.long]

MB = 1 << 20
HALF_SENT = 300
HEADER_TIMEOUT = 2.0
HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def vm_high_water_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def post_100_mb(url: str, content_type: str, first: bytes) -> str:
    """POST a 100 MB body (announced by Content-Length); return the status, or how the
    server cut it off while the body was still being sent."""

    def body() -> Iterator[bytes]:
        yield first
        for _ in range(100):
            yield b"a" * MB

    length = len(first) + 100 * MB
    try:
        response = httpx.post(url, content=body(), timeout=30,
                              headers={"Content-Type": content_type,
                                       "Content-Length": str(length)})
    except httpx.WriteError:
        return "closed mid-body"
    return str(response.status_code)


def still_open_after(connections: list[socket.socket], deadline: float) -> int:
    """Wait (until `deadline`, at most) for the server to close each connection; return how
    many it had not closed by then."""
    open_ones = set(connections)
    while open_ones and time.monotonic() < deadline:
        readable, _, _ = select.select(list(open_ones), [], [],
                                       max(0.0, min(0.5, deadline - time.monotonic())))
        for connection in readable:
            try:
                if connection.recv(65536) == b"":
                    open_ones.discard(connection)
            except OSError:  # reset: closed too
                open_ones.discard(connection)
    return len(open_ones)


@pytest.fixture
def served(tmp_path: Path, sink: MailServer) -> Iterator[DaemonSite]:
    with DaemonSite.create(tmp_path / "site", smtp_port=sink.port,
                           web={"header_timeout": HEADER_TIMEOUT}) as site:
        yield site


def test_oversized_bodies_and_half_sent_heads(served: DaemonSite, figures: Figures) -> None:
    site = served
    site.add_subscribers(["reader@example.org"])
    row = site.subscriber("reader@example.org")
    assert row is not None
    unsubscribe = f"/unsubscribe/{row.public_id}.{row.unsubscribe_key}"
    server = site.start("serve")
    server.wait_healthy()

    before = vm_high_water_mb(server.pid)
    answers = {
        "/api/subscribe": post_100_mb(site.url("/api/subscribe"), "application/json",
                                      b'{"email": "'),
        "/unsubscribe/<x>": post_100_mb(site.url(unsubscribe),
                                        "application/x-www-form-urlencoded",
                                        b"List-Unsubscribe=One-Click&x="),
    }
    healthy = server.wait_healthy()["status"] == "ok"
    growth = vm_high_water_mb(server.pid) - before
    still_active = site.status_of("reader@example.org") == "active"

    connections = [socket.create_connection(("127.0.0.1", site.web_port), timeout=10)
                   for _ in range(HALF_SENT)]
    try:
        for connection in connections:
            connection.sendall(HEAD[:30])
        sent_at = time.monotonic()
        left_open = still_open_after(connections, sent_at + HEADER_TIMEOUT + 5)
    finally:
        for connection in connections:
            connection.close()
    healthy_after = server.wait_healthy()["status"] == "ok"
    stopped = server.stop()

    refused = all(a in ("413", "closed mid-body") for a in answers.values())
    figures.record("100 MB POST to /api/subscribe and /unsubscribe/<x>: answers",
                   ", ".join(f"{k} {v}" for k, v in answers.items()),
                   "413 (or closed before the body was read)", refused and still_active,
                   "" if still_active else "the reader was unsubscribed")
    figures.record("100 MB POSTs: server RSS growth (VmHWM, MB)", f"{growth:.1f}", "≤ 20",
                   growth <= 20 and healthy, f"VmHWM before {before:.1f} MB")
    figures.record(f"{HALF_SENT} half-sent request heads: still open after the header timeout "
                   f"({HEADER_TIMEOUT:g} s) + 5 s", left_open, "0",
                   left_open == 0 and healthy_after and stopped == 0,
                   f"serve exit {stopped}")
    figures.assert_held()

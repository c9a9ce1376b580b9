"""web/bodylimit.py: request bodies over their endpoint's limit, or too slow, against the web app
under uvicorn on a loopback port (in this process, and as `postroom serve` for the memory)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from daemonproc import DaemonSite
from mailserver import MailServer

MB = 1 << 20


@pytest.fixture
def site(tmp_path: Path, sink: MailServer) -> Iterator[DaemonSite]:
    with DaemonSite.create(tmp_path / "site", smtp_port=sink.port,
                           web={"body_timeout": 0.5}) as served:
        served.serve_in_process()
        yield served


def exchange(site: DaemonSite, head: bytes, body: bytes = b"") -> bytes:
    """Send a raw request head (and the start of a body); return all the server answers
    until it closes the connection (10 s at most, then the test fails)."""
    with socket.create_connection(("127.0.0.1", site.web_port), timeout=10) as connection:
        connection.sendall(head + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def post_head(path: str, content_type: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def unsubscribe_path(site: DaemonSite) -> str:
    """Add an active reader; return the path of their unsubscribe link."""
    site.add_subscribers(["reader@example.org"])
    row = site.subscriber("reader@example.org")
    assert row is not None
    return f"/unsubscribe/{row.public_id}.{row.unsubscribe_key}"


@pytest.mark.parametrize("endpoint", ["/subscribe", "/api/subscribe", "/unsubscribe"])
def test_a_body_over_the_endpoints_limit_is_refused_before_it_is_read(
        site: DaemonSite, endpoint: str) -> None:
    path = unsubscribe_path(site)
    path = path if endpoint == "/unsubscribe" else endpoint
    kind = "application/json" if endpoint == "/api/subscribe" else \
        "application/x-www-form-urlencoded"
    # Only the head is sent: an answer (and a closed connection) means nothing waited for
    # the 100 MB it announces.
    answer = exchange(site, post_head(path, kind, 100 * MB))
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert site.status_of("reader@example.org") == "active"


def test_a_chunked_body_is_cut_off_at_the_limit(site: DaemonSite) -> None:
    sent = 0

    def hundred_megabytes() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"email": "'
        for _ in range(100):
            sent += MB
            yield b"a" * MB

    try:
        response = httpx.post(site.url("/api/subscribe"), content=hundred_megabytes(),
                              headers={"Content-Type": "application/json"}, timeout=10)
        status = response.status_code
    except httpx.WriteError:  # the server closed while the body was still being sent
        status = 413
    assert status == 413
    assert sent < 100 * MB


def test_a_one_click_body_over_the_limit_unsubscribes_nobody(site: DaemonSite) -> None:
    path = unsubscribe_path(site)
    body = b"List-Unsubscribe=One-Click&" + b"x" * 8192
    response = httpx.post(site.url(path), content=body, timeout=10,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    assert site.status_of("reader@example.org") == "active"
    # The real one-click body is well within the limit.
    response = httpx.post(site.url(path), content=b"List-Unsubscribe=One-Click", timeout=10,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    assert site.status_of("reader@example.org") == "unsubscribed"


def test_a_body_that_comes_too_slowly_gets_408_and_a_closed_connection(
        site: DaemonSite) -> None:
    # 20 bytes of the 60 announced, then nothing: body_timeout is 0.5 s here.
    answer = exchange(site, post_head("/api/subscribe", "application/json", 60),
                      b'{"email": "slow@exam')
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert site.subscriber("slow@example.org") is None


def test_get_requests_take_no_body_worth_reading(site: DaemonSite) -> None:
    answer = exchange(site, b"GET /feed.atom HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Content-Length: 5000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")


def vm_high_water_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_a_100_mb_post_leaves_the_servers_memory_as_it_was(
        tmp_path: Path, sink: MailServer) -> None:
    # The report: a 100 MB JSON POST grew `postroom serve` by ~190 MB (peak ~300 MB more).
    with DaemonSite.create(tmp_path / "site", smtp_port=sink.port) as site:
        server = site.start("serve")
        server.wait_healthy()
        before = vm_high_water_mb(server.pid)
        json_body = b'{"email": "' + b"a" * (100 * MB) + b'"}'
        with_length = httpx.post(site.url("/api/subscribe"), content=json_body, timeout=30,
                                 headers={"Content-Type": "application/json"})
        assert with_length.status_code == 413

        def chunks() -> Iterator[bytes]:
            for _ in range(100):
                yield b"a" * MB

        try:
            chunked = httpx.post(site.url("/subscribe"), content=chunks(), timeout=30,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert chunked.status_code == 413
        except httpx.WriteError:
            pass  # refused and closed while the body was still being sent
        assert server.wait_healthy()["status"] == "ok"
        assert vm_high_water_mb(server.pid) - before < 20
        assert server.stop() == 0

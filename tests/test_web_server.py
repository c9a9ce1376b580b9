"""web/server.py: slow and idle clients against the real `postroom serve` and `postroom run`
on a loopback port. Each deadline is set short in the site's config; a socket timeout of
10 s only bounds how long a failing test waits."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from daemonproc import DaemonSite, PostroomProcess, free_port
from mailserver import MailServer
from postroom.config import WebSettings
from postroom.web import server as web_server
from postroom.web.server import HEAD_BYTES, run_loop, server_config

HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def sink() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture(scope="module", params=["serve", "run"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           sink: MailServer) -> Iterator[tuple[DaemonSite, PostroomProcess]]:
    """A site with short deadlines, served by `postroom serve`, then by `postroom run`."""
    root = tmp_path_factory.mktemp(request.param) / "site"
    with DaemonSite.create(root, smtp_port=sink.port, web={
            "header_timeout": 0.5, "keep_alive_timeout": 1, "max_connections": 20}) as site:
        process = site.start(request.param)
        process.wait_healthy()
        yield site, process
        assert process.stop() == 0


def connect(site: DaemonSite) -> socket.socket:
    return connect_to(site.web_port)


def connect_to(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_by_the_server(connection: socket.socket) -> bytes:
    """Read until the server closes the connection; return what it sent (10 s at most)."""
    answer = b""
    while chunk := connection.recv(65536):
        answer += chunk
    return answer


def test_a_connection_that_sends_nothing_is_closed(
        served: tuple[DaemonSite, PostroomProcess]) -> None:
    site, _ = served
    with connect(site) as connection:
        assert closed_by_the_server(connection) == b""


def test_half_sent_request_heads_are_closed(served: tuple[DaemonSite, PostroomProcess]) -> None:
    # The report: 1,200 half-sent requests stayed open for over 60 s.
    site, process = served
    connections = [connect(site) for _ in range(15)]
    try:
        for connection in connections:
            connection.sendall(HEAD[:30])
        assert [closed_by_the_server(c) for c in connections] == [b""] * 15
    finally:
        for connection in connections:
            connection.close()
    assert process.wait_healthy()["status"] == "ok"


def test_a_head_sent_a_byte_at_a_time_is_closed(
        served: tuple[DaemonSite, PostroomProcess]) -> None:
    site, _ = served
    with connect(site) as connection:
        connection.settimeout(0.05)  # the pace of the trickle, not a wait for anything
        sent = 0
        while sent < len(HEAD) - 4:  # never the blank line that ends the head
            try:
                assert connection.recv(1) == b""
                break  # closed
            except TimeoutError:
                connection.sendall(HEAD[sent:sent + 1])
                sent += 1
        else:
            raise AssertionError("the server waited for a head that took 2 s or more")


def head_of(size: int) -> bytes:
    """A GET /healthz head of exactly `size` bytes (a padding header makes up the rest)."""
    start, end = HEAD[:-2] + b"X-Padding: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


@pytest.mark.parametrize("pieces", [1, 4])
def test_a_head_over_the_limit_is_refused(served: tuple[DaemonSite, PostroomProcess],
                                          pieces: int) -> None:
    site, process = served
    head = head_of(HEAD_BYTES + 1024)
    with connect(site) as connection:
        for n in range(pieces):
            connection.sendall(head[n * len(head) // pieces:(n + 1) * len(head) // pieces])
        answer = closed_by_the_server(connection)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert b"connection: close" in answer.lower()
    assert process.wait_healthy()["status"] == "ok"


def test_an_unfinished_head_is_refused_once_past_the_limit(tmp_path: Path,
                                                          sink: MailServer) -> None:
    # One header that never ends, which the parser holds unseen: the bytes received count.
    # A long deadline here, so only the size limit can close the connection.
    with DaemonSite.create(tmp_path / "site", smtp_port=sink.port,
                           web={"header_timeout": 30.0}) as site:
        process = site.start("serve")
        process.wait_healthy()
        piece, sent, refused = b"a" * 65536, 0, False
        with connect(site) as connection:
            connection.sendall(HEAD[:-2] + b"X-Padding: ")
            try:
                while sent < 64 * 1024 * 1024:
                    connection.sendall(piece)
                    sent += len(piece)
            except (BrokenPipeError, ConnectionResetError):
                refused = True
        assert refused, f"the server took {sent:,} bytes of one head"
        assert process.wait_healthy()["status"] == "ok"
        assert process.stop() == 0


def test_a_head_just_within_the_limit_is_served(
        served: tuple[DaemonSite, PostroomProcess]) -> None:
    site, _ = served
    with connect(site) as connection:
        connection.sendall(head_of(HEAD_BYTES - 64))
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_an_idle_keep_alive_connection_is_closed_after_a_request(
        served: tuple[DaemonSite, PostroomProcess]) -> None:
    site, _ = served
    with connect(site) as connection:
        connection.sendall(HEAD)
        answer = closed_by_the_server(connection)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nconnection: close\r\n" not in answer.lower()  # kept alive, then timed out


def test_keep_alive_still_serves_several_requests(
        served: tuple[DaemonSite, PostroomProcess]) -> None:
    site, _ = served
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        assert [client.get("/healthz").status_code for _ in range(5)] == [200] * 5


def test_connections_beyond_max_connections_get_503(tmp_path: Path, sink: MailServer) -> None:
    # Long deadlines here, so the idle connections are still open when the request comes.
    with DaemonSite.create(tmp_path / "site", smtp_port=sink.port,
                           web={"header_timeout": 30.0, "max_connections": 20}) as site:
        process = site.start("serve")
        process.wait_healthy()
        idle = [connect(site) for _ in range(20)]
        try:
            with connect(site) as connection:
                connection.sendall(HEAD)
                assert closed_by_the_server(connection).startswith(b"HTTP/1.1 503 ")
        finally:
            for connection in idle:
                connection.close()
        assert process.wait_healthy()["status"] == "ok"
        assert process.stop() == 0


def test_the_server_runs_on_httptools_and_its_loop_on_uvloop() -> None:
    config = server_config(Starlette(), WebSettings(header_timeout=3.0), "127.0.0.1", 0)
    assert isinstance(config.http, type) and issubclass(config.http, HttpToolsProtocol)
    assert config.http.head_timeout == 3.0

    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    assert run_loop(loop_type()) is uvloop.Loop


# ---- either protocol, in this process -------------------------------------------------------

async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello\n")


@pytest.fixture(scope="module", params=["httptools", "h11"])
def protocol_port(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """A small app under server_config's protocol (httptools, or the h11 one it falls back
    to without httptools) in a thread of this process; yields the protocol and the port."""
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "h11":
            patch.setattr(web_server, "httptools_protocol", lambda: None)
        config = server_config(Starlette(routes=[Route("/healthz", hello)]),
                               WebSettings(header_timeout=0.5), "127.0.0.1", port)
    expected = {"httptools": "DeadlineHttpToolsProtocol", "h11": "DeadlineH11Protocol"}
    assert config.http.__name__ == expected[request.param]  # type: ignore[union-attr]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield request.param, port
    server.should_exit = True
    thread.join(10)


def test_either_protocol_closes_silent_and_half_sent_connections(
        protocol_port: tuple[str, int]) -> None:
    _, port = protocol_port
    with connect_to(port) as silent, connect_to(port) as half_sent:
        half_sent.sendall(HEAD[:30])
        assert closed_by_the_server(silent) == b""
        assert closed_by_the_server(half_sent) == b""


def test_either_protocol_refuses_an_unfinished_head_over_the_limit(
        protocol_port: tuple[str, int]) -> None:
    # (A whole head over the limit in one read, h11 takes: only ours refuses it, above.)
    protocol, port = protocol_port
    with connect_to(port) as connection:
        connection.sendall(head_of(HEAD_BYTES + 1024)[:-4])
        answer = closed_by_the_server(connection)
    # h11 says 400 (uvicorn's answer to any head h11 refuses); ours says 431.
    assert answer.startswith(b"HTTP/1.1 431 " if protocol == "httptools" else b"HTTP/1.1 400 ")
    assert b"connection: close" in answer.lower()


def test_either_protocol_serves_heads_within_the_limit_on_one_connection(
        protocol_port: tuple[str, int]) -> None:
    _, port = protocol_port
    with connect_to(port) as connection:
        for head in (HEAD, head_of(HEAD_BYTES - 64), HEAD):
            connection.sendall(head)
            answer = b""
            while not answer.endswith(b"hello\n"):
                chunk = connection.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")

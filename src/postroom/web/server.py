"""The HTTP server under the app: uvicorn on uvloop and httptools, set up so slow and idle
clients cannot hold it, and so no request head may be larger than HEAD_BYTES.

`postroom run` and `postroom serve` both build their server from `server_config` and run
their loop with `run_loop`. Without httptools (or uvloop), the same guarantees hold on
uvicorn's pure-Python h11 protocol (and asyncio's own loop).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from postroom.config import WebSettings

# The request line and headers together (h11's own default, said here).
HEAD_BYTES = 16 * 1024
TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; "
             b"charset=utf-8\r\ncontent-length: 31\r\nconnection: close\r\n\r\n"
             b"The request head is too large.\n")
T = TypeVar("T")


class HeadDeadline:
    """A deadline for each request's head, for one of uvicorn's HTTP protocols.

    uvicorn times out only idle keep-alive connections, and only after a first response: a
    client that connects and sends nothing, or a header byte now and then, holds its
    connection for ever. Here, whenever no request is in progress, what the client sends
    (the next request's head, or the rest of a body the app did not read) must be done
    within `head_timeout` seconds of its first byte (or of the connection), or the
    connection is closed.
    """

    head_timeout: float = 10.0
    _head_deadline: asyncio.TimerHandle | None = None
    # Set by the protocol this is mixed into.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def _follow_head_deadline(self) -> None:
        """After data came: arm the deadline if no request is in progress, else disarm it."""
        if self._waiting_for_a_request():
            if self._head_deadline is None:
                self._arm_head_deadline()
        else:
            self._disarm_head_deadline()

    def _waiting_for_a_request(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _arm_head_deadline(self) -> None:
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if not self._waiting_for_a_request() or self.transport.is_closing():
            return
        self._close_slow_connection()

    def _close_slow_connection(self) -> None:
        self.transport.close()


class DeadlineH11Protocol(HeadDeadline, H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's head (h11 itself refuses
    a head over `h11_max_incomplete_event_size`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _close_slow_connection(self) -> None:
        # Half-way through a message h11 refuses to say "closed": closing is all that is left.
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()


class HeadTooLarge(Exception):
    """Raised in a parser callback: the request head has passed HEAD_BYTES."""


def httptools_protocol() -> type[Any] | None:
    """Return uvicorn's httptools protocol with the head deadline and the head size limit,
    or None if httptools is not installed."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class DeadlineHttpToolsProtocol(HeadDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol, with a deadline for each request's head, and a
        head larger than HEAD_BYTES refused with 431 (httptools has no limit of its own).

        The head's size is counted as the parser hands it over (the URL as it comes, each
        header once whole). A header still coming is held by the parser unseen, so while a
        head is unfinished the bytes received count too, from the start of the read it
        began in; if an earlier request ended in that read, where the head began is not
        known, and they count from the next read. So a connection never holds more than
        HEAD_BYTES of an unfinished head, or one read (at most 256 KB) and HEAD_BYTES.
        """

        _in_head = False
        _head_began = False  # in the read being parsed
        _message_ended = False  # in the read being parsed
        _head_size = 0  # what the parser handed over
        _head_from_read_start = False
        _unfinished_head_bytes = 0  # received since the head began, as far as known
        _refusing = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_deadline()

        def data_received(self, data: bytes) -> None:
            self._head_began = self._message_ended = False
            super().data_received(data)
            if self.transport.is_closing():  # refused (400, 431) while parsing
                return
            if self._in_head:
                if not self._head_began:
                    self._unfinished_head_bytes += len(data)
                elif self._head_from_read_start:
                    self._unfinished_head_bytes = len(data)
                if self._unfinished_head_bytes > HEAD_BYTES:
                    self._refuse_large_head()
                    return
            self._follow_head_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_deadline()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = self._head_began = True
            self._head_from_read_start = not self._message_ended
            self._head_size = self._unfinished_head_bytes = 0

        def on_url(self, url: bytes) -> None:
            self._count_head(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_head(len(name) + len(value) + 4)  # ": " and CRLF
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            # The request line's method, spaces and version, and the blank line.
            self._count_head(len(self.parser.get_method()) + 15)
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._message_ended = True
            super().on_message_complete()

        def _count_head(self, size: int) -> None:
            self._head_size += size
            if self._head_size > HEAD_BYTES:
                # httptools stops parsing, and uvicorn answers 400: send_400_response.
                self._refusing = True
                raise HeadTooLarge

        def send_400_response(self, msg: str) -> None:
            if self._refusing:
                self._refuse_large_head()
            else:
                super().send_400_response(msg)

        def _refuse_large_head(self) -> None:
            # While an earlier request's response is on its way, a 431 would land in it.
            if self._waiting_for_a_request():
                self.transport.write(TOO_LARGE)
            self.transport.close()

    return DeadlineHttpToolsProtocol


def server_config(app: ASGIApp, web: WebSettings, host: str, port: int) -> uvicorn.Config:
    """Given the app and the web settings, return the uvicorn config to serve it with."""
    base = httptools_protocol() or DeadlineH11Protocol
    protocol = type(base.__name__, (base,), {"head_timeout": web.header_timeout})
    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False,
        proxy_headers=bool(web.trusted_proxies),
        forwarded_allow_ips=list(web.trusted_proxies) or None,
        http=protocol,
        h11_max_incomplete_event_size=HEAD_BYTES,
        timeout_keep_alive=web.keep_alive_timeout,
        # Beyond this many connections (or running requests), a request gets 503.
        limit_concurrency=web.max_connections,
    )


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on a new event loop: uvloop's if it is installed (about
    half again as many requests a second), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)

"""The HTTP server under the app: uvicorn, set up so slow and idle clients cannot hold it.

`postroom run` and `postroom serve` both build their server from `server_config`.
"""

from __future__ import annotations

import asyncio
import contextlib

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from postroom.config import WebSettings

# The request line and headers together (h11's own default, said here).
HEAD_BYTES = 16 * 1024


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's head.

    uvicorn times out only idle keep-alive connections, and only after a first response: a
    client that connects and sends nothing, or a header byte now and then, holds its
    connection for ever. Here, whenever no request is in progress, what the client sends
    (the next request's head, or the rest of a body the app did not read) must be done
    within `head_timeout` seconds of its first byte (or of the connection), or the
    connection is closed.
    """

    head_timeout: float = 10.0
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting_for_a_request():
            if self._head_deadline is None:
                self._arm_head_deadline()
        else:
            self._disarm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _waiting_for_a_request(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

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
        # Half-way through a message h11 refuses to say "closed": closing is all that is left.
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()


def server_config(app: ASGIApp, web: WebSettings, host: str, port: int) -> uvicorn.Config:
    """Given the app and the web settings, return the uvicorn config to serve it with."""
    protocol = type("DeadlineH11Protocol", (DeadlineH11Protocol,),
                    {"head_timeout": web.header_timeout})
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

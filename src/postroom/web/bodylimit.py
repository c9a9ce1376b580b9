"""Request bodies: a size limit per endpoint, and a deadline to receive them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Both refusals close the connection: whatever is left of the body is never read.
CLOSE = {"Connection": "close"}
TOO_LARGE = "The request body is too large.\n"
TOO_SLOW = "The request body came too slowly.\n"


class BodyLimit:
    """Refuses a body over its endpoint's limit with 413, and one that comes too slowly with 408.

    A Content-Length over the limit is refused before a byte of the body is read; a body
    without one (chunked) is cut off as soon as it passes the limit, so no endpoint ever
    holds more than its limit in memory.
    """

    def __init__(self, app: ASGIApp, limits: Mapping[str, int], default: int,
                 timeout: float) -> None:
        self.app, self.limits, self.default, self.timeout = app, limits, default, timeout

    def limit_for(self, path: str) -> int:
        """Given a request path, return its limit: its own entry, else that of the longest
        entry ending in '/' that starts it ("/unsubscribe/"), else the default."""
        if path in self.limits:
            return self.limits[path]
        prefixes = [p for p in self.limits if p.endswith("/") and path.startswith(p)]
        return self.limits[max(prefixes, key=len)] if prefixes else self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        # A malformed length (which the HTTP server should have refused already) counts too.
        if length is not None and (not length.isdigit() or int(length) > limit):
            await PlainTextResponse(TOO_LARGE, 413, headers=CLOSE)(scope, receive, send)
            return
        await self.app(scope, self._limited(receive, limit), send)

    def _limited(self, receive: Receive, limit: int) -> Receive:
        """Return `receive` counting the body against `limit` and the deadline."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        received, complete = 0, False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body, only a disconnect can come: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, TOO_SLOW, headers=CLOSE) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, TOO_LARGE, headers=CLOSE)
                complete = not message.get("more_body", False)
            return message

        return limited_receive

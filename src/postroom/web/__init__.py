"""The web app: feeds for readers, pages for subscribers, /healthz for operators."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from postroom.store import reading
from postroom.web import pages
from postroom.web.bodylimit import BodyLimit
from postroom.web.csrf import origin_of
from postroom.web.feedfiles import feed_response, not_found, send_from_memory
from postroom.web.headers import SecurityHeaders
from postroom.web.state import WebState

# The request bodies the endpoints take (bytes): a form with a token and an address, the
# JSON variant, and RFC 8058's one-click body; other endpoints read none.
BODY_LIMITS = {"/subscribe": 16 * 1024, "/api/subscribe": 4 * 1024, "/unsubscribe/": 4 * 1024}
OTHER_BODY_LIMIT = 1024
# How often the app looks for feed files written by another process (`postroom build`).
FEEDS_REFRESH_SECONDS = 1.0

log = logging.getLogger(__name__)


class PostroomApp(Starlette):
    """The Starlette app, with plain GETs and HEADs of the feeds answered first, straight
    from memory: readers poll them far more often than anything else is asked for."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and await send_from_memory(self.state.postroom.feeds,
                                                              scope, send):
            return
        await super().__call__(scope, receive, send)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """While the app runs, keep its feeds in step with the output folder."""
    refreshing = asyncio.create_task(keep_feeds_fresh(app), name="feeds-refresh")
    try:
        yield
    finally:
        refreshing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refreshing


async def keep_feeds_fresh(app: Starlette, every: float = FEEDS_REFRESH_SECONDS) -> None:
    """Every `every` seconds, read again the feed files that changed on disk (in a thread).

    The daemon refreshes right after its own builds; this finds what a separate `postroom
    build` wrote. A failure keeps the files last read, and is said once.
    """
    failure: str | None = None
    while True:
        feeds = app.state.postroom.feeds  # the current state's: SIGHUP swaps it whole
        try:
            await asyncio.to_thread(feeds.refresh)
        except Exception as err:  # any: the loop must go on, serving what it has
            if str(err) != failure:
                log.error("feeds not read again from %s (the last ones read are served): %s",
                          feeds.folder, err, exc_info=not isinstance(err, OSError))
            failure = str(err)
        else:
            if failure is not None:
                log.info("feeds read again from %s after: %s", feeds.folder, failure)
                failure = None
        await asyncio.sleep(every)


async def feed(request: Request) -> Response:
    """A feed asked for in a way `send_from_memory` leaves to the app (CORS, a body), or
    a name that is not served."""
    found = pages.state_of(request).feeds.lookup(request.scope["path"].lstrip("/"))
    if found is None:
        return not_found()
    return feed_response(request, found)


async def healthz(request: Request) -> Response:
    state = pages.state_of(request)
    database_ok = await asyncio.to_thread(_database_ok, state)
    payload = pages.health_payload(state, database_ok)
    return JSONResponse(payload, status_code=200 if payload["status"] == "ok" else 503,
                        headers={"Cache-Control": "no-store"})


def _database_ok(state: WebState) -> bool:
    try:
        with reading(state.engine) as connection:
            connection.execute(text("SELECT 1"))
    except Exception:  # any failure to reach the database is what this reports
        return False
    return True


async def no_icon(request: Request) -> Response:
    # Browsers ask for it on every page; an empty answer keeps their consoles clean.
    return Response(status_code=204, headers={"Cache-Control": "public, max-age=86400"})


async def home(request: Request) -> Response:
    return RedirectResponse(pages.state_of(request).url("/subscribe"), status_code=303)


def create_app(state: WebState) -> PostroomApp:
    """Given the web state, return the ASGI app (the daemon mounts it; `serve` runs it)."""
    origin = origin_of(state.settings.site.base_url) or state.settings.site.base_url
    routes = [
        Route("/", home, methods=["GET"]),
        Route("/feed.atom", feed, methods=["GET", "HEAD"]),
        Route("/feed.rss", feed, methods=["GET", "HEAD"]),
        Route("/feed.json", feed, methods=["GET", "HEAD"]),
        Route("/feed.xsl", feed, methods=["GET", "HEAD"]),
        Route("/feed.html", feed, methods=["GET", "HEAD"]),
        Route("/tags/{name}", feed, methods=["GET", "HEAD"]),
        Route("/archive/{name}", feed, methods=["GET", "HEAD"]),
        Route("/subscribe", pages.subscribe_form, methods=["GET"], name="subscribe_form"),
        Route("/subscribe", pages.subscribe, methods=["POST"], name="subscribe"),
        Route("/subscribe/snippet", pages.snippet, methods=["GET"]),
        Route("/api/subscribe", pages.subscribe_json, methods=["POST"]),
        Route("/confirm/{token}", pages.confirm, methods=["GET"]),
        Route("/unsubscribe/{token}", pages.unsubscribe_page, methods=["GET"]),
        Route("/unsubscribe/{token}", pages.unsubscribe, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/favicon.ico", no_icon, methods=["GET", "HEAD"]),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(BodyLimit, limits=BODY_LIMITS, default=OTHER_BODY_LIMIT,
                   timeout=state.settings.web.body_timeout),
        # Only the JSON endpoint is meant for the blog's own pages on another origin.
        Middleware(CORSMiddleware, allow_origins=[origin], allow_methods=["POST"],
                   allow_headers=["content-type"]),
    ]
    app = PostroomApp(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.postroom = state
    return app

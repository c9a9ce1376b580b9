"""The web app: feeds for readers, pages for subscribers, /healthz for operators."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from postroom.store import reading
from postroom.web import pages
from postroom.web.bodylimit import BodyLimit
from postroom.web.csrf import origin_of
from postroom.web.feedfiles import feed_response, not_found
from postroom.web.headers import SecurityHeaders
from postroom.web.state import WebState

# The request bodies the endpoints take (bytes): a form with a token and an address, the
# JSON variant, and RFC 8058's one-click body; other endpoints read none.
BODY_LIMITS = {"/subscribe": 16 * 1024, "/api/subscribe": 4 * 1024, "/unsubscribe/": 4 * 1024}
OTHER_BODY_LIMIT = 1024


async def feed(request: Request) -> Response:
    state = pages.state_of(request)
    name = request.scope["path"].lstrip("/")
    found = state.feeds.lookup(name)
    if found is None:
        return not_found()
    return feed_response(request, found, name, state.settings.web.feed_max_age)


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


def create_app(state: WebState) -> Starlette:
    """Given the web state, return the ASGI app (the daemon mounts it; `serve` runs it)."""
    origin = origin_of(state.settings.site.base_url) or state.settings.site.base_url
    routes = [
        Route("/", home, methods=["GET"]),
        Route("/feed.atom", feed, methods=["GET", "HEAD"]),
        Route("/feed.rss", feed, methods=["GET", "HEAD"]),
        Route("/feed.json", feed, methods=["GET", "HEAD"]),
        Route("/feed.xsl", feed, methods=["GET", "HEAD"]),
        Route("/tags/{name}", feed, methods=["GET", "HEAD"]),
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
    app = Starlette(routes=routes, middleware=middleware)
    app.state.postroom = state
    return app

"""Subscribe, confirm and unsubscribe: the pages, and the JSON variant for embedding.

No enumeration: a valid address gets the same response whatever its state, and the
confirmation is sent in the background so the timing does not tell either.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from postroom import optin
from postroom.errors import SubscriberError
from postroom.subscribers import normalize_address
from postroom.tokens import ExpiredToken, InvalidToken
from postroom.web.csrf import COOKIE, origin_of, posted_from
from postroom.web.limits import mailbox_of, retry_after
from postroom.web.state import WebState

log = logging.getLogger(__name__)
DONE = "Check your inbox to confirm. If the address can receive mail, a message is on its way."
ONE_CLICK = "List-Unsubscribe=One-Click"


def state_of(request: Request) -> WebState:
    state: WebState = request.app.state.postroom
    return state


def message_page(state: WebState, heading: str, *paragraphs: str, status: int = 200) -> Response:
    html = state.page("message.html", heading=heading, paragraphs=paragraphs)
    return HTMLResponse(html, status_code=status)


def form_page(request: Request, email: str = "", error: str = "", status: int = 200) -> Response:
    """Return the subscription form with a fresh CSRF token (and its cookie)."""
    state = state_of(request)
    cookie, token = state.csrf.new_pair(request.cookies.get(COOKIE))
    html = state.page("subscribe.html", csrf=token, email=email, error=error,
                      action=state.url("/subscribe"))
    response = HTMLResponse(html, status_code=status)
    response.set_cookie(COOKIE, cookie, httponly=True, samesite="strict",
                        secure=state.url("").startswith("https:"), max_age=2 * 3600)
    return response


async def subscribe_form(request: Request) -> Response:
    return form_page(request)


async def subscribe(request: Request) -> Response:
    """POST /subscribe from the form: CSRF, honeypot, limits, then the same answer for all."""
    state = state_of(request)
    form = await request.form()
    raw = str(form.get("email", ""))[:400]
    token = str(form.get("csrf", "")) or None
    if not (state.csrf.valid(request.cookies.get(COOKIE), token) or _from_the_blog(request)):
        # A post from anywhere else without a token (a stale page, a cross-site form): the
        # form again, with a token, so one more click subscribes.
        return form_page(request, raw, "Please press Subscribe once more to confirm.", 400)
    honeypot = str(form.get("website", ""))
    outcome = await _request(state, request, raw, honeypot=honeypot)
    if isinstance(outcome, Response):
        return outcome
    if outcome:
        return form_page(request, raw, outcome, 400)
    page = message_page(state, "Almost there", DONE)
    # A filled honeypot gets the same page, but nothing is recorded and nothing is sent.
    return page if honeypot else _done(state, page, raw)


def _from_the_blog(request: Request) -> bool:
    """Whether the post comes from a page of the blog (the snippet pasted there)."""
    blog = origin_of(state_of(request).settings.site.base_url)
    return blog is not None and posted_from(
        request.headers.get("origin"), request.headers.get("referer"), blog)


async def subscribe_json(request: Request) -> Response:
    """POST /api/subscribe with {"email": ...}: the JSON variant, same rules, same answers."""
    state = state_of(request)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        # Only JSON: a cross-site form cannot send it without a CORS preflight.
        return JSONResponse({"ok": False, "error": "send application/json"}, status_code=415)
    try:
        body = await request.json()
    except ValueError:
        body = None
    raw = body.get("email", "") if isinstance(body, dict) else ""
    outcome = await _request(state, request, str(raw)[:400], honeypot="", as_json=True)
    if isinstance(outcome, Response):
        return outcome
    if outcome:
        return JSONResponse({"ok": False, "error": outcome}, status_code=400)
    return _done(state, JSONResponse({"ok": True, "message": DONE}), str(raw))


async def _request(state: WebState, request: Request, raw: str, honeypot: str,
                   as_json: bool = False) -> Response | str | None:
    """Apply the limits and validation; return a response to send, an error, or None (ok)."""
    client = request.client.host if request.client else "unknown"
    try:
        email: str | None = normalize_address(raw)
    except SubscriberError:
        email = None
    # A bot's request (honeypot) and a non-address count against the client only.
    mailbox = mailbox_of(email) if email and not honeypot else None
    wait = await asyncio.to_thread(state.limits.admit_blocking, state.engine, client, mailbox,
                                   state.clock())
    if wait:
        return _too_many(state, wait, as_json)
    if honeypot:
        log.info("honeypot filled by %s: ignored", client)
        return None
    if email is None:
        return "That does not look like an email address."
    return None


def _too_many(state: WebState, wait: float, as_json: bool) -> Response:
    headers = {"Retry-After": retry_after(wait)}
    text = "Too many requests. Please try again later."
    if as_json:
        return JSONResponse({"ok": False, "error": text}, status_code=429, headers=headers)
    response = message_page(state, "Slow down", text, status=429)
    response.headers.update(headers)
    return response


def _done(state: WebState, response: Response, raw: str) -> Response:
    try:
        email = normalize_address(raw)
    except SubscriberError:
        return response  # not an address: nothing to record
    response.background = BackgroundTask(_record_and_confirm, state, email)
    return response


async def _record_and_confirm(state: WebState, email: str) -> None:
    outcome = await asyncio.to_thread(
        optin.request_and_queue_confirmation, state.engine, email, state.clock(), "web",
        state.settings.site.host, state.tokens.confirm, state.limits.may_confirm)
    if outcome == "active":
        log.info("subscribe request for an active address: nothing to send")
    elif outcome == "held":
        # Within the address's cool-down, or over the hourly cap: the same answer, no mail.
        log.info("subscribe request recorded; no confirmation now (cool-down or hourly cap)")
    else:
        log.info("confirmation queued")
        state.outbox_ready()


async def _subscriber_of(state: WebState, token: str) -> int:
    """Return the subscriber an unsubscribe link names; InvalidToken if it names none."""
    found = await asyncio.to_thread(optin.subscriber_of_link, state.engine, token)
    if found is not None:
        return found
    # Links in emails sent before opaque links existed carry a signed subscriber id.
    return state.tokens.read_unsubscribe(token)


async def confirm(request: Request) -> Response:
    state = state_of(request)
    max_age = state.settings.web.confirm_expiry_days * 86400
    try:
        subscriber_id, email, version = state.tokens.read_confirm(
            request.path_params["token"], max_age)
    except ExpiredToken:
        return message_page(state, "This link has expired",
                            "Confirmation links work for a limited time. Subscribe again "
                            "to get a new one.", status=410)
    except InvalidToken:
        return _invalid_link(state)
    outcome = await asyncio.to_thread(
        optin.confirm, state.engine, subscriber_id, email, version, state.clock())
    if outcome == "stale":
        return message_page(state, "This link is no longer valid",
                            "It was already used, or the subscription changed since. "
                            "Subscribe again to get a new link.", status=410)
    log.info("subscriber %d confirmed (%s)", subscriber_id, outcome)
    return message_page(state, "You are subscribed",
                        f"Thank you. New posts of {state.settings.site.title} will come to "
                        f"{email}.")


def _invalid_link(state: WebState) -> Response:
    return message_page(state, "This link is not valid",
                        "Check that the whole link was copied from the email.", status=400)


async def unsubscribe_page(request: Request) -> Response:
    state = state_of(request)
    try:
        await _subscriber_of(state, request.path_params["token"])
    except InvalidToken:
        return _invalid_link(state)
    token = quote(request.path_params["token"], safe="")
    html = state.page("unsubscribe.html", action=state.url(f"/unsubscribe/{token}"))
    return HTMLResponse(html)


async def unsubscribe(request: Request) -> Response:
    """POST: the page's button, or RFC 8058 one-click from a mail client (no cookie, no step)."""
    state = state_of(request)
    try:
        subscriber_id = await _subscriber_of(state, request.path_params["token"])
    except InvalidToken:
        return _invalid_link(state)
    body = (await _start_of_body(request, 1000)).decode("utf-8", "replace")
    email = await asyncio.to_thread(optin.unsubscribe, state.engine, subscriber_id, state.clock())
    log.info("subscriber %d unsubscribed (%s)", subscriber_id,
             "one-click" if ONE_CLICK in body else "page")
    if ONE_CLICK in body:
        return PlainTextResponse("unsubscribed\n")
    heading = "You are unsubscribed"
    text = f"{email} will get no more emails from {state.settings.site.title}." if email else ""
    return message_page(state, heading, text)


async def _start_of_body(request: Request, size: int) -> bytes:
    """Return the first `size` bytes of the request's body, reading not much more."""
    start = b""
    async for chunk in request.stream():
        start += chunk
        if len(start) >= size:
            break
    return start[:size]


async def snippet(request: Request) -> Response:
    """GET /subscribe/snippet: an HTML form to paste into the blog's own pages."""
    state = state_of(request)
    html = state.page("embed_snippet.html", action=state.url("/subscribe"))
    return PlainTextResponse(html)


def health_payload(state: WebState, database_ok: bool) -> dict[str, Any]:
    running = state.health.scheduler_running
    sender = state.health.sender
    sender_ok = sender is None or sender.failing_since is None
    healthy = database_ok and sender_ok and (running is None or running())
    lag = state.health.loop_lag.percentile(0.99) if state.health.loop_lag else None
    return {
        "status": "ok" if healthy else "degraded",
        "database": database_ok,
        "scheduler": None if running is None else running(),
        "sender": None if sender is None else {
            "ok": sender_ok, "last_error": sender.last_error,
            "failing_since": sender.failing_since.isoformat() if sender.failing_since else None,
        },
        "loop_lag_p99_ms": None if lag is None else round(lag * 1000, 2),
        "last_build": state.health.last_build.isoformat() if state.health.last_build else None,
        "last_digest": state.health.last_digest.isoformat() if state.health.last_digest else None,
        "last_send": state.health.last_send.isoformat() if state.health.last_send else None,
    }

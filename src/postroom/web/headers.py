"""Security headers on every response, with the Content-Security-Policy that fits it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Pages load nothing from anywhere: no scripts at all, styles inline, forms post to us.
PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# A feed a browser opens is a page too: its XSL stylesheet (which CSP counts as a script)
# comes from us, the page it makes has inline styles and links, and nothing else.
FEED_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
# Everything else (JSON, plain text, empty answers) is never a page: it may load nothing.
NOTHING_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
# The feeds' types, answered under FEED_POLICY.
FEED_TYPES = (b"application/xml", b"application/atom+xml", b"application/rss+xml", b"text/xsl",
              b"application/feed+json")


class SecurityHeaders:
    """Adds the headers every response carries, feeds and errors included, and the CSP that
    fits what it is: a page, a feed a browser may show, or anything else."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                content_type = next((v for k, v in headers if k == b"content-type"), None)
                added = security_headers(message["status"], content_type)
                if any(k == b"content-security-policy" for k, _ in headers):
                    # Chosen by the endpoint (a page's 304, which has no Content-Type).
                    added = [(k, v) for k, v in added if k != b"content-security-policy"]
                message["headers"] = headers + added
            await send(message)

        await self.app(scope, receive, send_with_headers)


def security_headers(status: int, content_type: bytes | None) -> list[tuple[bytes, bytes]]:
    """Given a response's status and Content-Type, return the headers SecurityHeaders adds
    (the feeds answered from memory carry them too: web/feedfiles.py)."""
    return [(b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"content-security-policy", policy_for(status, content_type).encode())]


def policy_for(status: int, content_type: bytes | None) -> str:
    """Given a response's status and Content-Type, return its Content-Security-Policy."""
    if status == 304 and content_type is None:
        # A browser merges a 304's headers into its cached copy: it must keep that copy's
        # policy. Feeds answer 304 with no Content-Type; a feed's HTML page says it is one.
        return FEED_POLICY
    media_type = (content_type or b"").split(b";")[0].strip().lower()
    if media_type == b"text/html":
        return PAGE_POLICY
    return FEED_POLICY if media_type in FEED_TYPES else NOTHING_POLICY

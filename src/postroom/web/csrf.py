"""CSRF protection for the subscription form: a signed token matched against a cookie, or a
post from the blog's own pages.

The form carries a signed, timed copy of a random value that is also in a SameSite cookie;
another site can make a browser post the form, but cannot read the cookie to forge it. The
snippet pasted into the blog's pages carries no token; a browser says where such a post
comes from (Origin, or Referer without it), and no other site can make it say the blog.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from itsdangerous import BadData, URLSafeTimedSerializer

COOKIE = "postroom_csrf"
MAX_AGE = 2 * 3600


class Csrf:
    def __init__(self, secret: str) -> None:
        self._signer = URLSafeTimedSerializer(secret, salt="postroom.csrf")

    def new_pair(self, cookie: str | None) -> tuple[str, str]:
        """Return (cookie value, form token), keeping an existing well-formed cookie."""
        value = cookie if cookie and len(cookie) == 32 else secrets.token_hex(16)
        return value, str(self._signer.dumps(value))

    def valid(self, cookie: str | None, token: str | None) -> bool:
        if not cookie or not token:
            return False
        try:
            value = self._signer.loads(token, max_age=MAX_AGE)
        except BadData:
            return False
        return isinstance(value, str) and hmac.compare_digest(value, cookie)


def origin_of(url: str) -> str | None:
    """Given a URL (or an Origin header), return its origin as browsers write it
    ("https://blog.example.org", a default port left out), or None if it has none."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in ("http", "https") or not host:
        return None
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


def posted_from(origin: str | None, referer: str | None, expected: str) -> bool:
    """Whether a POST's Origin header (or, only when it has none, its Referer) names the
    `expected` origin."""
    if origin is not None:
        return origin_of(origin) == expected
    return referer is not None and origin_of(referer) == expected

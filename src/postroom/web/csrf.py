"""CSRF protection for the subscription form: a signed token matched against a cookie.

The form carries a signed, timed copy of a random value that is also in a SameSite cookie;
another site can make a browser post the form, but cannot read the cookie to forge it.
"""

from __future__ import annotations

import hmac
import secrets

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

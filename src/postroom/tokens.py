"""Signed tokens for the links in emails (itsdangerous: HMAC, compared in constant time)."""

from __future__ import annotations

from itsdangerous import BadData, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

from postroom.errors import PostroomError


class InvalidToken(PostroomError):
    """A token that was forged, mangled, or has expired."""


class ExpiredToken(InvalidToken):
    """A genuine token, too old to be used."""


class Tokens:
    """Makes and reads the tokens of unsubscribe and confirmation links."""

    def __init__(self, secret: str) -> None:
        # Different salts: a confirmation token can never be used to unsubscribe, or back.
        self._unsubscribe = URLSafeSerializer(secret, salt="postroom.unsubscribe")
        self._confirm = URLSafeTimedSerializer(secret, salt="postroom.confirm")

    def unsubscribe(self, subscriber_id: int) -> str:
        """Return a token that unsubscribes one subscriber; it does not expire (old emails)."""
        return str(self._unsubscribe.dumps(subscriber_id))

    def read_unsubscribe(self, token: str) -> int:
        return _as_id(self._read(self._unsubscribe.loads, token))

    def confirm(self, subscriber_id: int, email: str, version: int) -> str:
        """Return a token confirming one address for one subscriber; it expires.

        `version` is the subscriber's last status change: once the status changes again
        (confirmed, then unsubscribed), the token no longer works, so resubscribing always
        takes a new confirmation.
        """
        return str(self._confirm.dumps([subscriber_id, email, version]))

    def read_confirm(self, token: str, max_age_seconds: int) -> tuple[int, str, int]:
        value = self._read(lambda t: self._confirm.loads(t, max_age=max_age_seconds), token)
        if not (isinstance(value, list) and len(value) == 3 and isinstance(value[1], str)):
            raise InvalidToken("malformed confirmation token")
        return _as_id(value[0]), value[1], _as_id(value[2])

    @staticmethod
    def _read(loads: object, token: str) -> object:
        try:
            return loads(token)  # type: ignore[operator]
        except SignatureExpired as err:
            raise ExpiredToken(str(err)) from err
        except BadData as err:
            raise InvalidToken(str(err)) from err


def _as_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidToken("malformed token")
    return value

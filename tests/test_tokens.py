"""Signed tokens for unsubscribe and confirmation links: round trips, forgeries, salts, expiry."""

from __future__ import annotations

import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from itsdangerous import TimestampSigner, URLSafeSerializer, URLSafeTimedSerializer

from postroom.tokens import ExpiredToken, InvalidToken, Tokens

SECRET = "a-secret-key-for-the-tests-only"
DAY = 24 * 3600


@pytest.fixture
def tokens() -> Tokens:
    return Tokens(SECRET)


def test_unsubscribe_round_trip(tokens: Tokens) -> None:
    token = tokens.unsubscribe(42)
    assert tokens.read_unsubscribe(token) == 42
    # It goes into a URL as it is.
    assert all(c.isalnum() or c in "-_." for c in token)


def test_confirm_round_trip(tokens: Tokens) -> None:
    token = tokens.confirm(7, "alice@example.org", 1740819600000)
    assert tokens.read_confirm(token, max_age_seconds=3 * DAY) == (
        7, "alice@example.org", 1740819600000)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=2**53), st.emails(), st.integers(min_value=0))
def test_round_trips_for_any_id_and_address(subscriber_id: int, email: str, version: int) -> None:
    tokens = Tokens(SECRET)
    assert tokens.read_unsubscribe(tokens.unsubscribe(subscriber_id)) == subscriber_id
    token = tokens.confirm(subscriber_id, email, version)
    assert tokens.read_confirm(token, DAY) == (subscriber_id, email, version)


def test_tokens_from_another_secret_are_refused(tokens: Tokens) -> None:
    other = Tokens("another-secret")
    with pytest.raises(InvalidToken):
        tokens.read_unsubscribe(other.unsubscribe(42))
    with pytest.raises(InvalidToken):
        tokens.read_confirm(other.confirm(7, "alice@example.org", 1), DAY)


BASE64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def flipped(char: str) -> str:
    """Return another base64url digit whose top bit differs (a separator becomes a digit).

    The top bit, because the low bits of a segment's last digit are padding: changing
    only those decodes to the same bytes, which is no forgery.
    """
    return BASE64URL[BASE64URL.index(char) ^ 32] if char in BASE64URL else "A"


def mangled(token: str) -> list[str]:
    """Return variants of a token: each character changed in turn, cut short, grown, empty."""
    variants = []
    for index, char in enumerate(token):
        variants.append(token[:index] + flipped(char) + token[index + 1:])
    variants += [token[:-1], token[1:], token + "x", token.replace(".", ""), "", ".", "x.y"]
    return variants


def test_every_mangled_unsubscribe_token_is_refused(tokens: Tokens) -> None:
    token = tokens.unsubscribe(42)
    for variant in mangled(token):
        if variant == token:
            continue
        with pytest.raises(InvalidToken):
            tokens.read_unsubscribe(variant)


def test_every_mangled_confirmation_token_is_refused(tokens: Tokens) -> None:
    token = tokens.confirm(7, "alice@example.org", 1)
    for variant in mangled(token):
        if variant == token:
            continue
        with pytest.raises(InvalidToken):
            tokens.read_confirm(variant, DAY)


def test_a_forged_payload_is_refused(tokens: Tokens) -> None:
    # Another subscriber's id with the original signature: the signature no longer matches.
    token = tokens.unsubscribe(42)
    signature = token.rsplit(".", 1)[1]
    forged = URLSafeSerializer("guess", salt="postroom.unsubscribe").dumps(43)
    with pytest.raises(InvalidToken):
        tokens.read_unsubscribe(forged.rsplit(".", 1)[0] + "." + signature)
    with pytest.raises(InvalidToken):
        tokens.read_unsubscribe(forged)


@given(st.text(max_size=200))
def test_arbitrary_text_is_never_a_token(text: str) -> None:
    tokens = Tokens(SECRET)
    with pytest.raises(InvalidToken):
        tokens.read_unsubscribe(text)
    with pytest.raises(InvalidToken):
        tokens.read_confirm(text, DAY)


def test_a_confirmation_token_cannot_unsubscribe_and_back(tokens: Tokens) -> None:
    with pytest.raises(InvalidToken):
        tokens.read_unsubscribe(tokens.confirm(7, "alice@example.org", 1))
    with pytest.raises(InvalidToken):
        tokens.read_confirm(tokens.unsubscribe(7), DAY)


def test_well_signed_tokens_of_the_wrong_shape_are_refused(tokens: Tokens) -> None:
    # Signed with the right key and salt, but not what postroom issues.
    unsubscribe = URLSafeSerializer(SECRET, salt="postroom.unsubscribe")
    confirm = URLSafeTimedSerializer(SECRET, salt="postroom.confirm")
    for value in ("42", True, 4.2, None, [42]):
        with pytest.raises(InvalidToken):
            tokens.read_unsubscribe(unsubscribe.dumps(value))
    for value in (7, [7], [7, "a@example.org"], [7, "a@example.org", "1"],
                  [7, "a@example.org", 1, 2], ["7", "a@example.org", 1],
                  [True, "a@example.org", 1], [7, "a@example.org", False], [7, 8, 1]):
        with pytest.raises(InvalidToken):
            tokens.read_confirm(confirm.dumps(value), DAY)


def confirmation_issued_ago(seconds: int, value: list[object]) -> str:
    """A confirmation token as `Tokens` signs it, but stamped `seconds` ago."""

    class Aged(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - seconds

    return str(URLSafeTimedSerializer(SECRET, salt="postroom.confirm", signer=Aged)
               .dumps(value))


def test_confirmation_tokens_expire(tokens: Tokens) -> None:
    fresh = tokens.confirm(7, "alice@example.org", 1)
    assert tokens.read_confirm(fresh, max_age_seconds=60) == (7, "alice@example.org", 1)
    token = confirmation_issued_ago(30, [7, "alice@example.org", 1])
    with pytest.raises(ExpiredToken, match="age"):
        tokens.read_confirm(token, max_age_seconds=20)
    # Expired is a kind of invalid: a page that only knows InvalidToken refuses it too.
    with pytest.raises(InvalidToken):
        tokens.read_confirm(token, max_age_seconds=20)
    assert tokens.read_confirm(token, max_age_seconds=60) == (7, "alice@example.org", 1)


def test_a_mangled_old_token_is_invalid_not_expired(tokens: Tokens) -> None:
    token = Tokens("another-secret").confirm(7, "alice@example.org", 1)
    with pytest.raises(InvalidToken) as raised:
        tokens.read_confirm(token, max_age_seconds=-1)
    assert not isinstance(raised.value, ExpiredToken)


def test_unsubscribe_tokens_do_not_expire(tokens: Tokens) -> None:
    # An unsubscribe link in a years-old email still works: the token carries no timestamp.
    token = tokens.unsubscribe(42)
    assert token.count(".") == 1
    assert Tokens(SECRET).read_unsubscribe(token) == 42

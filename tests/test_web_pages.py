"""web/pages.py over real HTTP: subscribe, confirm and unsubscribe against the web app under
uvicorn on a loopback port, a real SQLite file, and a real SMTP server for the confirmations."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import lxml.html
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from daemonproc import DaemonSite
from mailserver import MailServer
from postroom.optin import version_of
from postroom.store import secret_key
from postroom.tokens import Tokens

PAGE_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
MakeSite = Callable[..., DaemonSite]


@pytest.fixture
def make_site(tmp_path: Path, sink: MailServer) -> Iterator[MakeSite]:
    """Return a factory: make_site(**config tables) → a site whose web app is being served."""
    sites: list[DaemonSite] = []

    def make(**overrides: dict[str, Any]) -> DaemonSite:
        tables: dict[str, dict[str, Any]] = {
            "web": {"rate_per_client": 50, "rate_per_email": 10}}
        for table, values in overrides.items():
            tables.setdefault(table, {}).update(values)
        site = DaemonSite.create(tmp_path / f"site{len(sites)}", smtp_port=sink.port, **tables)
        sites.append(site)
        site.serve_in_process()
        return site

    yield make
    for site in sites:
        site.close()


@pytest.fixture
def site(make_site: MakeSite) -> DaemonSite:
    return make_site()


@pytest.fixture
def client(site: DaemonSite) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site.base_url, timeout=10) as session:
        yield session


def csrf_token(client: httpx.Client) -> str:
    """GET the form (which sets the CSRF cookie in the client) and return its token."""
    page = client.get("/subscribe")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def subscribe(client: httpx.Client, email: str, **fields: str) -> httpx.Response:
    """Fill in the form as a browser would: GET it, POST it back with its token."""
    token = csrf_token(client)
    return client.post("/subscribe", data={"csrf": token, "email": email, "website": "",
                                           **fields})


def heading(response: httpx.Response) -> str:
    return str(lxml.html.fromstring(response.text).findtext(".//h1")).strip()


def confirm_link(sink: MailServer, site: DaemonSite, email: str, number: int = 1) -> str:
    """Wait for the `number`-th confirmation to `email`; return the link in it."""
    deadline = time.monotonic() + 10
    while len(sink.messages_to(email)) < number:
        assert time.monotonic() < deadline, f"no confirmation #{number} to {email}"
        time.sleep(0.02)
    message = sink.messages_to(email)[number - 1]
    return message.link(re.escape(site.url("/confirm/")) + r"\S+")


def path_of(url: str) -> str:
    return httpx.URL(url).raw_path.decode()


def confirm_token_aged(site: DaemonSite, email: str, days: float) -> str:
    """A genuine confirmation token for `email`, as if issued `days` ago."""
    row = site.subscriber(email)
    assert row is not None

    class Aged(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - days * 86400)

    serializer = URLSafeTimedSerializer(secret_key(site.engine, env={}),
                                        salt="postroom.confirm", signer=Aged)
    return str(serializer.dumps([row.id, email, version_of(row.status_changed_at)]))


def mail_sent_in_the_end(site: DaemonSite, sink: MailServer) -> int:
    """Wait until the server finished every request so far and sent the mail they queued;
    return how many messages the mail server got: no more will come."""
    site.servers[-1].wait_idle()
    return sink.count()


# ---- the form ----------------------------------------------------------------------------

def test_the_form_page_sets_a_strict_csrf_cookie_and_a_strict_policy(
        client: httpx.Client, site: DaemonSite) -> None:
    page = client.get("/subscribe")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == PAGE_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    cookie = page.headers["set-cookie"].lower()
    assert cookie.startswith("postroom_csrf=")
    assert "httponly" in cookie and "samesite=strict" in cookie
    form = lxml.html.fromstring(page.text).forms[0]
    assert form.method == "POST" and form.action == site.url("/subscribe")
    assert {"csrf", "email", "website"} <= set(form.fields.keys())
    assert 'src="http' not in page.text and "<script" not in page.text  # no external assets


def test_home_redirects_to_the_form(client: httpx.Client, site: DaemonSite) -> None:
    response = client.get("/")
    assert response.status_code == 303
    assert response.headers["location"] == site.url("/subscribe")


# ---- subscribe and confirm -----------------------------------------------------------------

def test_subscribe_then_confirm_then_confirm_again(
        client: httpx.Client, site: DaemonSite, sink: MailServer) -> None:
    response = subscribe(client, "reader@example.org")
    assert response.status_code == 200
    assert heading(response) == "Almost there"
    link = confirm_link(sink, site, "reader@example.org")
    assert site.status_of("reader@example.org") == "pending"
    message = sink.messages_to("reader@example.org")[0].parsed()
    assert message["Subject"] == "Confirm your subscription to Daemon Notes"

    confirmed = httpx.get(link)  # from the mail client: no cookie
    assert confirmed.status_code == 200
    assert heading(confirmed) == "You are subscribed"
    assert "reader@example.org" in confirmed.text
    assert confirmed.headers["content-security-policy"] == PAGE_POLICY
    row = site.subscriber("reader@example.org")
    assert row is not None and row.status == "active"

    # Mail scanners and impatient people open links twice: the same answer, nothing changes.
    again = httpx.get(link)
    assert again.status_code == 200 and heading(again) == "You are subscribed"
    later = site.subscriber("reader@example.org")
    assert later is not None and later.confirmed_at == row.confirmed_at


@pytest.mark.parametrize("forge", ["garbage", "other-secret", "tampered", "unsubscribe-token"])
def test_a_forged_confirmation_token_gets_a_clear_400_and_changes_nothing(
        client: httpx.Client, site: DaemonSite, forge: str) -> None:
    ids = site.add_subscribers(["pending@example.org"], status="pending")
    row = site.subscriber("pending@example.org")
    assert row is not None
    version = version_of(row.status_changed_at)
    genuine = site.tokens().confirm(ids["pending@example.org"], "pending@example.org", version)
    token = {
        "garbage": "not-a-token",
        "other-secret": Tokens("another key").confirm(row.id, row.email, version),
        "tampered": genuine[:-3] + ("AAA" if not genuine.endswith("AAA") else "BBB"),
        "unsubscribe-token": site.tokens().unsubscribe(row.id),
    }[forge]
    response = client.get(f"/confirm/{token}")
    assert response.status_code == 400
    assert heading(response) == "This link is not valid"
    assert response.headers["content-security-policy"] == PAGE_POLICY
    assert site.status_of("pending@example.org") == "pending"


def test_a_token_for_one_address_cannot_confirm_another(
        client: httpx.Client, site: DaemonSite) -> None:
    ids = site.add_subscribers(["victim@example.org"], status="pending")
    row = site.subscriber("victim@example.org")
    assert row is not None
    token = site.tokens().confirm(ids["victim@example.org"], "attacker@example.org",
                                  version_of(row.status_changed_at))
    response = client.get(f"/confirm/{token}")
    assert response.status_code == 410
    assert site.status_of("victim@example.org") == "pending"


def test_an_expired_confirmation_token_gets_a_410_and_changes_nothing(
        client: httpx.Client, site: DaemonSite) -> None:
    site.add_subscribers(["late@example.org", "prompt@example.org"], status="pending")
    # confirm_expiry_days is 7 by default: 8 days is too old, 6 days is not.
    expired = client.get(f"/confirm/{confirm_token_aged(site, 'late@example.org', 8)}")
    assert expired.status_code == 410
    assert heading(expired) == "This link has expired"
    assert site.status_of("late@example.org") == "pending"
    fresh = client.get(f"/confirm/{confirm_token_aged(site, 'prompt@example.org', 6)}")
    assert fresh.status_code == 200
    assert site.status_of("prompt@example.org") == "active"


def test_the_expiry_follows_the_config(make_site: MakeSite) -> None:
    site = make_site(web={"confirm_expiry_days": 2})
    site.add_subscribers(["a@example.org"], status="pending")
    response = httpx.get(site.url(f"/confirm/{confirm_token_aged(site, 'a@example.org', 3)}"))
    assert response.status_code == 410
    assert site.status_of("a@example.org") == "pending"


def test_a_confirmation_replayed_after_unsubscribing_does_not_resubscribe(
        client: httpx.Client, site: DaemonSite, sink: MailServer) -> None:
    subscribe(client, "fickle@example.org")
    link = confirm_link(sink, site, "fickle@example.org")
    assert httpx.get(link).status_code == 200
    row = site.subscriber("fickle@example.org")
    assert row is not None and row.status == "active"
    unsubscribe = site.url(f"/unsubscribe/{site.tokens().unsubscribe(row.id)}")
    assert httpx.post(unsubscribe).status_code == 200
    assert site.status_of("fickle@example.org") == "unsubscribed"

    replayed = httpx.get(link)
    assert replayed.status_code == 410
    assert heading(replayed) == "This link is no longer valid"
    assert site.status_of("fickle@example.org") == "unsubscribed"

    # Coming back takes a new confirmation: the request alone changes nothing.
    assert subscribe(client, "fickle@example.org").status_code == 200
    new_link = confirm_link(sink, site, "fickle@example.org", number=2)
    assert new_link != link
    assert site.status_of("fickle@example.org") == "unsubscribed"
    assert httpx.get(link).status_code == 410
    assert httpx.get(new_link).status_code == 200
    assert site.status_of("fickle@example.org") == "active"


# ---- unsubscribe -------------------------------------------------------------------------

def test_unsubscribe_get_shows_a_button_and_changes_nothing(site: DaemonSite) -> None:
    ids = site.add_subscribers(["stay@example.org"])
    url = site.url(f"/unsubscribe/{site.tokens().unsubscribe(ids['stay@example.org'])}")
    page = httpx.get(url)
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == PAGE_POLICY
    assert heading(page) == "Unsubscribe from Daemon Notes?"
    form = lxml.html.fromstring(page.text).forms[0]
    assert form.method == "POST" and form.action == url
    assert form.xpath(".//button[@type='submit']")[0].text == "Unsubscribe"
    assert site.status_of("stay@example.org") == "active"


def test_unsubscribe_post_from_the_page_unsubscribes_idempotently(site: DaemonSite) -> None:
    ids = site.add_subscribers(["leave@example.org"])
    url = site.url(f"/unsubscribe/{site.tokens().unsubscribe(ids['leave@example.org'])}")
    with httpx.Client(timeout=10) as browser:
        browser.get(url)
        done = browser.post(url, content=b"", headers=FORM)
        assert done.status_code == 200
        assert heading(done) == "You are unsubscribed"
        assert "leave@example.org" in done.text
        assert site.status_of("leave@example.org") == "unsubscribed"
        again = browser.post(url, content=b"", headers=FORM)
    assert again.status_code == 200 and heading(again) == "You are unsubscribed"
    assert site.status_of("leave@example.org") == "unsubscribed"


def test_one_click_unsubscribe_needs_no_cookie_and_no_step(site: DaemonSite) -> None:
    ids = site.add_subscribers(["oneclick@example.org"])
    url = site.url(f"/unsubscribe/{site.tokens().unsubscribe(ids['oneclick@example.org'])}")
    # RFC 8058: the mail client POSTs this body to the https URL of List-Unsubscribe.
    response = httpx.post(url, content=b"List-Unsubscribe=One-Click", headers=FORM)
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    assert response.text == "unsubscribed\n"
    assert site.status_of("oneclick@example.org") == "unsubscribed"


@pytest.mark.parametrize("forge", ["garbage", "other-secret", "confirm-token"])
def test_a_forged_unsubscribe_token_is_refused(site: DaemonSite, forge: str) -> None:
    ids = site.add_subscribers(["kept@example.org"])
    row = site.subscriber("kept@example.org")
    assert row is not None
    token = {
        "garbage": "Zm9v.YmFy",
        "other-secret": Tokens("another key").unsubscribe(ids["kept@example.org"]),
        "confirm-token": site.tokens().confirm(row.id, row.email,
                                               version_of(row.status_changed_at)),
    }[forge]
    url = site.url(f"/unsubscribe/{token}")
    assert httpx.get(url).status_code == 400
    refused = httpx.post(url, content=b"List-Unsubscribe=One-Click", headers=FORM)
    assert refused.status_code == 400
    assert heading(refused) == "This link is not valid"
    assert site.status_of("kept@example.org") == "active"


# ---- rate limits -------------------------------------------------------------------------

def assert_too_many(response: httpx.Response, window: int) -> None:
    assert response.status_code == 429
    retry_after = int(response.headers["retry-after"])
    assert window - 5 <= retry_after <= window


def test_the_client_limit_refuses_the_next_request_with_429_and_retry_after(
        make_site: MakeSite, sink: MailServer) -> None:
    site = make_site(web={"rate_per_client": 3, "rate_per_email": 3, "rate_window_seconds": 600})
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        for number in range(3):
            assert subscribe(client, f"friend{number}@example.org").status_code == 200
        refused = subscribe(client, "friend3@example.org")
        assert_too_many(refused, 600)
        assert heading(refused) == "Slow down"
        assert refused.headers["content-security-policy"] == PAGE_POLICY
        # The JSON variant shares the limit, and answers in JSON.
        refused_json = client.post("/api/subscribe", json={"email": "friend4@example.org"})
        assert_too_many(refused_json, 600)
        assert refused_json.json()["ok"] is False
    assert sink.wait_for(3, timeout=10)
    assert site.subscriber("friend3@example.org") is None
    assert site.subscriber("friend4@example.org") is None
    assert mail_sent_in_the_end(site, sink) == 3


def test_the_email_limit_protects_one_inbox_from_any_client(
        make_site: MakeSite, sink: MailServer) -> None:
    site = make_site(web={"rate_per_client": 20, "rate_per_email": 2})
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        assert subscribe(client, "target@example.org").status_code == 200
        assert subscribe(client, "target@EXAMPLE.org").status_code == 200  # the same inbox
        assert_too_many(subscribe(client, "target@example.org"), 3600)
        assert_too_many(client.post("/api/subscribe", json={"email": "target@example.org"}),
                        3600)
        # Another address from the same client is still welcome.
        assert subscribe(client, "other@example.org").status_code == 200
    assert sink.wait_for(2, timeout=10)
    # Two accepted requests for one pending address: one confirmation (the cool-down).
    assert mail_sent_in_the_end(site, sink) == 2
    assert len(sink.messages_to("target@example.org")) == 1


def test_the_client_limit_is_per_client_behind_a_trusted_proxy(make_site: MakeSite) -> None:
    site = make_site(web={"rate_per_client": 2, "trusted_proxies": ["127.0.0.1"]})
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        first = {"X-Forwarded-For": "203.0.113.7"}
        for number in range(2):
            token = csrf_token(client)
            assert client.post("/subscribe", headers=first, data={
                "csrf": token, "email": f"a{number}@example.org"}).status_code == 200
        token = csrf_token(client)
        assert client.post("/subscribe", headers=first, data={
            "csrf": token, "email": "a2@example.org"}).status_code == 429
        second = {"X-Forwarded-For": "203.0.113.8"}
        assert client.post("/subscribe", headers=second, data={
            "csrf": token, "email": "b@example.org"}).status_code == 200


def test_a_forged_forwarded_for_does_not_escape_the_limit(make_site: MakeSite) -> None:
    site = make_site(web={"rate_per_client": 2})  # no trusted proxy: the header is not believed
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        token = csrf_token(client)
        codes = [client.post("/subscribe", headers={"X-Forwarded-For": f"198.51.100.{n}"},
                             data={"csrf": token, "email": f"c{n}@example.org"}).status_code
                 for n in range(3)]
    assert codes == [200, 200, 429]


# ---- no enumeration ----------------------------------------------------------------------

def test_the_answer_is_the_same_whatever_the_address_is(
        client: httpx.Client, site: DaemonSite, sink: MailServer) -> None:
    site.add_subscribers(["pending@example.org"], status="pending")
    site.add_subscribers(["active@example.org"], status="active")
    ids = site.add_subscribers(["gone@example.org"], status="active")
    httpx.post(site.url(f"/unsubscribe/{site.tokens().unsubscribe(ids['gone@example.org'])}"))
    assert site.status_of("gone@example.org") == "unsubscribed"

    token = csrf_token(client)
    answers = {email: client.post("/subscribe", data={"csrf": token, "email": email})
               for email in ("new@example.org", "pending@example.org", "active@example.org",
                             "gone@example.org")}

    def without_date(response: httpx.Response) -> list[tuple[str, str]]:
        return sorted((k, v) for k, v in response.headers.multi_items() if k != "date")

    reference = answers["new@example.org"]
    assert reference.status_code == 200 and heading(reference) == "Almost there"
    for email, response in answers.items():
        assert response.status_code == reference.status_code, email
        assert without_date(response) == without_date(reference), email
        assert response.content == reference.content, email
    # Behind the identical answers, each address got what its state calls for.
    assert sink.wait_for(3, timeout=10)
    assert mail_sent_in_the_end(site, sink) == 3
    assert sorted(sink.per_recipient()) == [
        "gone@example.org", "new@example.org", "pending@example.org"]
    assert [site.status_of(e) for e in answers] == [
        "pending", "pending", "active", "unsubscribed"]


def test_the_json_answer_is_the_same_whatever_the_address_is(
        client: httpx.Client, site: DaemonSite) -> None:
    site.add_subscribers(["active@example.org"])
    new = client.post("/api/subscribe", json={"email": "new@example.org"})
    known = client.post("/api/subscribe", json={"email": "active@example.org"})
    assert new.status_code == known.status_code == 200
    assert new.content == known.content
    assert new.json()["ok"] is True


# ---- honeypot and CSRF -------------------------------------------------------------------

def test_a_filled_honeypot_gets_the_same_page_and_records_nothing(
        client: httpx.Client, site: DaemonSite, sink: MailServer) -> None:
    human = subscribe(client, "human@example.org")
    bot = subscribe(client, "bot@example.org", website="http://spam.example")
    assert bot.status_code == human.status_code == 200
    assert bot.content == human.content
    assert sink.wait_for(1, timeout=10)
    assert mail_sent_in_the_end(site, sink) == 1
    assert site.subscriber("bot@example.org") is None
    assert sink.messages()[0].rcpt_tos == ("human@example.org",)


def test_a_post_without_the_cookie_and_token_gets_the_form_again(
        site: DaemonSite, sink: MailServer) -> None:
    with httpx.Client(base_url=site.base_url, timeout=10) as stranger:
        response = stranger.post("/subscribe", data={"email": "csrf@example.org"})
        assert response.status_code == 400
        assert heading(response) == "Get Daemon Notes by email"
        assert "Please press Subscribe once more" in response.text
        form = lxml.html.fromstring(response.text).forms[0]
        assert form.fields["email"] == "csrf@example.org"
        assert site.subscriber("csrf@example.org") is None
        # The form it got back carries a token for the cookie it just got: one more click.
        again = stranger.post("/subscribe", data={"csrf": form.fields["csrf"],
                                                  "email": "csrf@example.org"})
        assert again.status_code == 200
    assert confirm_link(sink, site, "csrf@example.org")


@pytest.mark.parametrize("case", ["token-without-cookie", "cookie-without-token",
                                  "token-of-another-cookie", "tampered-token"])
def test_a_csrf_mismatch_is_refused_and_records_nothing(
        site: DaemonSite, sink: MailServer, case: str) -> None:
    with httpx.Client(base_url=site.base_url, timeout=10) as victim, \
            httpx.Client(base_url=site.base_url, timeout=10) as attacker:
        token = csrf_token(attacker)
        own = csrf_token(victim)
        data = {"email": "csrf@example.org", "csrf": {
            "token-without-cookie": token, "cookie-without-token": "",
            "token-of-another-cookie": token, "tampered-token": own[:-2] + "xx",
        }[case]}
        if case == "token-without-cookie":
            victim.cookies.clear()
        response = victim.post("/subscribe", data=data)
    assert response.status_code == 400
    assert "Please press Subscribe once more" in response.text
    assert site.subscriber("csrf@example.org") is None
    assert mail_sent_in_the_end(site, sink) == 0


def test_an_invalid_address_gets_the_form_with_an_error_and_its_text_escaped(
        client: httpx.Client, site: DaemonSite) -> None:
    typed = '"><script>alert(1)</script>'
    response = subscribe(client, typed)
    assert response.status_code == 400
    assert "That does not look like an email address." in response.text
    assert "<script>alert(1)" not in response.text
    assert lxml.html.fromstring(response.text).forms[0].fields["email"] == typed


# ---- the JSON variant and the snippet ----------------------------------------------------

def test_the_json_variant_subscribes(client: httpx.Client, site: DaemonSite,
                                     sink: MailServer) -> None:
    response = client.post("/api/subscribe", json={"email": "api@example.org"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["ok"] is True
    link = confirm_link(sink, site, "api@example.org")
    assert httpx.get(link).status_code == 200
    assert site.status_of("api@example.org") == "active"


@pytest.mark.parametrize("body", [b'{"email": "not an address"}', b"not json", b"[1, 2]",
                                  b'{"mail": "x@example.org"}'])
def test_the_json_variant_refuses_bad_input(client: httpx.Client, body: bytes) -> None:
    response = client.post("/api/subscribe", content=body,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["ok"] is False


def test_the_json_variant_takes_json_only(client: httpx.Client, site: DaemonSite) -> None:
    # A form post from another site needs no CORS preflight: refused before anything else.
    response = client.post("/api/subscribe", data={"email": "form@example.org"})
    assert response.status_code == 415
    assert response.json()["ok"] is False
    assert site.status_of("form@example.org") is None


def test_browsers_get_an_empty_icon(client: httpx.Client) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 204 and response.content == b""


def test_the_json_variant_may_be_called_from_the_blogs_own_origin_only(
        client: httpx.Client, site: DaemonSite) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    allowed = client.options("/api/subscribe", headers={"Origin": site.base_url, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == site.base_url
    refused = client.options("/api/subscribe",
                             headers={"Origin": "https://evil.example", **preflight})
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


def test_the_snippet_is_a_form_that_posts_to_the_subscribe_page(
        client: httpx.Client, site: DaemonSite, sink: MailServer) -> None:
    response = client.get("/subscribe/snippet")
    assert response.status_code == 200
    form = lxml.html.fromstring(response.text)
    form = form if form.tag == "form" else form.forms[0]
    assert form.method == "POST" and form.action == site.url("/subscribe")
    assert form.xpath(".//input[@name='email' and @type='email']")
    # Pasted into another page, it carries no token: the first POST asks for one more click.
    with httpx.Client(base_url=site.base_url, timeout=10) as reader:
        first = reader.post(form.action, data={"email": "snippet@example.org"})
        assert first.status_code == 400
        token = lxml.html.fromstring(first.text).forms[0].fields["csrf"]
        second = reader.post(form.action, data={"email": "snippet@example.org", "csrf": token})
    assert second.status_code == 200 and heading(second) == "Almost there"
    assert confirm_link(sink, site, "snippet@example.org")


# ---- page safety and health --------------------------------------------------------------

HOSTILE = '<script>alert("title")</script> & "Co"'


def test_pages_escape_a_hostile_site_title(make_site: MakeSite, sink: MailServer) -> None:
    site = make_site(site={"title": HOSTILE})
    ids = site.add_subscribers(["t@example.org"])
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        pages = [
            client.get("/subscribe"),
            subscribe(client, "new@example.org"),
            client.get(f"/unsubscribe/{site.tokens().unsubscribe(ids['t@example.org'])}"),
            client.post(f"/unsubscribe/{site.tokens().unsubscribe(ids['t@example.org'])}"),
            client.get("/confirm/forged"),
        ]
        pages.append(httpx.get(confirm_link(sink, site, "new@example.org")))
        snippet = client.get("/subscribe/snippet")
    for page in pages:
        assert page.headers["content-security-policy"] == PAGE_POLICY
        assert "<script>" not in page.text, page.text
        assert "&lt;script&gt;alert(" in page.text
    assert "<script>" not in snippet.text
    # The text is shown as written, not lost.
    assert lxml.html.fromstring(pages[0].text).findtext(".//title").endswith(HOSTILE)


def test_healthz_reports_the_database_and_no_scheduler(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {"status": "ok", "database": True, "scheduler": None,
                               "sender": None, "loop_lag_p99_ms": None,
                               "last_build": None, "last_digest": None, "last_send": None}
    assert response.headers["content-security-policy"] == NOTHING_POLICY
    assert client.head("/healthz").status_code == 200


# ---- URLs and paths ----------------------------------------------------------------------

HOSTILE_HOST = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}


def test_absolute_urls_come_from_the_public_url_never_the_host_header(
        make_site: MakeSite) -> None:
    # The report: `Host: evil.example` on / redirected to http://evil.example/subscribe, and
    # the form posted there.
    site = make_site(mail={"public_url": "https://news.example.org/letters"})
    site.add_subscribers(["reader@example.org"])
    row = site.subscriber("reader@example.org")
    assert row is not None
    link = f"/unsubscribe/{row.public_id}.{row.unsubscribe_key}"
    public = "https://news.example.org/letters"
    with httpx.Client(base_url=site.base_url, timeout=10, headers=HOSTILE_HOST) as client:
        home = client.get("/")
        form = client.get("/subscribe")
        once_more = client.post("/subscribe", data={"email": "x@example.org"})
        snippet = client.get("/subscribe/snippet")
        unsubscribe = client.get(link)
    assert home.status_code == 303 and home.headers["location"] == f"{public}/subscribe"
    for page in (form, once_more):
        assert lxml.html.fromstring(page.text).forms[0].action == f"{public}/subscribe"
    assert lxml.html.fromstring(snippet.text).get("action") == f"{public}/subscribe"
    assert lxml.html.fromstring(unsubscribe.text).forms[0].action == public + link
    # The cookie follows the public URL's scheme too: https, so Secure.
    assert "secure" in form.headers["set-cookie"].lower()
    for response in (home, form, once_more, snippet, unsubscribe):
        assert "evil.example" not in response.text
        assert "evil.example" not in str(response.headers)


@pytest.mark.parametrize("path", [
    "/confirm/%00", "/confirm/" + "a" * 5000, "/confirm/%ff%fe", "/unsubscribe/%00",
    "/unsubscribe/%00.%00", "/unsubscribe/" + "a" * 5000 + "." + "b" * 50, "/unsubscribe/.",
    "/subscribe%00", "/%00", "/api/subscribe%00",
])
def test_a_malformed_page_path_gets_a_clear_answer_never_a_500(
        client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (400, 404), response.text
    post = client.post(path, content=b"List-Unsubscribe=One-Click", headers=FORM)
    assert post.status_code in (400, 404, 405), post.text


# ---- the snippet on the blog's own pages -------------------------------------------------

def snippet_post(site: DaemonSite, email: str, **headers: str) -> httpx.Response:
    """POST the snippet's form as a browser on another page would: no cookie, no token."""
    with httpx.Client(timeout=10) as browser:
        return browser.post(site.url("/subscribe"), data={"email": email},
                            headers={**FORM, **headers})


@pytest.mark.parametrize("where", ["origin", "referer"])
def test_the_snippet_subscribes_in_one_click_from_the_blogs_own_pages(
        site: DaemonSite, sink: MailServer, where: str) -> None:
    # The report: the pasted form always took two clicks (400 "Please press Subscribe once
    # more"). A browser names the page a post comes from; the blog's own origin is enough.
    blog = site.settings().site.base_url
    header = {"Origin": blog} if where == "origin" else {"Referer": f"{blog}/posts/hello/"}
    response = snippet_post(site, "oneclick@example.org", **header)
    assert response.status_code == 200 and heading(response) == "Almost there"
    assert confirm_link(sink, site, "oneclick@example.org")
    assert site.status_of("oneclick@example.org") == "pending"


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},  # sandboxed frames and privacy modes
    {"Referer": "https://evil.example/page"},
    {"Origin": "https://evil.example", "Referer": "BLOG/posts/hello/"},  # Origin decides
    {"Origin": "BLOG.evil.example"},
    {"Referer": "https://evil.example/?from=BLOG"},
    {"Origin": "BLOG-SCHEME-SWAPPED"},
], ids=["other-origin", "null-origin", "other-referer", "origin-wins", "lookalike-host",
        "blog-in-query", "other-scheme"])
def test_a_tokenless_post_from_anywhere_else_is_still_refused(
        site: DaemonSite, headers: dict[str, str]) -> None:
    blog = site.settings().site.base_url
    swapped = blog.replace("http://", "https://", 1)
    sent = {k: v.replace("BLOG-SCHEME-SWAPPED", swapped).replace("BLOG", blog)
            for k, v in headers.items()}
    response = snippet_post(site, "forged@example.org", **sent)
    assert response.status_code == 400
    assert "Please press Subscribe once more" in response.text
    # The refusal queues nothing (it has no background task), so this is final.
    assert site.subscriber("forged@example.org") is None
    assert site.deliveries() == []


# ---- security headers ----------------------------------------------------------------------

NOTHING_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
ALWAYS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
          "x-frame-options": "DENY"}


def test_every_response_carries_the_security_headers(
        client: httpx.Client, site: DaemonSite) -> None:
    site.add_subscribers(["reader@example.org"])
    row = site.subscriber("reader@example.org")
    assert row is not None
    link = f"/unsubscribe/{row.public_id}.{row.unsubscribe_key}"
    pages = {  # what a browser may render as a page: the strict page policy
        "form": client.get("/subscribe"),
        "almost there": subscribe(client, "new@example.org"),
        "form again": client.post("/subscribe", data={"email": "x@example.org"}),
        "invalid link": client.get("/confirm/forged"),
        "unsubscribe page": client.get(link),
        "malformed link": client.get("/unsubscribe/%00"),
    }
    others = {  # never a page: a policy that allows nothing
        "redirect": client.get("/"),
        "snippet (text)": client.get("/subscribe/snippet"),
        "json": client.post("/api/subscribe", json={"email": "j@example.org"}),
        "json refused": client.post("/api/subscribe", data={"email": "j@example.org"}),
        "health": client.get("/healthz"),
        "icon": client.get("/favicon.ico"),
        "no such page": client.get("/nothing-here"),
        "wrong method": client.put("/subscribe"),
        "too large": client.post("/api/subscribe", content=b"{}" * 5000,
                                 headers={"Content-Type": "application/json"}),
        "one-click": client.post(link, content=b"List-Unsubscribe=One-Click", headers=FORM),
    }
    for name, response in {**pages, **others}.items():
        for header, value in ALWAYS.items():
            assert response.headers.get(header) == value, (name, header)
    for name, response in pages.items():
        assert response.headers["content-type"].startswith("text/html"), name
        assert response.headers["content-security-policy"] == PAGE_POLICY, name
    for name, response in others.items():
        assert response.headers["content-security-policy"] == NOTHING_POLICY, name
    assert others["too large"].status_code == 413

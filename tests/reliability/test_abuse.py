"""Abuse of the public endpoints, against the real web app under uvicorn on loopback (a real
SQLite file, a real SMTP server for the confirmations): forged, expired and replayed links
(accepted: 0), cross-site posts without a token (accepted: 0), subscription bombing (mail the
victim gets), and enumeration (the answers for an unknown, pending, active and unsubscribed
address are byte-identical).
"""

from __future__ import annotations

import random
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from conftest import Figures
from daemonproc import DaemonSite
from mailserver import MailServer
from postroom.optin import version_of
from postroom.store import secret_key
from postroom.tokens import Tokens

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ONE_CLICK = b"List-Unsubscribe=One-Click"
EVIL = "https://evil.example"


@pytest.fixture
def sink() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture
def site(tmp_path: Path, sink: MailServer) -> Iterator[DaemonSite]:
    # Limits high enough for one test client to ask many times; trusted loopback proxy so
    # the bombing can come from many client addresses.
    with DaemonSite.create(tmp_path / "site", smtp_port=sink.port,
                           web={"rate_per_client": 1000, "rate_per_email": 1000,
                                "trusted_proxies": ["127.0.0.1"]}) as served:
        served.serve_in_process()
        yield served


@pytest.fixture
def client(site: DaemonSite) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site.base_url, timeout=10) as session:
        yield session


def csrf_token(client: httpx.Client) -> str:
    page = client.get("/subscribe")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert page.status_code == 200 and found, page.text
    return found.group(1)


def confirm_token(site: DaemonSite, email: str, age_days: float = 0.0,
                  secret: str | None = None) -> str:
    """A confirmation token for `email` as postroom signs it, issued `age_days` ago (signed
    with `secret` instead of the site's key to forge one)."""
    row = site.subscriber(email)
    assert row is not None

    class Aged(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age_days * 86400)

    serializer = URLSafeTimedSerializer(secret or secret_key(site.engine, env={}),
                                        salt="postroom.confirm", signer=Aged)
    return str(serializer.dumps([row.id, row.email, version_of(row.status_changed_at)]))


def unsubscribe_token(site: DaemonSite, email: str) -> str:
    row = site.subscriber(email)
    assert row is not None
    return f"{row.public_id}.{row.unsubscribe_key}"


def mangled(token: str, rng: random.Random, count: int) -> list[str]:
    """Return `count` variants of a token, each with one character changed."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    variants = []
    for index in rng.sample(range(len(token)), min(count, len(token))):
        if token[index] == ".":
            continue
        other = rng.choice([c for c in alphabet if c != token[index]])
        variants.append(token[:index] + other + token[index + 1:])
    return variants


def test_forged_expired_and_replayed_links_are_refused(
        site: DaemonSite, client: httpx.Client, figures: Figures, rng: random.Random) -> None:
    site.add_subscribers(["waiting@example.org"], status="pending")
    site.add_subscribers(["reader@example.org", "other@example.org"])
    expiry = site.settings().web.confirm_expiry_days
    other = site.subscriber("other@example.org")
    assert other is not None

    # Confirmation links that must not confirm "waiting@".
    genuine = confirm_token(site, "waiting@example.org")
    forged_confirms = {
        "another key": confirm_token(site, "waiting@example.org", secret="another key"),
        "garbage": "Zm9v.YmFy.YmF6",
        "unsubscribe link as confirm": unsubscribe_token(site, "reader@example.org"),
        **{f"one character changed #{n}": t for n, t in enumerate(mangled(genuine, rng, 12))},
    }
    expired = confirm_token(site, "waiting@example.org", age_days=expiry + 0.01)
    answers = {name: client.get(f"/confirm/{token}").status_code
               for name, token in forged_confirms.items()}
    expired_answer = client.get(f"/confirm/{expired}").status_code
    confirmed_by_forgery = site.status_of("waiting@example.org") != "pending"

    # Unsubscribe links that must not unsubscribe "reader@".
    genuine_unsubscribe = unsubscribe_token(site, "reader@example.org")
    row = site.subscriber("reader@example.org")
    assert row is not None
    forged_unsubscribes = {
        "right id, random key": f"{row.public_id}.{secrets.token_urlsafe(16)}",
        "signed id, another key": Tokens("another key").unsubscribe(row.id),
        "confirm link as unsubscribe": confirm_token(site, "reader@example.org"),
        "another reader's id with this key":
            f"{other.public_id}.{row.unsubscribe_key}",
        **{f"one character changed #{n}": t
           for n, t in enumerate(mangled(genuine_unsubscribe, rng, 12))},
    }
    for name, token in forged_unsubscribes.items():
        answers[f"unsubscribe GET {name}"] = client.get(f"/unsubscribe/{token}").status_code
        answers[f"unsubscribe POST {name}"] = httpx.post(
            site.url(f"/unsubscribe/{token}"), content=ONE_CLICK, headers=FORM).status_code
    unsubscribed_by_forgery = [e for e in ("reader@example.org", "other@example.org")
                               if site.status_of(e) != "active"]

    # A genuine confirmation replayed after the reader left must not bring them back.
    assert client.get(f"/confirm/{genuine}").status_code == 200
    assert site.status_of("waiting@example.org") == "active"
    left = httpx.post(site.url(f"/unsubscribe/{unsubscribe_token(site, 'waiting@example.org')}"),
                      content=ONE_CLICK, headers=FORM)
    assert left.status_code == 200 and site.status_of("waiting@example.org") == "unsubscribed"
    replayed = client.get(f"/confirm/{genuine}").status_code
    replay_accepted = site.status_of("waiting@example.org") != "unsubscribed"

    accepted = [name for name, code in answers.items() if code < 400]
    figures.record(f"links: forged ({len(answers)} requests) accepted",
                   len(accepted) + confirmed_by_forgery + len(unsubscribed_by_forgery), "0",
                   not accepted and not confirmed_by_forgery and not unsubscribed_by_forgery,
                   f"answers {sorted(set(answers.values()))}; accepted: {accepted[:4]}")
    figures.record(f"links: confirmation expired ({expiry} d + 15 min) accepted",
                   int(expired_answer < 400), "0", expired_answer >= 400 and
                   not confirmed_by_forgery, f"answer {expired_answer}")
    figures.record("links: confirmation replayed after unsubscribing accepted",
                   int(replay_accepted or replayed < 400), "0",
                   not replay_accepted and replayed >= 400, f"answer {replayed}")
    figures.assert_held()


def test_cross_site_posts_without_a_token_are_refused(
        site: DaemonSite, client: httpx.Client, sink: MailServer, figures: Figures) -> None:
    other_client = httpx.Client(base_url=site.base_url, timeout=10)
    token_of_another_browser = csrf_token(other_client)
    other_client.close()
    csrf_token(client)  # this browser has a cookie of its own
    attempts = {
        "no token, Origin evil": client.post(
            "/subscribe", data={"email": "a1@example.org"}, headers={"Origin": EVIL}),
        "no token, Referer evil": client.post(
            "/subscribe", data={"email": "a2@example.org"}, headers={"Referer": EVIL + "/x"}),
        "no token, no Origin": client.post("/subscribe", data={"email": "a3@example.org"}),
        "another browser's token, Origin evil": client.post(
            "/subscribe", data={"email": "a4@example.org", "csrf": token_of_another_browser},
            headers={"Origin": EVIL}),
        "Origin evil, Referer of the blog": client.post(
            "/subscribe", data={"email": "a5@example.org"},
            headers={"Origin": EVIL, "Referer": site.base_url + "/"}),
        "JSON endpoint, form body": client.post(
            "/api/subscribe", data={"email": "a6@example.org"}, headers={"Origin": EVIL}),
    }
    # The blog's own pages (the pasted snippet) may post without a token.
    from_the_blog = client.post("/subscribe", data={"email": "blog@example.org"},
                                headers={"Origin": site.base_url})
    site.servers[-1].wait_idle()

    recorded = [f"a{n}@example.org" for n in range(1, 7)
                if site.subscriber(f"a{n}@example.org") is not None]
    accepted = [name for name, answer in attempts.items() if answer.status_code < 400]
    figures.hold(f"CSRF: cross-site posts ({len(attempts)} kinds) accepted",
                 len(set(accepted) | set(recorded)), "0", not accepted and not recorded,
                 f"answers {sorted({a.status_code for a in attempts.values()})}; "
                 f"the blog's own origin: {from_the_blog.status_code}; mail sent "
                 f"{sorted(sink.per_recipient())}")


def test_bombing_one_inbox_through_many_clients_and_plus_addresses(
        tmp_path: Path, sink: MailServer, figures: Figures) -> None:
    # The default limits, as a site runs them; many clients behind the trusted proxy.
    with DaemonSite.create(tmp_path / "bombed", smtp_port=sink.port,
                           web={"trusted_proxies": ["127.0.0.1"]}) as site:
        server = site.serve_in_process()
        limit = site.settings().web.rate_per_email
        answers = []
        with httpx.Client(base_url=site.base_url, timeout=10) as client:
            token = csrf_token(client)
            for n in range(30):
                answers.append(client.post(
                    "/subscribe", data={"csrf": token, "email": f"victim+{n}@example.org"},
                    headers={"X-Forwarded-For": f"198.51.100.{n + 1}"}).status_code)
        server.wait_idle()
    to_victim = sum(n for r, n in sink.per_recipient().items()
                    if r.split("@")[0].split("+")[0] == "victim")
    figures.hold("bombing: 30 requests from 30 clients for victim+N@ → mails to the inbox",
                 to_victim, f"≤ {limit} (web.rate_per_email)", to_victim <= limit,
                 f"answers {dict(sorted(Counter(answers).items()))}")


def test_bombing_one_pending_address_over_its_confirmation_window(
        tmp_path: Path, sink: MailServer, figures: Figures) -> None:
    # The default limits; the web app's clock walks through the confirmation window (the
    # past week, so the mail it queues is due now), one request every 5.6 hours.
    with DaemonSite.create(tmp_path / "bombed", smtp_port=sink.port,
                           web={"trusted_proxies": ["127.0.0.1"]}) as site:
        server = site.serve_in_process()
        window = timedelta(days=site.settings().web.confirm_expiry_days)
        start = datetime.now(UTC) - window - timedelta(minutes=2)
        moment = [start]
        server.state.clock = lambda: moment[0]
        answers = []
        with httpx.Client(base_url=site.base_url, timeout=10) as client:
            token = csrf_token(client)

            def ask(n: int) -> httpx.Response:
                answer = client.post("/subscribe", data={"csrf": token,
                                                         "email": "victim@example.org"},
                                     headers={"X-Forwarded-For": f"198.51.100.{n + 1}"})
                server.wait_idle()
                return answer

            for n in range(30):
                moment[0] = start + window * n / 30
                answers.append(ask(n))
            within = len(sink.messages_to("victim@example.org"))
            # The first link has expired: asking again gets a new one.
            moment[0] = start + window + timedelta(minutes=1)
            again = ask(30)
        after = len(sink.messages_to("victim@example.org")) - within
    same = len({(a.status_code, a.content) for a in [*answers, again]}) == 1
    case = (f"bombing: 30 requests from 30 clients for one pending address over its "
            f"{window.days}-day confirmation window")
    figures.record(f"{case} → mails to it", within, "≤ 1 (one per confirmation window)",
                   within == 1 and same,
                   f"answers {dict(Counter(a.status_code for a in answers))}, "
                   f"{'byte-identical' if same else 'NOT identical'}")
    figures.record(f"{case}, then one more after it → new mails", after,
                   "1 (a new link: the first expired)", after == 1)
    figures.assert_held()


def test_the_answers_do_not_tell_whether_an_address_is_known(
        site: DaemonSite, client: httpx.Client, figures: Figures) -> None:
    site.add_subscribers(["pending@example.org"], status="pending")
    site.add_subscribers(["active@example.org", "gone@example.org"])
    assert httpx.post(site.url(f"/unsubscribe/{unsubscribe_token(site, 'gone@example.org')}"),
                      content=ONE_CLICK, headers=FORM).status_code == 200
    states = {"unknown": "new@example.org", "pending": "pending@example.org",
              "active": "active@example.org", "unsubscribed": "gone@example.org"}

    def answer_of(response: httpx.Response) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
        headers = tuple(sorted((k, v) for k, v in response.headers.multi_items()
                               if k not in ("date", "set-cookie")))
        return response.status_code, response.content, headers

    token = csrf_token(client)
    form = {state: answer_of(client.post("/subscribe", data={"csrf": token, "email": email}))
            for state, email in states.items()}
    as_json = {state: answer_of(client.post("/api/subscribe", json={"email": email}))
               for state, email in states.items()}
    site.servers[-1].wait_idle()
    figures.record("enumeration: distinct form answers (unknown/pending/active/unsubscribed)",
                   len(set(form.values())), "1", len(set(form.values())) == 1,
                   f"status {sorted({a[0] for a in form.values()})}")
    figures.record("enumeration: distinct JSON answers (unknown/pending/active/unsubscribed)",
                   len(set(as_json.values())), "1", len(set(as_json.values())) == 1,
                   f"status {sorted({a[0] for a in as_json.values()})}")
    figures.assert_held()

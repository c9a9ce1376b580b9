"""web/limits.py through the real form: subscription bombing, against the web app under uvicorn
on a loopback port, a real SQLite file and a real SMTP server for the confirmations.

The figure each test holds is what the victim's inbox gets.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from daemonproc import AppServer, DaemonSite
from mailserver import MailServer
from postroom.schema import limit_hits
from test_web_pages import confirm_link, csrf_token, heading, path_of, subscribe

MakeSite = Callable[..., DaemonSite]


@pytest.fixture
def make_site(tmp_path: Path, sink: MailServer) -> Iterator[MakeSite]:
    """Return a factory: make_site(**config tables) → a site whose web app is being served,
    believing X-Forwarded-For from loopback so one test can be many clients."""
    sites: list[DaemonSite] = []

    def make(**web: Any) -> DaemonSite:
        settings = {"rate_per_client": 50, "rate_per_email": 50, "trusted_proxies": ["127.0.0.1"],
                    **web}
        site = DaemonSite.create(tmp_path / f"site{len(sites)}", smtp_port=sink.port,
                                 web=settings)
        sites.append(site)
        site.serve_in_process()
        return site

    yield make
    for site in sites:
        site.close()


def settled(server: AppServer) -> None:
    """Wait until the server finished every request so far (background tasks too) and sent
    the mail they queued: after this, no more mail is coming from them."""
    deadline = time.monotonic() + 10
    while server.server.server_state.tasks or (
            server.sends.task is not None and not server.sends.task.done()):
        assert time.monotonic() < deadline, "the web server was still busy after 10 s"
        time.sleep(0.01)


def mail_in_the_end(site: DaemonSite, sink: MailServer) -> int:
    settled(site.servers[-1])
    return sink.count()


def confirmations(site: DaemonSite) -> list[str]:
    """The confirmation deliveries queued so far, by address."""
    return [row.email for row in site.deliveries() if row.kind == "confirm"]


def subscribe_as(client: httpx.Client, address: str, email: str) -> httpx.Response:
    """Fill in the form from the client address `address` (behind the trusted proxy)."""
    token = csrf_token(client)
    return client.post("/subscribe", headers={"X-Forwarded-For": address},
                       data={"csrf": token, "email": email, "website": ""})


def restart(site: DaemonSite) -> None:
    """Stop the site's web server and start a new one on the same database."""
    settled(site.servers[-1])
    site.servers[-1].stop()
    site.serve_in_process()


def pass_the_cooldown(site: DaemonSite, seconds: float) -> None:
    """Move every recorded hit `seconds` into the past, as if that much time went by."""
    with site.engine.begin() as connection:
        for row in connection.execute(select(limit_hits.c.id, limit_hits.c.at)).all():
            connection.execute(update(limit_hits).where(limit_hits.c.id == row.id)
                               .values(at=row.at - timedelta(seconds=seconds)))


def test_repeated_requests_for_one_address_queue_one_confirmation_per_window(
        make_site: MakeSite, sink: MailServer) -> None:
    site = make_site()
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        answers = [subscribe_as(client, f"198.51.100.{n}", email) for n, email in enumerate(
            ["victim@example.org", "victim@example.org", "Victim@Example.org",
             "victim@example.org", "victim@example.org"])]
        assert {a.status_code for a in answers} == {200}
        # The visitor cannot tell a request that sent mail from one that did not.
        assert len({a.content for a in answers}) == 1
        assert mail_in_the_end(site, sink) == 1
        assert confirmations(site) == ["victim@example.org"]

        # Within the confirmation window (7 days by default) a request sends nothing more;
        # once it is over (the first link has expired), a new request sends a new mail.
        pass_the_cooldown(site, 6 * 86400)
        assert subscribe_as(client, "198.51.100.8", "victim@example.org").status_code == 200
        assert mail_in_the_end(site, sink) == 1
        pass_the_cooldown(site, 86400 + 1)
        assert subscribe_as(client, "198.51.100.9", "victim@example.org").status_code == 200
    assert mail_in_the_end(site, sink) == 2
    assert len(sink.messages_to("victim@example.org")) == 2


def test_the_cooldown_follows_the_config(make_site: MakeSite, sink: MailServer) -> None:
    site = make_site(confirm_cooldown_seconds=60)
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        subscribe(client, "a@example.org")
        subscribe(client, "a@example.org")
        assert mail_in_the_end(site, sink) == 1
        pass_the_cooldown(site, 61)
        subscribe(client, "a@example.org")
    assert mail_in_the_end(site, sink) == 2


def test_a_new_status_gets_its_confirmation_within_the_cooldown(
        make_site: MakeSite, sink: MailServer) -> None:
    # The cool-down is per subscriber and status: after the reader confirmed and left, coming
    # back is a new request that needs its own link now. Only the reader can change the
    # status (with the links in their mail), so this opens no door to a bomber.
    site = make_site()
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        subscribe(client, "back@example.org")
        assert sink.wait_for(1, timeout=10)
        row = site.subscriber("back@example.org")
        assert row is not None
        assert httpx.post(site.url(f"/unsubscribe/{site.tokens().unsubscribe(row.id)}"),
                          timeout=10).status_code == 200
        subscribe(client, "back@example.org")
        subscribe(client, "back@example.org")
    assert mail_in_the_end(site, sink) == 2


def test_a_restart_does_not_reset_the_limits(make_site: MakeSite, sink: MailServer) -> None:
    site = make_site(rate_per_client=3, rate_per_email=2)
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        assert subscribe_as(client, "203.0.113.1", "victim@example.org").status_code == 200
        assert mail_in_the_end(site, sink) == 1

        restart(site)
        # The cool-down survived: accepted, the same answer, no second mail.
        assert subscribe_as(client, "203.0.113.2", "victim@example.org").status_code == 200
        assert mail_in_the_end(site, sink) == 1
        # The mailbox limit survived: its third request in the window is refused...
        refused = subscribe_as(client, "203.0.113.3", "victim+x@example.org")
        assert refused.status_code == 429 and heading(refused) == "Slow down"

        restart(site)
        # ...and so did the client limit: 203.0.113.1's first request was before both restarts.
        assert subscribe_as(client, "203.0.113.1", "a@example.org").status_code == 200
        assert subscribe_as(client, "203.0.113.1", "b@example.org").status_code == 200
        assert subscribe_as(client, "203.0.113.1", "c@example.org").status_code == 429
    assert mail_in_the_end(site, sink) == 3
    assert len(sink.messages_to("victim@example.org")) == 1


def a_whole_send_pass(health_url: str) -> None:
    """Wait until a send pass began and ended after this call (/healthz's last_send changes
    when a pass ends; passes never overlap, so the second change ends one begun after)."""
    def last_send() -> object:
        return httpx.get(health_url, timeout=5).json()["last_send"]

    seen = [last_send()]
    deadline = time.monotonic() + 20
    while len(seen) < 3:
        assert time.monotonic() < deadline, "no whole send pass within 20 s"
        if (now := last_send()) != seen[-1]:
            seen.append(now)
        time.sleep(0.05)


def test_a_reload_does_not_reset_the_limits(tmp_path: Path, sink: MailServer) -> None:
    with DaemonSite.create(tmp_path / "site", smtp_port=sink.port,
                           web={"rate_per_client": 50, "rate_per_email": 2}) as site:
        daemon = site.start("run")
        daemon.wait_healthy()
        with httpx.Client(base_url=site.base_url, timeout=10) as client:
            assert subscribe(client, "victim@example.org").status_code == 200
            assert subscribe(client, "victim@example.org").status_code == 200
            daemon.send_signal(signal.SIGHUP)
            assert daemon.wait_for_log(r"configuration and templates reloaded from ")
            assert subscribe(client, "victim@example.org").status_code == 429
        assert sink.wait_for(1, timeout=10)
        a_whole_send_pass(daemon.health_url)
        assert len(sink.messages_to("victim@example.org")) == 1
        assert daemon.stop() == 0


def test_plus_address_variants_share_one_mailbox_limit(
        make_site: MakeSite, sink: MailServer) -> None:
    site = make_site(rate_per_email=3)
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        codes = [subscribe_as(client, f"198.51.100.{n}", f"victim+{n}@example.org").status_code
                 for n in range(10)]
    assert codes == [200] * 3 + [429] * 7
    assert mail_in_the_end(site, sink) == 3


def test_plus_address_variants_from_many_clients_are_capped_by_the_global_cap(
        make_site: MakeSite, sink: MailServer) -> None:
    # The report: 30 variants from 30 client addresses in minutes, 30 mails to one inbox.
    site = make_site(rate_per_email=100, confirmations_per_hour=5)
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        answers = [subscribe_as(client, f"198.51.100.{n}", f"victim+{n}@example.org")
                   for n in range(30)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert mail_in_the_end(site, sink) == 5
    assert len(confirmations(site)) == 5
    # Every request is recorded, so a later request can still confirm once the hour passed.
    assert all(site.status_of(f"victim+{n}@example.org") == "pending" for n in range(30))


def test_the_limits_table_keeps_no_address_and_is_pruned(
        make_site: MakeSite, sink: MailServer) -> None:
    site = make_site(rate_window_seconds=600)
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        subscribe_as(client, "198.51.100.1", "private@example.org")
        settled(site.servers[-1])
        with site.engine.connect() as connection:
            rows = connection.execute(select(limit_hits)).all()
        assert {row.bucket for row in rows} == {"client", "mailbox", "confirm", "confirm-all"}
        stored = " ".join(f"{row.bucket} {row.key}" for row in rows)
        assert "private" not in stored and "198.51.100.1" not in stored

        # Once every bucket's window is over (the longest: the confirmation window, 7 days),
        # the next hit of each bucket prunes the old rows.
        pass_the_cooldown(site, 7 * 86400 + 1)
        subscribe_as(client, "198.51.100.2", "other@example.org")
        settled(site.servers[-1])
    with site.engine.connect() as connection:
        assert len(connection.execute(select(limit_hits)).all()) == 4


def test_a_request_in_another_case_mails_a_link_that_confirms(
        make_site: MakeSite, sink: MailServer) -> None:
    site = make_site()
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        subscribe(client, "ann@example.org")
        assert mail_in_the_end(site, sink) == 1
        pass_the_cooldown(site, 7 * 86400 + 1)
        subscribe(client, "ANN@Example.org")  # the same mailbox, typed otherwise
        assert mail_in_the_end(site, sink) == 2
        link = confirm_link(sink, site, "ann@example.org", number=2)
        confirmed = client.get(path_of(link))
        assert confirmed.status_code == 200
        assert heading(confirmed) != "This link is not valid"
    assert site.status_of("ann@example.org") == "active"

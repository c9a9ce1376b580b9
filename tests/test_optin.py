"""optin.py: asking to subscribe with the limits the web app uses, and forgetting requests
never confirmed. A real SQLite file; the clock is passed in, so days go by at once."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from mailsite import MailSite
from postroom import optin, subscribers
from postroom.schema import deliveries
from postroom.tokens import Tokens
from postroom.web.limits import RequestLimits

DAY = timedelta(days=1)


def make_site(tmp_path: Path, **web: Any) -> MailSite:
    return MailSite.create(tmp_path, web=web)


def ask(site: MailSite, email: str, now: datetime) -> str:
    """Ask to subscribe as the web form does (the same limits): "queued", "held" or "active"."""
    limits = RequestLimits("secret", site.settings.web)
    return optin.request_and_queue_confirmation(
        site.engine, email, now, "web", "notes.example.org", Tokens("secret").confirm,
        limits.may_confirm)


def mark_sent(site: MailSite, at: datetime) -> None:
    """Record every pending confirmation as sent at `at`, as the sender would."""
    with site.engine.begin() as connection:
        connection.execute(update(deliveries).where(deliveries.c.status == "pending")
                           .values(status="sent", sent_at=at))


def confirmations(site: MailSite) -> int:
    with site.engine.connect() as connection:
        return len(connection.execute(select(deliveries.c.id)).all())


def test_one_confirmation_per_pending_address_per_confirmation_window(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    start = site.now
    assert ask(site, "ann@example.org", start) == "queued"
    # However often it is asked for within the window (7 days), no second mail.
    for hours in (1, 24, 24 * 6, 24 * 7 - 1):
        assert ask(site, "ann@example.org", start + timedelta(hours=hours)) == "held"
    # The first link has expired: a new request mails a new one.
    assert ask(site, "ann@example.org", start + 7 * DAY + timedelta(minutes=1)) == "queued"
    assert confirmations(site) == 2


def test_a_shorter_cooldown_set_by_the_operator_allows_a_repeat_sooner(tmp_path: Path) -> None:
    site = make_site(tmp_path, confirm_cooldown_seconds=3600)
    assert ask(site, "ann@example.org", site.now) == "queued"
    assert ask(site, "ann@example.org", site.now + timedelta(minutes=59)) == "held"
    assert ask(site, "ann@example.org", site.now + timedelta(minutes=61)) == "queued"
    # Two mails, two Message-IDs: a receiver that drops one it has seen keeps the new link.
    with site.engine.connect() as connection:
        ids = connection.execute(select(deliveries.c.message_id)).scalars().all()
    assert len(set(ids)) == 2, ids


def test_a_request_mailed_before_the_window_is_forgotten_and_asked_again_anew(
        tmp_path: Path) -> None:
    # Such a request used to be kept for ever: its confirmation delivery held on to it.
    site = make_site(tmp_path)
    start = site.now
    assert ask(site, "lost@example.org", start) == "queued"
    mark_sent(site, start + timedelta(seconds=5))
    days = site.settings.web.confirm_expiry_days
    assert optin.expire_pending(site.engine, start + (days - 1) * DAY, days) == 0
    assert optin.expire_pending(site.engine, start + (days + 1) * DAY, days) == 1
    with site.engine.connect() as connection:
        assert subscribers.find(connection, "lost@example.org") is None
        assert connection.execute(select(deliveries)).all() == []
    # The reader who lost the mail asks again, and gets a new link.
    assert ask(site, "lost@example.org", start + (days + 1) * DAY) == "queued"


def test_a_request_mailed_within_the_window_is_kept(tmp_path: Path) -> None:
    # First asked 8 days ago, mailed again 2 days ago (a shorter cool-down): that link works.
    site = make_site(tmp_path, confirm_cooldown_seconds=3600)
    start = site.now - 8 * DAY
    assert ask(site, "again@example.org", start) == "queued"
    mark_sent(site, start)
    assert ask(site, "again@example.org", site.now - 2 * DAY) == "queued"
    assert optin.expire_pending(site.engine, site.now, 7) == 0
    assert site.subscriber_status("again@example.org") == "pending"


def test_expiry_keeps_confirmed_unsubscribed_and_in_flight_requests(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    old = site.now - 30 * DAY
    site.now = old
    site.add_subscribers(["reader@example.org"], status="active")
    site.add_subscribers(["left@example.org"], status="unsubscribed")
    assert ask(site, "sending@example.org", old) == "queued"
    with site.engine.begin() as connection:
        connection.execute(update(deliveries).values(status="sending"))
    site.add_subscribers(["never-mailed@example.org"], status="pending")
    assert optin.expire_pending(site.engine, old + 8 * DAY, 7) == 1  # never-mailed only
    assert [site.subscriber_status(e) for e in
            ("reader@example.org", "left@example.org", "sending@example.org")] == [
        "active", "unsubscribed", "pending"]

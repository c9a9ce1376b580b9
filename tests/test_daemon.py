"""daemon.py end to end: `postroom run` as a real process on loopback ports, with a real SMTP
server (aiosmtpd), a real SQLite file and real signals."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import feedparser
import httpx
import pytest

from daemonproc import DaemonSite, PostroomProcess
from mailserver import Fault, MailServer, Received, header_urls
from postroom.daemon import LAST_DIGEST_KEY, Daemon

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
MakeSite = Callable[..., DaemonSite]


@pytest.fixture
def make_site(tmp_path: Path, sink: MailServer) -> Iterator[MakeSite]:
    """Return a factory: make_site(mail_server=None, **config tables) → a DaemonSite.

    Every process a site started is stopped at the end of the test, whatever happened.
    """
    sites: list[DaemonSite] = []

    def make(mail_server: MailServer | None = None, **overrides: dict[str, Any]) -> DaemonSite:
        site = DaemonSite.create(tmp_path / f"site{len(sites)}",
                                 smtp_port=(mail_server or sink).port, **overrides)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.close()


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def past_slot_schedule(now: datetime) -> str:
    """A daily schedule whose slot was two hours ago (and comes again in 22 hours)."""
    return f"daily {now - timedelta(hours=2):%H:%M}"


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until condition() is truthy; return its value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {condition}"
        time.sleep(interval)


def feed_titles(client: httpx.Client, path: str = "/feed.atom") -> list[str]:
    response = client.get(path)
    if response.status_code != 200:
        return []
    feed = feedparser.parse(response.content)
    assert not feed.bozo, feed.bozo_exception
    return [entry.title for entry in feed.entries]


def subscribe_with_the_form(client: httpx.Client, email: str) -> httpx.Response:
    page = client.get("/subscribe")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token, page.text
    return client.post("/subscribe", data={"csrf": token.group(1), "email": email})


def digests_to(sink: MailServer, email: str) -> list[Received]:
    return [m for m in sink.messages_to(email)
            if not str(m.parsed()["Subject"]).startswith("Confirm your subscription")]


def delivery_counts(site: DaemonSite) -> dict[str, int]:
    counts = {"pending": 0, "sending": 0, "sent": 0, "failed": 0}
    for delivery in site.deliveries():
        counts[delivery.status] += 1
    return counts


def write_subscriber_csv(path: Path, count: int) -> Path:
    path.write_text("email\n" + "".join(f"reader{n:03}@example.org\n" for n in range(count)),
                    encoding="utf-8")
    return path


# ---- the acceptance test -------------------------------------------------------------------

def test_post_feed_subscribe_confirm_digest_unsubscribe_end_to_end(
        make_site: MakeSite, sink: MailServer) -> None:
    start = utc_now()
    # The digest fires every 5 seconds; posts from before `since` are the back catalogue.
    site = make_site(digest={"schedule": "*/5 * * * * *",
                             "since": start - timedelta(seconds=30)})
    site.write_post("old-news", "Old news", start - timedelta(days=2))
    daemon = site.start("run")
    health = daemon.wait_healthy()
    assert health["status"] == "ok" and health["scheduler"] is True and health["database"]
    with httpx.Client(base_url=site.base_url, timeout=10) as client:

        assert wait_until(lambda: feed_titles(client) == ["Old news"], timeout=10)

        # Subscribe through the web form, confirm from the email.
        done = subscribe_with_the_form(client, "reader@example.org")
        assert done.status_code == 200 and "Almost there" in done.text
        assert sink.wait_for(1, timeout=10)
        confirmation = sink.messages_to("reader@example.org")[0]
        link = confirmation.link(re.escape(site.url("/confirm/")) + r"\S+")
        confirmed = httpx.get(link)
        assert confirmed.status_code == 200 and "You are subscribed" in confirmed.text
        assert site.status_of("reader@example.org") == "active"

        # A new post file: the feeds follow within the scan interval (1 s), over HTTP.
        site.write_post("fresh", "Fresh thoughts", utc_now() - timedelta(seconds=1))
        written = time.monotonic()
        assert wait_until(lambda: feed_titles(client) == ["Fresh thoughts", "Old news"], timeout=10)
        assert time.monotonic() - written < 1.0 + 2.0
        # The files are replaced one after the other: each format follows within a moment.
        both = ["Fresh thoughts", "Old news"]
        assert wait_until(lambda: feed_titles(client, "/feed.rss") == both, timeout=2)
        assert wait_until(lambda: [i["title"] for i in client.get("/feed.json").json()["items"]]
                          == both, timeout=2)
        assert client.get("/healthz").json()["last_build"] is not None

        # The schedule's next slot: the digest comes, with the new post only.
        assert sink.wait_for(2, timeout=30), daemon.log()
        [digest] = digests_to(sink, "reader@example.org")
        message = digest.parsed()
        assert message["Subject"] == "Daemon Notes: Fresh thoughts"
        assert "Fresh thoughts" in digest.text() and "Old news" not in digest.text()
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        [unsubscribe_url] = [u for u in header_urls(message["List-Unsubscribe"])
                             if u.startswith(("https://", "http://"))]
        assert unsubscribe_url.startswith(site.url("/unsubscribe/"))
        assert daemon.wait_for_log(r"digest 1 created with 1 post\(s\) for 1 subscriber\(s\)")
        assert daemon.wait_for_log(r"deliveries: 1 sent, 0 failed")
        # The confirmation went through the outbox too: both end up recorded as sent.
        assert wait_until(lambda: [(d.kind, d.status) for d in site.deliveries()] == [
            ("confirm", "sent"), ("digest", "sent")], timeout=10)
        assert client.get("/healthz").json()["last_digest"] is not None

        # RFC 8058 one-click, as a mail client does it: no cookie, no page.
        left = httpx.post(unsubscribe_url, content=b"List-Unsubscribe=One-Click", headers=FORM)
        assert left.status_code == 200
        assert site.status_of("reader@example.org") == "unsubscribed"

        # Another post, another digest slot (a restart after a missed slot brings it at once):
        # a digest is made for whoever is still subscribed, and nothing comes to the reader.
        site.write_post("later", "Later thoughts", utc_now() - timedelta(seconds=1))
        assert wait_until(lambda: feed_titles(client)[:1] == ["Later thoughts"], timeout=10)
        assert daemon.stop() == 0
        log = daemon.log()
        assert re.search(r"postroom running: web on http://127\.0\.0\.1:\d+, posts in \S+posts, "
                         r"database sqlite:\S+, next digest \d{4}-\d\d-\d\d", log), log
        assert "reader@example.org" not in log, "addresses stay out of the default logs"
        site.set_meta(LAST_DIGEST_KEY, (utc_now() - timedelta(minutes=5)).isoformat())
        again = site.start("run")
        again.wait_healthy()
        assert wait_until(lambda: len(site.digests()) == 2, timeout=15), again.log()
        second = site.digests()[1]
        assert second.recipients == 0
        again.wait_for_pass("send")  # a whole send pass after the digest: it sent nothing
        assert sink.count() == 2
        assert [d.kind for d in site.deliveries()] == ["confirm", "digest"]
        assert again.stop() == 0


def test_a_post_written_after_the_daemon_started_is_new_to_the_first_digest(
        make_site: MakeSite, sink: MailServer) -> None:
    # No digest.since: the first digest starts when postroom first saw the collection,
    # which is when the daemon started, not when the first digest happens to run.
    now = utc_now()
    site = make_site(digest={"schedule": past_slot_schedule(now)})
    site.write_post("archive", "From the archive", now - timedelta(days=30))
    site.add_subscribers(["reader@example.org"])
    daemon = site.start("run")
    daemon.wait_healthy()
    site.write_post("news", "News", utc_now() + timedelta(seconds=1))
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        # Published (its date has passed) and seen by the daemon, which makes no digest:
        # its first start missed no slot.
        assert wait_until(lambda: feed_titles(client)[:1] == ["News"], timeout=10)
    daemon.wait_for_pass("send")
    assert daemon.stop() == 0
    assert site.digests() == [] and sink.count() == 0

    site.set_meta(LAST_DIGEST_KEY, (now - timedelta(days=1)).isoformat())
    again = site.start("run")
    again.wait_healthy()
    assert sink.wait_for(1, timeout=15), again.log()
    [digest] = sink.messages()
    assert digest.parsed()["Subject"] == "Daemon Notes: News"
    assert "From the archive" not in digest.text()
    assert again.stop() == 0


# ---- the other jobs ----------------------------------------------------------------------

def test_a_post_dated_in_the_future_is_published_at_its_date(make_site: MakeSite) -> None:
    # Rescans are an hour apart here: only the publication job can publish the post in time.
    site = make_site(daemon={"scan_interval": 3600.0})
    site.write_post("now", "Here now", utc_now() - timedelta(hours=1))
    due = datetime.now(UTC) + timedelta(seconds=3)
    site.write_post("soon", "Coming soon", due)
    daemon = site.start("run")
    daemon.wait_healthy()
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        assert wait_until(lambda: feed_titles(client) == ["Here now"], timeout=10)
        assert wait_until(lambda: feed_titles(client) == ["Coming soon", "Here now"],
                          timeout=10)
    assert datetime.now(UTC) >= due
    assert daemon.stop() == 0


def test_an_edited_post_is_live_within_the_watch_debounce(make_site: MakeSite) -> None:
    # Rescans are an hour apart: only the posts folder's watcher can see the edit in time.
    site = make_site(daemon={"scan_interval": 3600.0, "watch_debounce": 0.2})
    site.write_post("first", "First title", utc_now() - timedelta(hours=1))
    daemon = site.start("run")
    daemon.wait_healthy()
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        assert wait_until(lambda: feed_titles(client) == ["First title"], timeout=10)
        etag = client.get("/feed.atom").headers["etag"]
        # An editor that writes twice in a row (truncate, then the new text).
        site.write_post("first", "", utc_now() - timedelta(hours=1))
        site.write_post("first", "Edited title", utc_now() - timedelta(hours=1))
        site.write_post("second", "A new post", utc_now() - timedelta(minutes=1))
        assert wait_until(lambda: feed_titles(client) == ["A new post", "Edited title"],
                          timeout=10)
        assert client.get("/feed.atom").headers["etag"] != etag
    assert daemon.wait_for_log("feeds rebuilt")
    assert daemon.stop() == 0


def test_deliveries_refused_for_now_are_retried_by_the_daemon(
        make_site: MakeSite, sink: MailServer) -> None:
    now = utc_now()
    site = make_site(digest={"schedule": past_slot_schedule(now),
                             "since": now - timedelta(days=1)})
    site.write_post("news", "News", now - timedelta(minutes=10))
    site.add_subscribers(["easy@example.org", "grey@example.org"])
    # Greylisted: 451 twice, then accepted.
    sink.fail(Fault("rcpt", "451 4.7.1 try again later", recipient="grey@example.org",
                    times=2))
    site.set_meta(LAST_DIGEST_KEY, (now - timedelta(days=1)).isoformat())
    daemon = site.start("run")
    daemon.wait_healthy()
    assert sink.wait_for(2, timeout=20), daemon.log()
    assert sorted(sink.per_recipient()) == ["easy@example.org", "grey@example.org"]
    wait_until(lambda: delivery_counts(site)["sent"] == 2, timeout=5)
    grey = next(d for d in site.deliveries() if d.email == "grey@example.org")
    assert grey.attempts == 3 and grey.status == "sent"
    assert daemon.wait_for_log(r"will retry digest 1 to subscriber 2 .*451", count=2)
    assert daemon.stop() == 0


def test_unconfirmed_requests_are_forgotten_after_the_expiry(make_site: MakeSite) -> None:
    site = make_site(web={"confirm_expiry_days": 3})
    now = utc_now()
    site.add_subscribers(["stale@example.org"], status="pending", at=now - timedelta(days=4))
    site.add_subscribers(["recent@example.org"], status="pending", at=now - timedelta(days=2))
    site.add_subscribers(["old-friend@example.org"], status="active", at=now - timedelta(days=90))
    daemon = site.start("run")
    daemon.wait_healthy()
    assert daemon.wait_for_log(r"forgot 1 subscription request\(s\) unconfirmed after 3 days")
    assert site.subscriber("stale@example.org") is None
    assert site.status_of("recent@example.org") == "pending"
    assert site.status_of("old-friend@example.org") == "active"
    assert daemon.stop() == 0


# ---- stopping ----------------------------------------------------------------------------

def test_sigterm_mid_send_exits_0_and_loses_nothing(make_site: MakeSite) -> None:
    now = utc_now()
    with MailServer(delay=0.05) as slow:
        site = make_site(mail_server=slow, digest={"schedule": past_slot_schedule(now),
                                            "since": now - timedelta(days=1)})
        site.write_post("big-news", "Big news", now - timedelta(minutes=10))
        imported = site.run("subscribers", "import",
                            str(write_subscriber_csv(site.root / "list.csv", 300)))
        assert imported.returncode == 0, imported.stderr
        assert "300 added" in imported.stdout
        # A digest slot passed while postroom was down: it is created and sent at start.
        site.set_meta(LAST_DIGEST_KEY, (now - timedelta(days=1)).isoformat())
        daemon = site.start("run")
        assert slow.wait_for(20, timeout=20), daemon.log()

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
        log = daemon.log()
        assert "stopping: no new work" in log and "Traceback" not in log

        # In flight sends finished; nothing was left half-done.
        counts = delivery_counts(site)
        assert counts["sending"] == 0 and counts["failed"] == 0
        assert counts["sent"] == slow.count()
        assert 0 < counts["pending"] < 300, counts  # it really was stopped mid-send
        assert counts["sent"] + counts["pending"] == 300

        slow.delay = 0.0
        finished = site.run("digest", "send")
        assert finished.returncode == 0, finished.stderr
    assert len(site.digests()) == 1
    assert delivery_counts(site) == {"pending": 0, "sending": 0, "sent": 300, "failed": 0}
    received = slow.per_recipient()
    assert len(received) == 300
    assert set(received.values()) == {1}


def test_sigterm_after_the_grace_period_hands_sends_back_to_pending(
        make_site: MakeSite) -> None:
    now = utc_now()
    with MailServer(delay=30.0) as stuck:
        site = make_site(mail_server=stuck, daemon={"shutdown_grace": 0.5},
                         smtp={"concurrency": 2, "timeout": 2.0},
                         digest={"schedule": past_slot_schedule(now),
                                 "since": now - timedelta(days=1)})
        site.write_post("news", "News", now - timedelta(minutes=10))
        site.add_subscribers([f"r{n}@example.org" for n in range(6)])
        site.set_meta(LAST_DIGEST_KEY, (now - timedelta(days=1)).isoformat())
        daemon = site.start("run")
        # Both connections have handed a message over and wait for the server's 250.
        wait_until(lambda: len([e for e in stuck.outcomes() if e.stage == "rcpt"]) == 2,
                   timeout=20)

        stopped = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
        assert time.monotonic() - stopped < 10
        log = daemon.log()
        assert "grace period over: handing in-flight deliveries back to pending" in log
        assert "Traceback" not in log
        rows = site.deliveries()
        assert {r.status for r in rows} == {"pending"}, log
        assert sorted(r.last_reply for r in rows if r.attempts) == [
            "interrupted by shutdown"] * 2
        assert stuck.count() == 0

        stuck.delay = 0.0
        finished = site.run("digest", "send")
        assert finished.returncode == 0, finished.stderr
        assert set(stuck.per_recipient()) == {f"r{n}@example.org" for n in range(6)}
    assert delivery_counts(site)["sent"] == 6


# ---- SIGHUP ------------------------------------------------------------------------------

def page_title(client: httpx.Client) -> str:
    found = re.search(r"<h1>Get (.*) by email</h1>", client.get("/subscribe").text)
    assert found
    return found.group(1)


def test_sighup_keeps_the_old_config_when_the_new_one_is_bad_and_applies_a_good_one(
        make_site: MakeSite) -> None:
    site = make_site()
    site.write_post("hello", "Hello", utc_now() - timedelta(hours=1))
    daemon = site.start("run", "--log-format", "json")
    daemon.wait_healthy()
    with httpx.Client(base_url=site.base_url, timeout=10) as client:
        assert wait_until(lambda: feed_titles(client) == ["Hello"], timeout=10)
        original = site.config.read_text()

        def feed_title() -> str:
            return str(feedparser.parse(client.get("/feed.atom").content).feed.title)

        assert feed_title() == page_title(client) == "Daemon Notes"

        # 1. Not TOML at all.
        site.config.write_text(original + "\n[site\ntitle = 'Broken'\n")
        daemon.send_signal(signal.SIGHUP)
        assert daemon.wait_for_log(r"reload failed, keeping the running configuration", count=1)
        # 2. A new title, with a bad schedule.
        site.configure(site={"title": "Bad Schedule"}, digest={"schedule": "funday 09:00"})
        daemon.send_signal(signal.SIGHUP)
        assert daemon.wait_for_log(r"reload failed.*digest\.schedule", count=1)
        # 3. A new title, with an SMTP user whose password is not in the environment.
        site.configure(site={"title": "No Password"}, digest={"schedule": "mon 09:00"},
                       smtp={"username": "letters"})
        daemon.send_signal(signal.SIGHUP)
        assert daemon.wait_for_log(r"reload failed.*POSTROOM_SMTP_PASSWORD", count=1)

        daemon.wait_for_pass("build")  # a half-applied config would rewrite the feeds
        assert daemon.running()
        assert client.get("/healthz").json()["status"] == "ok"
        assert page_title(client) == "Daemon Notes"
        assert feed_title() == "Daemon Notes"

        # A good config, and a site template: both apply, to the pages and the next rebuild.
        del site.tables["smtp"]["username"]
        site.configure(site={"title": "Renamed Notes"})
        (site.root / "templates").mkdir()
        (site.root / "templates" / "message.html").write_text(
            '{% extends "_page.html" %}{% block content %}<h1>Site template: {{ heading }}</h1>'
            "{% endblock %}")
        daemon.send_signal(signal.SIGHUP)
        assert daemon.wait_for_log(r"configuration and templates reloaded from ")
        assert page_title(client) == "Renamed Notes"
        assert "Site template: This link is not valid" in client.get("/confirm/forged").text
        assert wait_until(lambda: feed_title() == "Renamed Notes", timeout=10)
    assert daemon.stop() == 0

    # Every log line is one JSON object (--log-format json).
    entries = [json.loads(line) for line in daemon.log().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    failures = [e for e in entries if e["message"].startswith("reload failed")]
    assert len(failures) == 3
    assert {e["level"] for e in failures} == {"error"}
    assert {e["logger"] for e in failures} == {"postroom.daemon"}
    assert any(e["message"].startswith("feeds rebuilt: 1 published posts") for e in entries)


# ---- missed digests, the lock, --once ----------------------------------------------------

def test_a_missed_digest_runs_once_at_start(make_site: MakeSite, sink: MailServer) -> None:
    now = utc_now()
    site = make_site(digest={"schedule": past_slot_schedule(now),
                             "since": now - timedelta(days=5)},
                     daemon={"retry_interval": 0.5})
    site.write_post("news", "News", now - timedelta(minutes=10))
    site.add_subscribers(["reader@example.org"])

    # The first start ever misses nothing: no digest.
    first = site.start("run")
    first.wait_healthy()
    first.wait_for_pass("send")
    assert first.stop() == 0
    assert site.digests() == [] and sink.count() == 0
    assert "was due while postroom was stopped" not in first.log()

    # Down for three days: three slots passed. One digest, sent once.
    site.set_meta(LAST_DIGEST_KEY, (now - timedelta(days=3)).isoformat())
    daemon = site.start("run")
    daemon.wait_healthy()
    assert daemon.wait_for_log(r"a digest was due while postroom was stopped: running it now")
    assert sink.wait_for(1, timeout=15), daemon.log()
    daemon.wait_for_pass("send")
    # Stopped, it can make no more: what it made by now is all it made.
    assert daemon.stop() == 0
    assert len(site.digests()) == 1
    assert sink.count() == 1
    assert len(re.findall(r"digest \d+ created", daemon.log())) == 1
    last_run = datetime.fromisoformat(str(site.get_meta(LAST_DIGEST_KEY)))
    assert last_run >= now

    # Started again, nothing was missed since that run.
    again = site.start("run")
    again.wait_healthy()
    again.wait_for_pass("send")
    assert again.stop() == 0
    assert "was due while postroom was stopped" not in again.log()
    assert len(site.digests()) == 1 and sink.count() == 1


def test_a_second_daemon_on_the_same_database_is_refused(make_site: MakeSite) -> None:
    site = make_site()
    first = site.start("run")
    first.wait_healthy()

    second = site.run("run", timeout=30)
    assert second.returncode == 2
    assert "another postroom daemon is running on this database" in second.stderr
    assert "postroom.db.daemon.lock" in second.stderr
    assert "Traceback" not in second.stderr
    # A cron pass next to the running daemon is refused too (it could double a digest).
    once = site.run("run", "--once", timeout=30)
    assert once.returncode == 2
    assert "a postroom daemon is running on this database" in once.stderr
    assert first.running()
    assert httpx.get(site.url("/healthz")).json()["status"] == "ok"

    # The lock dies with its holder, even on SIGKILL: the next daemon starts.
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = site.start("run")
    third.wait_healthy()
    assert third.stop() == 0


def test_run_once_does_one_pass_and_exits(make_site: MakeSite, sink: MailServer) -> None:
    now = utc_now()
    site = make_site(digest={"schedule": past_slot_schedule(now),
                             "since": now - timedelta(days=1)})
    site.write_post("news", "News", now - timedelta(minutes=10))
    site.add_subscribers(["reader@example.org"])
    site.set_meta(LAST_DIGEST_KEY, (now - timedelta(days=1)).isoformat())

    once = site.run("run", "--once", "--log-format", "json", timeout=60)
    assert once.returncode == 0, once.stderr
    entries = [json.loads(line) for line in once.stderr.splitlines()]
    messages = [e["message"] for e in entries]
    assert {e["level"] for e in entries} <= {"info", "warning"}
    assert any(m.startswith("feeds rebuilt: 1 published posts") for m in messages)
    assert any(re.match(r"digest 1 created with 1 post\(s\) for 1 subscriber\(s\)", m)
               for m in messages)
    assert any(m.startswith("deliveries: 1 sent") for m in messages)
    assert (site.root / "public" / "feed.atom").is_file()
    assert sink.count() == 1
    assert delivery_counts(site)["sent"] == 1

    # Run again: nothing is due, nothing changes, still exit 0.
    again = site.run("run", "--once", timeout=60)
    assert again.returncode == 0, again.stderr
    assert "feeds rebuilt" not in again.stderr and "created" not in again.stderr
    assert len(site.digests()) == 1 and sink.count() == 1


def test_a_bad_schedule_stops_the_daemon_at_start_with_a_clear_message(
        make_site: MakeSite) -> None:
    site = make_site(digest={"schedule": "funday 09:00"})
    result = site.run("run", timeout=30)
    assert result.returncode == 2
    assert re.search(r"postroom\.toml:\d+: digest\.schedule: 'funday 09:00': unknown day",
                     result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_logs_are_json_lines_with_log_format_json_and_sigint_stops(
        make_site: MakeSite) -> None:
    site = make_site()
    site.write_post("hello", "Hello", utc_now() - timedelta(hours=1))
    daemon: PostroomProcess = site.start("run", "--log-format", "json")
    daemon.wait_healthy()
    assert daemon.wait_for_log(r"feeds rebuilt")
    daemon.send_signal(signal.SIGINT)  # Ctrl-C on a terminal: the same clean stop
    assert daemon.wait() == 0
    lines = daemon.log().splitlines()
    assert len(lines) >= 3
    entries = [json.loads(line) for line in lines]
    assert [e["message"] for e in entries][-1] == "stopped"
    for entry in entries:
        assert isinstance(entry, dict)
        assert datetime.fromisoformat(entry["time"]).tzinfo is not None


def test_a_post_problem_is_logged_once_not_on_every_scan(make_site: MakeSite) -> None:
    site = make_site()
    site.write_post("fine", "Fine", utc_now() - timedelta(hours=1))
    (site.root / "posts" / "2025-01-01-broken.md").write_text(
        "---\ntitle: [unclosed\n---\nBody.\n", encoding="utf-8")
    daemon = site.start("run")
    daemon.wait_healthy()
    daemon.wait_for_pass("build")
    daemon.wait_for_pass("build")  # at least two more scans that saw the same problem
    assert daemon.stop() == 0
    assert len(re.findall(r"post problem: \S*2025-01-01-broken\.md", daemon.log())) == 1


def test_feeds_that_cannot_be_written_are_said_once_and_rebuilt_once_they_can(
        make_site: MakeSite, caplog: pytest.LogCaptureFixture) -> None:
    # An OSError from the build (a full disk, a file where the output folder should be) was
    # logged with its traceback on every scan. In process: each rebuild is one scan.
    site = make_site()
    site.write_post("one", "One", utc_now() - timedelta(hours=1))
    output = site.root / "public"
    output.write_text("a file where the output folder should be\n")
    caplog.set_level(logging.INFO, logger="postroom")

    async def scans() -> None:
        daemon = Daemon(site.settings(), site.config)
        try:
            for _ in range(3):
                await daemon.rebuild()
            output.unlink()
            await daemon.rebuild()
        finally:
            daemon.builder_thread.shutdown()

    asyncio.run(scans())
    said = [r.getMessage() for r in caplog.records if r.name.startswith("postroom")]
    failures = [m for m in said if m.startswith("feeds not rebuilt: ")]
    assert failures == [f"feeds not rebuilt: {output}: cannot write the feeds: File exists; "
                        "every feed file there is whole (the old one or the new one), and the "
                        "next build finishes the job"], said
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"
    assert any(m.startswith("feeds rebuilt again after: ") for m in said), said
    assert (output / "feed.atom").is_file()

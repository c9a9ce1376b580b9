"""WebSub: the feeds advertise the hub, and a real hub on loopback is told when they change.

The hub is tests/websubhub.py: a real HTTP server in a thread that records the publish pings,
fails them on request, holds them unanswered, or (verify=True) fetches the pinged feed as
a real hub does. Waits are on the hub's condition or on events, with deadlines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import feedparser
import httpx
import pytest
from lxml import etree

from daemonproc import DaemonSite, free_port
from postroom import websub
from postroom.build import SiteBuilder
from postroom.config import load_settings
from postroom.errors import ConfigError
from postroom.websub import HubNotifier, Ping, RetryPolicy
from sites import Site, run_postroom
from websubhub import TestHub

ATOM = "{http://www.w3.org/2005/Atom}"
# Retries within a test's patience: 10 ms, 20 ms, 40 ms ...
QUICK = RetryPolicy(attempts=4, backoff_base=0.01, backoff_max=0.05, timeout=5.0)
TOPIC = "https://blog.example.org/feed.atom"


@pytest.fixture
def hub() -> Iterator[TestHub]:
    with TestHub() as server:
        yield server


@pytest.fixture(autouse=True)
def websub_debug(caplog: pytest.LogCaptureFixture) -> None:
    # publish_blocking (the CLI's) logs each outcome at DEBUG: the tests read them all.
    caplog.set_level(logging.DEBUG, logger="postroom.websub")


def websub_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "postroom.websub"]


# ---- what the feeds advertise ----------------------------------------------------------

def with_posts(site: Site) -> None:
    site.write_post("2025-01-01-one.md", "One.\n", title="One", date=date(2025, 1, 1),
                    tags=["rust"])
    site.write_post("2025-01-02-two.md", "Two.\n", title="Two", date=date(2025, 1, 2))


def test_every_feed_advertises_the_hub_and_itself(site: Site) -> None:
    site.configure(feeds={"hub": "https://hub.example/websub/"})
    with_posts(site)
    site.build()

    for name in ("feed.atom", "feed.rss", "tags/rust.atom", "tags/rust.rss"):
        links = {(link["rel"], link["href"]) for link in feedparser.parse(site.feed(name))
                 .feed.links}
        assert ("hub", "https://hub.example/websub/") in links, name
        assert ("self", f"https://blog.example.org/{name}") in links, name
    # RSS: atom:link elements of the channel, as RSS has no link relations of its own.
    channel = etree.fromstring(site.feed("feed.rss")).find("channel")
    assert channel is not None
    assert [(e.get("rel"), e.get("href")) for e in channel.findall(f"{ATOM}link")] == [
        ("self", "https://blog.example.org/feed.rss"), ("hub", "https://hub.example/websub/")]
    for name in ("feed.json", "tags/rust.json"):
        feed = json.loads(site.feed(name))
        assert feed["hubs"] == [{"type": "WebSub", "url": "https://hub.example/websub/"}]
        assert feed["feed_url"] == f"https://blog.example.org/{name}"


def test_without_a_hub_no_feed_names_one(site: Site) -> None:
    with_posts(site)
    site.build()

    assert b'rel="hub"' not in site.feed("feed.atom") + site.feed("feed.rss")
    assert "hubs" not in json.loads(site.feed("feed.json"))


def test_the_link_header_names_the_hub_and_the_feed(site: Site) -> None:
    settings = site.configure(feeds={"hub": "https://hub.example/", "url": "https://f.example"})

    assert websub.link_header(settings, "tags/rust.rss") == (
        '<https://hub.example/>; rel="hub", <https://f.example/tags/rust.rss>; rel="self"')
    assert websub.link_header(settings, "feed.json") is not None
    for not_a_feed in ("feed.xsl", "feed.html", "tags/rust.html", "archive/2025.atom"):
        assert websub.link_header(settings, not_a_feed) is None
    assert websub.link_header(site.configure(), "feed.atom") is None


@pytest.mark.parametrize("url", ["hub.example", "ftp://hub.example/", "https://hub.example/a b",
                                 'https://hub.example/"', "https://hüb.example/"])
def test_a_bad_hub_url_is_refused_at_load_naming_the_key(site: Site, url: str) -> None:
    site.configure()
    path = site.config_path
    path.write_text(path.read_text() + f"hub = {json.dumps(url)}\n", encoding="utf-8")

    with pytest.raises(ConfigError) as raised:
        load_settings(path, env={})
    assert f"{path}:" in str(raised.value) and "feeds.hub:" in str(raised.value)


def test_the_hub_url_is_kept_as_written(site: Site) -> None:
    assert site.configure(feeds={"hub": "https://hub.example/"}).feeds.hub == \
        "https://hub.example/"


def test_feed_responses_carry_the_link_header(tmp_path: Path) -> None:
    """Over HTTP, from memory and through the app (a request with an Origin), 200, 304 and
    HEAD alike; the stylesheet, not a feed, has none."""
    with DaemonSite.create(tmp_path / "site", smtp_port=free_port(),
                           feeds={"hub": "https://hub.example/"}) as site:
        site.write_post("one", "One", tags=("rust",))
        SiteBuilder(site.settings()).build(datetime.now(UTC))
        site.serve_in_process()
        with httpx.Client(base_url=site.base_url, timeout=10) as client:
            for name in ("feed.atom", "feed.rss", "feed.json", "tags/rust.rss"):
                expected = f'<https://hub.example/>; rel="hub", <{site.url("/" + name)}>; ' \
                           'rel="self"'
                plain = client.get(f"/{name}")
                assert plain.status_code == 200 and plain.headers["link"] == expected
                etag = {"If-None-Match": plain.headers["etag"]}
                assert client.get(f"/{name}", headers=etag).headers["link"] == expected
                assert client.head(f"/{name}").headers["link"] == expected
                cors = client.get(f"/{name}", headers={"Origin": "https://elsewhere.example"})
                assert cors.status_code == 200 and cors.headers["link"] == expected
            assert "link" not in client.get("/feed.xsl").headers


# ---- what to ping ------------------------------------------------------------------------

def test_only_written_feeds_are_pinged(site: Site) -> None:
    settings = site.configure(feeds={"hub": "https://hub.example/"})
    written = ["feed.xsl", "tags/rust.atom", "feed.atom", "feed.html"]

    assert websub.pings_for(settings, written) == [
        Ping("https://hub.example/", "https://blog.example.org/feed.atom"),
        Ping("https://hub.example/", "https://blog.example.org/tags/rust.atom")]
    assert websub.pings_for(site.configure(), written) == []


def test_what_a_hub_answer_means() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)

    assert websub.answer_of(204, "No Content", None, "", now).outcome == "delivered"
    assert websub.answer_of(202, "Accepted", None, "", now).outcome == "delivered"
    busy = websub.answer_of(429, "Too Many Requests", "120", "", now)
    assert (busy.outcome, busy.retry_after) == ("retry", 120.0)
    later = websub.answer_of(503, "Service Unavailable", "Thu, 01 Jan 2026 00:00:30 GMT", "",
                             now)
    assert (later.outcome, later.retry_after) == ("retry", 30.0)
    assert websub.answer_of(502, "Bad Gateway", None, "", now).outcome == "retry"
    refused = websub.answer_of(400, "Bad Request", None, "The topic URL\nreturned a 404", now)
    assert refused.outcome == "failed"
    assert refused.detail == "400 Bad Request: The topic URL returned a 404"
    assert websub.answer_of(301, "Moved Permanently", None, "", now).outcome == "failed"


def test_backoff_doubles_up_to_its_cap_and_honours_retry_after() -> None:
    policy = RetryPolicy(backoff_base=5.0, backoff_max=60.0)

    middle = [websub.backoff(policy, n, None, 0.5) for n in range(1, 6)]
    assert middle == [5.0, 10.0, 20.0, 40.0, 60.0]
    assert websub.backoff(policy, 1, None, 0.0) == 3.75  # jitter: 0.75 to 1.25 times
    assert websub.backoff(policy, 1, 300.0, 0.5) == 300.0  # the hub asked for longer
    assert websub.retry_after_seconds("86400", datetime.now(UTC)) == websub.RETRY_AFTER_MAX
    assert websub.retry_after_seconds("soon", datetime.now(UTC)) is None


# ---- telling the hub (HubNotifier against the test hub) ------------------------------------

def notify(pings: list[Ping], policy: RetryPolicy = QUICK) -> HubNotifier:
    """Publish as the daemon does (its log levels), then wait for every outcome."""

    async def tell() -> HubNotifier:
        notifier = HubNotifier(policy)
        notifier.publish(pings)
        await notifier.drain(10)
        await notifier.aclose(0)
        return notifier

    return asyncio.run(tell())


def test_one_form_encoded_publish_request_per_feed(hub: TestHub) -> None:
    topics = [TOPIC, "https://blog.example.org/feed.rss"]

    notifier = notify([Ping(hub.url, t) for t in topics])

    pings = hub.pings()
    assert sorted(p.topic for p in pings) == sorted(topics)
    for ping in pings:
        assert ping.content_type == "application/x-www-form-urlencoded"
        assert ping.form == {"hub.mode": ["publish"], "hub.url": [ping.topic],
                             "hub.topic": [ping.topic]}
        assert ping.user_agent.startswith("postroom/")
    assert notifier.delivered == {Ping(hub.url, t) for t in topics}
    assert notifier.failures == {}


def test_a_failing_hub_is_retried_until_it_takes_the_ping(
        hub: TestHub, caplog: pytest.LogCaptureFixture) -> None:
    hub.fail_next(1, 503)
    hub.fail_next(1, 429, retry_after="0")

    notifier = notify([Ping(hub.url, TOPIC)])

    assert [p.status for p in hub.pings()] == [503, 429, 204]
    assert notifier.delivered == {Ping(hub.url, TOPIC)}
    said = [(r.outcome, r.attempt) for r in websub_records(caplog)]  # type: ignore[attr-defined]
    assert said == [("retry", 1), ("retry", 2), ("delivered", 3)]
    record = websub_records(caplog)[-1]
    assert (record.hub, record.feed) == (hub.url, TOPIC)  # type: ignore[attr-defined]


def test_retry_after_is_waited_for(hub: TestHub) -> None:
    hub.fail_next(1, 503, retry_after="1")
    started = time.monotonic()

    notify([Ping(hub.url, TOPIC)])

    assert [p.status for p in hub.pings()] == [503, 204]
    assert time.monotonic() - started >= 1.0


def test_a_hub_failing_for_good_is_given_up_after_the_attempts(
        hub: TestHub, caplog: pytest.LogCaptureFixture) -> None:
    hub.fail_next(10, 500)

    notifier = notify([Ping(hub.url, TOPIC)])

    assert len(hub.pings()) == QUICK.attempts
    assert notifier.failures == {Ping(hub.url, TOPIC): "500 Internal Server Error: test hub: 500"}
    last = websub_records(caplog)[-1]
    assert (last.levelname, last.outcome) == ("ERROR", "failed")  # type: ignore[attr-defined]


def test_a_refusal_is_not_retried(hub: TestHub) -> None:
    hub.fail_next(1, 400)

    notifier = notify([Ping(hub.url, TOPIC)])

    assert [p.status for p in hub.pings()] == [400]
    assert Ping(hub.url, TOPIC) in notifier.failures


def test_a_hub_that_is_down_is_a_failure_not_an_error() -> None:
    down = f"http://127.0.0.1:{free_port()}/"

    notifier = notify([Ping(down, TOPIC)])

    assert "ConnectError" in notifier.failures[Ping(down, TOPIC)]


def test_changes_while_a_ping_waits_are_one_ping(hub: TestHub) -> None:
    """Changes during a retry's wait ride on the retry; a change while a request is out
    gets one more request after it, never one per change."""
    ping = Ping(hub.url, TOPIC)

    async def scenario() -> None:
        notifier = HubNotifier(RetryPolicy(attempts=3, backoff_base=0.2, backoff_max=0.2))
        hub.fail_next(1, 503)
        notifier.publish([ping])
        await asyncio.to_thread(hub.wait_for, lambda got: len(got) == 1)
        for _ in range(3):  # the first attempt failed: these wait for the retry
            notifier.publish([ping])
        await notifier.drain(10)
        assert [p.status for p in hub.pings()] == [503, 204]

        hub.arrived.clear()
        hub.hold()
        notifier.publish([ping])
        await asyncio.to_thread(hub.arrived.wait, 10)  # the request is out, unanswered
        for _ in range(3):
            notifier.publish([ping])
        hub.release()
        await notifier.drain(10)
        await notifier.aclose(0)

    asyncio.run(scenario())
    assert [p.status for p in hub.pings()] == [503, 204, 204, 204]


def test_closing_drops_waiting_retries_and_cancels_requests_past_the_grace(
        hub: TestHub, caplog: pytest.LogCaptureFixture) -> None:
    waiting, held = Ping(hub.url, TOPIC), Ping(hub.url, "https://blog.example.org/feed.rss")

    async def scenario() -> float:
        notifier = HubNotifier(RetryPolicy(backoff_base=3600, backoff_max=3600))
        hub.fail_next(1, 503)
        notifier.publish([waiting])
        await asyncio.to_thread(hub.wait_for, lambda got: len(got) == 1)
        hub.hold()
        notifier.publish([held])
        await asyncio.to_thread(hub.arrived.wait, 10)
        started = time.monotonic()
        await notifier.aclose(0.2)
        assert notifier.pending == 0
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 2.0
    abandoned = [r.feed for r in websub_records(caplog)  # type: ignore[attr-defined]
                 if r.outcome == "abandoned"]  # type: ignore[attr-defined]
    assert sorted(abandoned) == sorted([waiting.topic, held.topic])  # each said once


def test_a_ping_task_that_breaks_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    # The config refuses such a hub URL; here it stands for any bug in a ping's task.
    broken = Ping("http://[::1/", TOPIC)

    notifier = notify([broken])

    errors = [r for r in websub_records(caplog) if r.outcome == "error"]  # type: ignore[attr-defined]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert notifier.pending == 0


# ---- `postroom build` ---------------------------------------------------------------------

def build(site: Site, *args: str) -> tuple[int, str, str]:
    result = run_postroom("build", "--config", str(site.config_path), *args, cwd=site.root)
    assert "Traceback" not in result.stdout + result.stderr
    return result.returncode, result.stdout, result.stderr


def test_build_pings_each_changed_feed_once_and_an_unchanged_build_none(
        site: Site, hub: TestHub) -> None:
    site.configure(feeds={"hub": hub.url})
    with_posts(site)

    code, out, err = build(site)

    feeds = ["feed.atom", "feed.json", "feed.rss", "tags/rust.atom", "tags/rust.json",
             "tags/rust.rss"]
    assert (code, err) == (0, "")
    assert f"told the WebSub hub {hub.url} of 6 changed feed(s)" in out
    assert sorted(hub.delivered_topics()) == [f"https://blog.example.org/{n}" for n in feeds]

    assert build(site)[0] == 0  # nothing changed: the process ended having pinged nothing
    assert len(hub.pings()) == 6

    site.write_post("2025-01-02-two.md", "Two, edited.\n", title="Two", date=date(2025, 1, 2))
    code, out, _ = build(site)
    assert code == 0 and "of 3 changed feed(s)" in out
    assert sorted(hub.delivered_topics()[6:]) == [
        f"https://blog.example.org/{n}" for n in ("feed.atom", "feed.json", "feed.rss")]

    site.write_post("2025-01-03-three.md", "Three.\n", title="Three", date=date(2025, 1, 3))
    assert build(site, "--no-ping")[0] == 0
    assert len(hub.pings()) == 9


def test_a_hub_that_is_down_fails_no_build(make_site: Callable[..., Site]) -> None:
    """The same posts built without a hub and with a hub nobody listens on: the same exit
    code and summary; only a warning more."""
    down = f"http://127.0.0.1:{free_port()}/"
    results = []
    for name, changes in (("plain", {}), ("hub-down", {"feeds": {"hub": down}})):
        site = make_site(name, **changes)
        with_posts(site)
        site.write_post("2025-01-03-bad.md", "No title.\n", date=date(2025, 1, 3))
        code, out, err = build(site)
        results.append((code, out.replace(str(site.root), "SITE"), err.replace(name, "SITE")))
    (plain_code, plain_out, plain_err), (code, out, err) = results

    assert (code, out) == (plain_code, plain_out) and code == 1  # 1: the post with no title
    assert err.startswith(plain_err)
    warning = err[len(plain_err):]
    assert warning.startswith(f"postroom: warning: the WebSub hub {down} was not told of "
                              "6 of 6 changed feed(s) (ConnectError: ")
    assert warning.count("\n") == 1


# ---- the daemon ---------------------------------------------------------------------------

@pytest.mark.slow
def test_the_daemon_pings_the_hub_after_a_post_is_added(tmp_path: Path) -> None:
    with TestHub(verify=True) as hub, DaemonSite.create(tmp_path / "site",
                                                        smtp_port=free_port()) as site:
        site.configure(feeds={"hub": hub.url})
        site.write_post("first", "First")
        daemon = site.start("run")
        daemon.wait_healthy()
        main = [site.url(f"/feed.{f}") for f in ("atom", "json", "rss")]
        hub.wait_for(lambda got: sorted(r.topic for r in got if r.delivered) == main)

        site.write_post("second", "Second", tags=("news",))
        tags = [site.url(f"/tags/news.{f}") for f in ("atom", "json", "rss")]
        pings = hub.wait_for(lambda got: sorted(r.topic for r in got[3:]) == sorted(main + tags))

        # Like a real hub, the test hub fetched each feed when pinged: the new post was there.
        assert all(p.delivered for p in pings), [(p.topic, p.status) for p in pings]
        atom = next(p for p in pings[3:] if p.topic == site.url("/feed.atom"))
        assert b"Second" in atom.fetched_body
        assert atom.fetched_headers["link"] == (
            f'<{hub.url}>; rel="hub", <{site.url("/feed.atom")}>; rel="self"')
        assert daemon.stop() == 0
        assert "WebSub hub" in daemon.log() and "Traceback" not in daemon.log()


@pytest.mark.slow
def test_a_hub_that_never_answers_holds_up_no_rebuild_and_no_shutdown(tmp_path: Path) -> None:
    with TestHub() as hub, DaemonSite.create(tmp_path / "site", smtp_port=free_port()) as site:
        hub.hold()
        site.configure(feeds={"hub": hub.url}, daemon={"shutdown_grace": 1.0})
        site.write_post("first", "First")
        daemon = site.start("run")
        daemon.wait_healthy()
        assert hub.arrived.wait(10)  # the first build's pings are out, unanswered

        site.write_post("second", "Second")
        assert daemon.wait_for_log(r"feeds rebuilt: 2 published posts")
        feed = httpx.get(site.url("/feed.atom"), timeout=5)
        assert b"Second" in feed.content

        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert time.monotonic() - started < 1.0 + 5.0  # the grace, and the process's exit
        assert "; abandoned" in daemon.log() and "Traceback" not in daemon.log()
        assert hub.pings() == []  # nothing was answered


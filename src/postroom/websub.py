"""WebSub (W3C Recommendation): the feeds name a hub, and the hub is told when they change.

The pure part decides: which files are feeds that advertise the hub (`is_feed`), the Link
header each is served with (`link_header`), and whom to tell what after a build
(`pings_for`). `HubNotifier` tells them, on the event loop, never holding up a build.

How a hub is told (the publisher convention of the public hubs, which WebSub leaves open): a
form-encoded POST of `hub.mode=publish` and `hub.url=<the feed's self URL>` (and
`hub.topic`, the same URL, for hubs that read that name), one request per feed. One per
feed because PHP hubs (Switchboard) read a repeated `hub.url` as its last value only, and
because then each feed has its own outcome and its own retries. Any 2xx is success (Google's
hub answers 204, Switchboard 202).

Only written feeds are pinged, not removed ones: a hub fetches the topic to deliver it, a
removed feed answers 404 (Switchboard refuses the ping with a 400) and there is nothing to
deliver. The main feed, which a removed tag feed's posts also left or changed in, is pinged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from postroom import __version__
from postroom.config import Settings

log = logging.getLogger(__name__)

# The feeds (main and per tag, every format): the files that advertise the hub. Not the XSL
# stylesheet, HTML pages or archive documents.
FEED_NAME = re.compile(r"(feed|tags/[^/]+)\.(atom|rss|json)")
USER_AGENT = f"postroom/{__version__} (WebSub publisher; +https://pypi.org/project/postroom/)"
# A hub's Retry-After is honoured up to this many seconds.
RETRY_AFTER_MAX = 3600.0
# Of a hub's error answer, this much is read and logged.
ERROR_BODY_BYTES = 300


@dataclass(frozen=True)
class Ping:
    """One notification: tell `hub` that the feed at `topic` (its self URL) changed."""

    hub: str
    topic: str


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts per ping, the backoff between them, one request's timeout."""

    attempts: int = 8
    backoff_base: float = 5.0  # attempt n waits about base * 2**(n-1) seconds before n+1
    backoff_max: float = 600.0
    timeout: float = 10.0


# The daemon keeps trying for about ten minutes (a hub restarting, a network blip).
DAEMON_POLICY = RetryPolicy()
# `postroom build` tries twice, briefly: a build is not held up by a hub.
CLI_POLICY = RetryPolicy(attempts=2, backoff_base=0.5, backoff_max=0.5, timeout=5.0)
CLI_WITHIN = 10.0  # seconds `postroom build` gives the hub in all


@dataclass(frozen=True)
class Answer:
    """What one attempt came to: delivered, worth retrying (after at least `retry_after`
    seconds when the hub said so), or failed for good."""

    outcome: str  # "delivered", "retry" or "failed"
    detail: str  # "204", "503 Service Unavailable: …", "ConnectError: …"
    retry_after: float | None = None


# ---- deciding ----------------------------------------------------------------------------

def is_feed(name: str) -> bool:
    """Given a file's name in the output folder, return whether it is a feed."""
    return FEED_NAME.fullmatch(name) is not None


def self_url(settings: Settings, name: str) -> str:
    """Given a feed's name in the output folder, return its self URL (the WebSub topic)."""
    return f"{settings.feeds_url}/{name}"


def link_header(settings: Settings, name: str) -> str | None:
    """Given the settings and a served file's name, return the value of its `Link` header
    (the hub and the feed's self URL), or None: no hub configured, or not a feed."""
    hub = settings.feeds.hub
    if hub is None or not is_feed(name):
        return None
    return f'<{hub}>; rel="hub", <{self_url(settings, name)}>; rel="self"'


def pings_for(settings: Settings, written: Iterable[str]) -> list[Ping]:
    """Given the settings and the files a build wrote, return the pings to send: one per
    written feed, none without a hub."""
    hub = settings.feeds.hub
    if hub is None:
        return []
    return [Ping(hub, self_url(settings, name)) for name in sorted(written) if is_feed(name)]


def answer_of(status: int, reason: str, retry_after: str | None, body: str,
              now: datetime) -> Answer:
    """Given a hub's HTTP answer, return what it means for the ping."""
    detail = f"{status} {reason}".strip()
    if body.strip():
        detail += ": " + " ".join(body.split())
    if 200 <= status < 300:
        return Answer("delivered", detail)
    if status >= 500 or status in (408, 425, 429):
        return Answer("retry", detail, retry_after_seconds(retry_after, now))
    # A redirect, a refusal (400: the hub could not fetch the feed, 403: not allowed):
    # asking again will not change it; the next change of the feed pings again.
    return Answer("failed", detail)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Given a Retry-After header (seconds, or an HTTP date), return the seconds to wait,
    at most RETRY_AFTER_MAX; None if there is none or it cannot be read."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_MAX)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - now).total_seconds(), 0.0), RETRY_AFTER_MAX)


def backoff(policy: RetryPolicy, attempt: int, retry_after: float | None,
            jitter: float) -> float:
    """Given the attempt that failed (1 for the first), the hub's Retry-After and a jitter
    in [0, 1), return the seconds to wait before the next attempt."""
    delay = min(policy.backoff_max, policy.backoff_base * 2 ** (attempt - 1))
    delay *= 0.75 + jitter / 2  # spread: many feeds failing at once do not retry at once
    return delay if retry_after is None else max(delay, retry_after)


# ---- telling -----------------------------------------------------------------------------

class HubNotifier:
    """Tells hubs that feeds changed, each ping in its own task, retried with backoff.

    Owned by the event loop: `publish`, `drain` and `aclose` are called on it. Pings are
    coalesced: a feed that changes again while its ping waits (for its first request or a
    retry) is pinged once; one that changes while its request is out is pinged once more
    after it (the hub may have fetched the feed before the change). Every outcome is logged
    with the hub, the feed, the outcome and the attempt, as fields of the log record.
    """

    def __init__(self, policy: RetryPolicy = DAEMON_POLICY, *, quiet: bool = False,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 jitter: Callable[[], float] = random.random) -> None:
        self.policy, self.clock, self.jitter = policy, clock, jitter
        # quiet: every outcome at DEBUG (the CLI sums them up in a line of its own).
        self.quiet = quiet
        self.delivered: set[Ping] = set()  # pings whose last request the hub took
        self.failures: dict[Ping, str] = {}  # pings whose last attempt failed: why
        self._owed: set[Ping] = set()  # changed since their last request began
        self._tasks: dict[Ping, asyncio.Task[None]] = {}
        self._closing = asyncio.Event()
        self._client: httpx.AsyncClient | None = None

    def publish(self, pings: Iterable[Ping]) -> None:
        """Tell the hubs, soon, that these feeds changed; return at once."""
        for ping in pings:
            if self._closing.is_set():
                self._log(logging.WARNING, ping, "abandoned", 0, "postroom is stopping")
                continue
            self._owed.add(ping)
            running = self._tasks.get(ping)
            # A task that is done has seen its last change (its callback may be yet to run).
            if running is None or running.done():
                task = asyncio.create_task(self._tell(ping), name=f"websub {ping.topic}")
                self._tasks[ping] = task
                task.add_done_callback(functools.partial(self._forget, ping))

    @property
    def pending(self) -> int:
        """The pings not yet delivered, given up or abandoned."""
        return len(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Wait until every ping is delivered or given up, at most `timeout` seconds."""
        tasks = set(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=max(timeout, 0.0))

    async def aclose(self, timeout: float) -> None:
        """Take no more pings; drop those waiting for a retry; give requests already out
        `timeout` seconds, then cancel them. Each ping dropped is logged once."""
        self._closing.set()  # wakes the tasks waiting for a retry: they end, logged
        tasks = set(self._tasks.values())
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=max(timeout, 0.0))
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _forget(self, ping: Ping, task: asyncio.Task[None]) -> None:
        latest = self._tasks.get(ping) is task  # else `publish` started another already
        if latest:
            del self._tasks[ping]
        if not task.cancelled() and task.exception() is not None:
            # Not a hub's answer (those are handled in _tell): a bug, said once, with its
            # traceback; the next change of the feed pings again.
            if latest:
                self._owed.discard(ping)
            log.error("telling the hub %s that %s changed failed", ping.hub, ping.topic,
                      exc_info=task.exception(),
                      extra={"hub": ping.hub, "feed": ping.topic, "outcome": "error"})

    async def _tell(self, ping: Ping) -> None:
        """Ping until the hub took every change of the feed, gave up, or we stop."""
        attempt = 0
        try:
            while ping in self._owed:
                self._owed.discard(ping)  # this request covers every change so far
                attempt += 1
                answer = await self._post(ping)
                if answer.outcome == "delivered":
                    self.delivered.add(ping)
                    self.failures.pop(ping, None)
                    self._log(logging.INFO, ping, "delivered", attempt, answer.detail)
                    attempt = 0  # a change during the request: a new ping
                    continue
                self.delivered.discard(ping)
                self.failures[ping] = answer.detail
                if answer.outcome == "failed" or attempt >= self.policy.attempts:
                    self._log(logging.ERROR, ping, "failed", attempt, answer.detail)
                    attempt = 0
                    continue
                delay = backoff(self.policy, attempt, answer.retry_after, self.jitter())
                self._log(logging.WARNING, ping, "retry", attempt, answer.detail,
                          retry_in=delay)
                self._owed.add(ping)  # still owed, with any change meanwhile
                if await self._closing_within(delay):
                    self._owed.discard(ping)
                    self._log(logging.WARNING, ping, "abandoned", attempt,
                              f"postroom is stopping (last: {answer.detail})")
                    return
        except asyncio.CancelledError:
            self._owed.discard(ping)
            self._log(logging.WARNING, ping, "abandoned", attempt,
                      "postroom stopped before the hub answered")
            self.failures[ping] = "postroom stopped before the hub answered"
            raise

    async def _closing_within(self, seconds: float) -> bool:
        """Wait `seconds`; return True at once if the notifier is closed meanwhile."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _post(self, ping: Ping) -> Answer:
        """Send one publish request; return what the hub's answer (or its silence) means."""
        if self._client is None:
            # Not following redirects: a hub that moved is reported, to be configured anew.
            self._client = httpx.AsyncClient(timeout=self.policy.timeout,
                                             headers={"User-Agent": USER_AGENT})
        form = {"hub.mode": "publish", "hub.url": ping.topic, "hub.topic": ping.topic}
        try:
            async with self._client.stream("POST", ping.hub, data=form) as response:
                body = b""
                if not response.is_success:
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) >= ERROR_BODY_BYTES:
                            break
        except httpx.HTTPError as err:  # refused, reset, timed out, a broken answer
            return Answer("retry", f"{type(err).__name__}: {err}".rstrip(": "))
        text = body[:ERROR_BODY_BYTES].decode("utf-8", "replace")
        return answer_of(response.status_code, response.reason_phrase,
                         response.headers.get("retry-after"), text, self.clock())

    def _log(self, level: int, ping: Ping, outcome: str, attempt: int, detail: str,
             retry_in: float | None = None) -> None:
        _log(logging.DEBUG if self.quiet else level, ping, outcome, attempt, detail, retry_in)


def _log(level: int, ping: Ping, outcome: str, attempt: int, detail: str,
         retry_in: float | None) -> None:
    """One log line per outcome; the JSON log format keeps the fields as fields."""
    fields: dict[str, object] = {"hub": ping.hub, "feed": ping.topic, "outcome": outcome,
                                 "attempt": attempt, "detail": detail}
    if retry_in is not None:
        fields["retry_in"] = round(retry_in, 3)
    then = {"delivered": "", "retry": f"; next attempt in {retry_in or 0:.1f} s",
            "failed": "; given up until the feed changes again",
            "abandoned": "; abandoned", "error": ""}[outcome]
    took = "took" if outcome == "delivered" else "did not take"
    log.log(level, "WebSub hub %s %s the ping for %s (attempt %d: %s)%s", ping.hub, took,
            ping.topic, attempt, detail, then, extra=fields)


def publish_blocking(pings: list[Ping], policy: RetryPolicy = CLI_POLICY,
                     within: float = CLI_WITHIN) -> HubNotifier:
    """Tell the hubs now and wait, at most `within` seconds (the CLI); return the notifier,
    whose `delivered` and `failures` say what happened."""

    async def tell() -> HubNotifier:
        notifier = HubNotifier(policy, quiet=True)
        notifier.publish(pings)
        await notifier.drain(within)
        await notifier.aclose(0)
        return notifier

    return asyncio.run(tell())

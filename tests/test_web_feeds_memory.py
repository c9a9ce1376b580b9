"""web/feedfiles.py's snapshot: the feeds held in memory and swapped whole by `refresh`, over
real HTTP (the app under uvicorn in this process) and real files in the output folder.

Files are replaced as a build replaces them (a new file renamed over the old one), and
each test calls `refresh` itself, as the daemon does after a build (the app's own refresh
every second may come in between: it does the same).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from starlette.applications import Starlette

from daemonproc import AppServer, DaemonSite, free_port
from postroom.web import keep_feeds_fresh
from postroom.web.feedfiles import FeedFiles

MAX_AGE = 77
IDENTITY = {"Accept-Encoding": "identity"}
GZIP = {"Accept-Encoding": "gzip"}
EARLIER, LATER = 1_700_000_000, 1_700_086_400
SECURITY = ("x-content-type-options", "referrer-policy", "x-frame-options",
            "content-security-policy")
FEED_POLICY = ("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
               "img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; "
               "base-uri 'none'")
NOTHING_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"


def atom(text: str) -> bytes:
    """A feed-sized document (gzip has something to do) that says `text`."""
    entries = "".join(f"<entry><title>{text} {n}</title></entry>\n" for n in range(200))
    return f'<?xml version="1.0" encoding="utf-8"?>\n<feed>{entries}</feed>\n'.encode()


def publish(site: DaemonSite, name: str, data: bytes, mtime: int = EARLIER) -> Path:
    """Put `data` at public/<name> as a build does: a new file renamed over the old one."""
    path = site.root / "public" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.utime(temporary, (mtime, mtime))
    os.replace(temporary, path)
    return path


@pytest.fixture
def site(tmp_path: Path) -> Iterator[DaemonSite]:
    with DaemonSite.create(tmp_path / "site", smtp_port=free_port(),
                           web={"feed_max_age": MAX_AGE}) as created:
        publish(created, "feed.atom", atom("first"))
        publish(created, "tags/rust.atom", atom("rust"))
        yield created


@pytest.fixture
def server(site: DaemonSite) -> AppServer:
    return site.serve_in_process()


@pytest.fixture
def client(site: DaemonSite, server: AppServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site.base_url, timeout=10) as session:
        yield session


def raw_get(client: httpx.Client, path: str,
            headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
    """GET; return the response and its body exactly as sent (not decompressed)."""
    with client.stream("GET", path, headers=headers) as response:
        return response, b"".join(response.iter_raw())


def assert_not_modified(response: httpx.Response, etag: str) -> None:
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert response.headers["cache-control"] == f"public, max-age={MAX_AGE}"


# ---- validators follow the bytes --------------------------------------------------------

def test_the_etag_changes_exactly_when_the_bytes_change(
        site: DaemonSite, server: AppServer, client: httpx.Client) -> None:
    first = client.get("/feed.atom", headers=IDENTITY)
    first_gzip = client.get("/feed.atom", headers=GZIP)
    assert first.content == atom("first")

    # The same bytes written again (a new file, a new date): the same ETags.
    publish(site, "feed.atom", atom("first"), mtime=LATER)
    server.state.feeds.refresh()
    same = client.get("/feed.atom", headers=IDENTITY)
    assert same.headers["etag"] == first.headers["etag"]
    assert client.get("/feed.atom", headers=GZIP).headers["etag"] == \
        first_gzip.headers["etag"]
    assert same.headers["last-modified"] == formatdate(LATER, usegmt=True)

    # Other bytes: other ETags, and the new bytes.
    publish(site, "feed.atom", atom("second"), mtime=LATER)
    server.state.feeds.refresh()
    changed = client.get("/feed.atom", headers=IDENTITY)
    assert changed.content == atom("second")
    assert changed.headers["etag"] != first.headers["etag"]
    assert client.get("/feed.atom", headers=GZIP).headers["etag"] not in (
        first_gzip.headers["etag"], changed.headers["etag"])

    # The first bytes back: the first ETag back (it is the bytes' hash).
    publish(site, "feed.atom", atom("first"), mtime=LATER)
    server.state.feeds.refresh()
    assert client.get("/feed.atom", headers=IDENTITY).headers["etag"] == first.headers["etag"]


def test_a_refresh_with_nothing_changed_on_disk_changes_nothing(
        site: DaemonSite, server: AppServer) -> None:
    feeds = server.state.feeds
    feeds.refresh()
    before = feeds.snapshot
    assert feeds.refresh() is False
    assert feeds.snapshot is before


# ---- 304s, gzip and HEAD after a swap ---------------------------------------------------

def test_conditional_gets_and_gzip_keep_working_after_a_swap(
        site: DaemonSite, server: AppServer, client: httpx.Client) -> None:
    old = client.get("/feed.atom", headers=IDENTITY)
    old_gzip = client.get("/feed.atom", headers=GZIP)
    assert_not_modified(client.get("/feed.atom", headers={
        **IDENTITY, "If-None-Match": old.headers["etag"]}), old.headers["etag"])

    publish(site, "feed.atom", atom("rebuilt"), mtime=LATER)
    server.state.feeds.refresh()

    # The old validators match no more: the new feed comes, whole, plain and gzipped.
    plain = client.get("/feed.atom", headers={**IDENTITY, "If-None-Match": old.headers["etag"]})
    assert plain.status_code == 200 and plain.content == atom("rebuilt")
    assert "content-encoding" not in plain.headers
    zipped, raw = raw_get(client, "/feed.atom",
                          {**GZIP, "If-None-Match": old_gzip.headers["etag"]})
    assert zipped.status_code == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) == len(raw)
    assert gzip.decompress(raw) == atom("rebuilt")
    since_old = client.get("/feed.atom", headers={
        **IDENTITY, "If-Modified-Since": old.headers["last-modified"]})
    assert since_old.status_code == 200 and since_old.content == atom("rebuilt")

    # The new ones do.
    assert plain.headers["last-modified"] == formatdate(LATER, usegmt=True)
    for validator in ({"If-None-Match": plain.headers["etag"]},
                      {"If-None-Match": f'"other", W/{plain.headers["etag"]}'},
                      {"If-Modified-Since": plain.headers["last-modified"]}):
        assert_not_modified(client.get("/feed.atom", headers={**IDENTITY, **validator}),
                            plain.headers["etag"])
    assert_not_modified(client.get("/feed.atom", headers={
        **GZIP, "If-None-Match": zipped.headers["etag"]}), zipped.headers["etag"])
    # Each encoding's ETag still validates only its own representation.
    assert client.get("/feed.atom", headers={
        **GZIP, "If-None-Match": plain.headers["etag"]}).status_code == 200


@pytest.mark.parametrize("headers", [IDENTITY, GZIP], ids=["identity", "gzip"])
def test_head_follows_a_swap(site: DaemonSite, server: AppServer, client: httpx.Client,
                             headers: dict[str, str]) -> None:
    publish(site, "feed.atom", atom("a longer feed than the first one"), mtime=LATER)
    server.state.feeds.refresh()
    got, raw = raw_get(client, "/feed.atom", headers)
    head = client.head("/feed.atom", headers=headers)
    assert head.status_code == 200 and head.content == b""
    for name in ("content-type", "content-encoding", "content-length", "etag",
                 "last-modified", "cache-control", "vary", *SECURITY):
        assert head.headers.get(name) == got.headers.get(name), name
    assert int(head.headers["content-length"]) == len(raw)
    assert client.head("/feed.atom", headers={
        **headers, "If-None-Match": got.headers["etag"]}).status_code == 304


# ---- files that come and go ---------------------------------------------------------------

def test_a_feed_that_disappeared_is_404_after_refresh_and_a_new_one_is_served(
        site: DaemonSite, server: AppServer, client: httpx.Client) -> None:
    assert client.get("/tags/rust.atom").status_code == 200
    (site.root / "public" / "tags" / "rust.atom").unlink()
    publish(site, "tags/go.atom", atom("go"))
    server.state.feeds.refresh()

    gone = client.get("/tags/rust.atom")
    assert gone.status_code == 404
    assert gone.headers["content-security-policy"] == NOTHING_POLICY
    assert client.head("/tags/rust.atom").status_code == 404
    assert client.get("/tags/go.atom", headers=IDENTITY).content == atom("go")
    assert client.get("/feed.atom", headers=IDENTITY).content == atom("first")


def test_an_output_folder_removed_whole_serves_nothing_then_its_new_files(
        site: DaemonSite, server: AppServer, client: httpx.Client) -> None:
    public = site.root / "public"
    for path in sorted(public.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    public.rmdir()
    server.state.feeds.refresh()
    assert [client.get(p).status_code for p in ("/feed.atom", "/tags/rust.atom")] == [404, 404]
    publish(site, "feed.atom", atom("again"))
    server.state.feeds.refresh()
    assert client.get("/feed.atom", headers=IDENTITY).content == atom("again")


def test_only_the_files_the_routes_name_are_served(
        site: DaemonSite, server: AppServer, client: httpx.Client) -> None:
    public = site.root / "public"
    (site.root / "secret.json").write_text('{"secret": true}')
    publish(site, "tags/rust.xsl", b"<xsl/>")  # a stylesheet is served at the top only
    publish(site, "tags/.rust.atom.k3j2.tmp", atom("half-written"))
    publish(site, "tags/sub/deep.atom", atom("deep"))
    publish(site, "feed.xml", atom("not a route"))
    (public / "tags" / "link.json").symlink_to(site.root / "secret.json")
    server.state.feeds.refresh()
    assert set(server.state.feeds.snapshot) == {"feed.atom", "tags/rust.atom"}
    for path in ("/tags/rust.xsl", "/tags/.rust.atom.k3j2.tmp", "/tags/sub/deep.atom",
                 "/feed.xml", "/tags/link.json"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"secret" not in response.content and b"<entry>" not in response.content


# ---- the answers from memory and the app's agree -----------------------------------------

@pytest.mark.parametrize("headers", [
    IDENTITY, GZIP, {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
], ids=["identity", "gzip", "browser"])
def test_answers_from_memory_are_those_the_app_would_give(
        site: DaemonSite, client: httpx.Client, headers: dict[str, str]) -> None:
    # A request with an Origin goes through the app and its middleware (CORS decides):
    # for a site that is not ours, its answer must be the same in every other respect.
    etag = client.get("/feed.atom", headers=headers).headers["etag"]
    for extra in ({}, {"If-None-Match": etag}):
        fast, fast_raw = raw_get(client, "/feed.atom", {**headers, **extra})
        through_app, app_raw = raw_get(
            client, "/feed.atom", {**headers, **extra, "Origin": "https://elsewhere.example"})
        assert fast.status_code == through_app.status_code == (304 if extra else 200)
        assert fast_raw == app_raw
        assert dict(fast.headers) | {"date": ""} == dict(through_app.headers) | {"date": ""}
        assert fast.headers["content-security-policy"] == FEED_POLICY
        for name in SECURITY:
            assert name in fast.headers, name
    ours = client.get("/feed.atom", headers={**headers, "Origin": site.base_url})
    assert ours.headers["access-control-allow-origin"] == site.base_url


# ---- refreshes from several threads ---------------------------------------------------------

def test_concurrent_refreshes_and_requests_see_whole_snapshots(
        site: DaemonSite, server: AppServer, client: httpx.Client) -> None:
    versions = [atom(f"version {n}") for n in range(20)]
    dates = {atom("first"): EARLIER} | {body: EARLIER + n for n, body in enumerate(versions)}
    etags = {body: '"' + hashlib.sha256(body).hexdigest()[:32] + '"' for body in dates}
    seen: list[httpx.Response] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=site.base_url, headers=IDENTITY, timeout=10) as poller:
            while not stop.is_set():
                seen.append(poller.get("/feed.atom"))

    def answered_again() -> None:
        """Wait until the poller has had one more answer (10 s at most)."""
        count, deadline = len(seen), time.monotonic() + 10
        while len(seen) == count and polling.is_alive():
            assert time.monotonic() < deadline, "the poller got no answer within 10 s"
            time.sleep(0.001)

    polling = threading.Thread(target=poll)
    polling.start()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for n, body in enumerate(versions):
                publish(site, "feed.atom", body, mtime=EARLIER + n)
                refreshes = [pool.submit(server.state.feeds.refresh) for _ in range(4)]
                answered_again()  # requests come while the refreshes run
                for refresh in refreshes:
                    refresh.result()
    finally:
        stop.set()
        polling.join(10)
    assert len({r.content for r in seen}) > 1
    # Every answer is one version whole: its body with its own ETag and Last-Modified.
    for response in seen:
        assert response.status_code == 200
        assert etags.get(response.content) == response.headers["etag"]
        assert response.headers["last-modified"] == formatdate(dates[response.content],
                                                               usegmt=True)
    assert client.get("/feed.atom", headers=IDENTITY).content == versions[-1]


# ---- the app's own refresh --------------------------------------------------------------------

class CountedFeedFiles(FeedFiles):
    """FeedFiles that counts its refreshes, so a test knows how many have run."""

    refreshes = 0

    def refresh(self) -> bool:
        try:
            return super().refresh()
        finally:
            self.refreshes += 1


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not within 10 s: {what}"
        await asyncio.sleep(0.001)


def test_a_refresh_that_fails_is_said_once_keeps_the_feeds_and_its_end_is_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    public, kept = tmp_path / "public", tmp_path / "kept"
    public.mkdir()
    (public / "feed.atom").write_bytes(atom("kept"))
    feeds = CountedFeedFiles(public, MAX_AGE)
    app = Starlette()
    app.state.postroom = SimpleNamespace(feeds=feeds)

    async def scenario() -> None:
        refreshing = asyncio.create_task(keep_feeds_fresh(app, every=0.001))
        await until(lambda: feeds.refreshes >= 1, "a first refresh")
        # The output folder becomes a symlink to itself: every stat in it fails (ELOOP).
        public.rename(kept)
        public.symlink_to(public)
        failed_from = feeds.refreshes + 1
        await until(lambda: feeds.refreshes >= failed_from + 5, "five failed refreshes")
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert str(public) in errors[0].getMessage() and not errors[0].exc_info
        assert feeds.lookup("feed.atom") is not None  # still served
        public.unlink()
        kept.rename(public)
        await until(lambda: "feeds read again" in caplog.text, "the recovery said")
        refreshing.cancel()

    with caplog.at_level(logging.INFO, logger="postroom.web"):
        asyncio.run(scenario())

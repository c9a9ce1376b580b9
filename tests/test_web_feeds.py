"""web/feedfiles.py over real HTTP: `postroom serve` on a loopback port, serving what
`postroom build` wrote. Content types, validators and 304s, HEAD, gzip, 404s, traversal."""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import feedparser
import httpx
import pytest
from lxml import etree

from daemonproc import DaemonSite, PostroomProcess, free_port

MAX_AGE = 123
IDENTITY = {"Accept-Encoding": "identity"}
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
SECRET = "do-not-serve-this-secret"
POSTS = {  # slug: (title, tags, days ago)
    "first-steps": ("First steps", ("python",), 3),
    "borrowing": ("Borrowing in Rust", ("rust",), 2),
    "async-io": ("Async IO", ("python", "rust"), 1),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonSite, str]]:
    """A built site served by `postroom serve`; yields the site and its base URL."""
    root = tmp_path_factory.mktemp("feeds") / "site"
    # The XSL stylesheet for browsers (opt-in since browsers drop XSLT; the HTML pages
    # that replace it are tested in test_feed_pages.py).
    with DaemonSite.create(root, smtp_port=free_port(), web={"feed_max_age": MAX_AGE},
                           feeds={"for_browsers": "xsl"}) as site:
        now = datetime.now(UTC)
        for slug, (title, tags, days) in POSTS.items():
            site.write_post(slug, title, now - timedelta(days=days), tags=tags)
        # Files a traversal would like to reach: beside the output folder, and above it.
        (root / "secret.atom").write_text(SECRET)
        (root.parent / "secret.json").write_text(json.dumps({"secret": SECRET}))
        built = site.run("build")
        assert built.returncode == 0, built.stderr
        server = site.start("serve")
        health = server.wait_healthy()
        assert health["status"] == "ok" and health["scheduler"] is None
        yield site, site.base_url


@pytest.fixture
def client(served: tuple[DaemonSite, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[1], timeout=10) as session:
        yield session


def on_disk(served: tuple[DaemonSite, str], name: str) -> bytes:
    return (served[0].root / "public" / name).read_bytes()


def raw_request(base_url: str, head: str) -> bytes:
    """Send one request exactly as written (no client normalisation); return the raw reply."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head.replace("\n", "\r\n").encode("ascii"))
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# ---- what is served, and as what ------------------------------------------------------------

@pytest.mark.parametrize(("path", "content_type"), [
    ("/feed.atom", "application/atom+xml; charset=utf-8"),
    ("/feed.rss", "application/rss+xml; charset=utf-8"),
    ("/feed.json", "application/feed+json; charset=utf-8"),
    ("/feed.xsl", "text/xsl; charset=utf-8"),
    ("/tags/python.atom", "application/atom+xml; charset=utf-8"),
    ("/tags/rust.rss", "application/rss+xml; charset=utf-8"),
    ("/tags/rust.json", "application/feed+json; charset=utf-8"),
])
def test_each_file_is_served_byte_for_byte_with_its_content_type(
        client: httpx.Client, served: tuple[DaemonSite, str], path: str,
        content_type: str) -> None:
    response = client.get(path, headers=IDENTITY)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert "content-encoding" not in response.headers
    assert response.content == on_disk(served, path.lstrip("/"))


def test_readers_see_the_posts(client: httpx.Client) -> None:
    atom = feedparser.parse(client.get("/feed.atom").content)
    assert not atom.bozo, atom.bozo_exception
    assert [e.title for e in atom.entries] == ["Async IO", "Borrowing in Rust", "First steps"]
    rss = feedparser.parse(client.get("/feed.rss").content)
    assert not rss.bozo and len(rss.entries) == 3
    tagged = feedparser.parse(client.get("/tags/python.atom").content)
    assert [e.title for e in tagged.entries] == ["Async IO", "First steps"]
    items = client.get("/feed.json").json()["items"]
    assert [item["title"] for item in items] == ["Async IO", "Borrowing in Rust", "First steps"]


def test_a_feed_carries_its_validators_and_cache_control(
        client: httpx.Client, served: tuple[DaemonSite, str]) -> None:
    response = client.get("/feed.atom", headers=IDENTITY)
    etag = response.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    mtime = (served[0].root / "public" / "feed.atom").stat().st_mtime
    assert response.headers["last-modified"] == formatdate(mtime, usegmt=True)
    assert response.headers["cache-control"] == f"public, max-age={MAX_AGE}"
    vary = {v.strip().lower() for v in response.headers["vary"].split(",")}
    assert {"accept-encoding", "accept"} <= vary
    # Asked again: the same validators (readers poll; nothing changed).
    again = client.get("/feed.atom", headers=IDENTITY)
    assert again.headers["etag"] == etag
    assert again.headers["last-modified"] == response.headers["last-modified"]
    # Each file has its own ETag.
    assert client.get("/feed.rss", headers=IDENTITY).headers["etag"] != etag


# ---- conditional GET -------------------------------------------------------------------------

def validators(client: httpx.Client, path: str = "/feed.atom") -> tuple[str, str]:
    response = client.get(path, headers=IDENTITY)
    return response.headers["etag"], response.headers["last-modified"]


def assert_not_modified(response: httpx.Response, etag: str) -> None:
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert response.headers["cache-control"] == f"public, max-age={MAX_AGE}"
    assert "content-type" not in response.headers


@pytest.mark.parametrize("path", ["/feed.atom", "/feed.rss", "/feed.json", "/tags/rust.atom"])
def test_if_none_match_with_the_current_etag_is_304(client: httpx.Client, path: str) -> None:
    etag, _ = validators(client, path)
    response = client.get(path, headers={**IDENTITY, "If-None-Match": etag})
    assert_not_modified(response, etag)


@pytest.mark.parametrize("template", ['"nope", {etag}', "W/{etag}", "*", '{etag} ,"x"'])
def test_if_none_match_lists_weak_tags_and_star(client: httpx.Client, template: str) -> None:
    etag, _ = validators(client)
    response = client.get("/feed.atom",
                          headers={**IDENTITY, "If-None-Match": template.format(etag=etag)})
    assert_not_modified(response, etag)


def test_if_none_match_with_another_etag_gets_the_feed(client: httpx.Client) -> None:
    etag, _ = validators(client)
    response = client.get("/feed.atom", headers={**IDENTITY, "If-None-Match": '"stale"'})
    assert response.status_code == 200
    assert response.headers["etag"] == etag
    assert response.content.startswith(b"<?xml")


def test_if_modified_since_the_last_modified_date_is_304(client: httpx.Client) -> None:
    etag, last_modified = validators(client)
    response = client.get("/feed.atom", headers={**IDENTITY, "If-Modified-Since": last_modified})
    assert_not_modified(response, etag)
    later = formatdate(parsedate_to_datetime(last_modified).timestamp() + 3600, usegmt=True)
    response = client.get("/feed.atom", headers={**IDENTITY, "If-Modified-Since": later})
    assert_not_modified(response, etag)


@pytest.mark.parametrize("since", ["earlier", "garbage"])
def test_if_modified_since_before_the_file_or_unreadable_gets_the_feed(
        client: httpx.Client, since: str) -> None:
    _, last_modified = validators(client)
    value = "not a date" if since == "garbage" else formatdate(
        parsedate_to_datetime(last_modified).timestamp() - 1, usegmt=True)
    response = client.get("/feed.atom", headers={**IDENTITY, "If-Modified-Since": value})
    assert response.status_code == 200
    assert response.content.startswith(b"<?xml")


def test_if_none_match_wins_over_if_modified_since(client: httpx.Client) -> None:
    # RFC 9110 13.1.3: with If-None-Match present, If-Modified-Since is ignored.
    etag, last_modified = validators(client)
    changed = client.get("/feed.atom", headers={
        **IDENTITY, "If-None-Match": '"stale"', "If-Modified-Since": last_modified})
    assert changed.status_code == 200
    same = client.get("/feed.atom", headers={
        **IDENTITY, "If-None-Match": etag, "If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert same.status_code == 304


def test_a_304_carries_no_body_on_the_wire(served: tuple[DaemonSite, str],
                                           client: httpx.Client) -> None:
    etag, _ = validators(client)
    reply = raw_request(served[1], f"GET /feed.atom HTTP/1.1\nHost: x\nIf-None-Match: {etag}\n"
                                   "Accept-Encoding: identity\nConnection: close\n\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 304 ")
    assert body == b""


# ---- HEAD ---------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_head_has_the_get_headers_and_no_body(client: httpx.Client, encoding: str) -> None:
    headers = {"Accept-Encoding": encoding}
    with client.stream("GET", "/feed.rss", headers=headers) as got:
        raw_body = b"".join(got.iter_raw())
    head = client.head("/feed.rss", headers=headers)
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-type", "etag", "last-modified", "cache-control", "vary"):
        assert head.headers[name] == got.headers[name], name
    assert head.headers.get("content-encoding") == got.headers.get("content-encoding")
    assert int(head.headers["content-length"]) == len(raw_body)


def test_head_sends_no_body_bytes_on_the_wire(served: tuple[DaemonSite, str]) -> None:
    reply = raw_request(served[1], "HEAD /feed.atom HTTP/1.1\nHost: x\n"
                                   "Accept-Encoding: identity\nConnection: close\n\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"content-length: {len(on_disk(served, 'feed.atom'))}".encode() in head.lower()
    assert body == b""


def test_head_of_an_unknown_feed_is_404(client: httpx.Client) -> None:
    assert client.head("/tags/nothing.atom").status_code == 404


def test_head_honours_the_validators(client: httpx.Client) -> None:
    etag, _ = validators(client)
    response = client.head("/feed.atom", headers={**IDENTITY, "If-None-Match": etag})
    assert response.status_code == 304


# ---- gzip ---------------------------------------------------------------------------------

@pytest.mark.parametrize("accept", ["gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0.8"])
def test_gzip_when_accepted_is_the_same_feed_under_its_own_etag(
        client: httpx.Client, served: tuple[DaemonSite, str], accept: str) -> None:
    with client.stream("GET", "/feed.atom", headers={"Accept-Encoding": accept}) as response:
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"
    assert int(response.headers["content-length"]) == len(raw)
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw) == on_disk(served, "feed.atom")
    plain_etag, _ = validators(client)
    assert response.headers["etag"] != plain_etag
    assert response.headers["last-modified"] == validators(client)[1]


def test_gzip_and_identity_etags_validate_only_their_own_representation(
        client: httpx.Client) -> None:
    plain_etag, _ = validators(client)
    gzip_etag = client.get("/feed.atom", headers={"Accept-Encoding": "gzip"}).headers["etag"]
    gzipped = {"Accept-Encoding": "gzip"}
    assert_not_modified(client.get("/feed.atom", headers={**gzipped, "If-None-Match": gzip_etag}),
                        gzip_etag)
    # A cache holding the plain copy must not be told its copy is the gzipped one.
    assert client.get("/feed.atom",
                      headers={**gzipped, "If-None-Match": plain_etag}).status_code == 200
    assert client.get("/feed.atom",
                      headers={**IDENTITY, "If-None-Match": gzip_etag}).status_code == 200


def test_no_gzip_without_accept_encoding(served: tuple[DaemonSite, str]) -> None:
    reply = raw_request(served[1], "GET /feed.json HTTP/1.1\nHost: x\nConnection: close\n\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-encoding" not in head.lower()
    assert body == on_disk(served, "feed.json")


# ---- what is not served -------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/tags/nothing.atom", "/tags/python.txt", "/tags/python", "/feed.xml", "/feed.html",
    "/tags/", "/public/feed.atom",
])
def test_an_unknown_feed_is_404(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert b"<feed" not in response.content


@pytest.mark.parametrize("path", [
    "/tags/..%2f..%2fpostroom.toml",
    "/tags/..%2fsecret.atom",
    "/tags/..%2f..%2fsecret.atom",
    "/tags/..%2f..%2f..%2fsecret.json",
    "/tags/%2e%2e%2f%2e%2e%2fsecret.atom",
    "/tags/..%5c..%5csecret.atom",
    "/tags/..%2f.postroom-manifest.json",
    "/tags/%2fetc%2fpasswd.json",
    "/tags/../../secret.atom",
    "/tags/../../../secret.json",
    "/../secret.atom",
])
def test_a_path_out_of_the_output_folder_is_refused(
        served: tuple[DaemonSite, str], path: str) -> None:
    # Sent byte for byte: an HTTP client would normalise the dot segments away.
    reply = raw_request(served[1], f"GET {path} HTTP/1.1\nHost: x\nConnection: close\n\n")
    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 404), reply[:200]
    assert SECRET.encode() not in reply
    assert b"[site]" not in reply and b"root:" not in reply


@pytest.mark.parametrize("path", [
    "/tags/rust.atom%00.json",  # the report: 500 with a traceback
    "/tags/%00", "/tags/%00.atom", "/feed.atom%00", "/tags/rust%0a.atom", "/tags/%7f.rss",
    "/tags/%ff%fe.atom", "/tags/" + "a" * 5000 + ".atom", "/tags/%zz.json",
    "/tags/..%00%2fsecret.atom",
])
def test_a_malformed_feed_path_is_404_never_a_500(
        served: tuple[DaemonSite, str], path: str) -> None:
    reply = raw_request(served[1], f"GET {path} HTTP/1.1\nHost: x\nConnection: close\n\n")
    assert reply.startswith(b"HTTP/1.1 404 "), reply[:200]
    assert b"Traceback" not in served[0].processes[0].log().encode()


def test_only_get_and_head(client: httpx.Client) -> None:
    response = client.post("/feed.atom", content=b"x")
    assert response.status_code == 405


# ---- security headers ----------------------------------------------------------------------

FEED_POLICY = ("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
               "img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; "
               "base-uri 'none'")
NOTHING_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"


def test_every_feed_response_carries_the_security_headers_and_the_feed_policy(
        client: httpx.Client) -> None:
    etag = client.get("/feed.atom", headers=IDENTITY).headers["etag"]
    feeds = {
        "atom": client.get("/feed.atom"),
        "atom in a browser": client.get("/feed.atom", headers={"Accept": BROWSER_ACCEPT}),
        "rss": client.get("/feed.rss", headers=IDENTITY),
        "json": client.get("/feed.json"),
        "stylesheet": client.get("/feed.xsl"),
        "tag": client.get("/tags/rust.atom"),
        "head": client.head("/feed.rss"),
        # A browser merges a 304's headers into the cached feed: the same policy.
        "not modified": client.get("/feed.atom", headers={**IDENTITY, "If-None-Match": etag}),
    }
    others = {
        "no such feed": client.get("/tags/nothing.atom"),
        "wrong method": client.post("/feed.atom", content=b"x"),
        "a body on a GET": client.request("GET", "/feed.atom", content=b"x" * 5000),
    }
    assert feeds["not modified"].status_code == 304
    assert [r.status_code for r in others.values()] == [404, 405, 413]
    for name, response in {**feeds, **others}.items():
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert response.headers["referrer-policy"] == "no-referrer", name
        assert response.headers["x-frame-options"] == "DENY", name
        expected = FEED_POLICY if name in feeds else NOTHING_POLICY
        assert response.headers["content-security-policy"] == expected, name


# ---- browsers -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/feed.atom", "/feed.rss", "/tags/rust.atom"])
def test_a_browser_gets_xml_with_the_stylesheet_instruction(
        client: httpx.Client, served: tuple[DaemonSite, str], path: str) -> None:
    response = client.get(path, headers={**IDENTITY, "Accept": BROWSER_ACCEPT})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/xml; charset=utf-8"
    assert response.content == on_disk(served, path.lstrip("/"))
    first_lines = response.content.splitlines()[:2]
    assert first_lines[0].startswith(b"<?xml ")
    assert first_lines[1] == b'<?xml-stylesheet href="/feed.xsl" type="text/xsl"?>'


def test_a_feed_reader_accepting_html_too_still_gets_the_feed_type(client: httpx.Client) -> None:
    accept = "application/atom+xml, application/rss+xml;q=0.9, text/html;q=0.1, */*;q=0.1"
    response = client.get("/feed.atom", headers={"Accept": accept})
    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"


def test_the_json_feed_is_json_for_browsers_too(client: httpx.Client) -> None:
    response = client.get("/feed.json", headers={"Accept": BROWSER_ACCEPT})
    assert response.headers["content-type"] == "application/feed+json; charset=utf-8"


@pytest.mark.parametrize("path", ["/feed.atom", "/feed.rss"])
def test_the_stylesheet_turns_a_feed_into_a_page_that_explains_it(
        client: httpx.Client, served: tuple[DaemonSite, str], path: str) -> None:
    stylesheet = client.get("/feed.xsl")
    assert stylesheet.status_code == 200
    assert stylesheet.headers["content-type"] == "text/xsl; charset=utf-8"
    assert "etag" in stylesheet.headers
    transform = etree.XSLT(etree.fromstring(stylesheet.content))
    feed = etree.fromstring(client.get(path, headers={"Accept": BROWSER_ACCEPT}).content)
    page = str(transform(feed))
    assert "This is a web feed" in page
    assert f'href="{served[1]}/subscribe"' in page
    for title, _tags, _days in POSTS.values():
        assert title in page


# ---- a new build is served ------------------------------------------------------------------

def test_a_feed_rebuilt_by_another_process_is_served_with_new_validators(
        tmp_path: Path) -> None:
    # `postroom serve` holds the feeds in memory and looks for new files every second.
    with DaemonSite.create(tmp_path / "site", smtp_port=free_port()) as site:
        site.write_post("one", "One", datetime.now(UTC) - timedelta(hours=2))
        assert site.run("build").returncode == 0
        server: PostroomProcess = site.start("serve")
        server.wait_healthy()
        with httpx.Client(base_url=site.base_url, headers=IDENTITY, timeout=10) as client:
            before = client.get("/feed.atom")
            site.write_post("two", "Two", datetime.now(UTC) - timedelta(hours=1))
            assert site.run("build").returncode == 0
            deadline = time.monotonic() + 10
            while (after := client.get("/feed.atom", headers={
                    "If-None-Match": before.headers["etag"]})).status_code == 304:
                assert time.monotonic() < deadline, "the new build was not served within 10 s"
                time.sleep(0.05)
        assert after.status_code == 200
        assert after.headers["etag"] != before.headers["etag"]
        assert [e.title for e in feedparser.parse(after.content).entries] == ["Two", "One"]
        assert after.content == (site.root / "public" / "feed.atom").read_bytes()
        # SIGTERM is a clean stop: exit code 0.
        assert server.stop() == 0

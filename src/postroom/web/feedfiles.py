"""Serving the feed files: ETag, Last-Modified, 304, gzip, HEAD. Small enough to audit.

The files are held in memory. `FeedFiles.refresh` (blocking: run it in a thread) stats the
files the routes serve, reads again only those whose size or mtime changed, and swaps in a
new snapshot whole; a request looks its name up in the snapshot and touches no disk. Each
file's answers are made once, when it is read: its body and gzip body, its strong ETag (a
hash of the bytes) and every header of its 200 and its 304, for each representation.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Scope, Send

from postroom.web.headers import security_headers

CONTENT_TYPES = {
    ".atom": "application/atom+xml; charset=utf-8",
    ".rss": "application/rss+xml; charset=utf-8",
    ".json": "application/feed+json; charset=utf-8",
    ".xsl": "text/xsl; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}
# What the routes serve: these at the top of the output folder, and tags/<tag>.<suffix>.
TOP_LEVEL_NAMES = ("feed.atom", "feed.rss", "feed.json", "feed.xsl", "feed.html")
TAG_SUFFIXES = (".atom", ".rss", ".json", ".html")
FEED_SUFFIXES = (".atom", ".rss", ".json")  # those with an HTML page for browsers
# The folders whose files are served, and which: tag feeds, and RFC 5005 archive pages.
SUBFOLDERS = {"tags": TAG_SUFFIXES, "archive": (".atom", ".rss")}
# Browsers apply a feed's XSL stylesheet only to a document served as plain XML.
BROWSER_XML = "application/xml; charset=utf-8"
BROWSER_SUFFIXES = (".atom", ".rss")
# Level 6 (zlib's default) is 2.6 times as fast as 9 on a 290 KB feed, for 1.3% more bytes:
# a daemon with hundreds of tag feeds compresses each one again whenever it changes.
GZIP_LEVEL = 6
# The app's middleware add "Origin" to Vary (CORS) and the security headers to every
# response; the answers sent straight from memory carry what they would have added.
APP_VARY = b"Accept-Encoding, Accept"
WIRE_VARY = APP_VARY + b", Origin"

Headers = list[tuple[bytes, bytes]]
# (inode, size, mtime_ns): a file is read again only when this changes. The inode too, as
# a build replaces a file by renaming a new one over it: new bytes of the same size within
# one tick of the file system's clock are a new inode still.
Version = tuple[int, int, int]


@dataclass(frozen=True)
class Reply:
    """One answer made in advance: a status, its headers and its body.

    `headers` is what the Starlette endpoint sends (its middleware add the rest);
    `wire_headers` is the whole set, as `send_from_memory` puts it on the wire.
    """

    status: int
    headers: Headers
    wire_headers: Headers
    body: bytes


@dataclass(frozen=True)
class Representation:
    """One encoding and media type of a feed file: its ETag, its 200 and its 304."""

    etag: bytes  # quoted, as in the header
    ok: Reply
    not_modified: Reply


@dataclass(frozen=True)
class FeedFile:
    """A served file as it was read: its bytes, validators and ready-made answers."""

    version: Version
    body: bytes
    gzipped: bytes
    digest: str  # a hash of the bytes: the ETag's core
    last_modified: bytes
    mtime: int  # whole seconds, as Last-Modified says it
    representations: Mapping[tuple[bool, bool], Representation]  # (gzip, browser) → answers
    # The feed's HTML page (feed.html for feed.atom): what a browser gets instead, with its
    # own validators. None: the browser gets the feed (as plain XML, for an XSL stylesheet).
    page: FeedFile | None = None

    def representation(self, gzipped: bool, browser: bool) -> Representation:
        return self.representations[gzipped, browser]


class FeedFiles:
    """The output folder's served files, held in memory as a snapshot that `refresh` swaps.

    Concurrency: `snapshot` is read on the loop by every request and never changed in
    place; `refresh` (any thread) builds a new dict and replaces it with one assignment,
    under a lock so that two refreshes never read the folder at once.
    """

    def __init__(self, folder: Path, max_age: int,
                 links: Callable[[str], str | None] = lambda name: None) -> None:
        self.folder, self.max_age = folder, max_age
        self.links = links  # a served name → its Link header (WebSub's hub and self), or None
        self.snapshot: Mapping[str, FeedFile] = {}
        self._refreshing = threading.Lock()

    def lookup(self, name: str) -> FeedFile | None:
        """Given a relative name from the URL, return the file, or None if not served."""
        # Only names the snapshot holds are served, and it holds only names found by listing
        # the folder (`served_files`): a '..', a control character or an absolute path in
        # the URL names nothing here, and no request reaches the file system.
        return self.snapshot.get(name)

    def refresh(self) -> bool:
        """Read again the files that changed on disk, drop those that are gone, and swap in
        the new snapshot; return whether it changed. Blocking: call it in a thread."""
        with self._refreshing:
            old = self.snapshot
            new: dict[str, FeedFile] = {}
            for name, path, version in served_files(self.folder):
                current = old.get(name)
                if current is None or current.version != version:
                    current = read_feed_file(path, self.max_age, current, self.links(name))
                if current is not None:
                    new[name] = current
            _attach_pages(new)
            changed = new.keys() != old.keys() or any(new[n] is not old[n] for n in new)
            if changed:
                self.snapshot = new
            return changed


def _attach_pages(files: dict[str, FeedFile]) -> None:
    """Give each feed its HTML page, where the build wrote one (kept as it was if the same)."""
    for name, feed in files.items():
        if os.path.splitext(name)[1] not in FEED_SUFFIXES:
            continue
        page = files.get(name.rsplit(".", 1)[0] + ".html")
        if feed.page is not page:
            files[name] = dataclasses.replace(feed, page=page)


def served_files(folder: Path) -> Iterator[tuple[str, Path, Version]]:
    """Given the output folder, yield each file the routes serve that exists: its name (as
    in the URL), its path and its version. A folder not there yet holds none."""
    for name in TOP_LEVEL_NAMES:
        path = folder / name
        found = _regular_file(path)
        if found is not None:
            yield name, path, version_of(found)
    for sub, suffixes in SUBFOLDERS.items():
        yield from _served_in(folder / sub, sub, suffixes)


def _served_in(folder: Path, prefix: str, suffixes: tuple[str, ...]
               ) -> Iterator[tuple[str, Path, Version]]:
    # A symlinked tags/ could lead anywhere: only a real folder is listed.
    found = _lstat(folder)
    if found is None or not stat.S_ISDIR(found.st_mode):
        return
    with os.scandir(folder) as entries:
        for entry in entries:
            if not _servable_name(entry.name, suffixes) or \
                    not entry.is_file(follow_symlinks=False):
                continue
            try:
                found = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed while listed
                continue
            yield f"{prefix}/{entry.name}", Path(entry.path), version_of(found)


def version_of(found: os.stat_result) -> Version:
    return found.st_ino, found.st_size, found.st_mtime_ns


def _servable_name(name: str, suffixes: tuple[str, ...]) -> bool:
    # Hidden files are a build's temporary files; a control character never names a feed.
    return (not name.startswith(".") and os.path.splitext(name)[1] in suffixes
            and not any(ord(c) < 32 or c == "\x7f" for c in name))


def _lstat(path: Path) -> os.stat_result | None:
    """Return the path's own stat (symlinks not followed), or None if it is not there."""
    try:
        return os.lstat(path)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise


def _regular_file(path: Path) -> os.stat_result | None:
    """Return the stat of a regular file (not a symlink), or None if there is none there."""
    found = _lstat(path)
    return found if found is not None and stat.S_ISREG(found.st_mode) else None


def read_feed_file(path: Path, max_age: int, previous: FeedFile | None = None,
                   link: str | None = None) -> FeedFile | None:
    """Given a served file's path, return it read with its answers made, or None if it is
    gone. Blocking. The gzip body of `previous` is reused when the bytes are the same;
    `link` is a Link header for its 200s and 304s."""
    try:
        with open(path, "rb") as file:
            # The version of the bytes read: a file replaced after the listing is read whole
            # (a rename swaps the inode) and is read again at the next refresh.
            found = os.fstat(file.fileno())
            body = file.read()
    except FileNotFoundError:
        return None
    gzipped = previous.gzipped if previous is not None and previous.body == body \
        else gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
    digest = hashlib.sha256(body).hexdigest()[:32]
    last_modified = formatdate(found.st_mtime, usegmt=True).encode("ascii")
    suffix = path.suffix
    representations = {}
    for zipped in (False, True):
        # Each encoding is a different representation, so each gets its own strong ETag.
        etag = f'"{digest}-gz"' if zipped else f'"{digest}"'
        common = [(b"etag", etag.encode("ascii")), (b"last-modified", last_modified),
                  (b"cache-control", f"public, max-age={max_age}".encode("ascii"))]
        if link:
            common.append((b"link", link.encode("ascii")))
        # A page's 304 keeps the page's policy (browsers merge it into the cached page).
        not_modified = _reply(304, common + _page_policy(suffix), None, b"")
        for browser in (False, True):
            media_type = BROWSER_XML if browser and suffix in BROWSER_SUFFIXES \
                else CONTENT_TYPES[suffix]
            content = gzipped if zipped else body
            entity = [(b"content-length", str(len(content)).encode("ascii")),
                      (b"content-type", media_type.encode("ascii"))]
            if zipped:
                entity.append((b"content-encoding", b"gzip"))
            ok = _reply(200, common + entity, media_type.encode("ascii"), content)
            representations[zipped, browser] = Representation(etag.encode("ascii"), ok,
                                                              not_modified)
    return FeedFile(version=version_of(found), body=body, gzipped=gzipped,
                    digest=digest, last_modified=last_modified, mtime=int(found.st_mtime),
                    representations=representations)


def _page_policy(suffix: str) -> Headers:
    if suffix != ".html":
        return []
    return [(k, v) for k, v in security_headers(200, b"text/html")
            if k == b"content-security-policy"]


def _reply(status: int, headers: Headers, content_type: bytes | None, body: bytes) -> Reply:
    app_headers = [*headers, (b"vary", APP_VARY)]
    chosen = any(k == b"content-security-policy" for k, _ in headers)
    wire_headers = [*headers, (b"vary", WIRE_VARY),
                    *(h for h in security_headers(status, content_type)
                      if not (chosen and h[0] == b"content-security-policy"))]
    return Reply(status, app_headers, wire_headers, body)


# ---- choosing the answer ----------------------------------------------------------------

def choose(feed: FeedFile, accept_encoding: bytes, accept: bytes, if_none_match: bytes | None,
           if_modified_since: bytes | None) -> Reply:
    """Given a file and the request's headers, return its 304 or its 200 (gzipped if
    accepted; served as plain XML to a browser)."""
    browser = prefers_html(accept)
    if browser and feed.page is not None:
        feed, browser = feed.page, False  # a person: the feed's page, with its validators
    representation = feed.representation(b"gzip" in accept_encoding, browser)
    if is_not_modified(feed, representation.etag, if_none_match, if_modified_since):
        return representation.not_modified
    return representation.ok


def is_not_modified(feed: FeedFile, etag: bytes, if_none_match: bytes | None,
                    if_modified_since: bytes | None) -> bool:
    """Return whether the client's validators match: If-None-Match wins over the date."""
    if if_none_match is not None:
        if if_none_match == etag:  # what a reader that polls sends back: no parsing
            return True
        tags = {t.strip().removeprefix(b"W/") for t in if_none_match.split(b",")}
        return b"*" in tags or etag in tags
    if if_modified_since:
        if if_modified_since == feed.last_modified:
            return True
        try:
            since = parsedate_to_datetime(if_modified_since.decode("latin-1")).timestamp()
        except (TypeError, ValueError):
            return False
        return feed.mtime <= since
    return False


HTML_TYPES = (b"text/html", b"application/xhtml+xml")
FEED_TYPES = (b"application/atom+xml", b"application/rss+xml", b"application/feed+json",
              b"application/json", b"application/xml", b"text/xml")


def prefers_html(accept: bytes) -> bool:
    """Whether an Accept header ranks HTML above every feed type (a browser's does:
    "text/html,…,application/xml;q=0.9,…"); `*/*` counts for neither."""
    if b"html" not in accept:  # what feed readers send: decided without parsing
        return False
    best_html = best_feed = 0.0
    for item in accept.split(b","):
        media_type, _, parameters = item.partition(b";")
        media_type = media_type.strip().lower()
        quality = 1.0
        for parameter in parameters.split(b";"):
            key, _, value = parameter.partition(b"=")
            if key.strip().lower() == b"q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if media_type in HTML_TYPES:
            best_html = max(best_html, quality)
        elif media_type in FEED_TYPES:
            best_feed = max(best_feed, quality)
    return best_html > 0 and best_html > best_feed


# ---- answering ----------------------------------------------------------------------------

async def send_from_memory(feeds: FeedFiles, scope: Scope, send: Send) -> bool:
    """Answer a plain GET or HEAD of a served file straight from the snapshot, in two
    messages; return False, having sent nothing, for any other request (the app answers)."""
    method = scope["method"]
    if method != "GET" and method != "HEAD":
        return False
    feed = feeds.snapshot.get(scope["path"][1:])
    if feed is None:
        return False
    accept_encoding = accept = b""
    if_none_match = if_modified_since = None
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            if if_none_match is None:
                if_none_match = value
        elif name == b"accept-encoding":
            accept_encoding = accept_encoding or value
        elif name == b"accept":
            accept = accept or value
        elif name == b"if-modified-since":
            if if_modified_since is None:
                if_modified_since = value
        elif name == b"origin" or name == b"transfer-encoding" or (
                name == b"content-length" and value != b"0"):
            # A cross-origin request (CORS answers it) or one with a body (BodyLimit
            # refuses it): the app's middleware decide.
            return False
    reply = choose(feed, accept_encoding, accept, if_none_match, if_modified_since)
    await send({"type": "http.response.start", "status": reply.status,
                "headers": reply.wire_headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else reply.body})
    return True


def feed_response(request: Request, feed: FeedFile) -> Response:
    """Return the response for a feed through the app: 304, or the body (gzipped if
    accepted), with the same headers as `send_from_memory` before the middleware's."""
    headers = request.headers
    reply = choose(feed, headers.get("accept-encoding", "").encode("latin-1"),
                   headers.get("accept", "").encode("latin-1"),
                   _encoded(headers.get("if-none-match")),
                   _encoded(headers.get("if-modified-since")))
    response = Response(status_code=reply.status)
    response.body = b"" if request.method == "HEAD" else reply.body
    response.raw_headers = list(reply.headers)
    return response


def _encoded(value: str | None) -> bytes | None:
    return None if value is None else value.encode("latin-1")


def not_found() -> Response:
    return PlainTextResponse("no such feed\n", status_code=404)

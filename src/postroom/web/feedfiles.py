"""Serving the feed files: ETag, Last-Modified, 304, gzip, HEAD. Small enough to audit."""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

CONTENT_TYPES = {
    ".atom": "application/atom+xml; charset=utf-8",
    ".rss": "application/rss+xml; charset=utf-8",
    ".json": "application/feed+json; charset=utf-8",
    ".xsl": "text/xsl; charset=utf-8",
}
# Browsers apply a feed's XSL stylesheet only to a document served as plain XML.
BROWSER_XML = "application/xml; charset=utf-8"


@dataclass(frozen=True)
class FeedFile:
    version: tuple[int, int]  # (size, mtime_ns): re-read only when this changes
    body: bytes
    gzipped: bytes
    etag: str
    last_modified: str
    mtime: float


class FeedFiles:
    """The output folder's feed files, cached in memory until they change on disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: dict[str, FeedFile] = {}

    def lookup(self, name: str) -> FeedFile | None:
        """Given a relative name from the URL, return the file, or None if not served."""
        # A NUL or other control character (%00 in the URL) names no file: the OS would
        # refuse it with an error, not a "no such file".
        if any(ord(c) < 32 or c == "\x7f" for c in name):
            return None
        try:
            path = (self.folder / name).resolve()
        except (OSError, ValueError):  # a name too long or otherwise unusable: not ours
            return None
        # A '..' in the URL must not reach files outside the output folder.
        if self.folder.resolve() not in path.parents or path.suffix not in CONTENT_TYPES:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        version = (stat.st_size, stat.st_mtime_ns)
        cached = self._cache.get(name)
        if cached is None or cached.version != version:
            try:
                body = path.read_bytes()
            except OSError:
                return None
            cached = FeedFile(
                version=version, body=body, gzipped=gzip.compress(body, mtime=0),
                etag=hashlib.sha256(body).hexdigest()[:32],
                last_modified=formatdate(stat.st_mtime, usegmt=True), mtime=stat.st_mtime,
            )
            self._cache[name] = cached
        return cached


def is_not_modified(request: Request, feed: FeedFile, etag: str) -> bool:
    """Return whether the client's validators match: If-None-Match wins over the date."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or etag in tags
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since).timestamp()
        except (TypeError, ValueError):
            return False
        return int(feed.mtime) <= since
    return False


def feed_response(request: Request, feed: FeedFile, name: str, max_age: int) -> Response:
    """Return the response for a feed: 304, or the body (gzipped if accepted)."""
    suffix = Path(name).suffix
    accepts_gzip = "gzip" in request.headers.get("accept-encoding", "")
    # Each encoding is a different representation, so each gets its own strong ETag.
    etag = f'"{feed.etag}-gz"' if accepts_gzip else f'"{feed.etag}"'
    headers = {
        "ETag": etag,
        "Last-Modified": feed.last_modified,
        "Cache-Control": f"public, max-age={max_age}",
        "Vary": "Accept-Encoding, Accept",
    }
    if is_not_modified(request, feed, etag):
        return Response(status_code=304, headers=headers)
    media_type = CONTENT_TYPES[suffix]
    if suffix in (".atom", ".rss") and _is_browser(request):
        media_type = BROWSER_XML
    body = feed.gzipped if accepts_gzip else feed.body
    if accepts_gzip:
        headers["Content-Encoding"] = "gzip"
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return Response(status_code=200, headers=headers, media_type=media_type)
    return Response(body, headers=headers, media_type=media_type)


def _is_browser(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/atom+xml" not in accept \
        and "application/rss+xml" not in accept


def not_found() -> Response:
    return PlainTextResponse("no such feed\n", status_code=404)

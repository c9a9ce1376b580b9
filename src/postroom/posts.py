"""The post collection: find Markdown files, parse their front matter, report every problem.

Pure apart from reading the files it is given: paths in, posts and problems out. A broken
post becomes a Problem (path:line: message) and is left out; it never stops the others.
"""

from __future__ import annotations

import codecs
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from frontmatter.default_handlers import YAMLHandler

from postroom.errors import PostroomError, Problem

try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
MORE_MARKER = "<!--more-->"
DATE_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}[-_]")
SLUG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?$")
URI_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
# Characters XML 1.0 cannot carry, plus C1 controls; a title is one line of text.
UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_YAML = YAMLHandler()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Posts written with the same date and time are this far apart in the feeds (feed_times).
SAME_TIME_STEP = timedelta(seconds=1)
# What the feeds add to a post's (published, updated) times, in microseconds (feed_times).
FeedTimes = tuple[int, int]


class _FrontMatterLoader(_SafeLoader):
    """The safe loader, except that an impossible date ('2025-13-45') stays text.

    PyYAML raises a bare ValueError for those, which would stop the whole scan; as text
    the date check reports it at its line like any other bad date.
    """

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError):
            return self.construct_scalar(node)


_FrontMatterLoader.add_constructor(
    "tag:yaml.org,2002:timestamp", _FrontMatterLoader.construct_yaml_timestamp
)


@dataclass(frozen=True)
class Author:
    name: str
    email: str | None = None


class PostChanged(PostroomError):
    """A post's file changed (or went) between the scan and reading its body: rescan."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True, slots=True)
class Post:
    """One valid post, as written; rendering happens later and only when needed.

    A scan keeps no bodies (most posts reach no feed): `read_body` reads the file again,
    from `body_offset`, and checks it is still the `version` (size, mtime ns) that was parsed.
    """

    path: Path
    slug: str
    title: str
    published: datetime
    updated: datetime
    summary: str | None = None
    tags: tuple[str, ...] = ()
    draft: bool = False
    pinned_id: str | None = None
    author: Author | None = None
    version: tuple[int, int] = (-1, -1)
    body_offset: int = 0
    # Only when parsed from bytes with keep_body (tests, previews): never compared.
    body: str | None = field(default=None, compare=False, repr=False)
    # Worked out when first asked for (slots, not cached_property: a blog of 10,000 posts
    # keeps them all, and an instance __dict__ costs more than the post's own fields).
    _hash_value: int | None = field(default=None, init=False, compare=False, repr=False)
    _instant: int | None = field(default=None, init=False, compare=False, repr=False)
    _id_tail: str | None = field(default=None, init=False, compare=False, repr=False)
    _tag_slugs: tuple[str, ...] | None = field(default=None, init=False, compare=False,
                                                repr=False)

    def __hash__(self) -> int:
        # Consistent with equality (equal posts have the same file, version and pinned ID),
        # and computed once: posts are set members and dict keys on every rescan.
        if self._hash_value is None:
            _remember(self, "_hash_value", hash((str(self.path), self.version, self.pinned_id)))
        return self._hash_value  # type: ignore[return-value]

    def is_published(self, now: datetime) -> bool:
        """Given the current time, return whether the post is public (not a draft, not future)."""
        return not self.draft and self.published <= now

    def entry_id(self, host: str) -> str:
        """Return the post's permanent entry ID: pinned, or a tag: URI (RFC 4151).

        Built from what never changes when a post is edited (host, first publication
        date, slug), so readers never see an edited post as a new entry.
        """
        if self.pinned_id:
            return self.pinned_id
        if self._id_tail is None:
            _remember(self, "_id_tail", f"{self.published:%Y-%m-%d}:/posts/{self.slug}")
        return f"tag:{host},{self._id_tail}"

    @property
    def instant(self) -> int:
        """The publication instant in microseconds since 1970 (UTC): a cheap sort key.

        Comparing aware datetimes asks each one's time zone for its offset every time;
        a post is compared many times per scan and parsed once.
        """
        if self._instant is None:
            _remember(self, "_instant", (self.published - _EPOCH) // _MICROSECOND)
        return self._instant  # type: ignore[return-value]

    @property
    def tag_slugs(self) -> tuple[str, ...]:
        """The file names of the post's tag feeds, in the post's tag order."""
        if self._tag_slugs is None:
            _remember(self, "_tag_slugs", tuple(dict.fromkeys(tag_slug(t) for t in self.tags)))
        return self._tag_slugs  # type: ignore[return-value]

    def read_body(self) -> str:
        """Return the post's Markdown body; raise PostChanged if the file is not the
        version that was parsed."""
        if self.body is not None:
            return self.body
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as err:
            raise PostChanged(self.path, f"cannot be read: {err.strerror or err}") from err
        try:
            stat = os.fstat(fd)
            if (stat.st_size, stat.st_mtime_ns) != self.version:
                raise PostChanged(self.path, "changed while the feeds were built")
            os.lseek(fd, self.body_offset, os.SEEK_SET)
            data = _read_all(fd, stat.st_size - self.body_offset)
        finally:
            os.close(fd)
        return data.decode("utf-8")


def _remember(post: Post, name: str, value: object) -> None:
    # A frozen post's worked-out values are set once, the way dataclasses set fields.
    object.__setattr__(post, name, value)


@dataclass
class ParsedFile:
    """The outcome of parsing one file: a post, or the problems that kept it out."""

    post: Post | None
    problems: list[Problem] = field(default_factory=list)


def clean_text(text: str) -> str:
    """Given text for a title or summary, return it on one line without control characters."""
    return " ".join(UNPRINTABLE.sub("", text).split())


@lru_cache(maxsize=4096)
def tag_slug(tag: str) -> str:
    """Given a tag, return the ASCII name of its feed file ('C++' → 'c', 'Rust' → 'rust')."""
    ascii_tag = unicodedata.normalize("NFKD", tag).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_tag.lower()).strip("-")
    if slug:
        return slug
    # A tag with no ASCII letters ('日本語') still needs a stable, safe file name.
    return "tag-" + tag.encode("utf-8").hex()[:16]


def slug_from_filename(path: Path) -> str:
    """Given a post's path, return the slug its file name implies ('2025-10-03-x.md' → 'x')."""
    stem = DATE_PREFIX.sub("", path.stem)
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_stem.lower()).strip("-") or "post"


def feed_times(posts: Iterable[Post]) -> dict[str, FeedTimes]:
    """Given the posts the feeds may show (not drafts), return by path how many
    microseconds the feeds add to the published and updated times of the posts whose
    written times another post shares (`later` applies them).

    Readers order and diff entries by these times (and the W3C validator warns on two
    entries with one `updated`). Posts written with the same date and time, most often a
    date alone (midnight), are ordered by file name and each is given one second more than
    the post before it; an `updated` that several posts share is spread the same way (the
    posts never updated first), never before the post's own published time. Every other
    post keeps its times: the same files always give the same times, and entry IDs, URLs
    and digests keep using the written dates.
    """
    order = list(posts)
    # Written updated times: a post never updated has its publication's.
    written = [p.instant if p.updated is p.published or p.updated == p.published
               else _instant(p.updated) for p in order]
    if len({p.instant for p in order}) == len(order) == len(set(written)):
        return {}  # the common case, checked first: no two posts share a time
    ranks = sorted(range(len(order)), key=lambda i: (order[i].instant, str(order[i].path)))
    order, written = [order[i] for i in ranks], [written[i] for i in ranks]
    step = SAME_TIME_STEP // _MICROSECOND
    published = [p.instant for p in order]
    if len(set(published)) < len(published):
        _spread(published, step)
    # Never earlier than the published time the feeds give.
    updated = [max(u, t) for u, t in zip(written, published, strict=True)]
    if len(set(updated)) < len(updated):
        ranks = sorted(range(len(order)), key=lambda i: (
            updated[i], written[i] != order[i].instant, published[i], str(order[i].path)))
        spread = [updated[i] for i in ranks]
        _spread(spread, step)
        for i, moment in zip(ranks, spread, strict=True):
            updated[i] = moment
    return {str(post.path): (published[i] - post.instant, updated[i] - written[i])
            for i, post in enumerate(order)
            if published[i] != post.instant or updated[i] != written[i]}


def _spread(instants: list[int], step: int) -> None:
    """Make the instants strictly increasing, moving each that is not later than the one
    before it to `step` after it."""
    for i in range(1, len(instants)):
        if instants[i] <= instants[i - 1]:
            instants[i] = instants[i - 1] + step


def _instant(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def later(moment: datetime, microseconds: int) -> datetime:
    """Return `moment` plus the microseconds, in its own time zone (through UTC, so a
    daylight-saving change in between cannot shift it)."""
    if not microseconds:
        return moment
    shifted = moment.astimezone(UTC) + timedelta(microseconds=microseconds)
    return shifted.astimezone(moment.tzinfo)


def same_time_notices(posts: Iterable[Post]) -> list[Problem]:
    """Given the posts the feeds may show, return a notice per group of posts written with
    the same date and time, naming their files: the feeds order them by file name."""
    groups: dict[int, list[Post]] = {}
    for post in posts:
        groups.setdefault(post.instant, []).append(post)
    notices: list[Problem] = []
    for group in groups.values():
        if len(group) < 2:
            continue
        group.sort(key=lambda p: str(p.path))
        when = group[0].published
        dated = f"dated {when:%Y-%m-%d}" + (
            " with no time" if when.time() == time() else f" {when:%H:%M:%S}")
        names = ", ".join(p.path.name for p in group)
        notices.append(Problem(group[0].path, 0, (
            f"{len(group)} posts are {dated} ({names}): the feeds order them by file name, "
            f"one second apart; give each its time (date: {when:%Y-%m-%d}T09:30:00) to "
            "choose their order")))
    return sorted(notices, key=lambda n: str(n.path))


def is_post_file(name: str) -> bool:
    """Given a file name, return whether it is a post (not hidden, not an editor's temp file)."""
    if name.startswith((".", "#", "~")) or name.endswith(("~", "#")):
        return False
    # The suffix by hand (what os.path.splitext gives): this runs per file on every rescan.
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in MARKDOWN_SUFFIXES


def iter_post_files(folder: Path) -> Iterator[os.DirEntry[str]]:
    """Given the posts folder, yield every post file under it, in a stable order.

    DirEntry rather than Path: a rescan of tens of thousands of files is mostly this loop.
    """
    with os.scandir(folder) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir() and not entry.name.startswith((".", "_")):
            yield from iter_post_files(Path(entry.path))
        elif is_post_file(entry.name) and not entry.is_dir():
            yield entry


def read_post_file(path: Path, zone: tzinfo) -> ParsedFile:
    """Given a post file, return the parsed post (without its body) or the problems in it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        return _fail(path, 1, f"cannot be read: {err.strerror or err}")
    try:
        stat = os.fstat(fd)
        raw = _read_all(fd, stat.st_size)
    except OSError as err:
        return _fail(path, 1, f"cannot be read: {err.strerror or err}")
    finally:
        os.close(fd)
    return parse_post(path, raw, zone, version=(stat.st_size, stat.st_mtime_ns),
                      keep_body=False)


def _read_all(fd: int, size: int) -> bytes:
    # One read for the common case; a file that grew since fstat is read to its end.
    data = os.read(fd, size + 1)
    if len(data) <= size:
        return data
    chunks = [data]
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def parse_post(path: Path, raw: bytes, zone: tzinfo, *, version: tuple[int, int] = (-1, -1),
               keep_body: bool = True) -> ParsedFile:
    """Given a file's path and bytes, return the parsed post or its problems.

    `version` is the file's (size, mtime ns) the bytes were read at; `keep_body` keeps the
    body in the post (else `Post.read_body` reads it from the file when it is needed).
    """
    # Decode after the BOM, so the error's offset indexes the same bytes it is counted in.
    data = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return _fail(path, line, f"not valid UTF-8 (byte 0x{data[err.start]:02x}); save as UTF-8")
    if not text.strip():
        return _fail(path, 1, "file is empty")
    if not _YAML.detect(text):
        return _fail(path, 1, "no front matter: a post starts with a '---' line, then YAML")
    try:
        front, body = _YAML.split(text)
    except ValueError:
        return _fail(path, 1, "front matter is not closed by a '---' line")
    # The file line of the front matter's first line: the opening boundary's pattern also
    # swallows blank lines after '---', so count the newlines it took.
    opening = _YAML.FM_BOUNDARY.match(text)
    first_line = 1 + (text.count("\n", 0, opening.end()) if opening else 0)
    try:
        meta = _YAML.load(front, Loader=_FrontMatterLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = first_line + mark.line if mark is not None else 1
        reason = getattr(err, "problem", None) or str(err)
        return _fail(path, line, f"invalid YAML in front matter: {reason}")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        kind = type(meta).__name__
        message = f"front matter must be a mapping of keys to values, not a {kind}"
        return _fail(path, first_line + 1, message)
    # The body is the file's tail: its offset in bytes is what its UTF-8 leaves of the file.
    offset = len(raw) - len(body.encode("utf-8"))
    return _FrontMatter(path, front, meta, zone, first_line).to_post(
        body if keep_body else None, version, offset)


def _fail(path: Path, line: int, message: str) -> ParsedFile:
    return ParsedFile(None, [Problem(path, line, message)])


class _FrontMatter:
    """Reads fields out of one post's front matter, collecting a problem per bad field."""

    def __init__(
        self, path: Path, front: str, meta: Mapping[Any, Any], zone: tzinfo, first_line: int = 1
    ):
        self.path, self.meta, self.zone = path, meta, zone
        self.front_lines, self.first_line = front.split("\n"), first_line
        self.problems: list[Problem] = []

    def line_of(self, key: str) -> int:
        """Return the file line where a key is written (line 1, the '---', if it is not)."""
        pattern = re.compile(rf"^['\"]?{re.escape(key)}['\"]?\s*:")
        for index, line in enumerate(self.front_lines):
            if pattern.match(line):
                return self.first_line + index
        return 1

    def problem(self, key: str, message: str) -> None:
        self.problems.append(Problem(self.path, self.line_of(key), message))

    def to_post(self, body: str | None, version: tuple[int, int], offset: int) -> ParsedFile:
        title = self.text("title", required=True)
        published = self.when("date", required=True)
        updated = self.when("updated", required=False)
        summary = self.text("summary", required=False)
        tags = self.tags()
        draft = self.flag("draft")
        slug = self.slug()
        pinned_id = self.pinned_id()
        author = self.author()
        if self.problems or title is None or published is None:
            return ParsedFile(None, self.problems)
        return ParsedFile(
            Post(
                path=self.path,
                slug=slug,
                title=title,
                published=published,
                updated=max(updated, published) if updated else published,
                summary=summary,
                tags=tags,
                draft=draft,
                pinned_id=pinned_id,
                author=author,
                version=version,
                body_offset=offset,
                body=body,
            )
        )

    def text(self, key: str, *, required: bool) -> str | None:
        value = self.meta.get(key)
        if value is None:
            if required:
                self.problem(key, f"{key} is missing")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.problem(key, f"{key} must be text, not {_describe(value)}")
            return None
        cleaned = clean_text(str(value))
        if not cleaned and required:
            self.problem(key, f"{key} is empty")
            return None
        return cleaned or None

    def when(self, key: str, *, required: bool) -> datetime | None:
        value = self.meta.get(key)
        if value is None:
            if required:
                self.problem(key, f"{key} is missing (expected YYYY-MM-DD or ISO 8601)")
            return None
        parsed = _to_datetime(value)
        if parsed is None:
            self.problem(key, f"{key} {value!r} is not a date (expected YYYY-MM-DD or ISO 8601)")
            return None
        # A naive date or time is the author's wall clock: the site's time zone.
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=self.zone)

    def tags(self) -> tuple[str, ...]:
        value = self.meta.get("tags")
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            self.problem("tags", f"tags must be a list of strings, not {_describe(value)}")
            return ()
        tags: list[str] = []
        for index, item in enumerate(items):
            if not isinstance(item, str):
                self.problem("tags", f"tags[{index}] {item!r} is not a string (quote it)")
            elif clean_text(item) and clean_text(item) not in tags:
                tags.append(clean_text(item))
        return tuple(tags)

    def flag(self, key: str) -> bool:
        value = self.meta.get(key, False)
        if not isinstance(value, bool):
            self.problem(key, f"{key} must be true or false, not {value!r}")
            return False
        return value

    def slug(self) -> str:
        value = self.meta.get("slug")
        if value is None:
            return slug_from_filename(self.path)
        if not isinstance(value, str) or not SLUG_PATTERN.match(value):
            self.problem("slug", f"slug {value!r} must be lowercase letters, digits, '-', '_', '.'")
            return slug_from_filename(self.path)
        return value

    def pinned_id(self) -> str | None:
        value = self.meta.get("id")
        if value is None:
            return None
        # A control character cannot be written in XML: it would stop every feed, not one post.
        if not isinstance(value, str) or not URI_PATTERN.match(value) or UNPRINTABLE.search(value):
            self.problem("id", f"id {value!r} must be a URI (e.g. 'tag:example.org,2025:post')")
            return None
        return value

    def author(self) -> Author | None:
        value = self.meta.get("author")
        if value is None:
            return None
        if isinstance(value, str) and clean_text(value):
            return Author(clean_text(value))
        name = value.get("name") if isinstance(value, dict) else None
        if isinstance(name, str) and clean_text(name):
            email = value.get("email")
            if email is None or (isinstance(email, str) and not UNPRINTABLE.search(email)):
                return Author(clean_text(name), email)
        self.problem("author", "author must be a name, or a mapping with 'name' and 'email'")
        return None


def _to_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime.combine(value, time())
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _describe(value: Any) -> str:
    kinds = {dict: "a mapping", list: "a list", bool: "true/false"}
    return kinds.get(type(value), repr(value))

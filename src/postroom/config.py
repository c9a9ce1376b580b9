"""Settings: load the TOML file, apply environment overrides, validate into typed models.

Loud at configuration time: every error names the file and the key (with its line when it
can be found), so a bad config is fixed before the daemon runs, not discovered at 3 a.m.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from postroom.errors import ConfigError
from postroom.schedule import check_schedule

CONFIG_ENV = "POSTROOM_CONFIG"
# POSTROOM__FEEDS__ENTRIES=50 overrides [feeds] entries; double underscores keep
# single-underscore key names (per_tag) unambiguous.
OVERRIDE_PREFIX = "POSTROOM__"
FeedFormat = Literal["atom", "rss", "json"]


class Section(BaseModel):
    """Base for every config table: unknown keys are errors, values are not coerced loosely."""

    # strict: TOML has real types, so "20" for a number is a mistake to report, not convert.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# Paths and lists arrive from TOML as strings and arrays: the conversions strict mode may make.
LaxPath = Annotated[Path, Field(strict=False)]


def check_absolute_url(value: str) -> str:
    """Given a URL, return it without a trailing slash, or raise if it is not absolute http(s)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an absolute http(s) URL")
    return value.rstrip("/")


def check_hub_url(value: str) -> str:
    """Given a hub's URL, return it as written, or raise if it is not absolute http(s) or
    could not be put in a Link header or an XML attribute as it is."""
    check_absolute_url(value)
    # It goes into `Link: <…>` and href="…" verbatim: only printable ASCII, no <, > or ".
    if any(not 32 < ord(c) < 127 or c in '<>"' for c in value):
        raise ValueError(f"{value!r} is not a URL as a header can carry it (percent-encode "
                         "spaces and non-ASCII characters)")
    return value  # a trailing slash may matter to the hub: kept as written


def check_address(value: str) -> str:
    """Given an email address from the config, return it as ASCII, or raise if invalid."""
    try:
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as err:
        raise ValueError(f"{value!r} is not a valid email address: {err}") from None
    return str(checked.ascii_email)


class Author(Section):
    name: str = Field(min_length=1)
    email: str | None = None
    url: str | None = None


class SiteSettings(Section):
    title: str = Field(min_length=1)
    subtitle: str = ""
    base_url: str
    language: str = "en"
    timezone: str = "UTC"
    author: Author
    post_url: str = "{base_url}/posts/{slug}/"

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_absolute_url(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a known time zone (e.g. 'Europe/Berlin')") from None
        return value

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*", value):
            raise ValueError(f"{value!r} is not a language tag (e.g. 'en' or 'en-GB')")
        return value

    @field_validator("post_url")
    @classmethod
    def _post_url(cls, value: str) -> str:
        sample = dict(base_url="https://example.org", slug="s", year="2025", month="01", day="02")
        try:
            check_absolute_url(value.format(**sample))
        except KeyError as err:
            known = ", ".join(f"{{{k}}}" for k in sample)
            raise ValueError(f"unknown placeholder {{{err.args[0]}}} (known: {known})") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or "localhost"


class PathSettings(Section):
    posts: LaxPath = Path("posts")
    output: LaxPath = Path("public")
    templates: LaxPath = Path("templates")
    # What postroom keeps between runs to save work (the parsed posts); safe to delete.
    cache: LaxPath = Path("var/cache")
    # Every entry ID postroom has published, so none ever changes (back it up with the
    # database; it may as well live in the blog's git).
    ledger: LaxPath = Path("var/entry-ids.json")


class FeedSettings(Section):
    formats: Annotated[tuple[FeedFormat, ...], Field(strict=False, min_length=1)] = (
        "atom",
        "rss",
        "json",
    )
    entries: int = Field(default=20, ge=1, le=10_000)
    content: Literal["full", "summary"] = "full"
    per_tag: bool = True
    # RFC 5005 archives: pages of `entries` posts from the oldest, so a reader can fetch
    # the whole history (archive/1.atom …); the feeds link to them. Atom and RSS.
    archives: bool = False
    # What a browser that opens a feed gets: "page", a readable HTML page of the feed
    # (served for /feed.atom … when the browser prefers HTML, and written beside each feed
    # as feed.html, tags/<tag>.html for static hosting); or "xsl", the feed as XML with an
    # XSL stylesheet (feed.xsl), which browsers are removing.
    for_browsers: Literal["page", "xsl"] = "page"
    summary_length: int = Field(default=300, ge=40, le=5_000)
    # Where the feeds are served; defaults to the site's base URL.
    url: str | None = None
    # A WebSub hub: the feeds advertise it, and it is told when a feed changes.
    hub: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_absolute_url(value)

    @field_validator("hub")
    @classmethod
    def _hub(cls, value: str | None) -> str | None:
        return None if value is None else check_hub_url(value)


class DatabaseSettings(Section):
    # Any SQLAlchemy URL; a relative SQLite path is relative to the config file.
    url: str = "sqlite:///var/postroom.db"
    # SQLite: how long a writer waits for another one before giving up (milliseconds).
    busy_timeout_ms: int = Field(default=10_000, ge=0)
    # `digest send` and `digest retry` keep retrying a database that is locked, full or
    # read-only this many seconds, then exit 3 (nothing is lost); the daemon never gives up.
    give_up_after: float = Field(default=120.0, gt=0, allow_inf_nan=False, strict=False)


class DigestSettings(Section):
    # Start of the first digest's window (a TOML date or date-time); default: when
    # postroom first saw the collection, so the back catalogue is never mailed.
    since: datetime | date | None = None
    # Most posts one digest lists; older new posts are summarised as "and N more".
    max_posts: int = Field(default=20, ge=1, le=500)
    # Cron-like schedule for the daemon: "mon 09:00", "daily 07:30".
    schedule: str = "mon 09:00"

    @field_validator("schedule")
    @classmethod
    def _schedule_parses(cls, value: str) -> str:
        # Checked at load time, so `check` and every command refuse what the daemon would.
        try:
            check_schedule(value)
        except ConfigError as err:
            # "digest.schedule 'x': why" → "'x': why"; the loader puts the file, line and key.
            raise ValueError(f"{value!r}: {str(err).split(': ', 1)[-1]}") from err
        return value


class MailSettings(Section):
    transport: Literal["maildir", "smtp"] = "maildir"
    maildir: LaxPath = Path("var/maildir")
    # The default only suits the local Maildir: with transport "smtp" it must be set.
    from_address: str = "newsletter@example.org"
    from_name: str | None = None  # default: the site's title
    reply_to: str | None = None
    # Envelope sender (bounces go there); default: from_address.
    return_path: str | None = None
    # mailto: target of List-Unsubscribe (RFC 2369); optional, https is always given.
    unsubscribe_mailto: str | None = None
    # Where postroom's web pages (confirm, unsubscribe) are reachable; default: base_url.
    public_url: str | None = None
    # Bounces (5xx on the recipient) before a subscriber is marked bounced.
    bounce_after: int = Field(default=3, ge=1)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return None if value is None else check_absolute_url(value)

    @field_validator("from_address", "reply_to", "return_path", "unsubscribe_mailto")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else check_address(value)


class SmtpSettings(Section):
    host: str = "localhost"
    port: int = Field(default=587, ge=1, le=65535)
    # "starttls" (port 587), "tls" (implicit TLS, port 465) or "none" (local relay only).
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    # The password is read only from this environment variable, never from the file.
    password_env: str = "POSTROOM_SMTP_PASSWORD"
    timeout: float = Field(default=30.0, gt=0, allow_inf_nan=False, strict=False)
    concurrency: int = Field(default=4, ge=1, le=64)
    # Messages per second across all connections; 0 means no limit.
    rate_limit: float = Field(default=0.0, ge=0, strict=False)
    max_attempts: int = Field(default=5, ge=1)
    # Retry n waits about backoff_base * 2**(n-1) seconds (with jitter), at most backoff_max.
    backoff_base: float = Field(default=60.0, gt=0, strict=False)
    backoff_max: float = Field(default=3600.0, gt=0, strict=False)
    # `digest send` waits in-process for retries due within this many seconds.
    retry_wait: float = Field(default=120.0, ge=0, strict=False)
    # A sender holds the deliveries it claimed this long; a dead sender's come back after.
    lease_seconds: float = Field(default=300.0, ge=10, strict=False)
    # Sending processes (each with `concurrency` connections); 0 means one per CPU core.
    processes: int = Field(default=1, ge=0, le=64)


class WebSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Addresses of reverse proxies whose X-Forwarded-For is believed (e.g. ["127.0.0.1"]).
    trusted_proxies: tuple[str, ...] = Field(default=(), strict=False)
    # POST /subscribe: requests per client address, and per mailbox (an address without
    # its +tag), per window. Kept in the database: restarts and reloads keep them.
    rate_per_client: int = Field(default=5, ge=1)
    rate_per_email: int = Field(default=3, ge=1)
    rate_window_seconds: int = Field(default=3600, ge=1)
    # How long a confirmation link works, and when an unconfirmed request is forgotten.
    confirm_expiry_days: int = Field(default=7, ge=1)
    # A pending address gets at most one confirmation mail per this many seconds, however
    # often it is asked for (the visitor's answer is the same either way). Default: the
    # whole confirmation window, so one mail per request; set it shorter to allow a
    # repeat sooner.
    confirm_cooldown_seconds: int | None = Field(default=None, ge=0)
    # Confirmation mails per hour across all addresses; requests beyond it send none.
    confirmations_per_hour: int = Field(default=100, ge=1)
    # Slow clients: the request line and headers must arrive within header_timeout seconds
    # and a body within body_timeout; an idle keep-alive connection closes after
    # keep_alive_timeout; at most max_connections at once (the next ones get 503).
    header_timeout: float = Field(default=10.0, gt=0, strict=False)
    body_timeout: float = Field(default=10.0, gt=0, strict=False)
    keep_alive_timeout: int = Field(default=5, ge=1)
    max_connections: int = Field(default=500, ge=1)
    # Cache-Control max-age of the feeds.
    feed_max_age: int = Field(default=300, ge=0)

    @model_validator(mode="after")
    def _cooldown_within_the_window(self) -> WebSettings:
        cooldown, window = self.confirm_cooldown_seconds, self.confirm_expiry_days * 86400
        if cooldown is not None and cooldown > window:
            raise ValueError(
                f"confirm_cooldown_seconds ({cooldown}) is longer than the confirmation window "
                f"(confirm_expiry_days = {self.confirm_expiry_days}, {window} s): a reader "
                "whose link expired could not get a new one")
        return self

    @property
    def confirm_cooldown(self) -> int:
        """Return the seconds between two confirmation mails to one pending address."""
        if self.confirm_cooldown_seconds is None:
            return self.confirm_expiry_days * 86400
        return self.confirm_cooldown_seconds


class DaemonSettings(Section):
    # Seconds between rescans of the posts folder (a safety net: changes are seen at once
    # where the file system reports them, `watch`).
    scan_interval: float = Field(default=60.0, gt=0, strict=False)
    # Watch the posts folder and rebuild within a second of a change.
    watch: bool = True
    # Seconds to wait after a change for the editor's next write before rebuilding.
    watch_debounce: float = Field(default=0.3, ge=0.05, le=10, strict=False)
    # Seconds between passes over deliveries whose retry time has come.
    retry_interval: float = Field(default=60.0, gt=0, strict=False)
    # Seconds given to in-flight sends on SIGTERM before they are handed back to pending.
    shutdown_grace: float = Field(default=20.0, ge=0, strict=False)


class Settings(Section):
    site: SiteSettings
    paths: PathSettings = PathSettings()
    feeds: FeedSettings = FeedSettings()
    database: DatabaseSettings = DatabaseSettings()
    digest: DigestSettings = DigestSettings()
    mail: MailSettings = MailSettings()
    smtp: SmtpSettings = SmtpSettings()
    web: WebSettings = WebSettings()
    daemon: DaemonSettings = DaemonSettings()
    # Folder the relative paths are resolved against: the config file's folder.
    root: LaxPath = Path(".")
    source: Annotated[Path | None, Field(strict=False)] = None

    @model_validator(mode="after")
    def _smtp_needs_a_sender(self) -> Settings:
        if self.mail.transport == "smtp" and "from_address" not in self.mail.model_fields_set:
            raise ValueError("mail.from_address must be set when mail.transport is \"smtp\"")
        return self

    def path(self, relative: Path) -> Path:
        """Given a path from the config, return it resolved against the config's folder."""
        return relative if relative.is_absolute() else self.root / relative

    @property
    def posts_dir(self) -> Path:
        return self.path(self.paths.posts)

    @property
    def output_dir(self) -> Path:
        return self.path(self.paths.output)

    @property
    def templates_dir(self) -> Path:
        return self.path(self.paths.templates)

    @property
    def feeds_url(self) -> str:
        return self.feeds.url or self.site.base_url

    @property
    def cache_dir(self) -> Path:
        return self.path(self.paths.cache)

    @property
    def ledger_file(self) -> Path:
        return self.path(self.paths.ledger)

    @property
    def public_url(self) -> str:
        return self.mail.public_url or self.site.base_url

    @property
    def database_url(self) -> str:
        """Return the database URL, a relative SQLite path made absolute against the config."""
        url = self.database.url
        prefix = "sqlite:///"
        # A `sqlite:///file:…?uri=true` URL (e.g. mode=ro) is SQLite's own: taken as written.
        if url.startswith(prefix) and url != "sqlite:///:memory:" and not url.startswith(
                prefix + "file:"):
            file = Path(url[len(prefix) :])
            return prefix + str(self.path(file))
        return url

    @property
    def maildir(self) -> Path:
        return self.path(self.mail.maildir)


# The embedded defaults: enough to run on the sample posts with no config file at all.
DEFAULTS: dict[str, Any] = {
    "site": {
        "title": "postroom sample blog",
        "base_url": "http://localhost:8080",
        "author": {"name": "postroom"},
    },
}


def find_config(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    """Given --config and the environment, return the config file to use (None: defaults)."""
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    local = Path("postroom.toml")
    return local if local.is_file() else None


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Given a config file (or None for the embedded defaults), return validated settings."""
    env = os.environ if env is None else env
    if path is None:
        raw: dict[str, Any] = copy.deepcopy(DEFAULTS)
        root, label = Path.cwd(), "(embedded defaults)"
    else:
        raw, root, label = _read_toml(path), path.resolve().parent, str(path)
    overrides = _apply_overrides(raw, env, label)
    raw["root"], raw["source"] = root, path
    try:
        return Settings.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, path, label, overrides)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None


def _apply_overrides(raw: dict[str, Any], env: Mapping[str, str], label: str) -> dict[str, str]:
    """Apply POSTROOM__SECTION__KEY=value variables onto the raw config.

    Returns the dotted keys set this way and the variable that set each, so an error in
    one names the variable, not the file.
    """
    applied: dict[str, str] = {}
    for name, text in sorted(env.items()):
        if not name.startswith(OVERRIDE_PREFIX):
            continue
        keys = [k.lower() for k in name[len(OVERRIDE_PREFIX) :].split("__")]
        if not all(keys):
            raise ConfigError(f"{name}: malformed override (expected POSTROOM__SECTION__KEY)")
        table = raw
        for key in keys[:-1]:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{name}: {label} has a value, not a table, at {key!r}")
        table[keys[-1]] = _parse_env_value(text)
        applied[".".join(keys)] = name
    return applied


def _parse_env_value(text: str) -> Any:
    """Read an override as a TOML value (50, true, ["a"]); anything else is a string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _describe(
    err: ValidationError, path: Path | None, label: str, overrides: Mapping[str, str]
) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"])
        variable = next((v for k, v in overrides.items() if key == k or key.startswith(k + ".")),
                        None)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        where = variable or _locate(path, item["loc"], label)
        lines.append(f"{where}: {key}: {message}" if key else f"{where}: {message}")
    return "\n".join(lines)


def _locate(path: Path | None, loc: tuple[Any, ...], label: str) -> str:
    """Given a key's location, return 'file:line' where the key is written, else 'file'."""
    if path is None or not loc:
        return label
    names = [str(part) for part in loc if isinstance(part, str)]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return label
    key = re.compile(rf"^\s*\"?{re.escape(names[-1])}\"?\s*=")
    table, wanted = "", ".".join(names[:-1])
    for number, line in enumerate(lines, start=1):
        header = re.match(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if header:
            table = header.group(1).replace(" ", "").replace('"', "")
        elif table == wanted and key.match(line):
            return f"{label}:{number}"
    return label

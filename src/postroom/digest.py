"""What a digest holds and how it reads: pure, given posts, settings, templates and a clock."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import css_inline
from jinja2 import Environment
from markupsafe import Markup

from postroom.config import Settings
from postroom.message import LINK_PLACEHOLDER, Envelope, PreparedMessage, prepare
from postroom.posts import clean_text
from postroom.render import RenderedPost, Renderer
from postroom.templates import render

_INLINER = css_inline.CSSInliner(keep_style_tags=False)


@dataclass(frozen=True)
class DigestPost:
    """A post as a digest lists it, frozen when the digest is created."""

    entry_id: str
    slug: str
    title: str
    url: str
    summary: str  # inline Markdown: the digest shows it as HTML and as plain text
    published: datetime

    @classmethod
    def from_rendered(cls, post: RenderedPost, slug: str) -> DigestPost:
        return cls(post.entry_id, slug, post.title, post.url, post.summary_markdown,
                   post.published)


def window_start(
    previous_cutoff: datetime | None, first_seen: datetime, since: date | datetime | None,
    zone: ZoneInfo,
) -> datetime:
    """Return the start of the next digest's window.

    After a digest: its cutoff. Before the first: `digest.since` when the owner set it,
    else when postroom first saw the collection, so the first digest never dumps the back
    catalogue by accident.
    """
    if previous_cutoff is not None:
        return previous_cutoff
    if since is None:
        return first_seen
    if not isinstance(since, datetime):
        since = datetime.combine(since, time())
    return since if since.tzinfo else since.replace(tzinfo=zone)


def new_posts(
    published: Sequence[RenderedPost],
    slugs: dict[str, str],
    start: datetime,
    cutoff: datetime,
    already_sent: Collection[str],
    late: Collection[str] = frozenset(),
    floor: datetime | None = None,
) -> list[DigestPost]:
    """Return the posts published in (start, cutoff], oldest first, never one already sent.

    `slugs` maps entry IDs to slugs; `already_sent` holds the entry IDs and slugs of posts
    in earlier digests, so a post edited (or re-dated) after it was sent is not sent again.
    `late` holds the entry IDs of posts first seen after `start` although dated before it
    (pushed late, or a draft published later): they are new too, unless dated before
    `floor`, the first digest's start (the back catalogue).
    """

    def is_new(post: RenderedPost) -> bool:
        if post.published > cutoff:
            return False
        if start < post.published:
            return True
        return post.entry_id in late and floor is not None and floor < post.published

    chosen = [
        DigestPost.from_rendered(post, slugs[post.entry_id])
        for post in published
        if is_new(post)
        and post.entry_id not in already_sent
        and slugs[post.entry_id] not in already_sent
    ]
    return sorted(chosen, key=lambda p: (p.published, p.slug))


def digest_context(settings: Settings, posts: Sequence[DigestPost]) -> dict[str, Any]:
    """Return the template context shared by every recipient of a digest.

    At most digest.max_posts posts are listed (the newest); `more` counts the others,
    which the templates point to on the blog.
    """
    zone = settings.site.zone
    listed = posts[-settings.digest.max_posts :]
    renderer = Renderer()
    return {
        "site": _site(settings),
        "count": len(posts),
        "more": len(posts) - len(listed),
        "posts": [
            {
                "title": post.title,
                "url": post.url,
                # Plain text for the text part; HTML (links absolute) for the HTML part.
                "summary": renderer.summary_text(post.summary),
                "summary_html": Markup(renderer.summary_html(post.summary, post.url)),
                "published": post.published.astimezone(zone),
                "date": long_date(post.published.astimezone(zone)),
            }
            for post in listed
        ],
        "unsubscribe_url": LINK_PLACEHOLDER,
    }


def long_date(moment: datetime) -> str:
    """Return a date as a reader writes it: 'October 3, 2025' (no locale, no padding)."""
    return f"{moment:%B} {moment.day}, {moment:%Y}"


def _site(settings: Settings) -> dict[str, str]:
    site = settings.site
    return {"title": site.title, "url": site.base_url + "/", "language": site.language}


def envelope(settings: Settings) -> Envelope:
    """Return the mailing's fixed envelope from the settings."""
    mail = settings.mail
    return Envelope(
        from_name=clean_text(mail.from_name or settings.site.title),
        from_address=mail.from_address,
        list_id=f"{clean_text(settings.site.title)} <digest.{settings.site.host}>",
        reply_to=mail.reply_to,
    )


def compose_digest(
    environment: Environment, settings: Settings, posts: Sequence[DigestPost]
) -> PreparedMessage:
    """Render a digest's subject, text and HTML once; recipients vary only their link."""
    context = digest_context(settings, posts)
    subject = clean_text(render(environment, "digest_subject.txt", context))
    context["subject"] = subject
    text = render(environment, "digest.txt", context)
    # Mail clients ignore <style> in many cases; inlined styles survive everywhere.
    html = _INLINER.inline(render(environment, "digest.html", context))
    return prepare(envelope(settings), subject, text, html)


def compose_confirmation(
    environment: Environment, settings: Settings, email: str, expires_days: int
) -> PreparedMessage:
    """Render the double opt-in message; its link is the recipient's confirmation URL."""
    context = {
        "site": _site(settings),
        "email": email,
        "confirm_url": LINK_PLACEHOLDER,
        "expires_days": expires_days,
    }
    subject = clean_text(render(environment, "confirm_subject.txt", context))
    context["subject"] = subject
    text = render(environment, "confirm.txt", context)
    html = _INLINER.inline(render(environment, "confirm.html", context))
    return prepare(envelope(settings), subject, text, html)

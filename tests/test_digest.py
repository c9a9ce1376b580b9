"""What is new: the digest's window and posts, from a real posts folder and a real SQLite file.

The clock is passed in everywhere; a test moves it forward day by day as a site would live.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, select

from postroom import outbox, subscribers
from postroom.build import SiteBuilder
from postroom.config import Settings, load_settings
from postroom.digest import compose_digest, new_posts, window_start
from postroom.newsletter import DigestPlan, create_digest, plan_digest
from postroom.render import RenderedPost
from postroom.schema import deliveries, digest_posts, digests
from postroom.store import migrate, open_engine
from postroom.templates import template_environment

BERLIN = ZoneInfo("Europe/Berlin")
# postroom first sees the collection at T0.
T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


# ---- window_start and new_posts (pure) -----------------------------------------------------------


def test_the_window_starts_at_the_previous_cutoff() -> None:
    cutoff = T0 + timedelta(days=7)
    since = date(2030, 1, 1)
    assert window_start(cutoff, T0, since, BERLIN) == cutoff
    assert window_start(cutoff, T0, None, BERLIN) == cutoff


def test_the_first_window_starts_when_the_collection_was_first_seen() -> None:
    assert window_start(None, T0, None, BERLIN) == T0


def test_digest_since_starts_the_first_window_instead() -> None:
    # The owner's choice, later or earlier than postroom's first look.
    assert window_start(None, T0, T0 + timedelta(days=2), BERLIN) == T0 + timedelta(days=2)
    assert window_start(None, T0, T0 - timedelta(days=2), BERLIN) == T0 - timedelta(days=2)
    # A date is midnight in the site's time zone (CET in March: UTC+1).
    assert window_start(None, T0, date(2025, 3, 10), BERLIN) == datetime(
        2025, 3, 9, 23, 0, tzinfo=UTC)
    # A date-time without an offset is the site's wall clock too; one with an offset is kept.
    assert window_start(None, T0, datetime(2025, 3, 10, 8, 0), BERLIN) == datetime(
        2025, 3, 10, 7, 0, tzinfo=UTC)
    plus_five = datetime(2025, 3, 10, 8, 0, tzinfo=timezone(timedelta(hours=5)))
    assert window_start(None, T0, plus_five, BERLIN) == datetime(2025, 3, 10, 3, 0, tzinfo=UTC)


def rendered(slug: str, published: datetime, entry_id: str | None = None) -> RenderedPost:
    return RenderedPost(
        entry_id=entry_id or f"tag:blog.example.org,{published:%Y-%m-%d}:/posts/{slug}",
        url=f"https://blog.example.org/posts/{slug}/", title=slug.title(), published=published,
        updated=published, summary="", summary_html="", summary_markdown="", content_html="",
        tags=(), author=None,
    )


def test_new_posts_are_those_in_the_window_oldest_first() -> None:
    start, cutoff = T0, T0 + timedelta(days=7)
    posts = [
        rendered("at-start", start),                           # excluded: the window is (start,
        rendered("just-after", start + timedelta(seconds=1)),  # cutoff]
        rendered("b-tie", start + timedelta(days=2)),
        rendered("a-tie", start + timedelta(days=2)),
        rendered("at-cutoff", cutoff),
        rendered("after", cutoff + timedelta(seconds=1)),
        rendered("before", start - timedelta(days=1)),
    ]
    slugs = {p.entry_id: p.title.lower() for p in posts}
    chosen = new_posts(posts, slugs, start, cutoff, already_sent=set())
    assert [p.slug for p in chosen] == ["just-after", "a-tie", "b-tie", "at-cutoff"]
    assert chosen[0].url == "https://blog.example.org/posts/just-after/"


def test_new_posts_never_repeat_a_sent_entry_id_or_slug() -> None:
    start, cutoff = T0, T0 + timedelta(days=7)
    moved = rendered("moved", T0 + timedelta(days=1))
    pinned = rendered("renamed", T0 + timedelta(days=2), entry_id="urn:uuid:1234")
    fresh = rendered("fresh", T0 + timedelta(days=3))
    posts = [moved, pinned, fresh]
    slugs = {moved.entry_id: "moved", pinned.entry_id: "renamed", fresh.entry_id: "fresh"}
    sent = {"tag:blog.example.org,2025-01-01:/posts/moved", "moved", "urn:uuid:1234", "old"}
    assert [p.slug for p in new_posts(posts, slugs, start, cutoff, sent)] == ["fresh"]


# ---- plan_digest and create_digest on a real site ------------------------------------------------


@dataclass
class Newsletter:
    """A site with a posts folder and a migrated SQLite database, driven with an explicit clock."""

    site: Any
    settings: Settings
    engine: Engine

    def write_post(self, slug: str, published: datetime, title: str | None = None,
                   body: str = "Some words.", **front: Any) -> Path:
        name = f"{published:%Y-%m-%d}-{slug}.md"
        for old in self.site.posts.glob(f"*-{slug}.md"):
            old.unlink()  # re-dating a post renames its file, as an author would
        return self.site.write_post(name, body, title=title or slug.replace("-", " ").title(),
                                    date=published, slug=slug, **front)

    def subscribe(self, statuses: Mapping[str, str]) -> None:
        with self.engine.begin() as connection:
            for email, status in statuses.items():
                subscribers.add(connection, email, T0 - timedelta(days=100), status=status)

    def builder(self) -> SiteBuilder:
        return SiteBuilder(self.settings)

    def plan(self, now: datetime, builder: SiteBuilder | None = None) -> DigestPlan:
        return plan_digest(self.settings, self.engine, builder or self.builder(), now)

    def create(self, now: datetime, builder: SiteBuilder | None = None) -> DigestPlan:
        return create_digest(self.settings, self.engine, builder or self.builder(), now)

    def count(self, table: Any) -> int:
        with self.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(table)).scalar_one()


@pytest.fixture
def make_newsletter(make_site: Callable[..., Any]) -> Iterator[Callable[..., Newsletter]]:
    """Return a factory: make_newsletter(env overrides, **config changes) → a Newsletter."""
    engines: list[Engine] = []

    def make(env: Mapping[str, str] | None = None, **changes: Any) -> Newsletter:
        site = make_site(f"site{len(engines)}", **changes)
        settings = load_settings(site.config_path, env=dict(env or {}))
        engine = open_engine(settings.database_url)
        migrate(engine)
        engines.append(engine)
        return Newsletter(site, settings, engine)

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def newsletter(make_newsletter: Callable[..., Newsletter]) -> Newsletter:
    return make_newsletter()


READERS = {
    "active1@example.org": "active",
    "pending@example.org": "pending",
    "active2@example.org": "active",
    "left@example.org": "unsubscribed",
    "bounced@example.org": "bounced",
    "active3@example.org": "active",
}


def test_the_first_digest_never_dumps_the_back_catalogue(
    newsletter: Newsletter, caplog: pytest.LogCaptureFixture
) -> None:
    newsletter.subscribe(READERS)
    newsletter.write_post("years-ago", T0 - timedelta(days=900))
    newsletter.write_post("last-week", T0 - timedelta(days=7))
    newsletter.write_post("an-hour-ago", T0 - timedelta(hours=1))
    caplog.set_level(logging.INFO, logger="postroom")

    plan = newsletter.create(T0)

    assert plan.posts == [] and plan.digest_id is None and plan.recipients == 0
    assert plan.start == T0
    assert newsletter.count(digests) == newsletter.count(deliveries) == 0
    assert "no new posts since 2025-03-03 09:00 UTC: no digest" in caplog.text
    # Nothing new a day later either: the old posts stay old.
    assert newsletter.create(T0 + timedelta(days=1)).digest_id is None


def test_posts_published_after_the_first_look_go_in(newsletter: Newsletter) -> None:
    newsletter.subscribe(READERS)
    newsletter.write_post("old", T0 - timedelta(days=2))
    newsletter.plan(T0)  # postroom first sees the collection
    newsletter.write_post("new", T0 + timedelta(hours=1), title="A new post")
    newsletter.write_post("draft", T0 + timedelta(hours=2), draft=True)
    newsletter.write_post("scheduled", T0 + timedelta(days=10))
    now = T0 + timedelta(days=1)

    plan = newsletter.create(now)

    assert [p.slug for p in plan.posts] == ["new"]
    assert (plan.start, plan.cutoff) == (T0, now)
    assert plan.subject == "Test blog: A new post"
    assert plan.digest_id is not None and plan.recipients == 3
    with newsletter.engine.connect() as connection:
        digest = connection.execute(select(digests)).one()
        assert (digest.window_start, digest.cutoff, digest.recipients) == (T0, now, 3)
        frozen = outbox.digest_posts_of(connection, plan.digest_id)
        rows = connection.execute(
            select(deliveries.c.email, deliveries.c.status, deliveries.c.digest_id)
            .order_by(deliveries.c.id)).all()
    assert frozen == plan.posts
    assert frozen[0].title == "A new post"
    assert frozen[0].url == "https://blog.example.org/posts/new/"
    assert frozen[0].published == T0 + timedelta(hours=1)
    # Exactly one pending delivery per active subscriber: not pending, left or bounced ones.
    assert [tuple(r) for r in rows] == [
        (f"active{n}@example.org", "pending", plan.digest_id) for n in (1, 2, 3)
    ]


def test_a_second_digest_holds_only_what_came_after_the_first(newsletter: Newsletter) -> None:
    newsletter.subscribe({"reader@example.org": "active"})
    newsletter.plan(T0)
    newsletter.write_post("first", T0 + timedelta(hours=1))
    newsletter.write_post("scheduled", T0 + timedelta(days=10))
    first = newsletter.create(T0 + timedelta(days=1))
    newsletter.write_post("second", T0 + timedelta(days=2))
    newsletter.write_post("third", T0 + timedelta(days=3))

    second = newsletter.create(T0 + timedelta(days=7))
    nothing = newsletter.create(T0 + timedelta(days=8))
    third = newsletter.create(T0 + timedelta(days=14))

    assert [p.slug for p in first.posts] == ["first"]
    assert [p.slug for p in second.posts] == ["second", "third"]
    assert second.start == first.cutoff == T0 + timedelta(days=1)
    assert second.subject == "Test blog: 2 new posts"
    assert nothing.posts == [] and nothing.digest_id is None
    # The scheduled post is new once its time has come, and not before.
    assert [p.slug for p in third.posts] == ["scheduled"]
    assert third.start == second.cutoff
    assert newsletter.count(digests) == newsletter.count(deliveries) == 3


def test_plan_digest_creates_nothing(newsletter: Newsletter) -> None:
    newsletter.subscribe(READERS)
    newsletter.plan(T0)
    newsletter.write_post("new", T0 + timedelta(hours=1))
    plans = [newsletter.plan(T0 + timedelta(days=1)) for _ in range(2)]
    assert [p.slug for p in plans[0].posts] == [p.slug for p in plans[1].posts] == ["new"]
    assert plans[0].digest_id is None
    assert newsletter.count(digests) == newsletter.count(deliveries) == 0


def test_a_post_edited_after_it_was_sent_is_not_sent_again(newsletter: Newsletter) -> None:
    newsletter.subscribe({"reader@example.org": "active"})
    newsletter.plan(T0)
    path = newsletter.write_post("news", T0 + timedelta(hours=1), title="News")
    kept = newsletter.builder()  # the daemon keeps its builder (and its cache) between runs
    sent = newsletter.create(T0 + timedelta(days=1), kept)
    assert [p.title for p in sent.posts] == ["News"]

    newsletter.write_post("news", T0 + timedelta(hours=1), title="News (corrected)",
                          body="Other words, and more of them.")
    later = (T0 + timedelta(days=2)).timestamp()
    os.utime(path, (later, later))

    for builder in (kept, newsletter.builder()):
        plan = newsletter.create(T0 + timedelta(days=3), builder)
        assert plan.posts == [] and plan.digest_id is None
    # What was sent stays as it was sent.
    with newsletter.engine.connect() as connection:
        assert [p.title for p in outbox.digest_posts_of(connection, sent.digest_id)] == ["News"]
    assert newsletter.count(digests) == 1


def test_a_post_redated_after_it_was_sent_is_not_sent_again(newsletter: Newsletter) -> None:
    newsletter.subscribe({"reader@example.org": "active"})
    newsletter.plan(T0)
    newsletter.write_post("news", T0 + timedelta(hours=1))
    newsletter.write_post("other", T0 + timedelta(hours=2))
    assert len(newsletter.create(T0 + timedelta(days=1)).posts) == 2

    # Moved to a date after the first digest's cutoff: a new entry ID, but the same slug.
    newsletter.write_post("news", T0 + timedelta(days=2), title="News, updated")
    newsletter.write_post("fresh", T0 + timedelta(days=2, hours=1))

    plan = newsletter.create(T0 + timedelta(days=3))

    assert [p.slug for p in plan.posts] == ["fresh"]
    assert newsletter.count(digest_posts) == 3


def test_a_later_since_holds_back_the_first_digest(
    make_newsletter: Callable[..., Newsletter],
) -> None:
    # digest.since as a TOML date (here from an environment override): midnight, Berlin time.
    newsletter = make_newsletter(env={"POSTROOM__DIGEST__SINCE": "2025-03-05"})
    assert newsletter.settings.digest.since == date(2025, 3, 5)
    newsletter.subscribe({"reader@example.org": "active"})
    newsletter.plan(T0)
    since = datetime(2025, 3, 4, 23, 0, tzinfo=UTC)
    newsletter.write_post("after-first-look", T0 + timedelta(hours=1))
    newsletter.write_post("just-before-since", since - timedelta(minutes=1))
    newsletter.write_post("just-after-since", since + timedelta(minutes=1))

    plan = newsletter.create(T0 + timedelta(days=3))

    assert plan.start == since
    assert [p.slug for p in plan.posts] == ["just-after-since"]


def test_an_earlier_since_opens_the_first_digest_from_then(
    make_newsletter: Callable[..., Newsletter],
) -> None:
    # A date-time with an offset (a TOML offset date-time) is taken as it is.
    newsletter = make_newsletter(env={"POSTROOM__DIGEST__SINCE": "2025-02-21T09:00:00Z"})
    since = T0 - timedelta(days=10)
    newsletter.subscribe({"reader@example.org": "active"})
    newsletter.write_post("older-than-since", since - timedelta(seconds=1))
    newsletter.write_post("since-then", since + timedelta(days=5))
    newsletter.plan(T0)
    newsletter.write_post("new", T0 + timedelta(hours=1))

    plan = newsletter.create(T0 + timedelta(days=1))

    assert plan.start == since
    assert [p.slug for p in plan.posts] == ["since-then", "new"]
    # Only the first digest: the next one starts at its cutoff.
    newsletter.write_post("next", T0 + timedelta(days=2))
    assert [p.slug for p in newsletter.create(T0 + timedelta(days=3)).posts] == ["next"]


def test_max_posts_caps_the_list_and_counts_the_rest(
    make_newsletter: Callable[..., Newsletter],
) -> None:
    newsletter = make_newsletter(digest={"max_posts": 2})
    newsletter.subscribe({"reader@example.org": "active"})
    newsletter.plan(T0)
    for hour in (1, 2, 3, 4):
        newsletter.write_post(f"post-{hour}", T0 + timedelta(hours=hour))

    plan = newsletter.create(T0 + timedelta(days=1))

    # Every new post belongs to the digest (none is silently skipped forever) ...
    assert [p.slug for p in plan.posts] == ["post-1", "post-2", "post-3", "post-4"]
    assert newsletter.count(digest_posts) == 4
    # ... but the email lists the newest two and points to the blog for the others.
    environment = template_environment(newsletter.settings.templates_dir)
    prepared = compose_digest(environment, newsletter.settings, plan.posts)
    assert prepared.subject.endswith("4 new posts")
    assert "Post 4" in prepared.text and "Post 3" in prepared.text
    assert "Post 1" not in prepared.text and "Post 2" not in prepared.text
    assert "2 more on the blog" in prepared.text and "2 more on the blog" in prepared.html
    assert newsletter.create(T0 + timedelta(days=2)).digest_id is None


def test_a_post_pushed_late_still_goes_out(make_newsletter: Callable[..., Newsletter]) -> None:
    newsletter = make_newsletter()
    newsletter.subscribe({"reader@example.org": "active"})
    newsletter.plan(T0)
    newsletter.write_post("on-time", T0 + timedelta(hours=1))
    assert [p.slug for p in newsletter.create(T0 + timedelta(hours=3)).posts] == ["on-time"]
    # Written at 02:00, pushed after the 03:00 digest: dated before its cutoff, yet new.
    newsletter.write_post("pushed-late", T0 + timedelta(hours=2))
    # A back-catalogue post appearing now (dated before postroom first saw the posts) is not.
    newsletter.write_post("ancient", T0 - timedelta(days=30))
    plan = newsletter.create(T0 + timedelta(hours=5))
    assert [p.slug for p in plan.posts] == ["pushed-late"]
    assert newsletter.create(T0 + timedelta(hours=6)).digest_id is None


def test_no_subscribers_still_records_the_digest(newsletter: Newsletter) -> None:
    newsletter.plan(T0)
    newsletter.write_post("new", T0 + timedelta(hours=1))
    plan = newsletter.create(T0 + timedelta(days=1))
    assert plan.digest_id is not None and plan.recipients == 0
    assert newsletter.count(deliveries) == 0
    # The post counts as sent: a subscriber joining later does not get it in the next one.
    newsletter.subscribe({"late@example.org": "active"})
    assert newsletter.create(T0 + timedelta(days=2)).digest_id is None


def test_a_digest_shows_markdown_summaries_as_html_and_as_text(newsletter: Newsletter) -> None:
    newsletter.subscribe({"reader@example.org": "active"})
    newsletter.plan(T0)
    newsletter.write_post("bold", T0 + timedelta(hours=1),
                          summary="A **bold** [link](../x/) claim.[^1]")
    newsletter.write_post("plain", T0 + timedelta(hours=2), body="Taken *from* the body.")
    plan = newsletter.create(T0 + timedelta(days=1))
    # The digest keeps the summary's Markdown (a body's text, escaped to read back as itself).
    assert [p.summary for p in plan.posts] == ["A **bold** [link](../x/) claim.[^1]",
                                               "Taken from the body\\."]

    environment = template_environment(newsletter.settings.templates_dir)
    prepared = compose_digest(environment, newsletter.settings, plan.posts)
    # The text part: plain text, no marks; the HTML part: the Markdown as HTML, links absolute.
    assert "A bold link claim." in prepared.text and "Taken from the body." in prepared.text
    assert "**" not in prepared.text and "[^1]" not in prepared.text
    assert re.search(r"<strong[^>]*>bold</strong>", prepared.html)
    assert 'href="https://blog.example.org/posts/x/"' in prepared.html
    assert "[^1]" not in prepared.html and "Taken from the body." in prepared.html


def test_posts_of_one_date_go_out_by_their_written_date(newsletter: Newsletter) -> None:
    """Feeds move posts that share a date seconds apart; a digest's window does not."""
    newsletter.subscribe({"reader@example.org": "active"})
    newsletter.plan(T0)
    day = (T0 + timedelta(days=1)).astimezone(BERLIN).date()
    for slug in ("b", "a", "c"):
        newsletter.site.write_post(f"{day}-{slug}.md", "Words.\n", title=slug.upper(), date=day)
    plan = newsletter.create(datetime.combine(day, time(), tzinfo=BERLIN))
    assert [p.slug for p in plan.posts] == ["a", "b", "c"]
    assert {p.published for p in plan.posts} == {datetime.combine(day, time(), tzinfo=BERLIN)}

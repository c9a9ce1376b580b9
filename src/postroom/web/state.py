"""What the web app needs, held in one object so SIGHUP can swap it whole."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment
from sqlalchemy import Engine

from postroom.config import Settings
from postroom.looplag import LoopLagProbe
from postroom.sender import SenderHealth
from postroom.templates import render
from postroom.tokens import Tokens
from postroom.transport import Transport
from postroom.web.csrf import Csrf
from postroom.web.feedfiles import FeedFiles
from postroom.web.limits import RequestLimits
from postroom.websub import link_header


@dataclass
class Health:
    """What /healthz reports besides the database: set by the daemon as things happen."""

    scheduler_running: Callable[[], bool] | None = None
    last_build: datetime | None = None
    last_digest: datetime | None = None
    last_send: datetime | None = None  # when the last pass over due deliveries ended
    sender: SenderHealth | None = None
    loop_lag: LoopLagProbe | None = None


@dataclass
class WebState:
    settings: Settings
    engine: Engine
    templates: Environment
    tokens: Tokens
    csrf: Csrf
    transport: Transport
    feeds: FeedFiles
    limits: RequestLimits
    health: Health = field(default_factory=Health)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Called (on the loop) when mail was queued in the outbox: the owner sends it soon.
    outbox_ready: Callable[[], None] = lambda: None

    @classmethod
    def create(cls, settings: Settings, engine: Engine, templates: Environment, secret: str,
               transport: Transport, health: Health | None = None) -> WebState:
        """Blocking: the feeds are read (from disk into memory) before the first request."""
        feeds = FeedFiles(settings.output_dir, settings.web.feed_max_age,
                          functools.partial(link_header, settings))
        feeds.refresh()
        return cls(
            settings=settings, engine=engine, templates=templates, tokens=Tokens(secret),
            csrf=Csrf(secret), transport=transport, feeds=feeds,
            limits=RequestLimits(secret, settings.web),
            health=health or Health(),
        )

    def url(self, path: str) -> str:
        """Given a path of the app ("/subscribe"), return its absolute URL.

        Always under the configured public URL: a URL built from the request's Host header
        would let anybody who sends one put their own site into our redirects and forms.
        """
        return self.settings.public_url + path

    def page(self, name: str, **context: Any) -> str:
        site = self.settings.site
        context["site"] = {"title": site.title, "url": site.base_url + "/",
                           "language": site.language}
        return render(self.templates, name, context)

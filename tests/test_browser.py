"""The pages in a real browser: Debian's Chromium, driven by Playwright, against `postroom run`
on a loopback port with a real SMTP server for the confirmation email.

Screenshots of every step go to <tmp_path>/screenshots, and also to .test-artifacts/ at the
repository's top when that folder exists (a developer creates it to look at them).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from daemonproc import DaemonSite
from mailserver import MailServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / ".test-artifacts"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does it)")

if CHROMIUM.exists():
    from playwright.sync_api import Browser, Page, expect, sync_playwright


class Screenshots:
    """Numbered full-page screenshots of one test, copied to .test-artifacts/ if it exists."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name, self.taken = folder, name, 0
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, page: Page, step: str) -> Path:
        self.taken += 1
        path = self.folder / f"{self.taken:02}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        if ARTIFACTS.is_dir():
            target = ARTIFACTS / self.name
            target.mkdir(exist_ok=True)
            shutil.copy(path, target / path.name)
        return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def sink() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, sink: MailServer) -> Iterator[DaemonSite]:
    """A site with two posts, its daemon running."""
    root = tmp_path_factory.mktemp("browser") / "site"
    with DaemonSite.create(root, smtp_port=sink.port) as served:
        now = datetime.now(UTC)
        served.write_post("first-post", "A first post", now - timedelta(days=2))
        served.write_post("second-post", "A second post", now - timedelta(days=1))
        daemon = served.start("run")
        daemon.wait_healthy()
        yield served


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 900, "height": 800})
    opened = context.new_page()
    yield opened
    context.close()


def wait_for_status(site: DaemonSite, email: str, status: str) -> None:
    deadline = time.monotonic() + 10
    while site.status_of(email) != status:
        assert time.monotonic() < deadline, f"{email} is {site.status_of(email)}, not {status}"
        time.sleep(0.05)


def test_subscribe_confirm_unsubscribe_through_the_pages(
        page: Page, site: DaemonSite, sink: MailServer, tmp_path: Path) -> None:
    shots = Screenshots(tmp_path / "screenshots", "subscribe-confirm-unsubscribe")
    problems: list[str] = []
    # A CSP violation or a failed load shows up as a console error (the browser's own
    # request for /favicon.ico, which postroom does not serve, aside).
    page.on("console", lambda m: problems.append(m.text) if m.type == "error"
            and not m.location.get("url", "").endswith("/favicon.ico") else None)
    email = "browser@example.org"

    page.goto(site.url("/subscribe"))
    expect(page.locator("h1")).to_have_text("Get Daemon Notes by email")
    expect(page.get_by_label("Your email address")).to_be_visible()
    expect(page.locator("#website")).not_to_be_in_viewport()  # the honeypot stays out of sight
    shots.take(page, "subscribe-form")

    page.get_by_label("Your email address").fill(email)
    page.get_by_role("button", name="Subscribe").click()
    expect(page.locator("h1")).to_have_text("Almost there")
    expect(page.locator("main")).to_contain_text("Check your inbox to confirm")
    shots.take(page, "almost-there")
    wait_for_status(site, email, "pending")

    assert sink.wait_for(1, timeout=10)
    [confirmation] = sink.messages_to(email)
    link = confirmation.link(re.escape(site.url("/confirm/")) + r"\S+")
    page.goto(link)
    expect(page.locator("h1")).to_have_text("You are subscribed")
    expect(page.locator("main")).to_contain_text(email)
    shots.take(page, "subscribed")
    wait_for_status(site, email, "active")

    row = site.subscriber(email)
    assert row is not None
    page.goto(site.url(f"/unsubscribe/{site.tokens().unsubscribe(row.id)}"))
    expect(page.locator("h1")).to_have_text("Unsubscribe from Daemon Notes?")
    shots.take(page, "unsubscribe-page")
    assert site.status_of(email) == "active"  # opening the page changes nothing

    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.locator("h1")).to_have_text("You are unsubscribed")
    expect(page.locator("main")).to_contain_text(email)
    shots.take(page, "unsubscribed")
    wait_for_status(site, email, "unsubscribed")

    assert problems == []
    assert shots.taken == 5


def test_the_form_fits_a_phone_screen(browser: Browser, site: DaemonSite,
                                      tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True,
                                  device_scale_factor=2)
    try:
        phone = context.new_page()
        phone.goto(site.url("/subscribe"))
        expect(phone.get_by_role("button", name="Subscribe")).to_be_visible()
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        Screenshots(tmp_path / "screenshots", "phone").take(phone, "subscribe-form")
    finally:
        context.close()


def test_a_feed_opened_in_the_browser_is_a_page_without_xslt(
        page: Page, site: DaemonSite, tmp_path: Path) -> None:
    shots = Screenshots(tmp_path / "screenshots", "feed-in-browser")
    said: list[str] = []
    # Chromium announces XSLT's removal in the console (and a banner) on any page that uses
    # it; a CSP violation is a console error too.
    page.on("console", lambda m: said.append(f"{m.type}: {m.text}")
            if not m.location.get("url", "").endswith("/favicon.ico") else None)
    for path in ("/feed.atom", "/feed.rss", "/feed.json"):
        response = page.goto(site.url(path))
        assert response is not None and response.status == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8", path
        assert "Accept" in response.headers["vary"]
        page.wait_for_load_state("load")
        shots.take(page, path.strip("/").replace(".", "-"))
        expect(page.locator("h1")).to_have_text("Daemon Notes")
        expect(page.get_by_role("link", name="A second post")).to_be_visible()
        subscribe = page.get_by_role("link", name="subscribe to the newsletter")
        assert subscribe.get_attribute("href") == site.url("/subscribe")
        # The address to copy into a reader is the feed's own.
        expect(page.get_by_role("link", name=site.url(path))).to_be_visible()
        assert page.evaluate("document.contentType") == "text/html"
    assert [line for line in said if "XSLT" in line or line.startswith("error")] == []
    # A feed reader asking for the same URL gets the feed.
    reader = httpx.get(site.url("/feed.atom"), headers={"Accept": "application/atom+xml"})
    assert reader.headers["content-type"] == "application/atom+xml; charset=utf-8"
    assert b"<?xml-stylesheet" not in reader.content

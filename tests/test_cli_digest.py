"""`postroom digest …` end to end: the real command on a copy of the example site (the
Maildir transport, as on a fresh clone) and on a test site sending to aiosmtpd."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import tomllib
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from mailserver import Fault, MailServer
from mailsite import MailSite, assert_no_traceback
from sites import run_postroom

REPOSITORY = Path(__file__).resolve().parent.parent
READERS = ["ann@example.org", "bob@example.net", "cat@example.com"]


class ExampleSite:
    """A copy of the repository's example config and sample posts in a temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copy(REPOSITORY / "config.example.toml", root / "postroom.toml")
        shutil.copytree(REPOSITORY / "posts", root / "posts")
        self.maildir = root / "var" / "maildir"

    def run(self, *args: str, env: dict[str, str] | None = None,
            ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        result = run_postroom(*args, "--config", "postroom.toml", cwd=self.root, env=env)
        assert result.returncode in ok, (args, result.returncode, result.stdout, result.stderr)
        assert_no_traceback(result)
        return result

    def mailbox(self) -> list[EmailMessage]:
        folder = self.maildir / "new"
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        parsed = [BytesParser(policy=policy.default).parsebytes(f.read_bytes()) for f in files]
        return [m for m in parsed if isinstance(m, EmailMessage)]

    def new_slugs(self) -> list[str]:
        """The slugs of the sample posts dated on or after the example's digest.since (read
        from their file names): what the first digest holds."""
        with (self.root / "postroom.toml").open("rb") as handle:
            since = str(tomllib.load(handle)["digest"]["since"])[:10]
        names = sorted(p.name for p in (self.root / "posts").glob("*.md"))
        return [n[11:-3] for n in names if n[:10] >= since]


@pytest.fixture
def example(tmp_path: Path) -> ExampleSite:
    site = ExampleSite(tmp_path)
    site.run("subscribers", "add", *READERS)
    return site


def test_digest_send_on_the_example_site_writes_the_maildir(example: ExampleSite) -> None:
    slugs = example.new_slugs()
    assert slugs, "the sample posts include some after digest.since"

    sent = example.run("digest", "send")

    assert f"sent {len(READERS)}, failed 0" in sent.stdout
    messages = example.mailbox()
    assert sorted(str(m["To"]) for m in messages) == sorted(READERS)
    for message in messages:
        assert message.get_content_type() == "multipart/alternative"
        assert str(message["Subject"]) == f"Ahmed's notes: {len(slugs)} new posts"
        assert message["From"].addresses[0].addr_spec == "newsletter@blog.example.org"
        assert str(message["List-Unsubscribe"]).startswith(
            "<https://blog.example.org/unsubscribe/")
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        assert text is not None and html is not None
        for slug in slugs:
            url = f"https://blog.example.org/posts/{slug}/"
            assert url in text.get_content() and f'href="{url}"' in html.get_content()

    again = example.run("digest", "send")

    assert "sent 0, failed 0" in again.stdout
    assert len(example.mailbox()) == len(READERS), "nothing new: nothing sent"


def test_digest_status_shows_the_counts(example: ExampleSite) -> None:
    assert "no digest yet" in example.run("digest", "status").stdout
    example.run("digest", "send")

    status = example.run("digest", "status").stdout

    [line] = [line for line in status.splitlines() if line.startswith("digest 1 ")]
    assert f"pending 0  sent {len(READERS)}  failed 0" in line
    assert "Ahmed's notes:" in line


def test_dry_run_sends_and_records_nothing(example: ExampleSite) -> None:
    dry = example.run("digest", "send", "--dry-run")

    slugs = example.new_slugs()
    assert f"would create a digest of {len(slugs)} post(s) for {len(READERS)} subscriber(s)" in (
        dry.stdout)
    assert example.mailbox() == []
    assert "no digest yet" in example.run("digest", "status").stdout
    # The dry run consumed nothing: the real send still has every post.
    example.run("digest", "send")
    assert len(example.mailbox()) == len(READERS)


def test_preview_writes_html_text_and_eml(example: ExampleSite) -> None:
    out = example.root / "preview"

    result = example.run("digest", "preview", "-o", str(out))

    written = {Path(line).name for line in result.stdout.split()}
    assert written == {"digest.html", "digest.txt", "digest.eml"}
    html = (out / "digest.html").read_text(encoding="utf-8")
    text = (out / "digest.txt").read_text(encoding="utf-8")
    eml = BytesParser(policy=policy.default).parsebytes((out / "digest.eml").read_bytes())
    for slug in example.new_slugs():
        assert f"https://blog.example.org/posts/{slug}/" in text
        assert f"https://blog.example.org/posts/{slug}/" in html
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "<html" in html and "=3D" not in html, "decoded HTML, not quoted-printable"
    assert eml.get_content_type() == "multipart/alternative"
    assert example.mailbox() == [], "a preview sends nothing"
    assert "no digest yet" in example.run("digest", "status").stdout


def test_retry_sends_failed_deliveries_again(example: ExampleSite) -> None:
    # Fail fast: two quick attempts. The overrides are postroom's own POSTROOM__ variables.
    fast = {"POSTROOM__SMTP__MAX_ATTEMPTS": "2", "POSTROOM__SMTP__BACKOFF_BASE": "0.05",
            "POSTROOM__SMTP__BACKOFF_MAX": "0.1"}
    example.maildir.parent.mkdir(parents=True, exist_ok=True)
    example.maildir.write_text("a file where the Maildir should be")

    failed = example.run("digest", "send", env=fast, ok=(1,))

    assert f"sent 0, failed {len(READERS)}" in failed.stdout
    assert f"failed {len(READERS)}" in example.run("digest", "status").stdout
    example.maildir.unlink()

    retried = example.run("digest", "retry", env=fast)

    assert f"{len(READERS)} failed delivery(ies) queued again" in retried.stdout
    assert f"sent {len(READERS)}, failed 0" in retried.stdout
    assert sorted(str(m["To"]) for m in example.mailbox()) == sorted(READERS)
    assert f"pending 0  sent {len(READERS)}  failed 0" in example.run("digest", "status").stdout


def test_send_to_one_address_is_a_test_send(example: ExampleSite) -> None:
    result = example.run("digest", "send", "--to", "me@example.org")

    assert "sent a test digest" in result.stdout
    [message] = example.mailbox()
    assert str(message["To"]) == "me@example.org"
    assert "no digest yet" in example.run("digest", "status").stdout, "not recorded"


# ---- over SMTP --------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[MailServer]:
    with MailServer() as running:
        yield running


def test_send_over_smtp_reports_failures_and_exits_1(tmp_path: Path, server: MailServer) -> None:
    server.fail(Fault("rcpt", "550 5.1.1 no such user", recipient="gone@example.org"))
    site = MailSite.create(tmp_path, smtp_port=server.port, mail={"bounce_after": 1})
    site.write_post("news", "News")
    added = site.run("subscribers", "add", "ann@example.org", "gone@example.org")
    assert added.returncode == 0, added.stderr

    result = site.run("digest", "send")

    assert result.returncode == 1, "done, but a delivery failed"
    assert_no_traceback(result)
    assert re.search(r"sent 1, failed 1, retried 0, bounced 1", result.stdout), result.stdout
    assert "550 5.1.1 no such user" in result.stderr, "the server's reply is logged"
    assert server.per_recipient() == {"ann@example.org": 1}
    listed = site.run("subscribers", "list", "--status", "bounced")
    assert "gone@example.org" in listed.stdout


def test_an_unreachable_server_fails_without_a_traceback(tmp_path: Path) -> None:
    with MailServer() as server:
        port = server.port  # a port that was free, now closed again
    site = MailSite.create(tmp_path, smtp_port=port,
                           smtp={"max_attempts": 2, "backoff_base": 0.05, "backoff_max": 0.1})
    site.write_post("news", "News")
    site.add_subscribers(["ann@example.org"])

    result = site.run("digest", "send")

    assert result.returncode == 1
    assert_no_traceback(result)
    assert "sent 0, failed 1" in result.stdout
    [row] = site.deliveries()
    assert row.status == "failed" and "cannot connect" in row.last_reply


# ---- when the mail server or the database is unavailable: exit 3, nothing lost -------------


def closed_port() -> int:
    with MailServer() as server:
        return server.port  # a port that was free, now closed again


def test_digest_send_with_the_mail_server_down_exits_3_and_says_what_is_pending(
    tmp_path: Path,
) -> None:
    site = MailSite.create(tmp_path, smtp_port=closed_port(),
                           smtp={"retry_wait": 0.5, "backoff_base": 600, "backoff_max": 600})
    site.write_post("news", "News")
    site.add_subscribers(READERS)

    down = site.run("digest", "send")

    assert down.returncode == 3, (down.stdout, down.stderr)
    assert_no_traceback(down)
    assert "sent 0, failed 0, retried 3" in down.stdout
    assert re.search(r"3 delivery\(ies\) still to send, next attempt at \d{4}-\d\d-\d\d "
                     r".*last error: cannot connect", down.stderr), down.stderr
    status = site.run("digest", "status")
    assert "pending 3  sent 0  failed 0" in status.stdout
    assert re.search(r"next attempt \d{4}-\d\d-\d\d", status.stdout), status.stdout
    assert "last error: cannot connect" in status.stdout

    # The server is back: --now sends what waits for its backoff, at once.
    with MailServer() as server:
        site.reload(smtp={"port": server.port, "backoff_base": 600, "backoff_max": 600})
        again = site.run("digest", "send", "--now")
        assert again.returncode == 0, (again.stdout, again.stderr)
        assert "3 pending delivery(ies) made due now" in again.stdout
        assert "sent 3, failed 0" in again.stdout
        assert server.per_recipient() == {reader: 1 for reader in READERS}


def test_a_test_send_with_the_mail_server_down_exits_3_without_a_traceback(
    tmp_path: Path,
) -> None:
    site = MailSite.create(tmp_path, smtp_port=closed_port())
    site.write_post("news", "News")

    result = site.run("digest", "send", "--to", "me@example.org")

    assert result.returncode == 3
    assert_no_traceback(result)
    assert "the test digest to me@example.org was not sent: cannot connect" in result.stderr


def test_a_database_locked_past_the_busy_timeout_exits_3_and_loses_nothing(
    tmp_path: Path,
) -> None:
    site = MailSite.create(tmp_path, database={"busy_timeout_ms": 50})
    locker = sqlite3.connect(str(site.engine.url.database), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        locked = site.run("subscribers", "add", "ann@example.org")
    finally:
        locker.rollback()
        locker.close()

    assert locked.returncode == 3, (locked.stdout, locked.stderr)
    assert_no_traceback(locked)
    assert "database error: database is locked" in locked.stderr
    assert site.run("subscribers", "add", "ann@example.org").returncode == 0


def test_debug_shows_the_traceback_and_its_cause(tmp_path: Path) -> None:
    site = MailSite.create(tmp_path, smtp_port=closed_port())
    site.write_post("news", "News")

    result = site.run("digest", "send", "--to", "me@example.org", "--debug")

    assert result.returncode == 3
    assert "Traceback (most recent call last)" in result.stderr
    assert "The above exception was the direct cause" in result.stderr
    assert "ConnectionRefusedError" in result.stderr or "OSError" in result.stderr

"""The transports: a real SMTP server (aiosmtpd) and a real Maildir folder."""

from __future__ import annotations

import asyncio
import mailbox
import socket
import time
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from mailserver import Fault, MailServer
from postroom.config import SmtpSettings
from postroom.errors import ConfigError
from postroom.transport import (
    MaildirTransport,
    PermanentError,
    SmtpTransport,
    TransientError,
    as_data,
)

SENDER = "letters@example.org"


def message(to: str, subject: str = "Hello") -> bytes:
    return as_data((
        f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Body line.\r\n.starts with a dot\r\n"
    ).encode())


@pytest.fixture
def server() -> Iterator[MailServer]:
    with MailServer() as running:
        yield running


def smtp(port: int, **changes: object) -> SmtpTransport:
    values: dict[str, object] = {"host": "127.0.0.1", "port": port, "security": "none",
                                 "timeout": 1.0}
    values.update(changes)
    return SmtpTransport(SmtpSettings.model_validate(values), env={})


async def send_all(transport: SmtpTransport, recipients: list[str]) -> list[str | Exception]:
    """Send one message per recipient on one connection; return each reply or error."""
    connection = await transport.connect()
    outcomes: list[str | Exception] = []
    try:
        for recipient in recipients:
            try:
                outcomes.append(await connection.send(SENDER, recipient, message(recipient)))
            except (TransientError, PermanentError) as err:
                outcomes.append(err)
    finally:
        await connection.close()
    return outcomes


# ---- SMTP ------------------------------------------------------------------------------


def test_smtp_sends_many_messages_on_one_connection(server: MailServer) -> None:
    recipients = [f"r{i}@example.org" for i in range(5)]

    outcomes = asyncio.run(send_all(smtp(server.port), recipients))

    assert all(isinstance(o, str) and "queued" in o for o in outcomes), outcomes
    received = server.messages()
    assert [m.rcpt_tos for m in received] == [(r,) for r in recipients]
    assert {m.session for m in received} == {received[0].session}, "one connection for all"
    assert len(server.greeted_sessions()) == 1
    parsed = BytesParser(policy=policy.default).parsebytes(received[0].data)
    assert parsed["To"] == "r0@example.org"
    assert ".starts with a dot" in parsed.get_content(), "dot-stuffing is undone"


def test_smtp_sends_on_uvloop(server: MailServer) -> None:
    # uvloop's transports are not subclasses of asyncio's: an isinstance check on the
    # connection's transport failed every send there (uvicorn[standard] brings uvloop).
    uvloop = pytest.importorskip("uvloop")
    outcomes = uvloop.run(send_all(smtp(server.port), ["r0@example.org", "r1@example.org"]))
    assert all(isinstance(o, str) and "queued" in o for o in outcomes), outcomes
    assert server.count() == 2


@pytest.mark.parametrize(
    "fault, kind, reconnect, bounce",
    [
        (Fault("rcpt", "550 5.1.1 no such user"), PermanentError, None, True),
        (Fault("rcpt", "553 5.1.3 bad address"), PermanentError, None, True),
        (Fault("rcpt", "554 5.7.1 relay denied"), PermanentError, None, False),
        (Fault("data", "552 5.3.4 message too big"), PermanentError, None, False),
        (Fault("data", "554 5.6.0 content rejected"), PermanentError, None, False),
        (Fault("mail", "550 5.7.1 sender refused"), PermanentError, None, False),
        (Fault("rcpt", "451 4.3.0 try later"), TransientError, False, None),
        (Fault("data", "452 4.3.1 out of storage"), TransientError, False, None),
        (Fault("rcpt", "421 4.3.2 closing"), TransientError, True, None),
        (Fault("data", "421 4.3.2 closing"), TransientError, True, None),
    ],
)
def test_smtp_replies_are_classified(server: MailServer, fault: Fault, kind: type[Exception],
                                     reconnect: bool | None, bounce: bool | None) -> None:
    server.fail(Fault(fault.stage, fault.reply, recipient=None, messages=(1,)))

    first = asyncio.run(send_all(smtp(server.port), ["gone@example.org"]))[0]

    assert isinstance(first, kind)
    assert first.reply == fault.reply, "the server's reply is kept, code and text"
    if reconnect is not None:
        assert isinstance(first, TransientError) and first.reconnect is reconnect
    if bounce is not None:
        assert isinstance(first, PermanentError) and first.bounce is bounce
    assert server.count() == 0


def test_a_refusal_leaves_the_connection_usable(server: MailServer) -> None:
    server.fail(Fault("rcpt", "550 5.1.1 no such user", recipient="gone@example.org"),
                Fault("rcpt", "451 4.3.0 greylisted", recipient="later@example.org"))

    outcomes = asyncio.run(send_all(smtp(server.port), [
        "a@example.org", "gone@example.org", "b@example.org", "later@example.org",
        "c@example.org"]))

    assert isinstance(outcomes[1], PermanentError) and isinstance(outcomes[3], TransientError)
    assert [m.rcpt_tos[0] for m in server.messages()] == [
        "a@example.org", "b@example.org", "c@example.org"]
    assert len(server.greeted_sessions()) == 1


def test_a_connection_dropped_mid_data_is_transient(server: MailServer) -> None:
    server.fail(Fault("data", action="drop", messages=(1,)))

    [outcome] = asyncio.run(send_all(smtp(server.port), ["a@example.org"]))

    assert isinstance(outcome, TransientError) and outcome.reconnect
    assert server.count() == 0
    assert [e.outcome for e in server.outcomes("a@example.org")] == ["250 OK", "drop"]


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
def test_a_stalled_server_times_out_as_transient(server: MailServer, stage: str) -> None:
    server.fail(Fault(stage, action="stall", seconds=5.0))  # type: ignore[arg-type]
    started = time.monotonic()

    [outcome] = asyncio.run(send_all(smtp(server.port, timeout=0.5), ["a@example.org"]))

    elapsed = time.monotonic() - started
    assert isinstance(outcome, TransientError) and outcome.reconnect
    assert 0.4 <= elapsed < 3.0, "given up after about smtp.timeout, not the stall"
    assert server.count() == 0


def test_no_server_is_a_transient_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connection refused

        with pytest.raises(TransientError) as raised:
            asyncio.run(smtp(port).connect())

    assert f"127.0.0.1:{port}" in raised.value.reply


def test_a_username_without_the_password_variable_fails_at_start() -> None:
    settings = SmtpSettings(host="127.0.0.1", port=2525, username="me",
                            password_env="TEST_POSTROOM_PASSWORD")
    with pytest.raises(ConfigError, match="TEST_POSTROOM_PASSWORD"):
        SmtpTransport(settings, env={})


class Passwords:
    """An aiosmtpd authenticator that knows one user."""

    def __call__(self, server: object, session: object, envelope: object, mechanism: str,
                 auth_data: object) -> AuthResult:
        good = isinstance(auth_data, LoginPassword) and (
            auth_data.login, auth_data.password) == (b"me", b"s3cret")
        return AuthResult(success=good, handled=False)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("password, works", [("s3cret", True), ("wrong", False)])
def test_smtp_logs_in_with_the_password_from_the_environment(password: str, works: bool) -> None:
    with MailServer(authenticator=Passwords(), auth_require_tls=False,
                    auth_required=True) as server:
        settings = SmtpSettings(host="127.0.0.1", port=server.port, security="none",
                                timeout=1.0, username="me", password_env="SMTP_PW")
        transport = SmtpTransport(settings, env={"SMTP_PW": password})
        if works:
            outcomes = asyncio.run(send_all(transport, ["a@example.org"]))
            assert isinstance(outcomes[0], str)
            assert server.count() == 1
        else:
            with pytest.raises(PermanentError) as raised:
                asyncio.run(transport.connect())
            assert raised.value.reply.startswith("535")
            assert server.count() == 0


# ---- Maildir ---------------------------------------------------------------------------


def test_maildir_writes_one_parseable_file_per_message(tmp_path: Path) -> None:
    folder = tmp_path / "var" / "maildir"

    async def deliver() -> list[str]:
        connection = await MaildirTransport(folder).connect()
        replies = [await connection.send(SENDER, f"r{i}@example.org", message(f"r{i}@example.org",
                                         f"Número {i}")) for i in range(3)]
        await connection.close()
        return replies

    replies = asyncio.run(deliver())

    assert all(reply.startswith("250 stored as ") for reply in replies)
    files = sorted((folder / "new").iterdir())
    assert len(files) == 3 and not list((folder / "tmp").iterdir())
    keys = {reply.removeprefix("250 stored as ") for reply in replies}
    assert set(mailbox.Maildir(folder, create=False).keys()) == keys
    recipients = set()
    for path in files:
        parsed = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        assert parsed["Return-Path"] == f"<{SENDER}>"
        assert parsed["Delivered-To"] == parsed["To"]
        assert parsed["Subject"].startswith("Número")
        recipients.add(str(parsed["To"]))
    assert recipients == {"r0@example.org", "r1@example.org", "r2@example.org"}


def test_maildir_that_cannot_be_written_is_a_transient_error(tmp_path: Path) -> None:
    folder = tmp_path / "maildir"

    async def deliver() -> str:
        connection = await MaildirTransport(folder).connect()
        # The Maildir exists, but its tmp/ is now a file: writing a message fails.
        (folder / "tmp").rmdir()
        (folder / "tmp").write_text("in the way")
        return await connection.send(SENDER, "a@example.org", message("a@example.org"))

    with pytest.raises(TransientError, match="maildir"):
        asyncio.run(deliver())


def test_a_maildir_path_that_is_a_file_is_a_transient_error(tmp_path: Path) -> None:
    (tmp_path / "var").write_text("a file where a folder should be")

    with pytest.raises(TransientError, match="maildir"):
        asyncio.run(MaildirTransport(tmp_path / "var" / "maildir").connect())

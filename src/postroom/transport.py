"""Senders behind one small interface: SMTP (aiosmtplib) and a local Maildir.

A connection's `send` takes a message as SMTP DATA (CRLF line ends, dot-stuffed, ending
in CRLF.CRLF: see message.MessageTemplate), returns the server's reply on success and
raises TransientError (try again later, maybe on a new connection) or PermanentError (do
not retry).
"""

from __future__ import annotations

import asyncio
import mailbox
import os
from collections import deque
from pathlib import Path
from typing import Protocol, cast

import aiosmtplib

from postroom.config import Settings, SmtpSettings
from postroom.errors import ConfigError, PostroomError


class DeliveryError(PostroomError):
    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class TransientError(DeliveryError):
    """4xx, a dropped connection or a timeout: the same message may succeed later."""

    exit_code = 3  # could not finish: the mail server is unavailable for now

    def __init__(self, reply: str, reconnect: bool = True) -> None:
        super().__init__(reply)
        self.reconnect = reconnect


class PermanentError(DeliveryError):
    """5xx: retrying will not help. `bounce` is set when the recipient itself was refused."""

    exit_code = 1  # done, but a delivery failed

    def __init__(self, reply: str, bounce: bool) -> None:
        super().__init__(reply)
        self.bounce = bounce


class Connection(Protocol):
    async def send(self, sender: str, recipient: str, message: bytes) -> str: ...

    async def close(self) -> None: ...

    def abort(self) -> None:
        """Drop the connection at once, without a goodbye."""


class Transport(Protocol):
    async def connect(self) -> Connection: ...


class MaildirTransport:
    """Writes each message into a Maildir (tmp/ then new/: atomic by the format's design)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def connect(self) -> Connection:
        try:
            # mailbox creates the Maildir's own folder, not the ones above it (var/).
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            box = mailbox.Maildir(self.folder, create=True)
        except OSError as err:
            raise TransientError(f"maildir {self.folder}: {err.strerror or err}") from err
        return _MaildirConnection(box)


class _MaildirConnection:
    def __init__(self, box: mailbox.Maildir) -> None:
        self.box = box

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        envelope = f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n".encode()
        try:
            key = await asyncio.to_thread(self.box.add, envelope + unstuff(message))
        except OSError as err:
            raise TransientError(f"maildir: {err.strerror or err}") from err
        return f"250 stored as {key}"

    async def close(self) -> None:
        return None

    def abort(self) -> None:
        return None


class SmtpTransport:
    """Opens SMTP connections as configured; the password comes only from the environment."""

    def __init__(self, settings: SmtpSettings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        env = dict(os.environ) if env is None else env
        self.password = env.get(settings.password_env)
        if settings.username and not self.password:
            raise ConfigError(
                f"smtp.username is set but ${settings.password_env} is empty: "
                "put the SMTP password in that environment variable"
            )

    async def connect(self) -> Connection:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host, port=s.port, timeout=s.timeout,
            use_tls=s.security == "tls", start_tls=s.security == "starttls",
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                await client._ehlo_or_helo_if_needed()
            if s.username and self.password:
                await client.login(s.username, self.password)
        except aiosmtplib.SMTPAuthenticationError as err:
            raise PermanentError(f"{err.code} {err.message}", bounce=False) from err
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as err:
            raise TransientError(f"cannot connect to {s.host}:{s.port}: {err}") from err
        return _SmtpConnection(client, s.timeout)


class _SmtpConnection:
    """One SMTP session's mail transactions, pipelined (RFC 2920) when the server offers it.

    aiosmtplib opens the session (TLS, EHLO, AUTH); the transactions then run on the same
    transport with a reply reader of our own, because aiosmtplib's `sendmail` re-parses the
    addresses, re-normalises line ends and dot-stuffs every message, and its protocol
    reads one reply per write, which rules out pipelining. Messages come ready for DATA.
    """

    def __init__(self, client: aiosmtplib.SMTP, timeout: float) -> None:
        self.pipelining = client.supports_extension("pipelining")
        self.timeout = timeout
        self.replies = _ReplyReader()
        # Duck-typed: uvloop's transports are write transports without being subclasses of
        # asyncio's (an isinstance check failed every send on uvloop).
        assert client.transport is not None
        self.transport = cast(asyncio.WriteTransport, client.transport)
        self.transport.set_protocol(self.replies)

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        commands = (f"MAIL FROM:<{sender}>", f"RCPT TO:<{recipient}>", "DATA")
        try:
            async with asyncio.timeout(self.timeout):
                return await self._transaction(commands, message)
        except TimeoutError as err:
            self.transport.abort()
            raise TransientError(
                f"timed out: the server did not answer within {self.timeout:g} s") from err
        except ConnectionError as err:
            raise TransientError(f"connection lost: {err or type(err).__name__}") from err

    async def _transaction(self, commands: tuple[str, str, str], message: bytes) -> str:
        lines = [c.encode("ascii") + b"\r\n" for c in commands]
        if self.pipelining:
            self._write(b"".join(lines))
            replies = await self.replies.read(3)
        else:
            replies = []
            for line in lines:
                self._write(line)
                [reply] = await self.replies.read(1)
                replies.append(reply)
                if not 200 <= reply[0] < 400:
                    break
        mail, *rest = replies
        rcpt = rest[0] if rest else None
        data = rest[1] if len(rest) > 1 else None
        if data is not None and data[0] == 354 and (mail[0] >= 400 or (rcpt and rcpt[0] >= 400)):
            # A server that accepted DATA after a refusal gets an empty message to end it.
            self._write(b".\r\n")
            await self.replies.read(1)
        if mail[0] >= 400 or (rcpt and rcpt[0] >= 400) or data is None or data[0] != 354:
            await self._reset()
            if mail[0] >= 400:
                raise _classify(*mail, recipient=False)
            if rcpt and rcpt[0] >= 400:
                raise _classify(*rcpt, recipient=True)
            raise _classify(*(data or (-1, "no reply to DATA")), recipient=False)
        self._write(message)
        [(code, text)] = await self.replies.read(1)
        if code >= 400:
            raise _classify(code, text, recipient=False)
        return f"{code} {text}".strip()

    async def _reset(self) -> None:
        # A refused transaction may leave MAIL in effect: RSET so the next one starts clean.
        # A server that closed the connection (421) needs none: the reply says what happened.
        try:
            self._write(b"RSET\r\n")
            await self.replies.read(1)
        except ConnectionError:
            self.transport.abort()

    def _write(self, data: bytes) -> None:
        if self.transport.is_closing():
            raise ConnectionResetError("the server closed the connection")
        self.transport.write(data)

    def abort(self) -> None:
        self.transport.abort()

    async def close(self) -> None:
        if self.transport.is_closing():
            return
        try:
            self._write(b"QUIT\r\n")
            async with asyncio.timeout(min(self.timeout, 5.0)):
                await self.replies.read(1)
        except (TimeoutError, ConnectionError, TransientError):
            pass
        finally:
            self.transport.close()


class _ReplyReader(asyncio.Protocol):
    """Parses SMTP replies as they arrive, however the server splits or batches them."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.replies: deque[tuple[int, str]] = deque()
        self.lines: list[str] = []
        self.waiter: asyncio.Future[None] | None = None
        self.lost: Exception | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\n")) >= 0:
            line = bytes(self.buffer[: end + 1])
            del self.buffer[: end + 1]
            text = line[4:].strip().decode("utf-8", "replace")
            self.lines.append(text)
            if line[3:4] != b"-":
                try:
                    code = int(line[:3])
                except ValueError:
                    code = -1
                self.replies.append((code, "\n".join(self.lines)))
                self.lines = []
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("the server closed the connection")
        self._wake()

    def eof_received(self) -> bool:
        return False

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def read(self, count: int) -> list[tuple[int, str]]:
        """Return the next `count` replies, waiting for them; ConnectionError if lost."""
        while len(self.replies) < count:
            if self.lost is not None:
                raise ConnectionResetError(str(self.lost) or "connection lost")
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return [self.replies.popleft() for _ in range(count)]


def as_data(message: bytes) -> bytes:
    """Return a message with CRLF line ends as SMTP DATA (for messages not from a template)."""
    body = message if message.endswith(b"\r\n") else message + b"\r\n"
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    return (b"." + stuffed if stuffed.startswith(b".") else stuffed) + b".\r\n"


def unstuff(data: bytes) -> bytes:
    """Return SMTP DATA as the message it carries (undo dot-stuffing, drop the end mark)."""
    body = data.removesuffix(b".\r\n").replace(b"\r\n..", b"\r\n.")
    return body[1:] if body.startswith(b"..") else body


def _classify(code: int, message: str, recipient: bool) -> DeliveryError:
    reply = f"{code} {message}".strip()
    if 400 <= code < 500 or code < 0:
        # 421: the server is closing the channel; the rest keep it usable.
        return TransientError(reply, reconnect=code == 421 or code < 0)
    return PermanentError(reply, bounce=recipient and 550 <= code <= 553)


def make_transport(settings: Settings) -> Transport:
    """Return the configured transport: SMTP, or the local Maildir."""
    if settings.mail.transport == "smtp":
        return SmtpTransport(settings.smtp)
    return MaildirTransport(settings.maildir)

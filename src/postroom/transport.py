"""Senders behind one small interface: SMTP (aiosmtplib) and a local Maildir.

A connection's `send` returns the server's reply on success and raises TransientError
(try again later, maybe on a new connection) or PermanentError (do not retry).
"""

from __future__ import annotations

import asyncio
import mailbox
import os
from pathlib import Path
from typing import Protocol

import aiosmtplib

from postroom.config import SmtpSettings
from postroom.errors import ConfigError


class DeliveryError(Exception):
    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class TransientError(DeliveryError):
    """4xx, a dropped connection or a timeout: the same message may succeed later."""

    def __init__(self, reply: str, reconnect: bool = True) -> None:
        super().__init__(reply)
        self.reconnect = reconnect


class PermanentError(DeliveryError):
    """5xx: retrying will not help. `bounce` is set when the recipient itself was refused."""

    def __init__(self, reply: str, bounce: bool) -> None:
        super().__init__(reply)
        self.bounce = bounce


class Connection(Protocol):
    async def send(self, sender: str, recipient: str, message: bytes) -> str: ...

    async def close(self) -> None: ...


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
            raise TransientError(f"maildir {self.folder}: {err.strerror or err}") from None
        return _MaildirConnection(box)


class _MaildirConnection:
    def __init__(self, box: mailbox.Maildir) -> None:
        self.box = box

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        envelope = f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n".encode()
        try:
            key = await asyncio.to_thread(self.box.add, envelope + message)
        except OSError as err:
            raise TransientError(f"maildir: {err.strerror or err}") from None
        return f"250 stored as {key}"

    async def close(self) -> None:
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
            if s.username and self.password:
                await client.login(s.username, self.password)
        except aiosmtplib.SMTPAuthenticationError as err:
            raise PermanentError(f"{err.code} {err.message}", bounce=False) from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as err:
            raise TransientError(f"cannot connect to {s.host}:{s.port}: {err}") from None
        return _SmtpConnection(client)


class _SmtpConnection:
    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        try:
            _refused, reply = await self.client.sendmail(sender, [recipient], message)
        except aiosmtplib.SMTPRecipientsRefused as err:
            refusal = err.recipients[0]
            raise _classify(refusal.code, refusal.message, recipient=True) from None
        except aiosmtplib.SMTPResponseException as err:
            raise _classify(err.code, err.message, recipient=False) from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as err:
            raise TransientError(f"connection lost: {err or type(err).__name__}") from None
        return reply

    async def close(self) -> None:
        try:
            if self.client.is_connected:
                await self.client.quit()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            self.client.close()


def _classify(code: int, message: str, recipient: bool) -> DeliveryError:
    reply = f"{code} {message}".strip()
    if 400 <= code < 500 or code < 0:
        # 421: the server is closing the channel; the rest keep it usable.
        return TransientError(reply, reconnect=code == 421 or code < 0)
    return PermanentError(reply, bounce=recipient and 550 <= code <= 553)

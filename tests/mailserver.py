"""The real SMTP server of every test: aiosmtpd on a free loopback port, recording what it
receives, misbehaving on cue and slow on cue.

    with MailServer() as server:
        server.fail(Fault("rcpt", "550 5.1.1 no such user", recipient="gone@example.org"))
        ...  # send to 127.0.0.1:server.port
        assert server.wait_for(3, timeout=10)
        [message] = server.messages_to("a@example.org")  # .parsed(), .text(), .link(…)

Everything the server sees is recorded under a lock (the server runs in its own thread):
the messages it accepted (`received`), one event per command it answered (`events`), and
its connections (`sessions`). A message counts as received only when the server answered
250 to its DATA: a message cut off or stalled is one the server never took.

`MailServer(delay=0.05)` lets that many seconds pass between the end of each message's DATA
and the 250, so a send can be caught in flight (`server.delay` may be changed while it runs).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

Stage = Literal["mail", "rcpt", "data"]
Action = Literal["reply", "drop", "stall"]


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour of the server.

    At `stage` ("mail", "rcpt" or "data"), for the transactions it matches, the server:
    - "reply": answers `reply` instead of 250 (a 421 also closes the connection, as RFC
      5321 requires of it);
    - "drop": closes the connection; at "data" it does so after 354 and part of the
      message, in the middle of the data;
    - "stall": says nothing for `seconds`, then closes the connection.

    It matches a transaction when every given filter does: `recipient` (the transaction's
    recipient), `attempts` (the n-th time this recipient is offered to the server, from
    1), `messages` (the n-th transaction the server has seen, from 1, counted at MAIL).
    `times` caps how often the fault fires in all (None: no cap).
    """

    stage: Stage
    reply: str = ""
    action: Action = "reply"
    recipient: str | None = None
    attempts: tuple[int, ...] | None = None
    messages: tuple[int, ...] | None = None
    seconds: float = 0.0
    times: int | None = None


@dataclass(frozen=True)
class Received:
    """A message the server accepted."""

    number: int  # the transaction's number (counted at MAIL FROM, from 1)
    session: int  # the connection it came on (from 1)
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes

    def parsed(self) -> EmailMessage:
        """Return the message parsed by the standard library, as a mail client would."""
        message = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(message, EmailMessage)
        return message

    def text(self) -> str:
        """Return the text/plain body, decoded."""
        part = self.parsed().get_body(preferencelist=("plain",))
        assert part is not None, "message has no text/plain part"
        return str(part.get_content())

    def link(self, pattern: str) -> str:
        """Return the first URL in the text body matching `pattern` (a regex)."""
        found = re.search(pattern, self.text())
        assert found, f"no link matching {pattern!r} in:\n{self.text()}"
        return found.group(0)


def header_urls(value: Any) -> list[str]:
    """Given a List-Unsubscribe header, return its URLs in order ("<a>, <b>" → [a, b])."""
    return re.findall(r"<([^>]+)>", str(value))


@dataclass(frozen=True)
class Event:
    """One answer the server gave (or did not give: "drop", "stall")."""

    session: int
    number: int
    stage: Stage
    recipient: str | None
    outcome: str  # the reply line, or "drop" / "stall"
    at: float  # time.monotonic() when it happened


@dataclass
class SessionInfo:
    number: int
    opened: float
    closed: float | None = None
    greeted: bool = False  # said HELO/EHLO: a real client, not the controller's probe


@dataclass
class _Transaction:
    number: int
    recipients: list[str] = field(default_factory=list)


class MailServer:
    """An aiosmtpd server on 127.0.0.1 with a free port; use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", *, delay: float = 0.0,
                 **smtp_options: Any) -> None:
        """`delay`: seconds before each 250 to DATA; `smtp_options` go to aiosmtpd's SMTP
        (e.g. authenticator, auth_require_tls)."""
        self.host = host
        self.port = 0
        self.delay = delay  # may be changed while the server runs
        self.received: list[Received] = []
        self.events: list[Event] = []
        self.sessions: list[SessionInfo] = []
        self._faults: list[Fault] = []
        self._fired: Counter[int] = Counter()
        self._offers: Counter[str] = Counter()  # RCPT TO per recipient
        self._transactions = 0
        self._open = 0
        self.peak_connections = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._controller = _Controller(self, hostname=host, port=0, **smtp_options)

    # ---- life cycle ------------------------------------------------------------------

    def start(self) -> MailServer:
        self._controller.start()
        self.port = self._controller.port
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> MailServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the script ------------------------------------------------------------------

    def fail(self, *faults: Fault) -> None:
        """Add faults to the script (the first that matches a transaction wins)."""
        with self._lock:
            self._faults.extend(faults)

    def heal(self) -> None:
        """Forget every fault: from now on the server accepts everything."""
        with self._lock:
            self._faults.clear()

    # ---- what happened ---------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def messages_to(self, address: str) -> list[Received]:
        """Return the accepted messages that `address` was a recipient of, in order."""
        return [m for m in self.messages() if address in m.rcpt_tos]

    def per_recipient(self) -> Counter[str]:
        """Return how many accepted messages each recipient got."""
        with self._lock:
            return Counter(r for m in self.received for r in m.rcpt_tos)

    def outcomes(self, recipient: str | None = None) -> list[Event]:
        with self._lock:
            return [e for e in self.events if recipient is None or e.recipient == recipient]

    def greeted_sessions(self) -> list[SessionInfo]:
        """Return the connections of real clients (the controller's start-up probe excluded)."""
        with self._lock:
            return [s for s in self.sessions if s.greeted]

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until at least `count` messages were accepted; return whether they were."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    # ---- called from the server's thread ---------------------------------------------

    def _opened(self) -> int:
        with self._lock:
            number = len(self.sessions) + 1
            self.sessions.append(SessionInfo(number, time.monotonic()))
            self._open += 1
            self.peak_connections = max(self.peak_connections, self._open)
            return number

    def _closed(self, number: int) -> None:
        with self._lock:
            self.sessions[number - 1].closed = time.monotonic()
            self._open -= 1

    def _greeted(self, number: int) -> None:
        with self._lock:
            self.sessions[number - 1].greeted = True

    def _begin(self) -> _Transaction:
        with self._lock:
            self._transactions += 1
            return _Transaction(self._transactions)

    def _offer(self, recipient: str) -> int:
        with self._lock:
            self._offers[recipient] += 1
            return self._offers[recipient]

    def _match(self, stage: Stage, transaction: _Transaction, recipient: str | None,
               attempt: int | None) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.stage != stage:
                    continue
                if fault.times is not None and self._fired[index] >= fault.times:
                    continue
                if fault.recipient is not None and fault.recipient != recipient:
                    continue
                if fault.attempts is not None and attempt not in fault.attempts:
                    continue
                if fault.messages is not None and transaction.number not in fault.messages:
                    continue
                self._fired[index] += 1
                return fault
            return None

    def _event(self, session: int, transaction: _Transaction, stage: Stage,
               recipient: str | None, outcome: str) -> None:
        with self._lock:
            self.events.append(
                Event(session, transaction.number, stage, recipient, outcome, time.monotonic()))

    def _accept(self, session: int, transaction: _Transaction, envelope: Envelope) -> None:
        content = envelope.original_content or b""
        message = Received(transaction.number, session, envelope.mail_from or "",
                           tuple(envelope.rcpt_tos), bytes(content))
        with self._changed:
            self.received.append(message)
            self._changed.notify_all()


class _Controller(Controller):
    def __init__(self, server: MailServer, **kwargs: Any) -> None:
        super().__init__(_Handler(server), **kwargs)
        self.recorder = server

    def factory(self) -> SMTP:
        return _ScriptedSMTP(self.recorder, self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Bound to port 0: learn the port the kernel chose before probing it.
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class _ScriptedSMTP(SMTP):
    """aiosmtpd's server, plus connection bookkeeping and the mid-DATA drop."""

    def __init__(self, recorder: MailServer, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.recorder = recorder
        self.number = 0
        self.transaction: _Transaction | None = None
        # A fault chosen when DATA began, acted out once the message has arrived.
        self.pending_fault: Fault | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.number = self.recorder._opened()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.recorder._closed(self.number)
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        await super().push(status)
        text = status.decode() if isinstance(status, bytes) else str(status)
        if text.startswith("421") and self.transport is not None:
            self.transport.close()

    async def smtp_EHLO(self, hostname: str) -> None:
        self.recorder._greeted(self.number)
        await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        self.recorder._greeted(self.number)
        await super().smtp_HELO(hostname)

    async def smtp_DATA(self, arg: str) -> None:
        transaction = self.transaction
        if transaction is not None and self.envelope is not None and self.envelope.rcpt_tos:
            recipient = self.envelope.rcpt_tos[0]
            fault = self.recorder._match("data", transaction, recipient, None)
            if fault is not None and fault.action == "drop":
                self.recorder._event(self.number, transaction, "data", recipient, "drop")
                await self.push("354 End data with <CR><LF>.<CR><LF>")
                # Take a little of the message, then hang up before its end.
                await self._reader.readuntil(b"\r\n")
                assert self.transport is not None
                self.transport.abort()
                # The loss cancels this handler; until then, read no line as a command.
                await asyncio.sleep(60)
                return
            self.pending_fault = fault
        await super().smtp_DATA(arg)


class _Handler:
    """The aiosmtpd hooks: apply the fault script, record what is accepted."""

    def __init__(self, recorder: MailServer) -> None:
        self.recorder = recorder

    async def handle_MAIL(self, server: _ScriptedSMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        server.transaction = transaction = self.recorder._begin()
        server.pending_fault = None
        fault = self.recorder._match("mail", transaction, None, None)
        outcome = await self._misbehave(server, transaction, "mail", None, fault)
        if outcome is not None:
            return outcome
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: _ScriptedSMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        transaction = server.transaction or self.recorder._begin()
        transaction.recipients.append(address)
        attempt = self.recorder._offer(address)
        fault = self.recorder._match("rcpt", transaction, address, attempt)
        outcome = await self._misbehave(server, transaction, "rcpt", address, fault)
        if outcome is not None:
            return outcome
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        self.recorder._event(server.number, transaction, "rcpt", address, "250 OK")
        return "250 OK"

    async def handle_DATA(self, server: _ScriptedSMTP, session: Session,
                          envelope: Envelope) -> str:
        transaction = server.transaction or self.recorder._begin()
        recipient = envelope.rcpt_tos[0] if envelope.rcpt_tos else None
        fault, server.pending_fault = server.pending_fault, None
        outcome = await self._misbehave(server, transaction, "data", recipient, fault)
        if outcome is not None:
            return outcome
        if self.recorder.delay:
            # The whole message has arrived: the client waits for the 250 all this time.
            await asyncio.sleep(self.recorder.delay)
        self.recorder._accept(server.number, transaction, envelope)
        self.recorder._event(server.number, transaction, "data", recipient, "250 OK")
        server.transaction = None
        return "250 OK: queued"

    async def handle_RSET(self, server: _ScriptedSMTP, session: Session,
                          envelope: Envelope) -> str:
        server.transaction = None
        return "250 OK"

    async def _misbehave(self, server: _ScriptedSMTP, transaction: _Transaction, stage: Stage,
                         recipient: str | None, fault: Fault | None) -> str | None:
        """Act out a fault; return the reply to give, or None to carry on normally."""
        if fault is None:
            return None
        if fault.action == "reply":
            self.recorder._event(server.number, transaction, stage, recipient, fault.reply)
            return fault.reply
        self.recorder._event(server.number, transaction, stage, recipient, fault.action)
        if fault.action == "stall":
            await asyncio.sleep(fault.seconds)
        if server.transport is not None:
            server.transport.abort()
        # The loss cancels this handler; nothing more is said on this connection.
        await asyncio.sleep(60)
        return "421 4.4.2 gone"

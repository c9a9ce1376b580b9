"""A small real SMTP server for the daemon and web tests: aiosmtpd on a free loopback port.

    with SmtpSink(delay=0.05) as sink:     # each message takes 50 ms to be accepted
        ...                                # point postroom at 127.0.0.1:sink.port
        assert sink.wait_for(3, timeout=10)
        message = sink.messages_to("a@example.org")[0]

Unlike tests/mailserver.py (scripted failures), this one is slow on cue: `delay` seconds pass
between the end of a message's DATA and the server's 250, so a send can be caught in flight.
It can also refuse a recipient for its first few attempts (`refuse`), as a greylisting server
does. A message counts as received only once the server has answered 250 for it.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes

    def parsed(self) -> EmailMessage:
        """Return the message parsed as a mail client would."""
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


class SmtpSink:
    """An aiosmtpd server on 127.0.0.1 that records every message it accepts."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # may be changed while running
        self.port = 0
        self._received: list[Received] = []
        self._refusals: dict[str, tuple[int, str]] = {}
        self._changed = threading.Condition()
        self._controller = _Controller(_Handler(self), hostname="127.0.0.1", port=0)

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        self.port = self._controller.port
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def refuse(self, address: str, times: int, reply: str = "451 4.7.1 try again later") -> None:
        """Answer RCPT TO for `address` with `reply` the next `times` times."""
        with self._changed:
            self._refusals[address] = (times, reply)

    def messages(self) -> list[Received]:
        with self._changed:
            return list(self._received)

    def count(self) -> int:
        with self._changed:
            return len(self._received)

    def messages_to(self, address: str) -> list[Received]:
        return [m for m in self.messages() if address in m.rcpt_tos]

    def per_recipient(self) -> Counter[str]:
        return Counter(r for m in self.messages() for r in m.rcpt_tos)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until at least `count` messages were accepted; return whether they were."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def _refusal(self, address: str) -> str | None:
        with self._changed:
            times, reply = self._refusals.get(address, (0, ""))
            if times <= 0:
                return None
            self._refusals[address] = (times - 1, reply)
            return reply

    def _accept(self, envelope: Envelope) -> None:
        message = Received(envelope.mail_from or "", tuple(envelope.rcpt_tos),
                           bytes(envelope.original_content or b""))
        with self._changed:
            self._received.append(message)
            self._changed.notify_all()


class _Controller(Controller):
    def _trigger_server(self) -> None:
        # Bound to port 0: learn the port the kernel chose before the controller probes it.
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        refusal = self.sink._refusal(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.sink.delay:
            await asyncio.sleep(self.sink.delay)
        self.sink._accept(envelope)
        return "250 OK: queued"


def header_urls(value: Any) -> list[str]:
    """Given a List-Unsubscribe header, return its URLs in order ("<a>, <b>" → [a, b])."""
    return re.findall(r"<([^>]+)>", str(value))

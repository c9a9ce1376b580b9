"""Email messages: the MIME structure is built once per mailing, then varied per recipient.

Building and serialising an EmailMessage per recipient costs about a millisecond of CPU;
here the fixed headers are formatted once by the email package, and each recipient only
costs two string replacements and two quoted-printable encodings (C code).
"""

from __future__ import annotations

import binascii
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from functools import cached_property

from postroom.errors import PostroomError

# Stands in for the recipient's own link in the rendered bodies; letters and digits only,
# so no escaping (HTML, quoted-printable) can alter it.
LINK_PLACEHOLDER = "postroomRecipientLink7f3a9c"


class HeaderInjection(PostroomError, ValueError):
    """A value meant for one header line holds a line break or control character."""


def one_line(value: str) -> str:
    """Return value if it is safe on one header line, else raise HeaderInjection."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise HeaderInjection(f"control character in header value {value!r}")
    return value


@dataclass(frozen=True)
class Envelope:
    """The fixed parts of a mailing: who it is from and how it is listed."""

    from_name: str
    from_address: str
    list_id: str  # e.g. "Ahmed's notes <digest.blog.example.org>"
    reply_to: str | None = None
    one_click: bool = True  # List-Unsubscribe-Post (RFC 8058)


@dataclass(frozen=True)
class PreparedMessage:
    """A message whose only varying parts are To, Date, Message-ID and the recipient's link."""

    subject: str
    head: bytes
    boundary: str
    text: str
    html: str
    one_click: bool

    @cached_property
    def template(self) -> MessageTemplate:
        """The message laid out once as bytes with slots for the per-recipient values."""
        return MessageTemplate.compile(self)

    def for_recipient(
        self, to: str, message_id: str, date: datetime, link: str,
        unsubscribe: tuple[str, ...] = (),
    ) -> bytes:
        """Return the full message bytes for one recipient.

        `link` replaces the placeholder in the bodies; `unsubscribe` holds the URLs for
        List-Unsubscribe (RFC 2369), the https one first, as RFC 8058 requires.
        """
        return self.template.splice(to, message_id, date, link, unsubscribe, wire=False)

    def for_wire(
        self, to: str, message_id: str, date: datetime, link: str,
        unsubscribe: tuple[str, ...] = (),
    ) -> bytes:
        """Return one recipient's message as SMTP DATA: dot-stuffed, ending in CRLF.CRLF."""
        return self.template.splice(to, message_id, date, link, unsubscribe, wire=True)


# The slots of a template, in the order they appear in the message.
_TO, _DATE, _MESSAGE_ID, _UNSUBSCRIBE, _LINK = range(5)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MessageTemplate:
    """A message as fixed byte chunks and slots: a recipient costs a splice, not an encoding.

    The bodies are quoted-printable, encoded once with the link placeholder cut out; each
    link starts on a line of its own (a soft line break before and after it), so the
    recipient's link, encoded alone, is spliced in exactly: no line grows past 76
    characters and decoding gives what rendering with the link would have given. Line
    endings are CRLF, and the `wire` variant is dot-stuffed once, here.
    """

    def __init__(self, plain: list[bytes | int], wire: list[bytes | int], one_click: bool):
        self._plain, self._wire, self.one_click = plain, wire, one_click
        self._date_cache: tuple[datetime, bytes] | None = None

    @classmethod
    def compile(cls, prepared: PreparedMessage) -> MessageTemplate:
        pieces: list[bytes | int] = [prepared.head, b"To: ", _TO, b"\r\nDate: ", _DATE,
                                     b"\r\nMessage-ID: ", _MESSAGE_ID, b"\r\n", _UNSUBSCRIBE,
                                     b"\r\n"]
        for subtype, body in (("plain", prepared.text), ("html", prepared.html)):
            pieces.append((
                f"--{prepared.boundary}\r\n"
                f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            ).encode("ascii"))
            pieces.extend(_encode_body(body))
            pieces.append(b"\r\n")
        pieces.append(f"--{prepared.boundary}--\r\n".encode("ascii"))
        plain = _merge(pieces)
        wire = [_dot_stuff(p) if isinstance(p, bytes) else p for p in plain]
        wire.append(b".\r\n")
        return cls(plain, _merge(wire), prepared.one_click)

    def splice(
        self, to: str, message_id: str, date: datetime, link: str,
        unsubscribe: tuple[str, ...], *, wire: bool,
    ) -> bytes:
        """Return the message for one recipient (see PreparedMessage.for_recipient)."""
        for value in (to, message_id, link, *unsubscribe):
            if _CONTROL.search(value):
                raise HeaderInjection(f"control character in header value {value!r}")
        encoded_link = _qp(link.encode("utf-8"))
        if wire:
            encoded_link = encoded_link.replace(b"\n.", b"\n..")
        values = [
            to.encode("ascii"), self._date(date), message_id.encode("ascii"),
            self._unsubscribe(unsubscribe), encoded_link,
        ]
        chunks = self._wire if wire else self._plain
        return b"".join(values[c] if isinstance(c, int) else c for c in chunks)

    def _date(self, date: datetime) -> bytes:
        # Formatting a date costs more than the rest of the splice: reuse it within a second.
        cached = self._date_cache
        if cached is None or cached[0] != date.replace(microsecond=0):
            cached = self._date_cache = (date.replace(microsecond=0),
                                         format_datetime(date).encode("ascii"))
        return cached[1]

    def _unsubscribe(self, urls: tuple[str, ...]) -> bytes:
        if not urls:
            return b""
        line = "List-Unsubscribe: " + ", ".join(f"<{url}>" for url in urls)
        if self.one_click:
            line += "\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click"
        return line.encode("ascii") + b"\r\n"


def _encode_body(text: str) -> list[bytes | int]:
    """Quoted-printable body chunks with a link slot wherever the placeholder was."""
    crlf = "\r\n".join(text.splitlines())
    segments = crlf.split(LINK_PLACEHOLDER)
    pieces: list[bytes | int] = []
    for index, segment in enumerate(segments):
        encoded = _qp(segment.encode("utf-8"))
        if index > 0:  # after a link: its line ends with a soft break
            pieces.append(b"=\r\n")
        pieces.append(encoded)
        if index < len(segments) - 1:
            if encoded and not encoded.endswith(b"\r\n"):
                pieces.append(b"=\r\n")  # the link starts a line of its own
            pieces.append(_LINK)
    return pieces


def _qp(data: bytes) -> bytes:
    """Quoted-printable with CRLF line ends (binascii uses LF when the data has no CRLF)."""
    encoded = binascii.b2a_qp(data, istext=True)
    return encoded.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _dot_stuff(chunk: bytes) -> bytes:
    # Every chunk but the first follows a slot or a line end; a slot never ends a line
    # with a pending dot, so stuffing each chunk's own line starts is exact.
    return chunk.replace(b"\r\n.", b"\r\n..")


def _merge(pieces: list[bytes | int]) -> list[bytes | int]:
    """Join neighbouring byte chunks, so a splice joins as few pieces as possible."""
    merged: list[bytes | int] = []
    for piece in pieces:
        last = merged[-1] if merged else None
        if isinstance(piece, bytes) and isinstance(last, bytes):
            merged[-1] = last + piece
        elif piece != b"":
            merged.append(piece)
    return merged


def prepare(envelope: Envelope, subject: str, text: str, html: str) -> PreparedMessage:
    """Given a mailing's envelope, subject and rendered bodies, return a PreparedMessage.

    Header values are checked for line breaks first, then encoded (RFC 2047) and folded so
    that a reader decodes exactly what was given: a post title can never add a header.
    """
    boundary = "postroom-" + secrets.token_hex(12)
    head = [header_line("From", envelope.from_name, f"<{one_line(envelope.from_address)}>")]
    if envelope.reply_to:
        head.append(header_line("Reply-To", one_line(envelope.reply_to)))
    head.append(header_line("Subject", subject))
    name, _, list_id = envelope.list_id.rpartition(" <")
    head.append(header_line("List-Id", name, f"<{list_id}") if name else
                header_line("List-Id", envelope.list_id))
    # Written by hand: the email package would serialise an empty multipart's boundaries.
    structure = (
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'
    )
    head_bytes = b"".join(head) + structure.encode("ascii")
    return PreparedMessage(subject, head_bytes, boundary, text, html, envelope.one_click)


def header_line(name: str, phrase: str, suffix: str = "") -> bytes:
    """Return the folded header line `name: phrase suffix`, which a mail client decodes to
    exactly that; `suffix` is an <address> or <list-id>, written as it is.

    A plain ASCII phrase goes through the email package (quoted where it must be). Any
    other is RFC 2047-encoded here, whole: given a str, the package decodes the encoded
    words in it (a title '=?utf-8?q?=0D=0ABcc:...?=' would come out as a line break and a
    forged header), and when it folds non-ASCII text it can leave a space between two
    encoded words, where readers drop it.
    """
    one_line(phrase)
    one_line(suffix)
    if phrase.isascii() and "=?" not in phrase:
        head = EmailMessage(policy=SMTP)
        if suffix.startswith("<") and name in ("From", "Reply-To"):
            head[name] = Address(phrase, addr_spec=suffix[1:-1])
        else:
            head[name] = f"{phrase} {suffix}".strip()
        return head.as_bytes(policy=SMTP).removesuffix(b"\r\n")
    # Header's q and b encodings leave no phrase special (" , < ( …) unencoded.
    encoded = Header(phrase, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded} {suffix}".rstrip().encode("ascii") + b"\r\n"

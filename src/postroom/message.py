"""Email messages: the MIME structure is built once per mailing, then varied per recipient.

Building and serialising an EmailMessage per recipient costs about a millisecond of CPU;
here the fixed headers are formatted once by the email package, and each recipient only
costs two string replacements and two quoted-printable encodings (C code).
"""

from __future__ import annotations

import binascii
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

# Stands in for the recipient's own link in the rendered bodies; letters and digits only,
# so no escaping (HTML, quoted-printable) can alter it.
LINK_PLACEHOLDER = "postroomRecipientLink7f3a9c"


class HeaderInjection(ValueError):
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

    def for_recipient(
        self, to: str, message_id: str, date: datetime, link: str,
        unsubscribe: tuple[str, ...] = (),
    ) -> bytes:
        """Return the full message bytes for one recipient.

        `link` replaces the placeholder in the bodies; `unsubscribe` holds the URLs for
        List-Unsubscribe (RFC 2369), the https one first, as RFC 8058 requires.
        """
        for value in (to, message_id, link, *unsubscribe):
            one_line(value)
        lines = [f"To: {to}", f"Date: {format_datetime(date)}", f"Message-ID: {message_id}"]
        if unsubscribe:
            lines.append("List-Unsubscribe: " + ", ".join(f"<{url}>" for url in unsubscribe))
            if self.one_click:
                lines.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
        personal = ("\r\n".join(lines) + "\r\n").encode("ascii")
        return b"".join(
            (
                self.head,
                personal,
                b"\r\n",
                self._part("plain", self.text.replace(LINK_PLACEHOLDER, link)),
                self._part("html", self.html.replace(LINK_PLACEHOLDER, link)),
                f"--{self.boundary}--\r\n".encode("ascii"),
            )
        )

    def _part(self, subtype: str, text: str) -> bytes:
        header = (
            f"--{self.boundary}\r\n"
            f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        ).encode("ascii")
        crlf = "\r\n".join(text.splitlines()).encode("utf-8")
        return header + binascii.b2a_qp(crlf, istext=True) + b"\r\n"


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

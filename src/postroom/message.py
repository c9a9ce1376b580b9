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

    Header values go through the email package (RFC 2047 encoding, folding) and are
    checked for line breaks first: a post title can never add a header.
    """
    boundary = "postroom-" + secrets.token_hex(12)
    head = EmailMessage(policy=SMTP)
    # An Address, not a formatted string: re-parsing one drops quotes from an encoded name.
    head["From"] = Address(one_line(envelope.from_name), addr_spec=one_line(envelope.from_address))
    if envelope.reply_to:
        head["Reply-To"] = one_line(envelope.reply_to)
    head["List-Id"] = one_line(envelope.list_id)
    # Written by hand: the email package would serialise an empty multipart's boundaries.
    structure = (
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'
    )
    head_bytes = (
        head.as_bytes(policy=SMTP).removesuffix(b"\r\n")
        + subject_line(subject)
        + structure.encode("ascii")
    )
    return PreparedMessage(subject, head_bytes, boundary, text, html, envelope.one_click)


def subject_line(subject: str) -> bytes:
    """Return the folded Subject header line that a mail client decodes to exactly `subject`.

    Given a str, the email package decodes the RFC 2047 encoded words in it, so a title that
    only looks like one ('=?utf-8?q?=0D=0ABcc:...?=') would be written out as a line break
    and a forged header. Such a subject is encoded here instead, whole, as encoded words.
    """
    one_line(subject)
    if "=?" not in subject:
        head = EmailMessage(policy=SMTP)
        head["Subject"] = subject
        return head.as_bytes(policy=SMTP).removesuffix(b"\r\n")
    folded = Header(subject, "utf-8", header_name="Subject").encode(linesep="\r\n")
    return f"Subject: {folded}\r\n".encode("ascii")

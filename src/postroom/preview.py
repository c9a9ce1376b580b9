"""Looking at the next digest before subscribers do: preview files and a test send."""

from __future__ import annotations

from datetime import datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path

from sqlalchemy import Engine

from postroom.config import Settings
from postroom.digest import compose_digest
from postroom.message import PreparedMessage
from postroom.newsletter import DigestPlan
from postroom.output import write_atomic
from postroom.subscribers import normalize_address
from postroom.templates import template_environment
from postroom.transport import DeliveryError, make_transport

PREVIEW_LINK = "/unsubscribe/preview-link-does-nothing"


def _prepared(settings: Settings, plan: DigestPlan) -> PreparedMessage:
    return compose_digest(template_environment(settings.templates_dir), settings, plan.posts)


def write_preview(
    settings: Settings, engine: Engine, plan: DigestPlan, address: str, folder: Path,
    now: datetime,
) -> list[Path]:
    """Write the next digest for one recipient as .html, .txt and .eml; return the paths."""
    email = normalize_address(address)
    link = settings.public_url + PREVIEW_LINK
    raw = _prepared(settings, plan).for_recipient(
        email, f"<preview@{settings.site.host}>", now, link, (link,))
    message = BytesParser(policy=policy.default).parsebytes(raw)
    parts = {
        "digest.html": message.get_body(("html",)),
        "digest.txt": message.get_body(("plain",)),
    }
    written = []
    for name, part in parts.items():
        assert part is not None
        write_atomic(folder / name, str(part.get_content()).encode("utf-8"))
        written.append(folder / name)
    write_atomic(folder / "digest.eml", raw)
    written.append(folder / "digest.eml")
    return written


async def send_test(
    settings: Settings, engine: Engine, plan: DigestPlan, address: str, now: datetime
) -> str:
    """Send the next digest to one address through the configured transport; record nothing."""
    email = normalize_address(address)
    link = settings.public_url + PREVIEW_LINK
    data = _prepared(settings, plan).for_wire(
        email, f"<test.{now:%Y%m%d%H%M%S}@{settings.site.host}>", now, link, (link,))
    try:
        connection = await make_transport(settings).connect()
        try:
            sender = settings.mail.return_path or settings.mail.from_address
            return await connection.send(sender, email, data)
        finally:
            await connection.close()
    except DeliveryError as err:
        err.args = (f"the test digest to {email} was not sent: {err.reply}",)
        raise

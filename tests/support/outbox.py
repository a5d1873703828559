"""The mails a flow "sent" through the outbox backend."""

from __future__ import annotations

import email
from email.message import Message

from lifecycle.settings import Settings


def outbox(settings: Settings) -> list[Message]:
    folder = settings.resolved_outbox_dir
    if not folder.exists():
        return []
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(folder.glob("*.eml"))]


def text_of(message: Message) -> str:
    """The plain-text part of a mail."""
    part = next(p for p in message.walk() if p.get_content_type() == "text/plain")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()

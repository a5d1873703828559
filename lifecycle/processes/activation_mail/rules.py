"""The activation-mail state machine as pure functions: the status check and the link.

The seed's Step Functions machine reads the status (GetActivationStatus), chooses
(CheckActivationStatus: only NONE goes on), sends (SendActivationMail) and marks MAIL_SENT.
Here the choice also knows the claim that makes "sent once" hold when runs overlap: a user is
claimed NONE -> SENDING before the mail goes, and a claim whose lease ended (its run crashed)
is taken over.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Bytes of randomness in a fresh activation token (256 bits; 43 URL-safe characters).
TOKEN_BYTES = 32


class Status(StrEnum):
    """A user's ``activation_status``."""

    NONE = "NONE"  # no mail yet
    SENDING = "SENDING"  # claimed by a run that is mailing it
    MAIL_SENT = "MAIL_SENT"
    UNDELIVERABLE = "UNDELIVERABLE"  # the mail backend refused the address for good
    DONE = "DONE"  # the user activated their account


class Decision(StrEnum):
    """What the status check says to do with one user; every skip is a reason counted."""

    SEND = "send"
    TAKE_OVER = "take_over"  # SENDING, but the run that claimed it is gone: send
    BEING_SENT = "being_sent"  # another run holds it right now
    ALREADY_SENT = "already_sent"
    UNDELIVERABLE = "undeliverable"
    ALREADY_ACTIVE = "already_active"
    NO_USER = "no_user"  # deleted since it was read


def check_status(status: str | None, lease_until: datetime | None, now: datetime) -> Decision:
    """The choice state: NONE sends, a stale SENDING is taken over, anything else is skipped."""
    if status is None:
        return Decision.NO_USER
    match Status(status):
        case Status.NONE:
            return Decision.SEND
        case Status.SENDING:
            stale = lease_until is None or lease_until < now
            return Decision.TAKE_OVER if stale else Decision.BEING_SENT
        case Status.MAIL_SENT:
            return Decision.ALREADY_SENT
        case Status.UNDELIVERABLE:
            return Decision.UNDELIVERABLE
        case Status.DONE:
            return Decision.ALREADY_ACTIVE


def sends(decision: Decision) -> bool:
    return decision in (Decision.SEND, Decision.TAKE_OVER)


def new_token() -> str:
    """A fresh activation token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def activation_link(base: str, *, username: str, token: str) -> str:
    """``base`` with ``username`` and ``token`` as encoded query parameters.

    A query string ``base`` already has is kept (any ``username`` or ``token`` in it is
    replaced, so the user's own values always win); a fragment is kept after them.
    """
    parts = urlsplit(base)
    kept = [
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if key not in ("username", "token")
    ]
    query = urlencode([*kept, ("username", username), ("token", token)])
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", query, parts.fragment))

"""The inactivity warning, as text and HTML (``templates/warning.*``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.resources import files

from lifecycle.clients.mail.message import MailTemplate, OutgoingMail

_TEMPLATE = MailTemplate(
    files(__package__) / "templates",
    "warning",
    subject="Important: your $product account is scheduled for deletion",
)


@dataclass(frozen=True)
class WarningContext:
    product_name: str
    app_url: str
    inactive_days: int
    grace_days: int


def deletion_date(sent_at: datetime, grace_days: int) -> str:
    """The day (UTC) from which an account warned at ``sent_at`` may be deleted."""
    day = (sent_at + timedelta(days=grace_days)).astimezone(UTC)
    return f"{day.day} {day:%B %Y}"


def inactivity_warning(
    *, to: str, name: str | None, context: WarningContext, sent_at: datetime
) -> OutgoingMail:
    """The warning sent ``grace_days`` before an inactive account is deleted."""
    return _TEMPLATE.render(
        to=to,
        values={
            "name": name or "there",
            "product": context.product_name,
            "app_url": context.app_url,
            "inactive_days": str(context.inactive_days),
            "grace_days": str(context.grace_days),
            "deletion_date": deletion_date(sent_at, context.grace_days),
        },
    )

"""The inactivity warning, as text and HTML (``templates/warning.*``)."""

from __future__ import annotations

from dataclasses import dataclass
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


def inactivity_warning(*, to: str, name: str | None, context: WarningContext) -> OutgoingMail:
    """The warning sent ``grace_days`` before an inactive account is deleted."""
    return _TEMPLATE.render(
        to=to,
        values={
            "name": name or "there",
            "product": context.product_name,
            "app_url": context.app_url,
            "inactive_days": str(context.inactive_days),
            "grace_days": str(context.grace_days),
        },
    )

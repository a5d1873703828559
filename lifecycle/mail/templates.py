"""The inactivity warning, as text and HTML; every value put into HTML is escaped."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from importlib.resources import files
from string import Template

from lifecycle.mail.backends import OutgoingMail

_TEMPLATES = files("lifecycle.mail") / "templates"


@dataclass(frozen=True)
class WarningContext:
    product_name: str
    app_url: str
    inactive_days: int
    grace_days: int


def _load(name: str) -> Template:
    return Template((_TEMPLATES / name).read_text(encoding="utf-8"))


_SUBJECT = "Important: your {product} account is scheduled for deletion"
_TEXT = _load("inactivity_warning.txt")
_HTML = _load("inactivity_warning.html")


def inactivity_warning(*, to: str, name: str | None, context: WarningContext) -> OutgoingMail:
    """The warning sent ``grace_days`` before an inactive account is deleted."""
    values = {
        "name": name or "there",
        "product": context.product_name,
        "app_url": context.app_url,
        "inactive_days": str(context.inactive_days),
        "grace_days": str(context.grace_days),
    }
    return OutgoingMail(
        to=to,
        subject=_SUBJECT.format(product=context.product_name),
        text=_TEXT.substitute(values),
        html=_HTML.substitute({key: escape(value, quote=True) for key, value in values.items()}),
    )

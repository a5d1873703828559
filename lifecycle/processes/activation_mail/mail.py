"""The activation mail, as text and HTML (``templates/activation.*``); HTML values escaped."""

from __future__ import annotations

from importlib.resources import files

from lifecycle.clients.mail.message import MailTemplate, OutgoingMail
from lifecycle.processes.activation_mail.rules import activation_link

_TEMPLATE = MailTemplate(
    files(__package__) / "templates",
    "activation",
    subject="Activate your $product account",
)


def activation_mail(
    *, to: str, name: str | None, username: str, token: str, url_base: str, product: str
) -> OutgoingMail:
    """The mail whose link activates ``username``'s account."""
    return _TEMPLATE.render(
        to=to,
        values={
            "name": name or username,
            "username": username,
            "product": product,
            "link": activation_link(url_base, username=username, token=token),
        },
    )

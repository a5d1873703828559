"""Mails as data: render a template pair (text, HTML), then build the MIME message to send.

Every value put into HTML is escaped. Messages are built with the ``compat32`` MIME classes:
the ``EmailMessage`` API costs 3-5 times as much per mail, which shows in a sweep that writes
thousands of them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.charset import QP, Charset
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTPUTF8, compat32
from email.utils import formataddr, formatdate, getaddresses, make_msgid, parseaddr, quote
from html import escape
from importlib.resources.abc import Traversable
from string import Template

from lifecycle.clients.mail.errors import InvalidAddress

# UTF-8 bodies and headers as quoted-printable: readable in raw form, 7-bit safe.
_UTF8 = Charset("utf-8")
_UTF8.body_encoding = QP
_UTF8.header_encoding = QP
# Lines end in CRLF, as on the wire (SES raw messages, .eml files).
_WIRE = compat32.clone(linesep="\r\n")
_INTERNATIONAL = SMTPUTF8.clone(linesep="\r\n")


@dataclass(frozen=True)
class OutgoingMail:
    """One rendered mail to one recipient."""

    to: str
    subject: str
    text: str
    html: str


class MailTemplate:
    """``{name}.txt`` and ``{name}.html`` in ``folder``, filled with ``$placeholders``."""

    def __init__(self, folder: Traversable, name: str, *, subject: str) -> None:
        self._subject = Template(subject)
        self._text = Template((folder / f"{name}.txt").read_text(encoding="utf-8"))
        self._html = Template((folder / f"{name}.html").read_text(encoding="utf-8"))

    def render(self, *, to: str, values: Mapping[str, str]) -> OutgoingMail:
        """The mail for ``to``; HTML gets every value escaped, text and subject get them as is."""
        return OutgoingMail(
            to=to,
            subject=self._subject.substitute(values),
            text=self._text.substitute(values),
            html=self._html.substitute({key: escape(value) for key, value in values.items()}),
        )


def build_message(mail: OutgoingMail, *, sender: str, smtputf8: bool) -> Message:
    """A multipart/alternative (text, html) message; refuses line breaks in headers.

    A non-ASCII domain is written in its IDNA form, which every server accepts. A non-ASCII
    local part needs SMTPUTF8 (RFC 6531): without it (``smtputf8=False``) the address is
    refused with :class:`InvalidAddress`.
    """
    for name, value in (("sender", sender), ("recipient", mail.to), ("subject", mail.subject)):
        if "".join(value.splitlines()) != value:
            raise ValueError(f"{name} must not contain line breaks")
    display_name, address = _recipient(mail.to)
    if not address.isascii():
        if not smtputf8:
            raise InvalidAddress(
                "the address has non-ASCII characters before the @, which need SMTPUTF8; "
                "this mail backend does not offer it"
            )
        return _international_message(mail, sender=sender, to=(display_name, address))
    # "=_" never occurs in quoted-printable text, so this boundary needs no search of the parts.
    boundary = f"=_{uuid.uuid4().hex}"
    message = MIMEMultipart("alternative", boundary=boundary, policy=_WIRE)
    message["From"] = _address_header(sender)
    message["To"] = formataddr((display_name, address), charset=_UTF8)
    message["Subject"] = (
        mail.subject if mail.subject.isascii() else Header(mail.subject, _UTF8).encode()
    )
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=_domain_of(sender))
    for body, subtype in ((mail.text, "plain"), (mail.html, "html")):
        # MIMEText takes a Charset (typeshed says str only): quoted-printable, not base64.
        message.attach(MIMEText(body, subtype, _UTF8, policy=_WIRE))  # type: ignore[arg-type]
    return message


def _recipient(value: str) -> tuple[str, str]:
    """(display name, address) with the domain in IDNA form; :class:`InvalidAddress` if it is
    not exactly one address."""
    display_name, address = parseaddr(value)
    local, at, domain = address.rpartition("@")
    if len(getaddresses([value])) != 1 or not at or not local or not domain:
        raise InvalidAddress("recipient must be exactly one e-mail address")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidAddress("the domain of the address cannot be written in IDNA form") from None
    return display_name, f"{local}@{domain}"


def _international_message(mail: OutgoingMail, *, sender: str, to: tuple[str, str]) -> EmailMessage:
    """The same mail with UTF-8 headers, to be sent with SMTPUTF8 (rare: built the slow way)."""
    message = EmailMessage(policy=_INTERNATIONAL)
    message["From"] = sender
    name, address = to
    message["To"] = f'"{quote(name)}" <{address}>' if name else address
    message["Subject"] = mail.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=_domain_of(sender))
    message.set_content(mail.text)
    message.add_alternative(mail.html, subtype="html")
    return message


def _domain_of(sender: str) -> str:
    return parseaddr(sender)[1].rpartition("@")[2] or "localhost"  # not getfqdn(): DNS


def _address_header(value: str) -> str:
    """An address header, with a non-ASCII display name encoded (RFC 2047)."""
    return value if value.isascii() else formataddr(parseaddr(value), charset=_UTF8)

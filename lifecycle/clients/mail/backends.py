"""Mail delivery backends: a local outbox directory, SMTP, and Amazon SES (v2).

Each backend sends one :class:`OutgoingMail` and returns a message id, or raises a
:mod:`~lifecycle.clients.mail.errors` kind: transient (worth retrying later), undeliverable
(this recipient is refused for good) or permanent (the configuration is refused).
No error raised here names the recipient or a credential: messages are built from status
codes, and server-provided text is scrubbed and run through :func:`lifecycle.privacy.redact`.
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
import time
import uuid
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from pydantic import SecretStr

from lifecycle.clients.mail.errors import (
    MailError,
    PermanentMailError,
    TransientMailError,
    Undeliverable,
)
from lifecycle.clients.mail.message import OutgoingMail, build_message
from lifecycle.privacy import mask_email, redact

if TYPE_CHECKING:
    from mypy_boto3_sesv2 import SESV2Client
    from mypy_boto3_sesv2.type_defs import SendEmailRequestTypeDef

_SERVER_TEXT_LIMIT = 200
# SES v2 error codes worth retrying later; any other code (MessageRejected,
# MailFromDomainNotVerifiedException, AccountSuspendedException, ...) is permanent.
_SES_TRANSIENT_CODES = frozenset(
    {
        "TooManyRequestsException",
        "Throttling",
        "ThrottlingException",
        "LimitExceededException",
        "ServiceUnavailable",
        "InternalFailure",
        "RequestTimeout",
    }
)


class Mailer(Protocol):
    """What the mail tasks need from a backend."""

    def send(self, mail: OutgoingMail) -> str:
        """Deliver ``mail`` and return its message id."""
        ...

    def close(self) -> None:
        """Release connections; the mailer may be used again afterwards."""
        ...


class OutboxMailer:
    """Writes each mail as an ``.eml`` file into a directory (development and demos)."""

    def __init__(self, *, directory: Path, sender: str) -> None:
        self._directory = directory
        self._sender = sender
        self._ready = False

    def send(self, mail: OutgoingMail) -> str:
        message = build_message(mail, sender=self._sender, smtputf8=True)
        if not self._ready:
            self._directory.mkdir(parents=True, exist_ok=True)
            self._ready = True
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = self._directory / f"{stamp}-{uuid.uuid4()}.eml"
        partial = target.with_name(f".{target.name}.tmp")
        try:
            partial.write_bytes(message.as_bytes())
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return str(message["Message-ID"])

    def close(self) -> None:
        """Nothing to release."""


class SmtpMailer:
    """Sends through an SMTP server over one connection, reused until :meth:`close`.

    A connection set up per mail (TCP, STARTTLS, AUTH) can cost more than the mail rate
    allows. A connection idle for ``idle_check_seconds`` is checked with NOOP first, and one
    the server closed (say after 421) is opened again on the next send.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        security: Literal["starttls", "ssl", "none"],
        username: str | None = None,
        password: SecretStr | None = None,
        timeout: float = 30.0,
        idle_check_seconds: float = 10.0,
    ) -> None:
        if username is not None and password is None:
            raise ValueError("an SMTP username needs a password")
        self._host = host
        self._port = port
        self._sender = sender
        self._security = security
        self._username = username
        self._password = password
        self._timeout = timeout
        self._idle_check_seconds = idle_check_seconds
        self._smtp: smtplib.SMTP | None = None
        self._last_used = 0.0

    def send(self, mail: OutgoingMail) -> str:
        try:
            connection = self._connection()
            message = build_message(
                mail, sender=self._sender, smtputf8=connection.has_extn("smtputf8")
            )
            connection.send_message(message)
        except _MESSAGE_REFUSED as exc:  # smtplib reset the transaction: the connection is fine
            raise self._error(exc, mail.to) from None
        except OSError as exc:  # smtplib.SMTPException is an OSError too
            self.close()
            raise self._error(exc, mail.to) from None
        self._last_used = time.monotonic()
        return str(message["Message-ID"])

    def close(self) -> None:
        if self._smtp is None:
            return
        smtp, self._smtp = self._smtp, None
        try:
            smtp.quit()
        except OSError:
            smtp.close()

    def _connection(self) -> smtplib.SMTP:
        smtp = self._smtp
        if smtp is not None and (
            smtp.sock is None  # closed by smtplib, e.g. after a 421
            or time.monotonic() - self._last_used >= self._idle_check_seconds
            and not _answers_noop(smtp)
        ):
            smtp.close()
            smtp = self._smtp = None
        if smtp is None:
            smtp = self._connect()
            try:
                if self._security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if self._username is not None and self._password is not None:
                    smtp.login(self._username, self._password.get_secret_value())
            except BaseException:
                smtp.close()
                raise
            self._smtp = smtp
        return smtp

    def _connect(self) -> smtplib.SMTP:
        if self._security == "ssl":
            return smtplib.SMTP_SSL(
                self._host, self._port, timeout=self._timeout, context=ssl.create_default_context()
            )
        return smtplib.SMTP(self._host, self._port, timeout=self._timeout)

    def _error(self, exc: OSError, recipient: str) -> MailError:
        secrets = (recipient, self._username or "")
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            code, reply = next(iter(exc.recipients.values()), (0, b""))
            return _smtp_reply_error("recipient refused", code, reply, secrets, Undeliverable)
        if isinstance(exc, smtplib.SMTPDataError):  # this message, to this recipient
            return _smtp_reply_error(
                type(exc).__name__, exc.smtp_code, exc.smtp_error, secrets, Undeliverable
            )
        if isinstance(exc, smtplib.SMTPResponseException):  # the sender, the login, ...
            return _smtp_reply_error(
                type(exc).__name__, exc.smtp_code, exc.smtp_error, secrets, PermanentMailError
            )
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return TransientMailError("SMTP server disconnected")
        if isinstance(exc, smtplib.SMTPException):  # e.g. STARTTLS or AUTH not supported
            return PermanentMailError(f"SMTP failed: {type(exc).__name__}")
        return TransientMailError(
            f"SMTP connection failed: {type(exc).__name__}: {_scrub(str(exc), secrets)}"
        )


#: Refusals of one message after which smtplib has reset (or closed) the session itself.
_MESSAGE_REFUSED = (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError)


def _answers_noop(smtp: smtplib.SMTP) -> bool:
    try:
        return smtp.noop()[0] == 250
    except OSError:
        return False


def _smtp_reply_error(
    what: str,
    code: int,
    reply: bytes | str,
    secrets: tuple[str, ...],
    permanent: type[PermanentMailError],
) -> MailError:
    """A 5xx reply is ``permanent``; anything else may work later."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    kind = permanent if 500 <= code < 600 else TransientMailError
    return kind(f"SMTP {what}: {code} {_scrub(text, secrets)}")


class SesMailer:
    """Sends raw MIME through the Amazon SES v2 API."""

    def __init__(
        self, *, client: SESV2Client, sender: str, configuration_set: str | None = None
    ) -> None:
        self._client = client
        self._sender = sender
        self._configuration_set = configuration_set

    def send(self, mail: OutgoingMail) -> str:
        message = build_message(mail, sender=self._sender, smtputf8=False)  # SES: no SMTPUTF8
        # Without Destination, SES delivers to the message's own To header.
        request: SendEmailRequestTypeDef = {
            "FromEmailAddress": self._sender,
            "Content": {"Raw": {"Data": message.as_bytes()}},
        }
        if self._configuration_set:
            request["ConfigurationSetName"] = self._configuration_set
        try:
            response = self._client.send_email(**request)
        except ClientError as exc:
            raise _ses_error(exc, mail.to) from None
        except (BotoConnectionError, HTTPClientError) as exc:
            raise TransientMailError(f"SES unreachable: {type(exc).__name__}") from None
        return response["MessageId"]

    def close(self) -> None:
        """Nothing to release: botocore pools its own connections."""


def _ses_error(exc: ClientError, recipient: str) -> MailError:
    error = exc.response.get("Error", {})
    code = error.get("Code", "Unknown")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    transient = code in _SES_TRANSIENT_CODES or status == 429 or status >= 500
    kind: type[MailError] = (
        TransientMailError
        if transient
        else Undeliverable
        if code == "MessageRejected"
        else PermanentMailError
    )
    return kind(f"SES {code} (HTTP {status}): {_scrub(error.get('Message', ''), (recipient,))}")


def ses_client(*, region: str, endpoint_url: str | None = None) -> SESV2Client:
    """An SES v2 client whose standard retry mode backs off (with jitter) on throttling."""
    config = Config(
        retries={"mode": "standard", "max_attempts": 6}, connect_timeout=5, read_timeout=30
    )
    return boto3.session.Session().client(
        "sesv2", region_name=region, endpoint_url=endpoint_url, config=config
    )


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Server text with the given addresses/usernames masked, then redacted and shortened."""
    values = sorted({s for v in secrets for s in (v, parseaddr(v)[1]) if s}, key=len, reverse=True)
    if values:
        pattern = "|".join(re.escape(value) for value in values)
        text = re.sub(pattern, lambda m: mask_email(m.group(0)), text, flags=re.IGNORECASE)
    return redact(text)[:_SERVER_TEXT_LIMIT]

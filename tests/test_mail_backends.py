"""Mail backends: message building, the outbox, SMTP (aiosmtpd), SES (moto and a scripted fake)."""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config

from lifecycle.clients.build import open_mailer
from lifecycle.clients.mail.backends import (
    MailError,
    OutboxMailer,
    PermanentMailError,
    SesMailer,
    SmtpMailer,
    TransientMailError,
    ses_client,
)
from lifecycle.clients.mail.message import OutgoingMail, build_message
from lifecycle.settings import Settings
from tests.support.http_server import closed_port
from tests.support.smtp_server import LocalSmtpServer, Stage

if TYPE_CHECKING:
    from mypy_boto3_sesv2 import SESV2Client

SENDER = "Acme Support <no-reply@acme.test>"
RECIPIENT = "jane.doe@example.com"
REGION = "us-east-1"
SEND_PATH = "/v2/email/outbound-emails"


def make_mail(to: str = RECIPIENT, subject: str = "Your account: 30 days left") -> OutgoingMail:
    return OutgoingMail(
        to=to,
        subject=subject,
        text="Hello Jane,\nsign in to keep your account. 100% = safe.\n" + "x" * 120,
        html='<p>Hi <b>Jane</b> &amp; co, <a href="https://app.test/?a=1&amp;b=2">sign in</a></p>',
    )


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def assert_both_parts(message: EmailMessage, mail: OutgoingMail) -> None:
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    # On the wire text lines end in CRLF (canonical MIME); compare with LF line ends.
    text, html = (p.get_content().replace("\r\n", "\n").rstrip("\n") for p in parts)
    assert (text, html) == (mail.text, mail.html)


def assert_private(exc: BaseException, *secrets: str) -> None:
    """Neither the message nor the printed traceback (with chained causes) names a secret."""
    printed = "".join(traceback.format_exception(exc)).lower()
    for secret in secrets:
        assert secret.lower() not in str(exc).lower()
        assert secret.lower() not in printed


# --- build_message ---------------------------------------------------------------------------


def test_build_message_is_multipart_alternative_with_headers() -> None:
    mail = make_mail(subject="Grüße – 30 Tage übrig")
    message = build_message(mail, sender=SENDER, smtputf8=False)

    raw = message.as_bytes()
    raw.decode("ascii")  # 7-bit clean: encoded words and quoted-printable only
    assert b"\r\n" in raw
    parsed = parse(raw)
    assert parsed["From"] == SENDER
    assert parsed["To"] == RECIPIENT
    assert parsed["Subject"] == "Grüße – 30 Tage übrig"
    assert parsed["Date"].datetime is not None
    assert re.fullmatch(r"<[^<>@\s]+@acme\.test>", parsed["Message-ID"])
    assert_both_parts(parsed, mail)


def test_build_message_ids_are_unique() -> None:
    ids = {
        build_message(make_mail(), sender=SENDER, smtputf8=False)["Message-ID"] for _ in range(50)
    }
    assert len(ids) == 50


@pytest.mark.parametrize(
    ("to", "subject"),
    [
        (f"{RECIPIENT}\r\nBcc: victim@example.org", "Hello"),
        (f"{RECIPIENT}\nBcc: victim@example.org", "Hello"),
        (RECIPIENT, "Hello\r\nBcc: victim@example.org"),
        (RECIPIENT, "Hello\rX-Injected: 1"),
        (RECIPIENT, "Hello\u2028X-Injected: 1"),
        (RECIPIENT, "Hello\n"),
        (f"{RECIPIENT}, victim@example.org", "Hello"),
        ("not-an-address", "Hello"),
    ],
)
def test_build_message_refuses_header_injection(to: str, subject: str) -> None:
    with pytest.raises(ValueError) as raised:
        build_message(make_mail(to=to, subject=subject), sender=SENDER, smtputf8=False)
    assert_private(raised.value, RECIPIENT, "victim@example.org")


def test_build_message_refuses_line_break_in_sender() -> None:
    with pytest.raises(ValueError, match="sender"):
        build_message(make_mail(), sender="a@acme.test\r\nBcc: victim@example.org", smtputf8=False)


# --- OutboxMailer ----------------------------------------------------------------------------


def test_outbox_writes_one_parseable_eml(tmp_path: Path) -> None:
    directory = tmp_path / "outbox" / "nested"
    mailer = OutboxMailer(directory=directory, sender=SENDER)
    mail = make_mail()

    message_id = mailer.send(mail)

    files = list(directory.iterdir())
    assert len(files) == 1
    assert re.fullmatch(r"\d{8}T\d{12}Z-[0-9a-f-]{36}\.eml", files[0].name)
    parsed = parse(files[0].read_bytes())
    assert parsed["Message-ID"] == message_id
    assert parsed["To"] == RECIPIENT
    assert_both_parts(parsed, mail)


def test_outbox_files_sort_in_sending_order(tmp_path: Path) -> None:
    mailer = OutboxMailer(directory=tmp_path, sender=SENDER)
    ids = [mailer.send(make_mail(subject=f"mail {n}")) for n in range(3)]

    files = sorted(tmp_path.iterdir())
    assert [parse(f.read_bytes())["Message-ID"] for f in files] == ids
    assert not [f for f in tmp_path.iterdir() if f.suffix != ".eml"]


# --- SmtpMailer ------------------------------------------------------------------------------


def smtp_mailer(server: LocalSmtpServer) -> SmtpMailer:
    return SmtpMailer(host=server.host, port=server.port, sender=SENDER, security="none", timeout=5)


def test_smtp_delivers_both_parts(smtp_server: LocalSmtpServer) -> None:
    mail = make_mail()
    message_id = smtp_mailer(smtp_server).send(mail)

    [received] = smtp_server.messages
    assert received.mail_from == "no-reply@acme.test"
    assert received.rcpt_tos == (RECIPIENT,)
    parsed = parse(received.content)
    assert parsed["Message-ID"] == message_id
    assert_both_parts(parsed, mail)


@pytest.mark.parametrize(
    ("reply", "at", "error"),
    [
        (f"550 5.1.1 <{RECIPIENT}>: Recipient address rejected", "rcpt", PermanentMailError),
        ("550 No such user", "rcpt", PermanentMailError),
        (f"451 4.7.1 Greylisted {RECIPIENT}, try again later", "rcpt", TransientMailError),
        (f"554 5.6.0 Message for {RECIPIENT} rejected as spam", "data", PermanentMailError),
        ("452 4.3.1 Insufficient system storage", "data", TransientMailError),
    ],
)
def test_smtp_maps_replies_without_naming_the_recipient(
    smtp_server: LocalSmtpServer, reply: str, at: Stage, error: type[MailError]
) -> None:
    smtp_server.fail(RECIPIENT, reply, at=at)

    with pytest.raises(error) as raised:
        smtp_mailer(smtp_server).send(make_mail())

    assert reply[:3] in str(raised.value)
    assert_private(raised.value, RECIPIENT)
    assert smtp_server.messages == []


def test_smtp_scrubs_addresses_that_redact_cannot_recognise(
    smtp_server: LocalSmtpServer,
) -> None:
    recipient = "jane@localhost"
    smtp_server.fail(recipient, f"550 mailbox {recipient.upper()} unknown")

    with pytest.raises(PermanentMailError) as raised:
        smtp_mailer(smtp_server).send(make_mail(to=recipient))

    assert_private(raised.value, recipient)


def test_smtp_reuses_one_connection_until_closed(smtp_server: LocalSmtpServer) -> None:
    mailer = smtp_mailer(smtp_server)
    for index in range(3):
        mailer.send(make_mail(to=f"user{index}@example.org"))
    assert (len(smtp_server.messages), smtp_server.connections) == (3, 1)

    mailer.close()
    mailer.send(make_mail())
    assert (len(smtp_server.messages), smtp_server.connections) == (4, 2)
    mailer.close()


def test_smtp_connection_survives_a_refused_recipient(smtp_server: LocalSmtpServer) -> None:
    smtp_server.fail("gone@example.org", "550 5.1.1 No such user")
    mailer = smtp_mailer(smtp_server)
    mailer.send(make_mail(to="first@example.org"))
    with pytest.raises(PermanentMailError):
        mailer.send(make_mail(to="gone@example.org"))
    mailer.send(make_mail(to="third@example.org"))

    assert [m.rcpt_tos for m in smtp_server.messages] == [
        ("first@example.org",),
        ("third@example.org",),
    ]
    assert smtp_server.connections == 1
    mailer.close()


def test_smtp_reconnects_after_the_server_closes_the_session(
    smtp_server: LocalSmtpServer,
) -> None:
    smtp_server.fail("busy@example.org", "421 4.3.2 Too many messages, closing", at="data")
    mailer = smtp_mailer(smtp_server)
    with pytest.raises(TransientMailError, match="421"):
        mailer.send(make_mail(to="busy@example.org"))
    mailer.send(make_mail(to="next@example.org"))

    assert [m.rcpt_tos for m in smtp_server.messages] == [("next@example.org",)]
    assert smtp_server.connections == 2
    mailer.close()


def test_smtp_checks_an_idle_connection_before_using_it(smtp_server: LocalSmtpServer) -> None:
    mailer = SmtpMailer(
        host=smtp_server.host,
        port=smtp_server.port,
        sender=SENDER,
        security="none",
        timeout=5,
        idle_check_seconds=0,
    )
    mailer.send(make_mail(to="before@example.org"))
    smtp_server.stop()  # the server restarts: our open connection is dead
    smtp_server.start()
    mailer.send(make_mail(to="after@example.org"))

    assert [m.rcpt_tos for m in smtp_server.messages] == [
        ("before@example.org",),
        ("after@example.org",),
    ]
    assert smtp_server.connections == 2
    mailer.close()


def test_smtp_unreachable_server_is_transient() -> None:
    mailer = SmtpMailer(
        host="127.0.0.1", port=closed_port(), sender=SENDER, security="none", timeout=5
    )
    with pytest.raises(TransientMailError) as raised:
        mailer.send(make_mail())
    assert_private(raised.value, RECIPIENT)


def test_smtp_starttls_refused_by_server_is_permanent(smtp_server: LocalSmtpServer) -> None:
    mailer = SmtpMailer(
        host=smtp_server.host, port=smtp_server.port, sender=SENDER, security="starttls"
    )
    with pytest.raises(PermanentMailError, match="SMTPNotSupportedError"):
        mailer.send(make_mail())
    assert smtp_server.messages == []


def test_smtp_tls_handshake_failure_is_transient(smtp_server: LocalSmtpServer) -> None:
    mailer = SmtpMailer(
        host=smtp_server.host, port=smtp_server.port, sender=SENDER, security="ssl", timeout=5
    )
    with pytest.raises(TransientMailError, match="SSLError"):
        mailer.send(make_mail())


def test_smtp_username_needs_password() -> None:
    with pytest.raises(ValueError, match="password"):
        SmtpMailer(host="h", port=25, sender=SENDER, security="none", username="bob")


# --- SesMailer against moto ------------------------------------------------------------------


def sent_last_24_hours(endpoint: str) -> float:
    quota = boto3.client("ses", region_name=REGION, endpoint_url=endpoint).get_send_quota()
    return quota["SentLast24Hours"]


def test_ses_sends_through_moto(moto_endpoint: str) -> None:
    sender = f"Acme <no-reply-{uuid.uuid4().hex[:8]}@acme.test>"
    client = ses_client(region=REGION, endpoint_url=moto_endpoint)
    client.create_email_identity(EmailIdentity=sender.split("<")[1].rstrip(">"))
    before = sent_last_24_hours(moto_endpoint)

    message_id = SesMailer(client=client, sender=sender).send(make_mail())

    assert message_id
    assert sent_last_24_hours(moto_endpoint) == before + 1


def test_ses_unverified_sender_is_rejected_by_moto(moto_endpoint: str) -> None:
    client = ses_client(region=REGION, endpoint_url=moto_endpoint)
    mailer = SesMailer(client=client, sender=f"nobody-{uuid.uuid4().hex[:8]}@unverified.test")

    with pytest.raises(PermanentMailError, match="MessageRejected") as raised:
        mailer.send(make_mail())
    assert_private(raised.value, RECIPIENT, "unverified.test")


# --- SesMailer against a scripted fake SES ---------------------------------------------------

THROTTLED = (429, "TooManyRequestsException", {"message": "Maximum sending rate exceeded."})
SENT = (200, None, {"MessageId": "abc"})


@dataclass
class FakeSes:
    """Answers each request with the next scripted (status, error type, body); the last repeats."""

    url: str = ""
    script: list[tuple[int, str | None, dict[str, str]]] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)


@pytest.fixture
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def fake_ses(fake_aws_credentials: None) -> Iterator[FakeSes]:
    fake = FakeSes()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                fake.requests.append((self.command, self.path, json.loads(body or b"{}")))
                status, error_type, payload = (
                    fake.script.pop(0) if len(fake.script) > 1 else fake.script[0]
                )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if error_type:
                self.send_header("x-amzn-ErrorType", error_type)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            """Keep test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        fake.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def quick_client(endpoint: str) -> SESV2Client:
    """Like ``ses_client`` but with two attempts, so giving up takes at most a second."""
    config = Config(retries={"mode": "standard", "total_max_attempts": 2})
    return boto3.client("sesv2", region_name=REGION, endpoint_url=endpoint, config=config)


def test_ses_retries_throttling_with_backoff_then_succeeds(fake_ses: FakeSes) -> None:
    fake_ses.script = [THROTTLED, THROTTLED, SENT]
    client = ses_client(region=REGION, endpoint_url=fake_ses.url)
    mail = make_mail()

    message_id = SesMailer(client=client, sender=SENDER, configuration_set="mail").send(mail)

    assert message_id == "abc"
    assert [(method, path) for method, path, _ in fake_ses.requests] == [("POST", SEND_PATH)] * 3
    request = fake_ses.requests[-1][2]
    assert request["FromEmailAddress"] == SENDER
    assert request["ConfigurationSetName"] == "mail"
    content = request["Content"]
    assert isinstance(content, dict)
    assert_both_parts(parse(base64.b64decode(content["Raw"]["Data"])), mail)


@pytest.mark.parametrize(
    "failure",
    [THROTTLED, (503, "ServiceUnavailable", {"message": "Service unavailable."})],
)
def test_ses_gives_up_as_transient_after_retries(
    fake_ses: FakeSes, failure: tuple[int, str, dict[str, str]]
) -> None:
    fake_ses.script = [failure]
    mailer = SesMailer(client=quick_client(fake_ses.url), sender=SENDER)

    with pytest.raises(TransientMailError, match=failure[1]) as raised:
        mailer.send(make_mail())

    assert len(fake_ses.requests) == 2
    assert_private(raised.value, RECIPIENT)


def test_ses_message_rejected_is_permanent_without_retry(fake_ses: FakeSes) -> None:
    detail = f"Email address is not verified. The following identities failed: {RECIPIENT}"
    fake_ses.script = [(400, "MessageRejected", {"message": detail})]
    mailer = SesMailer(client=ses_client(region=REGION, endpoint_url=fake_ses.url), sender=SENDER)

    with pytest.raises(PermanentMailError, match="MessageRejected") as raised:
        mailer.send(make_mail())

    assert len(fake_ses.requests) == 1
    assert "j***@e***.com" in str(raised.value)
    assert_private(raised.value, RECIPIENT)


def test_ses_unreachable_endpoint_is_transient(fake_aws_credentials: None) -> None:
    mailer = SesMailer(client=quick_client(f"http://127.0.0.1:{closed_port()}"), sender=SENDER)

    with pytest.raises(TransientMailError, match="unreachable"):
        mailer.send(make_mail())


# --- open_mailer -----------------------------------------------------------------------------


def test_open_mailer_picks_backend(
    tmp_path: Path, fake_ses: FakeSes, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in os.environ if name.startswith("LIFECYCLE_")]:
        monkeypatch.delenv(name)
    outbox = open_mailer(Settings(data_dir=tmp_path))
    assert isinstance(outbox, OutboxMailer)
    outbox.send(make_mail())
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1

    smtp = Settings(mail_backend="smtp", mail_from=SENDER, smtp_host="127.0.0.1")
    assert isinstance(open_mailer(smtp), SmtpMailer)

    fake_ses.script = [SENT]
    ses = Settings(mail_backend="ses", mail_from=SENDER, ses_endpoint_url=fake_ses.url)
    mailer = open_mailer(ses)
    assert isinstance(mailer, SesMailer)
    assert mailer.send(make_mail()) == "abc"

"""The flow against real backends: S3 and SES through moto's server, SMTP to a local server."""

from __future__ import annotations

import email
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
import sqlalchemy as sa

from flows.inactive_accounts import inactive_accounts
from lifecycle.clients.storage import open_storage
from lifecycle.settings import Settings
from tests.support.clock import days_ago
from tests.support.factories import insert_user, user_row
from tests.support.smtp_server import LocalSmtpServer

SENDER = "Lifecycle <no-reply@lifecycle.test>"


def test_s3_folder_over_1000_objects_and_ses_mail(
    engine: sa.Engine,
    lifecycle_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
    moto_endpoint: str,
    s3_bucket: str,
) -> None:
    monkeypatch.setenv("LIFECYCLE_STORAGE_URL", f"s3://{s3_bucket}/app")
    monkeypatch.setenv("LIFECYCLE_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("LIFECYCLE_MAIL_BACKEND", "ses")
    monkeypatch.setenv("LIFECYCLE_SES_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("LIFECYCLE_MAIL_FROM", SENDER)
    boto3.client("sesv2", endpoint_url=moto_endpoint).create_email_identity(
        EmailIdentity="no-reply@lifecycle.test"
    )
    doomed = insert_user(engine, last_visit_at=days_ago(100), deletion_warning_sent_at=days_ago(40))
    neighbour = insert_user(engine, last_visit_at=days_ago(3))
    for _ in range(3):
        insert_user(engine, last_visit_at=days_ago(70))
    storage = open_storage(f"s3://{s3_bucket}/app", endpoint_url=moto_endpoint)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda i: storage.put(f"users/{doomed}/f{i:04}", b"x"), range(1234)))
    storage.put(f"users/{neighbour}/keep.txt", b"x")

    ses = boto3.client("ses", endpoint_url=moto_endpoint)
    sent_before = ses.get_send_quota()["SentLast24Hours"]

    summary = inactive_accounts()

    assert summary.counts == {"warned": 3, "deleted": 1}
    assert summary.objects_deleted == 1234
    assert storage.count_prefix(f"users/{doomed}/") == 0
    assert storage.count_prefix(f"users/{neighbour}/") == 1
    assert user_row(engine, doomed) is None
    assert ses.get_send_quota()["SentLast24Hours"] - sent_before == 3


def test_smtp_hard_bounce_is_undeliverable_not_notice_and_not_retried_daily(
    engine: sa.Engine,
    lifecycle_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
    smtp_server: LocalSmtpServer,
) -> None:
    monkeypatch.setenv("LIFECYCLE_MAIL_BACKEND", "smtp")
    monkeypatch.setenv("LIFECYCLE_SMTP_HOST", smtp_server.host)
    monkeypatch.setenv("LIFECYCLE_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("LIFECYCLE_SMTP_SECURITY", "none")
    monkeypatch.setenv("LIFECYCLE_MAIL_FROM", SENDER)
    ok = [insert_user(engine, last_visit_at=days_ago(61 + i)) for i in range(3)]
    bounced = insert_user(engine, last_visit_at=days_ago(90), email="gone@example.com")
    smtp_server.fail("gone@example.com", "550 5.1.1 <gone@example.com>: no such user")

    summary = inactive_accounts()

    assert summary.counts == {"warned": 3, "undeliverable": 1}
    delivered = [email.message_from_bytes(m.content) for m in smtp_server.messages]
    assert sorted(m["To"] for m in delivered) == sorted(
        user_row(engine, uid).email  # type: ignore[union-attr]
        for uid in ok
    )
    assert all(user_row(engine, uid).deletion_warning_sent_at for uid in ok)  # type: ignore[union-attr]
    row = user_row(engine, bounced)
    assert row is not None and row.warning_claim_id is None
    assert row.deletion_warning_sent_at is None  # no notice reached them: no deletion clock
    assert row.warning_undeliverable_at is not None

    smtp_server.messages.clear()
    assert inactive_accounts().counts == {}  # neither the others nor the bounce mailed again
    assert len(smtp_server.messages) == 0

"""Misconfigurations and partial failures of the inactive-accounts flow, as operators meet them.

Each test drives the real flow (or one batch) against real SQLite/PostgreSQL, moto, local SMTP
and HTTP servers, and checks what was changed and what the run says.
"""

from __future__ import annotations

import email
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.variables import Variable

from flows.inactive_accounts import inactive_accounts
from lifecycle.clients.mail.message import OutgoingMail
from lifecycle.clients.storage import LocalStorage, open_storage
from lifecycle.common.batch import Breaker
from lifecycle.db.engine import get_engine
from lifecycle.db.schema import deletion_receipts, users
from lifecycle.errors import DependencyDown
from lifecycle.processes.inactive_accounts.rules import Policy
from lifecycle.processes.inactive_accounts.steps import SweepContext, lease_margin, warn_batch
from lifecycle.processes.inactive_accounts.warning_mail import WarningContext
from lifecycle.settings import Settings
from tasks._prefect import PAUSE_VARIABLE
from tests.support.clock import NOW, days_ago
from tests.support.factories import delete_due_batch, insert_user, storage_of, user_row
from tests.support.http_server import closed_port
from tests.support.smtp_server import LocalSmtpServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SENDER = "Lifecycle <no-reply@lifecycle.test>"


def due_for_deletion(engine: sa.Engine, **columns: Any) -> str:
    return insert_user(
        engine, last_visit_at=days_ago(100), deletion_warning_sent_at=days_ago(35), **columns
    )


def receipts(engine: sa.Engine) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(deletion_receipts).order_by(deletion_receipts.c.id)))


def started(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        condition = users.c.deletion_started_at.is_not(None)
        return conn.execute(sa.select(sa.func.count()).where(condition)).scalar_one()


@pytest.fixture
def s3(moto_endpoint: str) -> Iterator[S3Client]:
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    yield client
    client.close()


def use_s3(monkeypatch: pytest.MonkeyPatch, endpoint: str, bucket: str) -> None:
    monkeypatch.setenv("LIFECYCLE_STORAGE_URL", f"s3://{bucket}")
    monkeypatch.setenv("LIFECYCLE_S3_ENDPOINT_URL", endpoint)


# --- 1. a lease too short to send in -------------------------------------------------------


class Clock:
    """A clock that moves on by ``step`` each time it is read."""

    def __init__(self, step: timedelta) -> None:
        self.now, self.step = NOW, step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


def test_the_shortest_lease_still_leaves_time_to_send(engine: sa.Engine) -> None:
    lease = timedelta(seconds=60)  # the smallest LIFECYCLE_LEASE_SECONDS accepted
    assert lease - lease_margin(lease) == timedelta(seconds=45)
    ids = [insert_user(engine, last_visit_at=days_ago(70 + i)) for i in range(4)]
    sent: list[str] = []

    def send(mail: OutgoingMail) -> str:
        sent.append(mail.to)
        return "id"

    # Every reading of the clock costs 6 s: the third mail starts after the send window.
    ctx = SweepContext(
        engine=engine,
        policy=Policy(),
        as_of=NOW,
        dry_run=False,
        lease=lease,
        clock=Clock(timedelta(seconds=6)),
    )
    report = warn_batch(
        ctx,
        send=send,
        mail_context=WarningContext("P", "https://app.test", 60, 30),
        breaker=Breaker("mail"),
        after=None,
        limit=10,
    )

    assert report.counts["warned"] == len(sent) > 0
    assert report.counts["deferred"] == len(ids) - len(sent) > 0
    leased = [user_row(engine, user_id).warning_claim_id for user_id in ids]  # type: ignore[union-attr]
    assert leased == [None] * len(ids)  # deferred users are given back at once


def test_a_run_that_deferred_every_warning_ends_failed() -> None:
    from flows.inactive_accounts import _fail_visibly
    from lifecycle.errors import RunFailed
    from lifecycle.processes.inactive_accounts.steps import SweepSummary

    summary = SweepSummary(as_of=NOW, dry_run=False, counts={"deferred": 7}, batches=1, failures=[])
    with pytest.raises(RunFailed, match="LIFECYCLE_LEASE_SECONDS"):
        _fail_visibly(summary)
    _fail_visibly(summary.model_copy(update={"counts": {"deferred": 7, "warned": 3}}))


# --- 2. versioned buckets and Object Lock ----------------------------------------------------


def test_versioned_bucket_receipt_counts_every_version_removed(
    engine: sa.Engine,
    lifecycle_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Client,
    moto_endpoint: str,
    s3_bucket: str,
) -> None:
    use_s3(monkeypatch, moto_endpoint, s3_bucket)
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    doomed = due_for_deletion(engine)
    for body in (b"1", b"2", b"3"):
        s3.put_object(Bucket=s3_bucket, Key=f"users/{doomed}/avatar.png", Body=body)
    s3.put_object(Bucket=s3_bucket, Key=f"users/{doomed}/notes.md", Body=b"n")

    summary = inactive_accounts()

    assert summary.counts == {"deleted": 1}
    listed = s3.list_object_versions(Bucket=s3_bucket, Prefix=f"users/{doomed}/")
    assert "Versions" not in listed and "DeleteMarkers" not in listed
    [receipt] = receipts(engine)
    assert (receipt.objects_deleted, receipt.versions_deleted) == (2, 4)


def test_object_lock_keeps_the_user_and_writes_no_receipt(
    engine: sa.Engine,
    lifecycle_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Client,
    moto_endpoint: str,
) -> None:
    bucket = f"locked-{NOW.microsecond}-{closed_port()}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    use_s3(monkeypatch, moto_endpoint, bucket)
    held = due_for_deletion(engine)
    version = s3.put_object(Bucket=bucket, Key=f"users/{held}/contract.pdf", Body=b"x")
    s3.put_object_legal_hold(
        Bucket=bucket,
        Key=f"users/{held}/contract.pdf",
        VersionId=version["VersionId"],
        LegalHold={"Status": "ON"},
    )

    state = inactive_accounts(return_state=True)

    assert state.is_failed() and "1 accounts failed" in str(state.message)
    row = user_row(engine, held)
    assert row is not None and row.deletion_started_at is not None  # finished once released
    assert receipts(engine) == []


# --- 3. pre-flight: nothing claimed when the store or the plan is wrong -----------------------


def test_missing_bucket_fails_the_run_before_any_claim(
    engine: sa.Engine, lifecycle_env: Settings, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str
) -> None:
    use_s3(monkeypatch, moto_endpoint, "no-such-bucket")
    due_for_deletion(engine)

    state = inactive_accounts(return_state=True)

    assert state.is_failed()
    assert "LIFECYCLE_STORAGE_URL=s3://no-such-bucket" in str(state.message)
    assert "does not exist" in str(state.message)
    assert started(engine) == 0


def test_missing_storage_folder_fails_the_run_before_any_claim(
    engine: sa.Engine, lifecycle_env: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "mounted-volume-not-there"
    monkeypatch.setenv("LIFECYCLE_STORAGE_URL", missing.as_uri())
    due_for_deletion(engine)

    state = inactive_accounts(return_state=True)

    assert state.is_failed() and "LIFECYCLE_STORAGE_URL" in str(state.message)
    assert started(engine) == 0 and not missing.exists()


@pytest.fixture
def bad_reference(engine: sa.Engine, request: pytest.FixtureRequest) -> Iterator[str]:
    """A table whose column the plan names but which does not hold user ids."""
    kind = request.param
    metadata = sa.MetaData()
    if kind == "integer":
        sa.Table("badges", metadata, sa.Column("owner", sa.Integer()))
    else:
        sa.Table("teams", metadata, sa.Column("id", sa.String(36), primary_key=True))
        sa.Table("badges", metadata, sa.Column("owner", sa.String(36), sa.ForeignKey("teams.id")))
    metadata.create_all(engine)
    yield kind
    metadata.drop_all(engine)


@pytest.mark.parametrize(
    ("bad_reference", "message"),
    [("integer", "badges.owner is INTEGER"), ("foreign", "points at teams.id, not at users.id")],
    indirect=["bad_reference"],
)
def test_plan_column_that_holds_no_user_ids_fails_before_files_go(
    engine: sa.Engine,
    lifecycle_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
    bad_reference: str,
    message: str,
) -> None:
    plan = {
        "references": [
            {"table": "features", "column": "proposed_by", "action": "set_null"},
            {"table": "scoreboard_entries", "column": "user_id", "action": "delete"},
            {"table": "badges", "column": "owner", "action": "delete"},
        ]
    }
    monkeypatch.setenv("LIFECYCLE_DELETION_PLAN", json.dumps(plan))
    doomed = due_for_deletion(engine)
    storage_of(lifecycle_env).put(f"users/{doomed}/a.txt", b"x")

    state = inactive_accounts(return_state=True)

    assert state.is_failed() and message in str(state.message)
    assert storage_of(lifecycle_env).count_prefix(f"users/{doomed}/") == 1
    assert started(engine) == 0


# --- 4 and 10. addresses that cannot be mailed: undeliverable, not notice ----------------------


def use_smtp(monkeypatch: pytest.MonkeyPatch, server: LocalSmtpServer) -> None:
    monkeypatch.setenv("LIFECYCLE_MAIL_BACKEND", "smtp")
    monkeypatch.setenv("LIFECYCLE_SMTP_HOST", server.host)
    monkeypatch.setenv("LIFECYCLE_SMTP_PORT", str(server.port))
    monkeypatch.setenv("LIFECYCLE_SMTP_SECURITY", "none")
    monkeypatch.setenv("LIFECYCLE_MAIL_FROM", SENDER)


@pytest.mark.parametrize("smtputf8", [True, False])
def test_non_ascii_addresses_over_smtp(
    engine: sa.Engine,
    lifecycle_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
    smtp_server: LocalSmtpServer,
    smtputf8: bool,
) -> None:
    smtp_server.restart(smtputf8=smtputf8)
    use_smtp(monkeypatch, smtp_server)
    local = insert_user(engine, last_visit_at=days_ago(70), email="jörg@example.com")
    domain = insert_user(engine, last_visit_at=days_ago(71), email="jo@exämple.com")

    summary = inactive_accounts()

    recipients = sorted(to for mail in smtp_server.messages for to in mail.rcpt_tos)
    if smtputf8:
        assert summary.counts == {"warned": 2}
        assert recipients == ["jo@xn--exmple-cua.com", "jörg@example.com"]
    else:
        assert summary.counts == {"warned": 1, "undeliverable": 1}
        assert recipients == ["jo@xn--exmple-cua.com"]
        row = user_row(engine, local)
        assert row is not None and row.warning_undeliverable_at is not None
        assert row.deletion_warning_sent_at is None
    assert user_row(engine, domain).deletion_warning_sent_at is not None  # type: ignore[union-attr]
    assert inactive_accounts().counts == {}  # not tried again every day


def test_non_ascii_local_part_is_undeliverable_through_ses(
    engine: sa.Engine, lifecycle_env: Settings, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str
) -> None:
    monkeypatch.setenv("LIFECYCLE_MAIL_BACKEND", "ses")
    monkeypatch.setenv("LIFECYCLE_SES_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("LIFECYCLE_MAIL_FROM", SENDER)
    boto3.client("sesv2", endpoint_url=moto_endpoint).create_email_identity(
        EmailIdentity="no-reply@lifecycle.test"
    )
    insert_user(engine, last_visit_at=days_ago(70), email="jörg@example.com")
    assert inactive_accounts().counts == {"undeliverable": 1}


def test_an_undeliverable_user_is_not_deleted_without_notice(
    engine: sa.Engine, lifecycle_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = insert_user(engine, last_visit_at=days_ago(120), warning_undeliverable_at=days_ago(40))
    # With `delete`, the failed attempt 40 days ago counted as the warning.
    noticed = insert_user(
        engine,
        last_visit_at=days_ago(120),
        warning_undeliverable_at=days_ago(40),
        deletion_warning_sent_at=days_ago(40),
    )
    summary = inactive_accounts()
    assert summary.counts == {"deleted": 1}
    assert user_row(engine, kept) is not None and user_row(engine, noticed) is None


def test_delete_policy_counts_the_failed_attempt_as_the_warning(
    engine: sa.Engine,
    lifecycle_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
    smtp_server: LocalSmtpServer,
) -> None:
    use_smtp(monkeypatch, smtp_server)
    monkeypatch.setenv("LIFECYCLE_INACTIVE_ACCOUNTS__UNDELIVERABLE", "delete")
    bounced = insert_user(engine, last_visit_at=days_ago(120), email="gone@example.com")
    smtp_server.fail("gone@example.com", "550 5.1.1 no such user")

    assert inactive_accounts().counts == {"undeliverable": 1}
    row = user_row(engine, bounced)
    assert row is not None
    assert row.deletion_warning_sent_at == row.warning_undeliverable_at is not None


# --- 5 and 6. receipts: one per deletion, counting the whole deletion --------------------------


def test_a_reused_user_id_gets_a_receipt_of_its_own(
    engine: sa.Engine, lifecycle_env: Settings
) -> None:
    first = due_for_deletion(engine)
    assert inactive_accounts().counts == {"deleted": 1}
    due_for_deletion(engine, id=first, email="someone-else@example.com")

    assert inactive_accounts().counts == {"deleted": 1}

    first_receipt, second_receipt = receipts(engine)
    assert first_receipt.subject_hash == second_receipt.subject_hash
    assert first_receipt.started_at != second_receipt.started_at
    assert user_row(engine, first) is None


class FailingOnce(LocalStorage):
    """Local storage whose first folder deletion stops after one file (a killed worker)."""

    failed = False

    def delete_prefix(self, prefix: str) -> int:
        if FailingOnce.failed:
            return super().delete_prefix(prefix)
        FailingOnce.failed = True
        folder = self._root / prefix
        next(path for path in folder.rglob("*") if path.is_file()).unlink()
        raise OSError("worker killed mid-deletion")


def test_a_resumed_deletion_receipt_counts_what_the_whole_deletion_removed(
    engine: sa.Engine, lifecycle_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    doomed = due_for_deletion(engine)
    storage = storage_of(lifecycle_env)
    for name in ("a.txt", "b.txt", "c/d.txt"):
        storage.put(f"users/{doomed}/{name}", b"x")
    monkeypatch.setattr("lifecycle.clients.storage.LocalStorage", FailingOnce)
    FailingOnce.failed = False

    assert inactive_accounts(return_state=True).is_failed()
    assert storage.count_prefix(f"users/{doomed}/") == 2  # one file went before the crash

    summary = inactive_accounts()

    assert summary.counts == {"deleted": 1} and summary.objects_deleted == 3
    [receipt] = receipts(engine)
    assert (receipt.objects_deleted, receipt.versions_deleted) == (3, 3)


# --- 7. parameters of the wrong type are refused, not coerced ----------------------------------


@pytest.mark.parametrize(
    "parameters",
    [
        {"warn_after_days": True},
        {"warn_after_days": 60.0},
        {"delete_after_days": "90"},
        {"batch_size": 10.5},
        {"max_deletions": False},
        {"dry_run": 1},
        {"dry_run": "yes"},
        {"as_of": 1_700_000_000},
        {"as_of": True},
    ],
)
def test_parameters_of_the_wrong_type_are_refused(
    engine: sa.Engine, lifecycle_env: Settings, parameters: dict[str, object]
) -> None:
    user_id = insert_user(engine, last_visit_at=days_ago(3))
    state = inactive_accounts(**parameters, return_state=True)  # type: ignore[arg-type]
    assert state.is_failed()
    row = user_row(engine, user_id)
    assert row is not None and row.deletion_warning_sent_at is None


def test_as_of_as_an_iso_string_still_works(engine: sa.Engine, lifecycle_env: Settings) -> None:
    insert_user(engine, last_visit_at=days_ago(70))
    as_of = (NOW - timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    summary = inactive_accounts(as_of=as_of, dry_run=True)  # type: ignore[call-overload]
    assert summary.counts == {} and summary.as_of.isoformat().startswith(as_of[:19])


# --- 8. a dependency that stops answering costs a few timeouts, not one per user -------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_silent_smtp_server_fails_the_run_naming_it(
    engine: sa.Engine,
    lifecycle_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
    silent_server: tuple[str, int],
) -> None:
    host, port = silent_server
    monkeypatch.setenv("LIFECYCLE_MAIL_BACKEND", "smtp")
    monkeypatch.setenv("LIFECYCLE_SMTP_HOST", host)
    monkeypatch.setenv("LIFECYCLE_SMTP_PORT", str(port))
    monkeypatch.setenv("LIFECYCLE_SMTP_SECURITY", "none")
    monkeypatch.setenv("LIFECYCLE_SMTP_TIMEOUT_SECONDS", "0.3")
    monkeypatch.setenv("LIFECYCLE_MAIL_FROM", SENDER)
    ids = [insert_user(engine, last_visit_at=days_ago(61 + i)) for i in range(10)]

    state = inactive_accounts(return_state=True)

    assert state.is_failed()
    assert "the mail backend (LIFECYCLE_MAIL_BACKEND=smtp) is not answering" in str(state.message)
    rows = [user_row(engine, user_id) for user_id in ids]
    assert all(r is not None and r.warning_claim_id is None for r in rows)
    assert all(r is not None and r.deletion_warning_sent_at is None for r in rows)


def test_silent_object_storage_stops_the_batch_and_gives_the_rest_back(
    engine: sa.Engine, silent_server: tuple[str, int]
) -> None:
    host, port = silent_server
    storage = open_storage("s3://bucket", endpoint_url=f"http://{host}:{port}", timeout_seconds=0.2)
    ids = [due_for_deletion(engine) for _ in range(25)]

    with pytest.raises(DependencyDown, match="object storage is not answering"):
        delete_due_batch(engine, storage, "object storage")

    # Storage never answered, so no file was touched: every user is as it was, unclaimed.
    assert started(engine) == 0
    rows = [user_row(engine, user_id) for user_id in ids]
    assert all(r is not None and r.deletion_claim_id is None for r in rows)


# --- 11. the kill switch -----------------------------------------------------------------------


@pytest.mark.parametrize("switch", ["setting", "variable"])
def test_kill_switch_pauses_deletions_and_warns_as_usual(
    engine: sa.Engine, lifecycle_env: Settings, monkeypatch: pytest.MonkeyPatch, switch: str
) -> None:
    doomed = due_for_deletion(engine)
    insert_user(engine, last_visit_at=days_ago(70))
    if switch == "setting":
        monkeypatch.setenv("LIFECYCLE_DELETIONS_PAUSED", "true")
    else:
        Variable.set(PAUSE_VARIABLE, "true", overwrite=True)
    try:
        summary = inactive_accounts(max_deletions=0)
    finally:
        Variable.unset(PAUSE_VARIABLE)

    assert summary.counts == {"deletions_paused": 1, "warned": 1}
    assert user_row(engine, doomed) is not None and started(engine) == 0


def test_a_kill_switch_variable_that_is_neither_true_nor_false_stops_the_run(
    engine: sa.Engine, lifecycle_env: Settings
) -> None:
    Variable.set(PAUSE_VARIABLE, "maybe", overwrite=True)
    try:
        state = inactive_accounts(return_state=True)
    finally:
        Variable.unset(PAUSE_VARIABLE)
    assert state.is_failed() and "must be true or false" in str(state.message)


# --- clear errors instead of tracebacks --------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_unreachable_database_is_named_with_the_password_masked(
    lifecycle_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"postgresql://app:hunter2-secret@127.0.0.1:{closed_port()}/app"
    monkeypatch.setenv("LIFECYCLE_DATABASE_URL", url)
    state = inactive_accounts(return_state=True)
    message = str(state.message)
    assert state.is_failed() and "LIFECYCLE_DATABASE_URL" in message
    assert "hunter2" not in message and "app:***@127.0.0.1" in message


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_unmigrated_sqlite_path_is_refused_and_left_alone(
    lifecycle_env: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "typo" / "lifecycle.db"
    monkeypatch.setenv("LIFECYCLE_DATABASE_URL", f"sqlite:///{path}")
    state = inactive_accounts(return_state=True)
    assert state.is_failed() and "run `lifecycle migrate`" in str(state.message)
    assert not path.exists() and not path.parent.exists()
    get_engine.cache_clear()


# --- operator-facing: summaries of failed and dry runs, the date in the mail -------------------


def summaries(flow_run_id: Any) -> list[Any]:
    """The run's summary artifacts (Prefect adds others, e.g. for a failed run's error)."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return [a for a in artifacts if (a.key or "").startswith("inactive-accounts-")]


def test_failed_and_dry_runs_write_their_own_summary(
    engine: sa.Engine, lifecycle_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_user(engine, last_visit_at=days_ago(70))
    dry = inactive_accounts(dry_run=True, return_state=True)
    monkeypatch.setenv("LIFECYCLE_STORAGE_URL", (lifecycle_env.data_dir / "gone").as_uri())
    due_for_deletion(engine)
    failed = inactive_accounts(return_state=True)

    assert dry.is_completed() and failed.is_failed()
    [dry_summary] = summaries(dry.state_details.flow_run_id)
    [failed_summary] = summaries(failed.state_details.flow_run_id)
    assert dry_summary.key.startswith("inactive-accounts-dry-run-")
    assert failed_summary.key.startswith("inactive-accounts-run-")
    assert "would_warn=1" in (dry_summary.description or "")
    assert f"as_of={datetime.now(UTC):%Y-%m-%d}" in (dry_summary.description or "")


def test_the_warning_names_the_deletion_date(engine: sa.Engine, lifecycle_env: Settings) -> None:
    insert_user(engine, last_visit_at=days_ago(70))
    inactive_accounts()
    [path] = lifecycle_env.resolved_outbox_dir.glob("*.eml")
    message = email.message_from_bytes(path.read_bytes())
    part = next(p for p in message.walk() if p.get_content_type() == "text/plain")
    text = part.get_payload(decode=True)
    assert isinstance(text, bytes)
    day = datetime.now(UTC) + timedelta(days=30)
    assert f"before {day.day} {day:%B %Y}" in " ".join(text.decode().split())

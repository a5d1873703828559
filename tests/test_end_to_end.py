"""End to end, as operators run it: every deployment of prefect.yaml started on the shared stack
(``tests/support/e2e.py``: a real Prefect server, the bootstrap, ``prefect deploy --all`` and a
process worker in another folder that fetches the code with the pull step), against real
PostgreSQL, moto (S3, DynamoDB), the processor simulator and a stand-in marketing suite.

The worker clones this repository, so these tests run the committed code.
"""

from __future__ import annotations

import email
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import boto3
import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterStartTime,
)
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings

from lifecycle.clients.marketing import SIGNATURE_HEADER, verify
from lifecycle.db.schema import (
    attribute_index,
    cart_activity,
    deletion_receipts,
    processor_deletions,
)
from lifecycle.privacy import pseudonym
from tests.support.clock import days_ago
from tests.support.dynamodb import REGION, cart_ids, dynamodb, put_cart, ttl_delete
from tests.support.e2e import MARKETING_PATH, E2EStack, worker_settings
from tests.support.factories import insert_signup, insert_user, user_row
from tests.support.prefect_stack import BIN, clean_environment, run_command
from tests.support.ttl import EPOCH, SECRET, insert_attributes, insert_cart, insert_index, names

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

DAY = 86_400
EXPIRED, FRESH = EPOCH - 3600, EPOCH + DAY


@dataclass(frozen=True)
class Started:
    """A run started by :func:`started`, and the users its test looks at."""

    run_id: UUID
    users: dict[str, str] = field(default_factory=dict)  # role -> user id


def completed(run: FlowRun) -> None:
    assert run.state is not None and run.state.is_completed(), run.state


def s3_client(stack: E2EStack) -> Any:
    return boto3.client("s3", endpoint_url=stack.moto_endpoint, region_name=REGION)


def ttl_status(stack: E2EStack, table: str) -> str:
    answer = dynamodb(stack.moto_endpoint).describe_time_to_live(TableName=table)
    return str(answer["TimeToLiveDescription"]["TimeToLiveStatus"])


def deletions_of(stack: E2EStack, user_ids: list[str]) -> list[sa.Row[Any]]:
    with stack.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(processor_deletions).where(processor_deletions.c.user_id.in_(user_ids))
            )
        )


def start_inactive_accounts(stack: E2EStack) -> Started:
    """One user to warn; one to delete, with two files in S3; a file of the first stays."""
    warned = insert_user(stack.engine, last_visit_at=days_ago(70))
    deleted = insert_user(
        stack.engine, last_visit_at=days_ago(100), deletion_warning_sent_at=days_ago(35)
    )
    s3 = s3_client(stack)
    for key in (f"users/{deleted}/avatar.png", f"users/{deleted}/notes.md", f"users/{warned}/a"):
        s3.put_object(Bucket=stack.bucket, Key=key, Body=b"x")
    run_id = stack.start("inactive-accounts/inactive-accounts")
    return Started(run_id, {"warned": warned, "deleted": deleted})


def start_ttl_purge(stack: E2EStack) -> Started:
    """Attributes n0..n5 (expired: n0, n3, n5), index entries (live, expired, orphaned once n0
    goes) and a DynamoDB table whose TTL is still off."""
    insert_attributes(stack.engine, [EXPIRED, FRESH, None, EXPIRED, FRESH, EXPIRED])
    insert_index(
        stack.engine,
        [("live", "n1", FRESH), ("expired", "n4", EXPIRED), ("orphan", "n0", FRESH)],
    )
    put_cart(stack.moto_endpoint, stack.ttl_table, "expired", EXPIRED)
    put_cart(stack.moto_endpoint, stack.ttl_table, "fresh", FRESH)
    assert ttl_status(stack, stack.ttl_table) == "DISABLED"
    return Started(stack.start("ttl-purge/ttl-purge"))


def start_abandoned_carts(stack: E2EStack) -> Started:
    """Carts in the database (abandoned, anonymous, active) and in DynamoDB (removed by TTL,
    so in the stream; expired but left by a late TTL, so swept; active)."""
    engine, endpoint, table = stack.engine, stack.moto_endpoint, stack.cart_table
    insert_cart(engine, "db-abandoned", expires_in=-7200, customer="cust-ada")
    insert_cart(engine, "db-anonymous", expires_in=-600, customer=None)
    insert_cart(engine, "db-active", expires_in=DAY, customer="cust-eve")
    put_cart(endpoint, table, "ddb-removed-by-ttl", EPOCH - 100, customer="cust-bob")
    ttl_delete(table, "ddb-removed-by-ttl")
    put_cart(endpoint, table, "ddb-ttl-is-late", EPOCH - 2 * 3600, customer="cust-cy")
    put_cart(endpoint, table, "ddb-active", EPOCH + DAY)
    return Started(stack.start("abandoned-carts/abandoned-carts"))


def start_consent_deletion(stack: E2EStack) -> Started:
    """Two users who revoked analytics consent five minutes ago."""
    revoked = datetime.now(UTC) - timedelta(minutes=5)
    users = {
        f"revoked-{n}": insert_user(
            stack.engine, last_visit_at=days_ago(1), analytics_consent_revoked_at=revoked
        )
        for n in range(2)
    }
    return Started(stack.start("consent-deletion-start/consent-deletion-start"), users)


@pytest.fixture(scope="module")
def started(e2e_stack: E2EStack) -> dict[str, Started]:
    """The independent processes, set up and started at once: the worker runs them side by
    side, and each test waits for its own run."""
    return {
        "inactive-accounts": start_inactive_accounts(e2e_stack),
        "ttl-purge": start_ttl_purge(e2e_stack),
        "abandoned-carts": start_abandoned_carts(e2e_stack),
        "consent-deletion-start": start_consent_deletion(e2e_stack),
    }


def test_inactive_accounts_warns_and_deletes_with_the_users_files(
    e2e_stack: E2EStack, started: dict[str, Started]
) -> None:
    engine, users = e2e_stack.engine, started["inactive-accounts"].users
    warned, deleted = users["warned"], users["deleted"]

    run = e2e_stack.wait(started["inactive-accounts"].run_id)

    completed(run)
    row = user_row(engine, warned)
    assert row is not None and row.deletion_warning_sent_at is not None
    assert user_row(engine, deleted) is None
    listed = s3_client(e2e_stack).list_objects_v2(Bucket=e2e_stack.bucket, Prefix="users/")
    assert [item["Key"] for item in listed["Contents"]] == [f"users/{warned}/a"]
    with engine.connect() as conn:
        (receipt,) = conn.execute(
            sa.select(deletion_receipts).where(
                deletion_receipts.c.subject_hash == pseudonym(deleted)
            )
        )
    assert receipt.objects_deleted == 2 and receipt.flow_run_id == str(run.id)
    (erase,) = deletions_of(e2e_stack, [deleted])  # at the third party too, by consent-deletion
    assert (erase.reason, erase.processor, erase.receipt_id) == (
        "account_deleted",
        "sim",
        receipt.id,
    )
    mails = [path.read_text() for path in (e2e_stack.data_dir / "outbox").glob("*.eml")]
    assert sum(f"person-{warned[:8]}@example.com" in mail for mail in mails) == 1


def test_ttl_purge_deletes_expired_rows_and_switches_dynamodb_ttl_on(
    e2e_stack: E2EStack, started: dict[str, Started]
) -> None:
    run = e2e_stack.wait(started["ttl-purge"].run_id)

    completed(run)
    assert names(e2e_stack.engine) == {"n1", "n2", "n4"}
    assert names(e2e_stack.engine, attribute_index) == {"live"}
    assert ttl_status(e2e_stack, e2e_stack.ttl_table) == "ENABLED"
    (summary,) = [
        a for a in e2e_stack.artifacts(run.id) if (a.key or "").startswith("ttl-purge-run-")
    ]
    assert "orphans_purged=1, purged=4" in (summary.description or "")


def test_abandoned_carts_are_reported_then_deleted(
    e2e_stack: E2EStack, started: dict[str, Started]
) -> None:
    run = e2e_stack.wait(started["abandoned-carts"].run_id)

    completed(run)
    received = e2e_stack.marketing.received("POST", MARKETING_PATH)
    assert sorted(request.json()["cart_id"] for request in received) == [
        "db-abandoned",
        "ddb-removed-by-ttl",
        "ddb-ttl-is-late",
    ]
    for request in received:
        assert verify(
            SECRET.encode(), request.headers[SIGNATURE_HEADER], request.body, now=time.time()
        )
    with e2e_stack.engine.connect() as conn:
        assert set(conn.execute(sa.select(cart_activity.c.cart_id)).scalars()) == {"db-active"}
    assert cart_ids(e2e_stack.moto_endpoint, e2e_stack.cart_table) == {"ddb-active"}


def test_consent_deletion_starts_then_polls_to_completion(
    e2e_stack: E2EStack, started: dict[str, Started]
) -> None:
    user_ids = list(started["consent-deletion-start"].users.values())

    completed(e2e_stack.wait(started["consent-deletion-start"].run_id))

    rows = deletions_of(e2e_stack, user_ids)
    assert sorted(row.user_id for row in rows) == sorted(user_ids)
    assert {(row.reason, row.status) for row in rows} == {("consent_revoked", "pending")}
    operations = {row.operation_id for row in rows}
    assert operations <= set(e2e_stack.simulator.operations)

    for operation_id in operations:  # the processor finishes its work
        e2e_stack.simulator.settle(operation_id, "complete")
    completed(e2e_stack.run("consent-deletion-poll/consent-deletion-poll"))

    rows = deletions_of(e2e_stack, user_ids)
    assert {row.status for row in rows} == {"complete"}
    assert all(row.completed_at is not None and row.checks == 1 for row in rows)


def test_backfill_replays_three_days_one_after_another_in_date_order(
    e2e_stack: E2EStack,
) -> None:
    started = datetime.now(UTC)
    first = date.today() - timedelta(days=3)
    run = e2e_stack.run(
        "backfill/backfill",
        {
            "process": "inactive-accounts",
            "start": str(first),
            "dry_run": True,
            "end": str(first + timedelta(days=2)),
        },
    )

    completed(run)
    with temporary_settings({PREFECT_API_URL: e2e_stack.server.api_url}):
        with get_client(sync_client=True) as client:
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)),
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=["inactive-accounts"])
                ),
            )
    children.sort(key=lambda child: child.start_time or started)
    assert [child.parameters["as_of"][:10] for child in children] == [
        str(first + timedelta(days=offset)) for offset in range(3)
    ]
    assert all(child.state is not None and child.state.is_completed() for child in children)
    for earlier, later in zip(children, children[1:], strict=False):
        assert earlier.end_time is not None and later.start_time is not None
        assert earlier.end_time <= later.start_time  # strictly one after another


def test_a_user_created_event_starts_the_activation_deployment(e2e_stack: E2EStack) -> None:
    """The application emits lifecycle.user.created (the helper, in a process of its own, as an
    application would); the deployment's trigger starts a run that mails the new user once."""
    started = datetime.now(UTC)
    user_id = insert_signup(e2e_stack.engine, created_at=started - timedelta(seconds=5))
    env = clean_environment(PREFECT_API_URL=e2e_stack.server.api_url, **worker_settings(e2e_stack))
    emit = f"from tasks.activation_mail import emit_user_created; emit_user_created({user_id!r})"
    run_command([str(BIN / "python"), "-c", emit], env)

    deadline = time.monotonic() + 120
    with temporary_settings({PREFECT_API_URL: e2e_stack.server.api_url}):
        with get_client(sync_client=True) as client:
            while not (
                runs := client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        start_time=FlowRunFilterStartTime(after_=started)
                    ),
                    deployment_filter=DeploymentFilter(
                        name=DeploymentFilterName(any_=["activation-mail"])
                    ),
                )
            ):
                assert time.monotonic() < deadline, "the event started no activation run"
                time.sleep(1)
    completed(e2e_stack.wait(runs[0].id))
    row = user_row(e2e_stack.engine, user_id)
    assert row is not None and row.activation_status == "MAIL_SENT"
    recipients = [
        email.message_from_bytes(path.read_bytes())["To"]
        for path in (e2e_stack.data_dir / "outbox").glob("*.eml")
    ]
    assert recipients.count(f"person-{user_id[:8]}@example.com") == 1


def test_a_process_without_as_of_is_refused_by_the_backfill(e2e_stack: E2EStack) -> None:
    yesterday = str(date.today() - timedelta(days=1))
    run = e2e_stack.run(
        "backfill/backfill", {"process": "activation-mail", "start": yesterday, "dry_run": True}
    )

    assert run.state is not None and run.state.is_failed()
    assert "activation-mail cannot be backfilled: its flow takes no as_of" in (
        run.state.message or ""
    )

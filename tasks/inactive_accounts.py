"""Thin Prefect tasks over :mod:`lifecycle.processes.inactive_accounts`: one batch each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect.runtime import flow_run

from lifecycle.clients.build import Clients
from lifecycle.common.batch import BatchReport, Breaker
from lifecycle.common.erasure import resolve_plan
from lifecycle.common.paging import Cursor, KeyRange, key_ranges
from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import assert_current
from lifecycle.db.schema import users
from lifecycle.processes.inactive_accounts import queries, steps
from lifecycle.processes.inactive_accounts.queries import DeletionQueue
from lifecycle.processes.inactive_accounts.steps import SweepContext, SweepParams, SweepPlan
from lifecycle.processes.inactive_accounts.warning_mail import WarningContext
from lifecycle.settings import Settings, get_settings
from tasks._prefect import batch_task, deletions_paused, mail_sender, report_batch


def _context(settings: Settings, params: SweepParams) -> SweepContext:
    key = settings.pseudonym_key
    return SweepContext(
        engine=get_engine(settings.resolved_database_url),
        policy=params.policy,
        as_of=params.as_of,
        dry_run=params.dry_run,
        lease=timedelta(seconds=settings.lease_seconds),
        pseudonym_key=key.get_secret_value().encode() if key else None,
        flow_run_id=flow_run.get_id(),
        claim_group=settings.inactive_accounts.claim_group,
        undeliverable=settings.inactive_accounts.undeliverable,
        third_parties=tuple(processor.name for processor in settings.consent_deletion.enabled),
    )


@batch_task("preflight-inactive-accounts")
def preflight(params: SweepParams) -> SweepPlan:
    """Check the database, the deletion plan and object storage, and count what is due.

    Nothing is claimed or changed: a misconfiguration fails the run here, before any work.
    """
    settings = get_settings()
    engine = get_engine(settings.resolved_database_url)
    assert_current(engine)
    resolve_plan(engine, settings.deletion_plan)
    paused = deletions_paused(settings)
    if not paused and not params.dry_run:
        Clients(settings).check_storage()
    with engine.connect() as conn:
        due = queries.count_due(
            conn, as_of=params.as_of, policy=params.policy, now=datetime.now(UTC)
        )
        shards = key_ranges(conn, users.c.id, params.shards)
    return SweepPlan(due=due, deletions_paused=paused, shards=shards)


@batch_task("warn-inactive-batch")
def warn_inactive_batch(params: SweepParams, shard: KeyRange, after: Cursor | None) -> BatchReport:
    """Mail one page of users due a warning, under the shared mail rate."""
    settings = get_settings()
    mail_context = WarningContext(
        product_name=settings.product_name,
        app_url=settings.app_url,
        inactive_days=params.warn_after_days,
        grace_days=params.delete_after_days - params.warn_after_days,
    )
    with mail_sender(settings, dry_run=params.dry_run) as send:
        report = steps.warn_batch(
            _context(settings, params),
            send=send,
            mail_context=mail_context,
            breaker=Breaker(f"the mail backend (LIFECYCLE_MAIL_BACKEND={settings.mail_backend})"),
            after=after,
            limit=params.batch_size,
            shard=shard,
        )
    return report_batch(report, {"warned": "lifecycle.account.warned"})


@batch_task("delete-inactive-batch")
def delete_inactive_batch(
    params: SweepParams, queue: DeletionQueue, shard: KeyRange, after: Cursor | None, budget: int
) -> BatchReport:
    """Delete one page of users due deletion: files, then references, then the user row."""
    settings = get_settings()
    ctx = _context(settings, params)
    report = steps.delete_batch(
        ctx,
        queue=queue,
        storage=Clients(settings).storage,
        plan=resolve_plan(ctx.engine, settings.deletion_plan),
        breaker=Breaker(f"object storage (LIFECYCLE_STORAGE_URL={settings.resolved_storage_url})"),
        after=after,
        limit=params.batch_size,
        budget=budget,
        shard=shard,
    )
    return report_batch(report, {"deleted": "lifecycle.account.deleted"})

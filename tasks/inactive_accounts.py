"""Thin Prefect tasks over :mod:`lifecycle.sweep`: build clients, run one batch, report it."""

from __future__ import annotations

from contextlib import closing
from datetime import UTC, datetime, timedelta

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.runtime import flow_run, task_run
from prefect.tasks import exponential_backoff
from pydantic import BaseModel

from lifecycle import accounts
from lifecycle.accounts import Candidate, DeletionKind, DueCounts
from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import assert_current
from lifecycle.deletion_plan import resolve_plan
from lifecycle.mail.backends import open_mailer
from lifecycle.mail.pacing import PacedSender, PrefectLeaseMutex, ensure_mail_limit
from lifecycle.mail.templates import WarningContext
from lifecycle.rules import Policy
from lifecycle.settings import Settings, get_settings
from lifecycle.storage import open_storage
from lifecycle.sweep import BatchReport, SweepContext, delete_batch, warn_batch

#: Failures logged one by one per batch; the rest are counted.
LOGGED_FAILURES = 20

#: Batches are idempotent (claims), so a transient failure simply reruns the batch.
RETRIES = 2
RETRY_DELAYS = exponential_backoff(backoff_factor=5)


class SweepParams(BaseModel):
    as_of: datetime
    dry_run: bool
    warn_after_days: int
    delete_after_days: int
    batch_size: int

    @property
    def policy(self) -> Policy:
        return Policy(
            warn_after=timedelta(days=self.warn_after_days),
            delete_after=timedelta(days=self.delete_after_days),
        )


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
    )


def _report(report: BatchReport, event: str, subjects: list[str]) -> BatchReport:
    """Log the batch and emit one event for it (an event per account would cost more than
    the work itself); the payload lists the accounts by pseudonym."""
    logger = get_run_logger()
    if subjects:
        emit_event(
            event=event,
            resource={
                "prefect.resource.id": f"lifecycle.batch.{task_run.get_id()}",
                "prefect.resource.name": task_run.get_name() or "batch",
            },
            payload={"count": len(subjects), "accounts": subjects},
        )
    for failure in report.failures[:LOGGED_FAILURES]:
        logger.error(
            "account %s failed at %s: %s", failure.subject[:16], failure.stage, failure.error
        )
    if len(report.failures) > LOGGED_FAILURES:
        logger.error("... and %d more failures", len(report.failures) - LOGGED_FAILURES)
    logger.info("batch: %s", dict(report.counts))
    return report


@task(
    name="plan-inactive-accounts",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=0.5,
    cache_policy=NO_CACHE,
)
def plan_sweep(params: SweepParams) -> DueCounts:
    """Check schema and deletion plan, and count what is due (nothing is changed)."""
    settings = get_settings()
    engine = get_engine(settings.resolved_database_url)
    assert_current(engine)
    resolve_plan(engine, settings.deletion_plan)
    with engine.connect() as conn:
        return accounts.count_due(
            conn, as_of=params.as_of, policy=params.policy, now=datetime.now(UTC)
        )


@task(
    name="warn-inactive-batch",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=0.5,
    cache_policy=NO_CACHE,
)
def warn_inactive_batch(params: SweepParams, after: Candidate | None) -> BatchReport:
    """Mail one page of users due a warning, under the shared mail rate."""
    settings = get_settings()
    ctx = _context(settings, params)
    mail_context = WarningContext(
        product_name=settings.product_name,
        app_url=settings.app_url,
        inactive_days=params.warn_after_days,
        grace_days=params.delete_after_days - params.warn_after_days,
    )
    with closing(open_mailer(settings)) as mailer, get_client(sync_client=True) as client:
        paced = settings.mail_rate_per_second > 0
        if paced and not params.dry_run:
            ensure_mail_limit(client, settings.mail_limit_name)
        mutex = (
            PrefectLeaseMutex(client=client, limit_name=settings.mail_limit_name) if paced else None
        )
        with PacedSender(
            mailer=mailer, mutex=mutex, rate_per_second=settings.mail_rate_per_second
        ) as sender:
            report = warn_batch(
                ctx,
                send=sender.send,
                mail_context=mail_context,
                after=after,
                limit=params.batch_size,
            )
    return _report(report, "lifecycle.account.warned", report.warned)


@task(
    name="delete-inactive-batch",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=0.5,
    cache_policy=NO_CACHE,
)
def delete_inactive_batch(
    params: SweepParams, kind: DeletionKind, after: Candidate | None, budget: int
) -> BatchReport:
    """Delete one page of users due deletion: files, then references, then the user row."""
    settings = get_settings()
    ctx = _context(settings, params)
    storage = open_storage(
        settings.resolved_storage_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.aws_region,
    )
    report = delete_batch(
        ctx,
        kind=kind,
        storage=storage,
        plan=resolve_plan(ctx.engine, settings.deletion_plan),
        after=after,
        limit=params.batch_size,
        budget=budget,
    )
    return _report(report, "lifecycle.account.deleted", report.deleted)

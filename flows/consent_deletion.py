"""Flows ``consent-deletion-start`` and ``consent-deletion-poll``: erase at third parties the
analytics data of users who revoked consent (and of accounts deleted by inactive-accounts).

Two flows of one process, each with its own deployment (see prefect.yaml and README):

- ``consent-deletion-start`` requests a deletion per processor for every revocation not
  requested yet, and starts every request not started yet. The ``lifecycle.consent.revoked``
  event triggers it within seconds; a schedule sweeps up what events missed.
- ``consent-deletion-poll`` (hourly) starts what is still requested (account deletions among
  them), checks every pending operation, escalates those pending past ``escalate_after``,
  reports failed ones, and alerts on processor-wide trouble.

Each processor is worked on separately: trouble at one (a refused token, a changed schema, no
answer) is alerted, stops its work for this run, and the others go on; the run then ends Failed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field, StrictBool, StrictInt

from lifecycle.common.batch import BatchReport, resolve_as_of, run_pages
from lifecycle.common.params import Instant, titled
from lifecycle.errors import RunFailed
from lifecycle.privacy import describe_error
from lifecycle.processes.consent_deletion.rules import alert_kind
from lifecycle.processes.consent_deletion.steps import (
    ConsentParams,
    ConsentPlan,
    ConsentReport,
    ConsentSummary,
)
from lifecycle.settings import Duration
from tasks._prefect import publish_summary
from tasks.consent_deletion import (
    alert_operators,
    count_backlog,
    notify_operators,
    poll_deletions,
    preflight,
    request_revocations,
    start_deletions,
)

#: How far ahead ``as_of`` may look (escalations and deadlines only: nothing is deleted early).
LOOK_AHEAD = timedelta(days=366)

Concurrency = Annotated[StrictInt, Field(ge=1, le=256)]
EscalateAfter = Annotated[Duration, Field(ge=timedelta(hours=1), le=timedelta(days=365))]


@flow(name="consent-deletion-start", validate_parameters=True)
def consent_deletion_start(
    as_of: Instant | None = titled(None, "As of (empty: now)"),
    dry_run: StrictBool = titled(False, "Dry run"),
    max_concurrency: Concurrency = titled(8, "Calls in flight per processor, at most"),
) -> ConsentSummary:
    """Request and start third-party deletions for revoked consents; see README.

    Args:
        as_of: Revocations up to this instant are requested, with a time zone, e.g.
            2026-11-01T03:00:00Z. Empty: now.
        dry_run: Count what would be requested and started, and change nothing.
        max_concurrency: Calls in flight at once per processor (1 to 256); each processor's
            own concurrency setting caps it too.
    """
    params = ConsentParams(
        as_of=resolve_as_of(as_of, datetime.now(UTC)),
        dry_run=dry_run,
        max_concurrency=max_concurrency,
    )
    return _run("consent-deletion-start", "Consent deletion: start", params, poll=False)


@flow(name="consent-deletion-poll", validate_parameters=True)
def consent_deletion_poll(
    as_of: Instant | None = titled(None, "As of (empty: now)"),
    dry_run: StrictBool = titled(False, "Dry run"),
    max_concurrency: Concurrency = titled(8, "Calls in flight per processor, at most"),
    escalate_after: EscalateAfter | None = titled(
        None, "Escalate after (ISO 8601 duration, e.g. P3D; empty: each processor's setting)"
    ),
) -> ConsentSummary:
    """Check pending third-party deletions, escalate slow ones, report failures; see README.

    Args:
        as_of: Escalations and legal deadlines are judged at this instant, with a time zone.
            Empty: now. Up to a year ahead is allowed, to see what is coming (use dry_run):
            an operation escalated early is not escalated again.
        dry_run: Count what would be started, checked, escalated and reported; call no
            processor, send nothing, change nothing.
        max_concurrency: Status calls in flight at once per processor (1 to 256); each
            processor's own concurrency setting caps it too.
        escalate_after: Mail the technical contacts about an operation still not complete
            this long after it started, once (ISO 8601 duration, 1 hour to 365 days, e.g. P3D).
            Empty: each processor's escalate_after setting (3 days unless configured).
    """
    params = ConsentParams(
        as_of=resolve_as_of(as_of, datetime.now(UTC), look_ahead=LOOK_AHEAD),
        dry_run=dry_run,
        max_concurrency=max_concurrency,
        escalate_after=escalate_after,
    )
    return _run("consent-deletion-poll", "Consent deletion: poll", params, poll=True)


def _run(process: str, title: str, params: ConsentParams, *, poll: bool) -> ConsentSummary:
    logger = get_run_logger()
    logger.info(
        "as_of=%s dry_run=%s max_concurrency=%d",
        params.as_of.isoformat(),
        params.dry_run,
        params.max_concurrency,
    )
    total, batches = ConsentReport(), 0
    try:
        plan = preflight(params)
        if not plan.processors:
            logger.warning("no processor is enabled (LIFECYCLE_CONSENT_DELETION__PROCESSORS)")
        if not poll:
            batches += run_pages(
                lambda after: request_revocations(params, plan.processors, after), total
            )
        for name in plan.processors:
            batches += _work_at(name, params, plan, total, poll=poll)
        alert_operators(params, total.alerts, sorted(total.resolved))
        _count_backlog(params, plan, total, poll=poll)
    finally:
        summary = ConsentSummary.of(
            total, as_of=params.as_of, dry_run=params.dry_run, batches=batches
        )
        publish_summary(process, title, summary)
    logger.info("summary: %s", summary.line())
    _fail_visibly(summary)
    return summary


def _work_at(
    name: str, params: ConsentParams, plan: ConsentPlan, total: ConsentReport, *, poll: bool
) -> int:
    """Start, then (when polling) check, at one processor; trouble there stops its calls for
    this run and is alerted. Escalations and failure reports follow whatever happened: an
    operation the processor cannot tell us about is exactly one to escalate. Returns how many
    batches ran."""
    tags = {"lifecycle", f"processor:{name}"}
    calls: list[Callable[[], int]] = []
    if plan.deletions_paused:
        get_run_logger().warning("deletions are paused (kill switch): none started at %s", name)
    else:
        start = start_deletions.with_options(name=f"start-deletions-{name}", tags=tags)
        calls.append(lambda: run_pages(lambda after: start(params, name, after), total))
    if poll:
        check = poll_deletions.with_options(name=f"poll-deletions-{name}", tags=tags)
        calls.append(lambda: run_pages(lambda after: check(params, name, after), total))
    batches = 0
    for call in calls:
        try:
            batches += call()
        except Exception as exc:
            if alert_kind(exc) is None:  # not the processor's doing: fail the run
                raise
            detail = describe_error(exc)
            get_run_logger().error("processor %s: %s", name, detail)
            total.anomaly(name, exc, detail)
            break
    if poll:
        notify = notify_operators.with_options(name=f"notify-operators-{name}")
        batches += _merged(notify(params, name), total)
    return batches


def _merged(report: BatchReport, total: BatchReport) -> int:
    total.merge(report)
    return 1


def _count_backlog(
    params: ConsentParams, plan: ConsentPlan, total: ConsentReport, *, poll: bool
) -> None:
    backlog = count_backlog(params, plan.processors)
    total.counts["overdue"] += backlog.overdue
    key = "deletions_paused" if plan.deletions_paused else "requests_waiting"
    total.counts[key] += backlog.requested
    if poll and params.dry_run:
        total.counts["still_pending"] += backlog.pending
    if backlog.overdue:
        get_run_logger().warning("%d deletions are past their legal deadline", backlog.overdue)


def _fail_visibly(summary: ConsentSummary) -> None:
    if summary.failed or summary.anomalies:
        raise RunFailed(
            f"{summary.failed} deletions failed and {summary.anomalies} processor anomalies "
            f"were alerted (see logs and the summary). Summary: {summary.line()}"
        )

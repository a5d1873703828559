"""Flow ``inactive-accounts``: warn non-paying users inactive 60 days, delete them 30 days later."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field, StrictBool, StrictInt

from lifecycle.common.batch import BatchReport, resolve_as_of, run_pages
from lifecycle.common.paging import Cursor
from lifecycle.common.params import Instant, titled
from lifecycle.errors import RunAborted, RunFailed
from lifecycle.processes.inactive_accounts.queries import DeletionQueue
from lifecycle.processes.inactive_accounts.steps import SweepParams, SweepPlan, SweepSummary
from tasks._prefect import publish_summary
from tasks.inactive_accounts import delete_inactive_batch, preflight, warn_inactive_batch


@flow(name="inactive-accounts", validate_parameters=True)
def inactive_accounts(
    as_of: Instant | None = titled(None, "As of (empty: now)"),
    dry_run: StrictBool = titled(False, "Dry run"),
    warn_after_days: Annotated[StrictInt, Field(ge=1, le=3650)] = titled(
        60, "Warn after (days without a visit)"
    ),
    delete_after_days: Annotated[StrictInt, Field(ge=2, le=3650)] = titled(
        90, "Delete after (days without a visit)"
    ),
    batch_size: Annotated[StrictInt, Field(ge=1, le=10_000)] = titled(1000, "Users per batch"),
    max_deletions: Annotated[StrictInt, Field(ge=0, le=10_000_000)] = titled(
        1000, "Most deletions allowed in one run"
    ),
) -> SweepSummary:
    """Warn, then delete, inactive non-paying accounts; see README for the exact policy.

    Args:
        as_of: The instant inactivity is measured at, with a time zone, e.g.
            2026-11-01T03:00:00Z. Empty: now. A past instant replays a missed day; the
            future is refused. Grace periods always run from when a warning was really sent.
        dry_run: Count who would be warned or deleted, and change nothing.
        warn_after_days: Warn after more than this many days without a visit (1 to 3650).
        delete_after_days: Delete after this many days without a visit (2 to 3650, more
            than warn_after_days); the difference is the grace period after every warning.
        batch_size: Users per batch, one Prefect task each (1 to 10000).
        max_deletions: If more accounts than this are due deletion, refuse to run and change
            nothing (0 to 10000000); raise it deliberately for a big backlog.
    """
    params = SweepParams(
        as_of=resolve_as_of(as_of, datetime.now(UTC)),
        dry_run=dry_run,
        warn_after_days=warn_after_days,
        delete_after_days=delete_after_days,
        batch_size=batch_size,
    )
    logger = get_run_logger()
    logger.info("as_of=%s dry_run=%s", params.as_of.isoformat(), dry_run)
    total, batches = BatchReport(), 0
    try:
        plan = preflight(params)
        _log_plan(plan)
        if plan.deletions_paused:
            total.counts["deletions_paused"] += plan.due.delete + plan.due.unfinished
        else:
            _refuse_over_budget(plan, max_deletions, dry_run)
            batches += _delete_all(params, max_deletions, total)
        batches += _warn_all(params, total)
    finally:
        summary = SweepSummary.of(total, as_of=params.as_of, dry_run=dry_run, batches=batches)
        publish_summary("inactive-accounts", "Inactive-accounts sweep", summary)
    logger.info("summary: %s", summary.line())
    _fail_visibly(summary)
    return summary


def _log_plan(plan: SweepPlan) -> None:
    due = plan.due
    logger = get_run_logger()
    logger.info(
        "due: warn=%d delete=%d unfinished=%d; undeliverable, waiting: %d",
        due.warn,
        due.delete,
        due.unfinished,
        due.undeliverable,
    )
    if plan.deletions_paused:
        logger.warning(
            "deletions are paused (kill switch): %d skipped", due.delete + due.unfinished
        )


def _refuse_over_budget(plan: SweepPlan, max_deletions: int, dry_run: bool) -> None:
    due = plan.due.delete + plan.due.unfinished
    if not dry_run and due > max_deletions:
        raise RunAborted(
            f"{due} accounts are due deletion, more than max_deletions={max_deletions}; "
            "nothing was changed. Check the data, then run again with a larger max_deletions "
            "if this is expected."
        )


def _fail_visibly(summary: SweepSummary) -> None:
    """End Failed when users failed, or when every warning claimed had to be deferred."""
    if summary.failed:
        raise RunFailed(
            f"{summary.failed} accounts failed (see logs; they will be retried next run). "
            f"Summary: {summary.line()}"
        )
    if summary.counts.get("deferred") and not summary.counts.get("warned"):
        raise RunFailed(
            f"every claimed warning ({summary.counts['deferred']}) was deferred: the claims' "
            "leases ran out before the mails could go (raise LIFECYCLE_LEASE_SECONDS, or check "
            f"the mail rate). Summary: {summary.line()}"
        )


def _delete_all(params: SweepParams, max_deletions: int, total: BatchReport) -> int:
    """Finish unfinished deletions, then delete who is due, within ``max_deletions``."""

    def budget() -> int:
        return max_deletions - total.counts["deleted"] - total.counts["failed"]

    def batch_of(queue: DeletionQueue) -> Callable[[Cursor | None], BatchReport]:
        return lambda after: delete_inactive_batch(params, queue, after, budget())

    batches = 0
    for queue in DeletionQueue:
        stop = (lambda: False) if params.dry_run else (lambda: budget() <= 0)
        batches += run_pages(batch_of(queue), total, stop)
    return batches


def _warn_all(params: SweepParams, total: BatchReport) -> int:
    return run_pages(lambda after: warn_inactive_batch(params, after), total)

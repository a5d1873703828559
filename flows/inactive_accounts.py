"""Flow ``inactive-accounts``: warn non-paying users inactive 60 days, delete them 30 days later."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from lifecycle.common.batch import BatchReport, resolve_as_of
from lifecycle.common.paging import Cursor, each_page
from lifecycle.errors import RunAborted, RunFailed
from lifecycle.processes.inactive_accounts.queries import DeletionQueue, DueCounts
from lifecycle.processes.inactive_accounts.steps import SweepParams, SweepSummary
from tasks._prefect import publish_summary
from tasks.inactive_accounts import delete_inactive_batch, preflight, warn_inactive_batch


@flow(name="inactive-accounts", validate_parameters=True)
def inactive_accounts(
    as_of: datetime | None = None,
    dry_run: bool = False,
    warn_after_days: Annotated[int, Field(ge=1, le=3650)] = 60,
    delete_after_days: Annotated[int, Field(ge=2, le=3650)] = 90,
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 1000,
    max_deletions: Annotated[int, Field(ge=0, le=10_000_000)] = 1000,
) -> SweepSummary:
    """Warn, then delete, inactive non-paying accounts; see README for the exact policy.

    Args:
        as_of: Evaluate inactivity as of this instant (with time zone); default now. A past
            date replays a missed day; the future is refused.
        dry_run: Count who would be warned or deleted, and change nothing.
        warn_after_days: Warn after more than this many days without a visit.
        delete_after_days: Delete after this many days without a visit; the difference from
            warn_after_days is the grace period that follows every warning.
        batch_size: Users per batch; one Prefect task per batch.
        max_deletions: Refuse to run (and change nothing) if more accounts than this are due
            deletion; raise it deliberately for a big backlog.
    """
    params = SweepParams(
        as_of=resolve_as_of(as_of, datetime.now(UTC)),
        dry_run=dry_run,
        warn_after_days=warn_after_days,
        delete_after_days=delete_after_days,
        batch_size=batch_size,
    )
    due = preflight(params)
    get_run_logger().info(
        "due: warn=%d delete=%d unfinished=%d", due.warn, due.delete, due.unfinished
    )
    _refuse_over_budget(due, max_deletions, dry_run)

    total = BatchReport()
    batches = _delete_all(params, max_deletions, total) + _warn_all(params, total)

    summary = SweepSummary.of(total, as_of=params.as_of, dry_run=dry_run, batches=batches)
    publish_summary("inactive-accounts-summary", "Inactive-accounts sweep", summary)
    get_run_logger().info("summary: %s", summary.line())
    if summary.failed:
        raise RunFailed(
            f"{summary.failed} accounts failed (see logs; they will be retried next run). "
            f"Summary: {summary.line()}"
        )
    return summary


def _refuse_over_budget(due: DueCounts, max_deletions: int, dry_run: bool) -> None:
    if not dry_run and due.delete + due.unfinished > max_deletions:
        raise RunAborted(
            f"{due.delete + due.unfinished} accounts are due deletion, more than "
            f"max_deletions={max_deletions}; nothing was changed. Check the data, then run "
            "again with a larger max_deletions if this is expected."
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
        batches += _run_pages(batch_of(queue), total, stop)
    return batches


def _warn_all(params: SweepParams, total: BatchReport) -> int:
    return _run_pages(lambda after: warn_inactive_batch(params, after), total)


def _run_pages(
    run_batch: Callable[[Cursor | None], BatchReport],
    total: BatchReport,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Run a walk's batches one after another into ``total``; returns how many ran."""
    batches = 0
    for report in each_page(run_batch, stop=stop):
        total.merge(report)
        batches += 1
    return batches

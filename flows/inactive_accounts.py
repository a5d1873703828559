"""Flow ``inactive-accounts``: warn non-paying users inactive 60 days, delete them 30 days later."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from lifecycle.accounts import Candidate, DeletionKind
from lifecycle.sweep import BatchReport, Failure
from tasks.inactive_accounts import (
    SweepParams,
    delete_inactive_batch,
    plan_sweep,
    warn_inactive_batch,
)

#: Tolerated clock skew between the caller and the worker for ``as_of``.
CLOCK_SKEW = timedelta(minutes=5)
#: Failures kept in the summary (all are logged by their batch).
KEPT_FAILURES = 50


class SweepAborted(RuntimeError):
    """The run refused to act (too many deletions); nothing was changed."""


class SweepFailed(RuntimeError):
    """Some users failed; everything else was processed. The summary says which."""


class SweepSummary(BaseModel):
    as_of: datetime
    dry_run: bool
    counts: dict[str, int]
    objects_deleted: int
    batches: int
    failures: list[Failure]

    def line(self) -> str:
        counts = ", ".join(f"{key}={value}" for key, value in sorted(self.counts.items()))
        return f"as_of={self.as_of.isoformat()} dry_run={self.dry_run} {counts or 'nothing to do'}"


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
    logger = get_run_logger()
    params = SweepParams(
        as_of=_checked_as_of(as_of),
        dry_run=dry_run,
        warn_after_days=warn_after_days,
        delete_after_days=delete_after_days,
        batch_size=batch_size,
    )
    if delete_after_days <= warn_after_days:
        raise ValueError(
            f"delete_after_days ({delete_after_days}) must be greater than "
            f"warn_after_days ({warn_after_days}): the difference is the grace period"
        )

    due = plan_sweep(params)
    logger.info("due: warn=%d delete=%d resume=%d", due.warn, due.delete, due.resume)
    if not dry_run and due.delete + due.resume > max_deletions:
        raise SweepAborted(
            f"{due.delete + due.resume} accounts are due deletion, more than "
            f"max_deletions={max_deletions}; nothing was changed. Check the data, then run "
            "again with a larger max_deletions if this is expected."
        )

    total = BatchReport()
    batches = 0
    kinds: tuple[DeletionKind, ...] = ("resume", "due")
    for kind in kinds:
        after: Candidate | None = None
        while True:
            budget = max_deletions - total.counts["deleted"] - total.counts["failed"]
            if budget <= 0 and not dry_run:
                break
            report = delete_inactive_batch(params, kind, after, budget)
            batches += 1
            _merge(total, report)
            if report.last is None:
                break
            after = report.last
    after = None
    while True:
        report = warn_inactive_batch(params, after)
        batches += 1
        _merge(total, report)
        if report.last is None:
            break
        after = report.last

    summary = SweepSummary(
        as_of=params.as_of,
        dry_run=dry_run,
        counts={key: value for key, value in total.counts.items() if value},
        objects_deleted=total.objects_deleted,
        batches=batches,
        failures=total.failures[:KEPT_FAILURES],
    )
    create_table_artifact(
        key="inactive-accounts-summary",
        table=[{"outcome": key, "count": value} for key, value in sorted(summary.counts.items())]
        + [{"outcome": "objects_deleted", "count": summary.objects_deleted}],
        description=f"Inactive-accounts sweep: {summary.line()}",
    )
    logger.info("summary: %s", summary.line())
    if total.failures:
        raise SweepFailed(
            f"{len(total.failures)} accounts failed (see logs; they will be retried next run). "
            f"Summary: {summary.line()}"
        )
    return summary


def _checked_as_of(as_of: datetime | None) -> datetime:
    now = datetime.now(UTC)
    if as_of is None:
        return now
    if as_of.tzinfo is None:
        raise ValueError("as_of needs a time zone, e.g. 2026-11-01T00:00:00Z")
    if as_of > now + CLOCK_SKEW:
        raise ValueError(f"as_of {as_of.isoformat()} is in the future; deletions cannot be early")
    return as_of.astimezone(UTC)


def _merge(total: BatchReport, report: BatchReport) -> None:
    total.counts.update(Counter(report.counts))
    total.failures.extend(report.failures)
    total.objects_deleted += report.objects_deleted

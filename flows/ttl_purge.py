"""Flow ``ttl-purge``: delete expired rows in short batches the application never waits on."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, cast

from prefect import flow
from prefect.futures import PrefectFuture
from pydantic import Field, StrictBool, StrictInt

from lifecycle.common.batch import BatchReport, resolve_as_of
from lifecycle.common.paging import WHOLE_TABLE, Cursor, KeyRange, each_page
from lifecycle.common.params import Instant, titled
from lifecycle.processes.abandoned_carts.steps import CartParams
from lifecycle.processes.ttl_purge.steps import (
    DynamoResult,
    PlannedTarget,
    PurgeParams,
    PurgePlan,
    PurgeReport,
    PurgeSummary,
    TargetResult,
    split,
)
from tasks._prefect import conclude, kill_switch, publish_summary, walk_shards
from tasks.abandoned_carts import expire_carts_batch
from tasks.ttl_purge import (
    check_dynamodb_ttl,
    measure_ttl_backlog,
    plan_purge,
    publish_monitoring,
    purge_ttl_slice,
    vacuum_ttl_target,
)

#: Carts per batch when a target's action reports abandoned carts (one HTTP call per cart).
CART_BATCH = 100


@flow(name="ttl-purge", validate_parameters=True)
def ttl_purge(
    as_of: Instant | None = titled(None, "As of (empty: now)"),
    dry_run: StrictBool = titled(False, "Dry run"),
    targets: list[str] | None = titled(None, "Targets (empty: all)"),
    max_runtime: Annotated[StrictInt, Field(ge=10, le=86_400)] = titled(
        1800, "Longest run (seconds)"
    ),
    vacuum: StrictBool = titled(True, "VACUUM after a large purge"),
    check_dynamodb: StrictBool = titled(True, "Check DynamoDB TTL"),
    shards: Annotated[StrictInt, Field(ge=1, le=16)] = titled(1, "Shards walked side by side"),
) -> PurgeSummary:
    """Purge expired rows from every configured target; see README for the rules.

    Args:
        as_of: Purge rows whose expiry is before this instant (with time zone); default now.
            An earlier instant purges less; the future is refused.
        dry_run: Measure each target's backlog and choose its walk, and delete nothing.
        targets: Names of configured targets to purge (LIFECYCLE_TTL_PURGE__TARGETS);
            default: all of them.
        max_runtime: Seconds after which the run stops cleanly between two batches (10 to
            86400); what is left is purged by the next run.
        vacuum: On PostgreSQL, VACUUM (ANALYZE) a table after a large purge, so its space is
            reused (about 1 s per million rows deleted; the application is not blocked).
        check_dynamodb: Enable and verify native TTL on the configured DynamoDB tables, and
            count the expired items still present (a full scan of each table).
        shards: Cut a block walk into this many block ranges walked side by side (1 to 16),
            one task at a time each; how many run at once is the task runner's business
            (threads by default, processes with ``flows/scale_out.py``'s Dask runner).
    """
    started = datetime.now(UTC)
    total = PurgeReport()
    results: list[TargetResult] = []
    dynamodb: list[DynamoResult] = []
    as_used = started
    paused = False
    try:
        paused = kill_switch()
        params = PurgeParams(
            as_of=resolve_as_of(as_of, started),
            dry_run=dry_run or paused,  # paused: measure and report, delete nothing
            deadline=started + timedelta(seconds=max_runtime),
            targets=targets,
            vacuum=vacuum,
            check_dynamodb=check_dynamodb,
        )
        as_used = params.as_of
        for planned in plan_purge(params):
            results.append(_purge(params, planned, total, shards))
        if check_dynamodb:
            dynamodb = check_dynamodb_ttl(params)
        _remaining(params, results)
        if paused:
            total.counts["deletions_paused"] += total.counts["would_purge"]
    finally:
        summary = PurgeSummary.of(
            total, as_of=as_used, dry_run=dry_run or paused, batches=total.totals["batches"]
        ).model_copy(
            update={
                "targets": results,
                "dynamodb": dynamodb,
                "stopped_early": any(not result.finished for result in results),
            }
        )
        publish_summary("ttl-purge", "TTL purge", summary)
        publish_monitoring(results, dynamodb)
    conclude(summary, "rows or carts", "see logs; the next run tries them again")
    return summary


def _purge(
    params: PurgeParams, planned: PlannedTarget, total: BatchReport, shards: int
) -> TargetResult:
    """Walk one target to its end or the deadline, then VACUUM it if much went."""
    plan, backlog = planned.plan, planned.backlog
    result = TargetResult(
        target=plan.target,
        strategy=plan.strategy.value if plan.strategy else "action:abandoned-cart",
        expired_before=backlog.expired,
        oldest_age_before_seconds=backlog.oldest_age_seconds,
    )
    if params.dry_run and plan.strategy is not None:
        total.counts["would_purge"] += backlog.expired
        total.counts["would_purge_orphans"] += planned.orphans
        return result
    report = PurgeReport()
    if plan.strategy is None:
        carts = CartParams(
            as_of=params.as_of,
            dry_run=params.dry_run,
            batch_size=CART_BATCH,
            deadline=params.deadline,
        )
        result.finished = _walk(lambda after: expire_carts_batch(carts, after), report, params)
        removed = (
            report.counts["reported"]
            - report.counts["changed_while_sending"]
            + report.counts["purged_unreported"]
        )
    else:
        result.finished = _walk_shards(params, split(plan, shards), report)
        removed = report.counts["purged"] + report.counts["orphans_purged"]
    total.merge(report)
    result.purged = removed - report.counts["orphans_purged"]
    result.orphans_purged = report.counts["orphans_purged"]
    result.batches = report.totals["batches"]
    result.purge_seconds = round(report.seconds, 3)
    result.longest_batch_ms = round(report.longest_batch * 1000, 1)
    if report.first_batch_at is not None and report.last_batch_at is not None:
        result.first_batch_at = datetime.fromtimestamp(report.first_batch_at, UTC)
        result.last_batch_at = datetime.fromtimestamp(report.last_batch_at, UTC)
    if params.vacuum and not params.dry_run and plan.strategy is not None and removed:
        result.vacuum_seconds = vacuum_ttl_target(plan.target, removed)
    return result


def _walk(
    run_slice: Callable[[Cursor | None], BatchReport], into: BatchReport, params: PurgeParams
) -> bool:
    """Run slices until the walk ends (True) or the deadline passes (False)."""
    last: BatchReport | None = None
    for report in each_page(run_slice, stop=lambda: datetime.now(UTC) >= params.deadline):
        into.merge(report)
        last = report
    return last is not None and last.last is None


def _walk_shards(params: PurgeParams, plans: list[PurgePlan], into: PurgeReport) -> bool:
    """Walk each shard's slices, the shards side by side, until every walk ends (True) or the
    deadline passes (False)."""
    by_range = {
        KeyRange(p.extent.first, p.extent.end) if p.extent else WHOLE_TABLE: p for p in plans
    }
    stopped: set[KeyRange] = set()

    def submit(
        shard: KeyRange, after: Cursor | None, _: BatchReport
    ) -> PrefectFuture[BatchReport] | None:
        if after is not None and datetime.now(UTC) >= params.deadline:
            stopped.add(shard)
            return None
        future = purge_ttl_slice.submit(params, by_range[shard], after)
        return cast("PrefectFuture[BatchReport]", future)  # futures are invariant

    walk_shards(submit, list(by_range), into)
    return not stopped


def _remaining(params: PurgeParams, results: list[TargetResult]) -> None:
    """Measure what is still expired after the purge, for the monitoring artifact."""
    backlogs = measure_ttl_backlog(params, [result.target for result in results])
    for result in results:
        backlog = backlogs[result.target]
        result.expired_after = backlog.expired
        result.oldest_age_seconds = backlog.oldest_age_seconds
        result.rows = backlog.rows
        result.table_bytes = backlog.table_bytes

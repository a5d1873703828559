"""Thin Prefect tasks over :mod:`lifecycle.processes.ttl_purge`: plan, purge slices, vacuum,
measure, DynamoDB TTL; plus the monitoring artifact and backlog events."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import get_run_logger
from prefect.events import emit_event

from lifecycle.clients.build import Clients
from lifecycle.clients.dynamodb import DynamoTtl
from lifecycle.common.paging import Cursor
from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import assert_current
from lifecycle.processes.ttl_purge import queries, steps
from lifecycle.processes.ttl_purge.rules import Backlog, cutoff
from lifecycle.processes.ttl_purge.steps import (
    DynamoResult,
    PlannedTarget,
    PurgeContext,
    PurgeParams,
    PurgePlan,
    PurgeReport,
    TargetResult,
)
from lifecycle.settings import Settings, get_settings
from tasks._prefect import batch_task, emit_batch_event, publish_table


def _target(settings: Settings, name: str) -> queries.Target:
    (chosen,) = steps.select_targets(settings.ttl_purge, [name])
    return queries.resolve_target(get_engine(settings.resolved_database_url), chosen)


@batch_task("plan-ttl-purge")
def plan_purge(params: PurgeParams) -> list[PlannedTarget]:
    """Check every target against the schema (before anything is deleted), measure its
    backlog and choose its walk."""
    settings = get_settings()
    engine = get_engine(settings.resolved_database_url)
    assert_current(engine)
    targets = queries.resolve_targets(
        engine, steps.select_targets(settings.ttl_purge, params.targets)
    )
    planned: list[PlannedTarget] = []
    now = datetime.now(UTC)
    with engine.connect() as conn:
        for target in targets:
            limit = cutoff(target.settings.expiry_kind, params.as_of)
            backlog = queries.measure_backlog(conn, target, limit, now)
            orphans = queries.count_orphans(conn, target, limit) if params.dry_run else 0
            plan = steps.plan(conn, target, backlog, settings.ttl_purge)
            planned.append(PlannedTarget(plan=plan, backlog=backlog, orphans=orphans))
            get_run_logger().info(
                "%s: %d of ~%d rows expired, walk: %s",
                target.name,
                backlog.expired,
                backlog.rows,
                plan.strategy or target.settings.action,
            )
    return planned


@batch_task("purge-ttl-slice")
def purge_ttl_slice(params: PurgeParams, plan: PurgePlan, after: Cursor | None) -> PurgeReport:
    """Many short delete batches on one target, for up to a slice of time."""
    settings = get_settings()
    context = PurgeContext(
        engine=get_engine(settings.resolved_database_url),
        as_of=params.as_of,
        deadline=params.deadline,
        lock_wait_ms=settings.ttl_purge.lock_wait_ms,
    )
    report = steps.purge_slice(context, _target(settings, plan.target), plan, after)
    removed = report.counts["purged"] + report.counts["orphans_purged"]
    if removed:
        emit_batch_event(
            "lifecycle.ttl.purged",
            {"target": plan.target, "count": removed, "orphans": report.counts["orphans_purged"]},
        )
    get_run_logger().info(
        "%s: %d rows in %d batches (%.2f s)",
        plan.target,
        removed,
        report.totals["batches"],
        report.seconds,
    )
    return report


@batch_task("vacuum-ttl-target")
def vacuum_ttl_target(target_name: str, deleted: int) -> float | None:
    """VACUUM a PostgreSQL table after a large purge; seconds taken, or None when skipped."""
    settings = get_settings()
    if deleted < max(1, settings.ttl_purge.vacuum_after_rows):
        return None
    target = _target(settings, target_name)
    started = time.perf_counter()
    if not queries.vacuum(get_engine(settings.resolved_database_url), target):
        return None
    return time.perf_counter() - started


@batch_task("measure-ttl-backlog")
def measure_ttl_backlog(params: PurgeParams, names: list[str]) -> dict[str, Backlog]:
    """Each target's backlog now (after the purge)."""
    settings = get_settings()
    return steps.backlogs(
        get_engine(settings.resolved_database_url),
        steps.select_targets(settings.ttl_purge, names),
        as_of=params.as_of,
        now=datetime.now(UTC),
    )


@batch_task("check-dynamodb-ttl")
def check_dynamodb_ttl(params: PurgeParams) -> list[DynamoResult]:
    """Native TTL on each configured DynamoDB table: enabled if off (not in a dry run),
    verified, and the items it has not removed yet."""
    settings = get_settings()
    tables = settings.ttl_purge.dynamodb_tables
    if not tables:
        return []
    clients = Clients(settings)
    ttl = DynamoTtl(clients.dynamodb[0])
    now = datetime.now(UTC)
    results: list[DynamoResult] = []
    for table in tables:
        state = ttl.ensure(table.table, table.attribute, enable=not params.dry_run)
        items = ttl.expired_items(table.table, table.attribute, now)
        oldest = items.oldest_expiry
        results.append(
            DynamoResult(
                table=table.table,
                ttl_status=state.status,
                enabled_now=state.changed,
                expired_items=items.expired,
                overdue_items=items.overdue,
                oldest_age_seconds=None if oldest is None else int((now - oldest).total_seconds()),
                scanned_items=items.scanned,
            )
        )
    return results


def publish_monitoring(results: list[TargetResult], dynamodb: list[DynamoResult]) -> None:
    """The backlog table artifact, and one ``lifecycle.ttl.backlog`` event per target (or
    DynamoDB table) whose backlog crossed the configured thresholds."""
    settings = get_settings()
    config = settings.ttl_purge
    rows = [
        result.model_dump(mode="json") | {"rows_per_second": result.rows_per_second}
        for result in results
    ]
    publish_table("ttl-purge-backlog", "TTL purge: backlog per target", rows)
    if dynamodb:
        tables = [table.model_dump() for table in dynamodb]
        publish_table("ttl-purge-dynamodb", "TTL purge: DynamoDB tables", tables)
    for result in results:
        if result.over(
            rows=config.backlog_alert_rows, age_seconds=config.backlog_alert_age_seconds
        ):
            age = max(result.oldest_age_before_seconds or 0, result.oldest_age_seconds or 0)
            _alert(
                f"lifecycle.ttl-target.{result.target}",
                result.target,
                result.expired_after or 0,
                age,
                settings,
            )
    for table in dynamodb:
        if table.over(rows=config.backlog_alert_rows):
            _alert(
                f"lifecycle.dynamodb-table.{table.table}",
                table.table,
                table.expired_items,
                table.oldest_age_seconds or 0,
                settings,
            )


def _alert(resource: str, name: str, expired: int, age: int, settings: Settings) -> None:
    emit_event(
        event="lifecycle.ttl.backlog",
        resource={"prefect.resource.id": resource, "prefect.resource.name": name},
        payload={
            "expired": expired,
            "oldest_age_seconds": age,
            "alert_rows": settings.ttl_purge.backlog_alert_rows,
            "alert_age_seconds": settings.ttl_purge.backlog_alert_age_seconds,
        },
    )
    get_run_logger().warning(
        "%s: the purge is not keeping up: %d expired rows left; the oldest seen was %d s past "
        "its expiry",
        name,
        expired,
        age,
    )

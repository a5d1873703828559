"""The TTL purge's units of work: measure and plan a target, purge a slice of it.

A slice runs SQL batches one after another, each in its own short transaction, until the
target is done, the slice's time is up (so a Prefect task covers many batches, not one), or
the run's deadline (``max_runtime``) has passed; it always stops between batches, and says
where the next slice starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import sqlalchemy as sa
from pydantic import BaseModel

from lifecycle.common.batch import BatchReport, RunSummary
from lifecycle.common.paging import Cursor
from lifecycle.errors import ConfigError
from lifecycle.processes.ttl_purge import queries
from lifecycle.processes.ttl_purge.queries import Deleted, Extent, Target
from lifecycle.processes.ttl_purge.rules import (
    Backlog,
    Strategy,
    blocks_per_batch,
    choose_strategy,
    cutoff,
)
from lifecycle.settings import PurgeTarget, TtlPurgeSettings

#: A slice (one Prefect task) runs batches for about this long.
SLICE_SECONDS = 20.0
#: PostgreSQL's "lock not available", raised when ``lock_timeout`` ran out.
LOCK_NOT_AVAILABLE = "55P03"


class PurgeParams(BaseModel):
    """A run's parameters, the same for every task of the run."""

    as_of: datetime
    dry_run: bool
    deadline: datetime
    targets: list[str] | None = None  # names; None: every configured target
    vacuum: bool = True
    check_dynamodb: bool = True


def select_targets(settings: TtlPurgeSettings, names: list[str] | None) -> list[PurgeTarget]:
    """The configured targets named (all when ``names`` is None); unknown names are refused."""
    if names is None:
        return list(settings.targets)
    known = {target.name: target for target in settings.targets}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ConfigError(
            f"targets {unknown} are not configured (configured: {sorted(known)}); see "
            "LIFECYCLE_TTL_PURGE__TARGETS"
        )
    return [known[name] for name in dict.fromkeys(names)]


@dataclass(frozen=True)
class PurgePlan:
    """How one run purges one target."""

    target: str
    strategy: Strategy | None  # None: the target's action does the purge (abandoned carts)
    batch_size: int
    extent: Extent | None = None  # the block walk's range
    batch_blocks: int = 0


@dataclass
class PurgeReport(BatchReport):
    """A slice's report, with when its first batch started and its last one ended."""

    first_batch_at: float | None = None
    last_batch_at: float | None = None
    longest_batch: float = 0.0  # seconds: the longest a writer could wait for one of our rows

    def batch_ran(self, started: float, ended: float) -> None:
        self.totals["batches"] += 1
        self.first_batch_at = started if self.first_batch_at is None else self.first_batch_at
        self.last_batch_at = ended
        self.longest_batch = max(self.longest_batch, ended - started)

    def merge(self, other: BatchReport) -> None:
        super().merge(other)
        if isinstance(other, PurgeReport) and other.first_batch_at is not None:
            assert other.last_batch_at is not None
            self.first_batch_at = min(
                self.first_batch_at or other.first_batch_at, other.first_batch_at
            )
            self.last_batch_at = max(self.last_batch_at or other.last_batch_at, other.last_batch_at)
            self.longest_batch = max(self.longest_batch, other.longest_batch)

    @property
    def seconds(self) -> float:
        if self.first_batch_at is None or self.last_batch_at is None:
            return 0.0
        return self.last_batch_at - self.first_batch_at


def backlogs(
    engine: sa.Engine, targets: list[PurgeTarget], *, as_of: datetime, now: datetime
) -> dict[str, Backlog]:
    """Each target's backlog at ``as_of``: what monitoring shows (``lifecycle ttl-status``)."""
    found: dict[str, Backlog] = {}
    with engine.connect() as conn:
        for target in queries.resolve_targets(engine, targets):
            limit = cutoff(target.settings.expiry_kind, as_of)
            found[target.name] = queries.measure_backlog(conn, target, limit, now)
    return found


def plan(
    conn: sa.Connection, target: Target, backlog: Backlog, settings: TtlPurgeSettings
) -> PurgePlan:
    """Choose the walk from the backlog, and for a block walk, its range and step."""
    size = target.settings.batch_size
    if target.settings.action is not None:
        return PurgePlan(target=target.name, strategy=None, batch_size=size)
    strategy = choose_strategy(
        target.settings.strategy,
        expired=backlog.expired,
        rows=backlog.rows,
        block_walk_above=settings.block_walk_above,
        can_walk_blocks=target.can_walk_blocks,
        has_expiry_index=target.has_expiry_index,
        finds_orphans=target.settings.orphan_of is not None,
    )
    if strategy is Strategy.INDEX:
        return PurgePlan(target=target.name, strategy=strategy, batch_size=size)
    extent = queries.extent(conn, target)
    step = blocks_per_batch(size, extent.rows_per_block)
    return PurgePlan(target.name, strategy, size, extent=extent, batch_blocks=step)


def split(plan: PurgePlan, shards: int) -> list[PurgePlan]:
    """A block walk cut into ``shards`` contiguous block ranges (whole batches each), walked
    side by side; any other plan stays one walk (an index walk is one per target)."""
    if plan.extent is None or shards == 1:
        return [plan]
    first, end = plan.extent.first, plan.extent.end
    batches = -(-(end - first) // plan.batch_blocks)  # ceiling
    edges = sorted({first + batches * part // shards * plan.batch_blocks for part in range(shards)})
    bounds = [*edges, end]
    return [
        replace(plan, extent=replace(plan.extent, first=low, end=min(high, end)))
        for low, high in zip(bounds, bounds[1:], strict=False)
        if low < min(high, end)
    ] or [plan]


@dataclass(frozen=True)
class PlannedTarget:
    """A target's plan and its backlog when the run began (and, in a dry run, its orphans)."""

    plan: PurgePlan
    backlog: Backlog
    orphans: int = 0


@dataclass(frozen=True)
class PurgeContext:
    engine: sa.Engine
    as_of: datetime
    deadline: datetime
    lock_wait_ms: int
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    slice_seconds: float = SLICE_SECONDS
    timer: Callable[[], float] = time.monotonic

    def out_of_time(self) -> bool:
        return self.clock() >= self.deadline


@dataclass
class _Slice:
    ctx: PurgeContext
    target: Target
    plan: PurgePlan
    report: PurgeReport = field(default_factory=PurgeReport)

    @property
    def cutoff(self) -> int | datetime:
        return cutoff(self.target.settings.expiry_kind, self.ctx.as_of)

    def record(self, deleted: Deleted) -> None:
        self.report.counts["purged"] += deleted.expired
        self.report.counts["orphans_purged"] += deleted.orphans

    def block_batch(self, start: int) -> Cursor | None:
        """Delete the doomed rows of one block range; the cursor of the next one, if any."""
        assert self.plan.extent is not None
        end = min(start + self.plan.batch_blocks, self.plan.extent.end)
        try:
            self._delete_range(start, end, skip_locked=False)
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            self.report.totals["lock_fallbacks"] += 1  # the application holds a row here
            self._delete_range(start, end, skip_locked=True)
        return Cursor(id=0, position=end) if end < self.plan.extent.end else None

    def _delete_range(self, start: int, end: int, *, skip_locked: bool) -> None:
        with self.ctx.engine.begin() as conn:
            if not queries.start_batch(conn, self.target, start, self.ctx.lock_wait_ms):
                self.report.counts["ranges_skipped"] += 1  # another run is purging it
                return
            deleted = queries.delete_range(
                conn, self.target, start, end, self.cutoff, skip_locked=skip_locked
            )
        self.record(deleted)

    def index_batch(self, after: Cursor | None) -> Cursor | None:
        """Delete one page of the index walk; the cursor of the next one, if any."""
        try:
            return self._delete_page(after, skip_locked=False)
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            self.report.totals["lock_fallbacks"] += 1  # the application holds a row here
            return self._delete_page(after, skip_locked=True)

    def _delete_page(self, after: Cursor | None, *, skip_locked: bool) -> Cursor | None:
        with self.ctx.engine.begin() as conn:
            if not queries.start_batch(
                conn, self.target, queries.INDEX_WALK, self.ctx.lock_wait_ms
            ):
                self.report.counts["target_busy"] += 1  # another run walks it: leave it to it
                return None
            count, last = queries.delete_expiry_page(
                conn, self.target, self.cutoff, after, self.plan.batch_size, skip_locked=skip_locked
            )
        self.record(Deleted(expired=count))
        return last


def start(plan: PurgePlan) -> Cursor:
    """Where a walk begins: the first block, or the lowest expiry (no position yet)."""
    if plan.strategy is Strategy.BLOCKS:
        assert plan.extent is not None
        return Cursor(id=0, position=plan.extent.first)
    return Cursor(id=None, position=None)


def purge_slice(
    ctx: PurgeContext, target: Target, plan: PurgePlan, after: Cursor | None
) -> PurgeReport:
    """Run batches from ``after`` (None: the start) for up to a slice; ``report.last`` is where
    the next slice starts, None once the target is done."""
    assert plan.strategy is not None, "targets with an action are purged by their action"
    work = _Slice(ctx, target, plan)
    cursor: Cursor | None = after or start(plan)
    if plan.extent is not None and cursor is not None and cursor.position >= plan.extent.end:
        cursor = None  # an empty table
    started = ctx.timer()
    while cursor is not None:
        if ctx.out_of_time() or ctx.timer() - started >= ctx.slice_seconds:
            break
        began = time.time()
        if plan.strategy is Strategy.BLOCKS:
            cursor = work.block_batch(int(cursor.position))
        else:
            cursor = work.index_batch(None if cursor.position is None else cursor)
        work.report.batch_ran(began, time.time())
    work.report.last = cursor
    return work.report


class TargetResult(BaseModel):
    """What one run did to one target, as shown in the monitoring artifact."""

    target: str
    strategy: str
    expired_before: int
    oldest_age_before_seconds: int | None = None
    purged: int = 0
    orphans_purged: int = 0
    batches: int = 0
    first_batch_at: datetime | None = None
    last_batch_at: datetime | None = None
    purge_seconds: float = 0.0  # from the start of the first batch to the end of the last
    longest_batch_ms: float = 0.0
    vacuum_seconds: float | None = None
    finished: bool = True
    expired_after: int | None = None
    oldest_age_seconds: int | None = None  # after the run
    rows: int | None = None
    table_bytes: int | None = None

    def over(self, *, rows: int, age_seconds: int) -> bool:
        """The purge is not keeping up: too many rows still expired after the run, or rows
        that were already too old when it began (rows a run merely missed, because a writer
        moved them behind its walk, go in the next run and do not count)."""
        remaining = self.expired_after or 0
        return remaining > rows or (self.oldest_age_before_seconds or 0) > age_seconds

    @property
    def rows_per_second(self) -> float | None:
        removed = self.purged + self.orphans_purged
        return removed / self.purge_seconds if self.purge_seconds > 0 else None


class DynamoResult(BaseModel):
    """A DynamoDB table's native TTL, and the expired items it has not removed yet."""

    table: str
    ttl_status: str
    enabled_now: bool
    expired_items: int
    overdue_items: int  # expired longer ago than DynamoDB's usual 48 hours
    oldest_age_seconds: int | None
    scanned_items: int

    def over(self, *, rows: int) -> bool:
        """TTL is behind: items past the 48 hours, or too many expired ones."""
        return self.overdue_items > 0 or self.expired_items > rows


class PurgeSummary(RunSummary):
    """What one ttl-purge run did, per outcome and per target."""

    targets: list[TargetResult] = []
    dynamodb: list[DynamoResult] = []
    stopped_early: bool = False

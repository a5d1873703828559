"""The TTL purge in SQL: targets checked against the live schema, backlog, and batch deletes.

Names from settings are only used to look up reflected tables and columns, never pasted into
SQL. Every DELETE re-checks, in its own WHERE, that the row is still expired (or still an
orphan), so a row the application refreshed since it was found stays.

Rows are named by their physical id: ``ctid`` on PostgreSQL, ``rowid`` on SQLite. An id is
only used inside the statement that found it, never carried to another transaction (a ctid
changes when a row is updated), except as the keyset cursor of the index walk, where a stale
cursor can only make a batch start a little late, never delete a wrong row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from lifecycle.common.paging import Cursor
from lifecycle.errors import ConfigError
from lifecycle.processes.ttl_purge.rules import Backlog, expiry_instant
from lifecycle.settings import PurgeTarget

#: TID range scans (the block walk) arrived in PostgreSQL 14.
BLOCK_WALK_SINCE = (14,)


class TargetError(ConfigError):
    """A purge target does not match the database; nothing was deleted."""


class Tid(sa.types.UserDefinedType[str]):
    """PostgreSQL's physical row id, ``(block,offset)``; read and written as text."""

    cache_ok = True

    def get_col_spec(self, **_: Any) -> str:
        return "TID"


@dataclass(frozen=True)
class Target:
    """A purge target resolved against the live schema."""

    settings: PurgeTarget
    table: sa.Table
    expiry: sa.Column[Any]
    row_id: sa.Column[Any]  # ctid or rowid
    dialect: str
    primary: sa.Table | None  # the table orphans are checked against
    has_expiry_index: bool
    can_walk_blocks: bool

    @property
    def name(self) -> str:
        return self.settings.name

    def cutoff(self, value: int | datetime) -> int | datetime:
        """``value`` as the expiry column stores it (naive UTC for a column without zone)."""
        if isinstance(value, datetime) and not getattr(self.expiry.type, "timezone", False):
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def expired(
        self, cutoff: int | datetime, table: sa.FromClause | None = None
    ) -> ColumnElement[bool]:
        column = (table if table is not None else self.table).c[self.expiry.name]
        return column < sa.literal(self.cutoff(cutoff), self.expiry.type)

    def orphaned(self, table: sa.FromClause | None = None) -> ColumnElement[bool] | None:
        """No primary row matches (None when the target does not look for orphans)."""
        rule = self.settings.orphan_of
        if rule is None or self.primary is None:
            return None
        own = table if table is not None else self.table
        primary = self.primary.alias("primary_row")
        match = [own.c[mine] == primary.c[theirs] for mine, theirs in rule.columns.items()]
        return ~sa.exists().where(*match)

    def doomed(
        self, cutoff: int | datetime, table: sa.FromClause | None = None
    ) -> ColumnElement[bool]:
        """Expired, or an orphan: what a batch deletes."""
        orphan = self.orphaned(table)
        expired = self.expired(cutoff, table)
        return expired if orphan is None else sa.or_(expired, orphan)


def _problem(target: PurgeTarget, message: str) -> TargetError:
    return TargetError(
        f"TTL purge target {target.name!r}: {message}; fix LIFECYCLE_TTL_PURGE__TARGETS "
        "(nothing was deleted)"
    )


def _expiry_type_fits(target: PurgeTarget, column: sa.Column[Any]) -> bool:
    wanted = sa.Integer if target.expiry_kind == "epoch" else sa.DateTime
    return isinstance(column.type, wanted)


def resolve_target(engine: sa.Engine, target: PurgeTarget) -> Target:
    """Reflect the target's table and check every name and type it relies on."""
    inspector = sa.inspect(engine)
    dialect = engine.dialect.name
    if not inspector.has_table(target.table):
        raise _problem(target, f"table {target.table!r} does not exist")
    metadata = sa.MetaData()
    table = sa.Table(target.table, metadata, autoload_with=engine)
    if target.expiry_column not in table.c:
        raise _problem(target, f"column {target.table}.{target.expiry_column} does not exist")
    expiry = table.c[target.expiry_column]
    if not _expiry_type_fits(target, expiry):
        wanted = "an integer (Unix seconds)" if target.expiry_kind == "epoch" else "a timestamp"
        raise _problem(
            target,
            f"{target.table}.{target.expiry_column} is {expiry.type}, not {wanted} as "
            f"expiry_kind={target.expiry_kind!r} says",
        )
    primary = _primary_table(engine, inspector, metadata, target, table)
    row_id = _row_id(engine, table, target)
    has_index = any(
        (index.get("column_names") or [None])[0] == target.expiry_column
        for index in inspector.get_indexes(target.table)
    )
    if target.strategy == "index" and not has_index:
        raise _problem(
            target, f"strategy 'index' needs an index on {target.table}.{target.expiry_column}"
        )
    can_walk = dialect == "sqlite" or (engine.dialect.server_version_info or ()) >= BLOCK_WALK_SINCE
    if target.strategy == "blocks" and not can_walk:
        raise _problem(target, "strategy 'blocks' needs PostgreSQL 14 or later")
    return Target(target, table, expiry, row_id, dialect, primary, has_index, can_walk)


def _primary_table(
    engine: sa.Engine,
    inspector: sa.Inspector,
    metadata: sa.MetaData,
    target: PurgeTarget,
    table: sa.Table,
) -> sa.Table | None:
    rule = target.orphan_of
    if rule is None:
        return None
    if not inspector.has_table(rule.table):
        raise _problem(target, f"orphan_of table {rule.table!r} does not exist")
    primary = sa.Table(rule.table, metadata, autoload_with=engine)
    for mine, theirs in rule.columns.items():
        if mine not in table.c:
            raise _problem(target, f"orphan_of column {target.table}.{mine} does not exist")
        if theirs not in primary.c:
            raise _problem(target, f"orphan_of column {rule.table}.{theirs} does not exist")
    return primary


def _row_id(engine: sa.Engine, table: sa.Table, target: PurgeTarget) -> sa.Column[Any]:
    name, type_ = (
        ("ctid", Tid()) if engine.dialect.name == "postgresql" else ("rowid", sa.Integer())
    )
    column: sa.Column[Any] = sa.Column(name, type_, system=True)
    table.append_column(column)
    if engine.dialect.name == "sqlite":
        try:
            with engine.connect() as conn:
                conn.execute(sa.select(column).limit(0))
        except sa.exc.OperationalError:
            raise _problem(target, f"{target.table} is a WITHOUT ROWID table") from None
    return column


def resolve_targets(engine: sa.Engine, targets: list[PurgeTarget]) -> list[Target]:
    """Every target, checked before any of them is purged."""
    return [resolve_target(engine, target) for target in targets]


# --- monitoring ---------------------------------------------------------------------------


def measure_backlog(
    conn: sa.Connection, target: Target, cutoff: int | datetime, now: datetime
) -> Backlog:
    """Rows expired at ``cutoff``, the oldest expiry among them, all rows, the table's size."""
    expired, oldest = conn.execute(
        sa.select(sa.func.count(), sa.func.min(target.expiry)).where(target.expired(cutoff))
    ).one()
    rows, size = (
        _postgres_size(conn, target)
        if target.dialect == "postgresql"
        else _sqlite_size(conn, target)
    )
    return Backlog(
        expired=int(expired),
        oldest_expiry=expiry_instant(oldest),
        rows=rows,
        table_bytes=size,
        measured_at=now,
    )


def _postgres_size(conn: sa.Connection, target: Target) -> tuple[int, int | None]:
    estimate, size = conn.execute(
        sa.text(
            "SELECT reltuples::bigint, pg_total_relation_size(oid) FROM pg_class "
            "WHERE oid = to_regclass(:name)"
        ),
        {"name": conn.dialect.identifier_preparer.format_table(target.table)},
    ).one()
    if estimate is None or estimate < 0:  # never analysed: count
        estimate = conn.execute(sa.select(sa.func.count()).select_from(target.table)).scalar_one()
    return int(estimate), int(size)


def _sqlite_size(conn: sa.Connection, target: Target) -> tuple[int, int | None]:
    rows = conn.execute(sa.select(sa.func.count()).select_from(target.table)).scalar_one()
    try:
        size = conn.execute(
            sa.text("SELECT SUM(pgsize) FROM dbstat WHERE name = :name"),
            {"name": target.table.name},
        ).scalar_one()
    except sa.exc.OperationalError:  # SQLite built without dbstat
        size = None
    return int(rows), None if size is None else int(size)


def count_orphans(conn: sa.Connection, target: Target, cutoff: int | datetime) -> int:
    """Orphans that are not expired yet (expired ones are in the backlog already)."""
    orphan = target.orphaned()
    if orphan is None:
        return 0
    not_expired = sa.or_(target.expiry.is_(None), sa.not_(target.expired(cutoff)))
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(target.table).where(orphan, not_expired)
        ).scalar_one()
    )


# --- the block walk ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Extent:
    """Where a block walk starts and ends, and how many rows a block holds on average."""

    first: int
    end: int  # exclusive
    rows_per_block: float


def extent(conn: sa.Connection, target: Target) -> Extent:
    """PostgreSQL: blocks 0..n of the heap. SQLite: the rowid range, one row per "block"."""
    if target.dialect == "postgresql":
        blocks, estimate, pages = conn.execute(
            sa.text(
                "SELECT pg_relation_size(oid) / current_setting('block_size')::int, "
                "reltuples, relpages FROM pg_class WHERE oid = to_regclass(:name)"
            ),
            {"name": conn.dialect.identifier_preparer.format_table(target.table)},
        ).one()
        per_block = estimate / pages if pages and estimate and estimate > 0 else 60.0
        return Extent(first=0, end=int(blocks), rows_per_block=float(per_block))
    low, high = conn.execute(
        sa.select(sa.func.min(target.row_id), sa.func.max(target.row_id))
    ).one()
    if low is None:
        return Extent(first=0, end=0, rows_per_block=1.0)
    return Extent(first=int(low), end=int(high) + 1, rows_per_block=1.0)


def _row_id_value(target: Target, value: Any) -> ColumnElement[Any]:
    if target.dialect == "postgresql":
        return sa.cast(sa.literal(str(value)), Tid())
    return sa.literal(value, sa.Integer())


def _in_range(target: Target, table: sa.FromClause, start: int, end: int) -> ColumnElement[bool]:
    row_id = table.c[target.row_id.name]
    if target.dialect == "postgresql":
        return sa.and_(
            row_id >= _row_id_value(target, f"({start},0)"),
            row_id < _row_id_value(target, f"({end},0)"),
        )
    return sa.and_(row_id >= start, row_id < end)


#: The advisory-lock key of a table's index walk (block ranges use their first block).
INDEX_WALK = 2**31 - 1


def start_batch(conn: sa.Connection, target: Target, start: int, lock_wait_ms: int) -> bool:
    """Set up a batch's transaction and take its block range (or, with ``INDEX_WALK``, the
    index walk); False when another run is on it right now.

    PostgreSQL: a transaction-scoped advisory lock per (table, first block), so two runs never
    work on the same rows at once; a short ``lock_timeout`` for rows the application holds;
    and ``synchronous_commit = off``, so a batch does not wait for its WAL to reach the disk
    (a crash can undo the last fraction of a second of purging, which the next run redoes).
    SQLite has one writer at a time anyway.
    """
    if target.dialect != "postgresql":
        return True
    return bool(
        conn.execute(
            sa.text(
                "SELECT set_config('lock_timeout', :wait, true) IS NOT NULL "
                "AND set_config('synchronous_commit', 'off', true) IS NOT NULL "
                "AND pg_try_advisory_xact_lock(hashtext(:space), :start)"
            ),
            {
                "wait": f"{lock_wait_ms}ms",
                "space": f"lifecycle.ttl-purge:{target.table.name}",
                "start": start % 2**31,
            },
        ).scalar_one()
    )


@dataclass(frozen=True)
class Deleted:
    expired: int = 0
    orphans: int = 0


def delete_range(
    conn: sa.Connection,
    target: Target,
    start: int,
    end: int,
    cutoff: int | datetime,
    *,
    skip_locked: bool = False,
) -> Deleted:
    """Delete the doomed rows among blocks ``[start, end)``.

    ``skip_locked``: first lock the rows with ``FOR UPDATE SKIP LOCKED`` and delete only those,
    so no row the application holds is waited for (twice the work: the fallback after a lock
    wait, not the rule).
    """
    table = target.table
    if skip_locked:
        candidate = table.alias("candidate")
        locked = (
            sa.select(candidate.c[target.row_id.name])
            .where(_in_range(target, candidate, start, end), target.doomed(cutoff, candidate))
            .with_for_update(skip_locked=True, of=candidate)
        )
        where = target.row_id == sa.any_(sa.func.array(locked.scalar_subquery()))
    else:
        where = _in_range(target, table, start, end)
    statement = sa.delete(table).where(where, target.doomed(cutoff))
    if target.orphaned() is None:
        return Deleted(expired=conn.execute(statement).rowcount)
    flags = conn.execute(statement.returning(target.expired(cutoff))).scalars().all()
    expired = sum(1 for flag in flags if flag)
    return Deleted(expired=expired, orphans=len(flags) - expired)


# --- the index walk ---------------------------------------------------------------------------


def delete_expiry_page(
    conn: sa.Connection,
    target: Target,
    cutoff: int | datetime,
    after: Cursor | None,
    limit: int,
    *,
    skip_locked: bool = False,
) -> tuple[int, Cursor | None]:
    """Delete the next ``limit`` expired rows in (expiry, row id) order after ``after``.

    Returns how many went and where the next page starts: the last row of the page, or None
    once a page came back short (the walk is done). A row changed while the page was read is
    not deleted (the DELETE re-checks it) and is left for the next run; so is a row another
    transaction holds, with ``skip_locked`` (the fallback after a lock wait).
    """
    candidate = target.table.alias("candidate")
    expiry, row_id = candidate.c[target.expiry.name], candidate.c[target.row_id.name]
    page = sa.select(expiry.label("expiry"), row_id.label("row_id")).where(
        target.expired(cutoff, candidate)
    )
    if after is not None:
        position = sa.literal(target.cutoff(after.position), target.expiry.type)
        page = page.where(
            expiry >= position,
            sa.tuple_(expiry, row_id) > sa.tuple_(position, _row_id_value(target, after.id)),
        )
    page = page.order_by(expiry, row_id).limit(limit)
    if skip_locked:
        page = page.with_for_update(skip_locked=True, of=candidate)
    if target.dialect == "postgresql":
        return _delete_page_in_one_statement(conn, target, cutoff, page, limit)
    rows = conn.execute(page).all()
    ids = [row.row_id for row in rows]
    deleted = conn.execute(
        sa.delete(target.table).where(target.row_id.in_(ids), target.expired(cutoff))
    ).rowcount
    last = Cursor(id=rows[-1].row_id, position=rows[-1].expiry) if len(rows) == limit else None
    return deleted, last


def _delete_page_in_one_statement(
    conn: sa.Connection,
    target: Target,
    cutoff: int | datetime,
    page_query: sa.Select[Any],
    limit: int,
) -> tuple[int, Cursor | None]:
    """PostgreSQL: read the page, delete it and report on it in one round trip (measured 2-3x
    faster than reading the page into Python first)."""
    page = page_query.cte("page").prefix_with("MATERIALIZED")
    chosen = sa.func.array(sa.select(page.c.row_id).scalar_subquery())
    gone = (
        sa.delete(target.table)
        .where(target.row_id == sa.any_(chosen), target.expired(cutoff))
        .returning(sa.literal(1))
        .cte("gone")
    )
    last = (
        sa.select(page.c.expiry, page.c.row_id)
        .order_by(page.c.expiry.desc(), page.c.row_id.desc())
        .limit(1)
        .subquery("last")
    )
    found = conn.execute(
        sa.select(
            sa.select(sa.func.count()).select_from(gone).scalar_subquery(),
            sa.select(sa.func.count()).select_from(page).scalar_subquery(),
            last.c.expiry,
            last.c.row_id,
        ).select_from(last)
    ).first()
    if found is None:  # an empty page
        return 0, None
    deleted, read, last_expiry, last_id = found
    return int(deleted), (Cursor(id=last_id, position=last_expiry) if read == limit else None)


# --- after the purge --------------------------------------------------------------------------


def vacuum(engine: sa.Engine, target: Target) -> bool:
    """PostgreSQL: ``VACUUM (ANALYZE, SKIP_LOCKED)`` so the space is reused and the planner
    knows the new size; it takes no lock the application's reads and writes wait for. Not on
    SQLite, where VACUUM rewrites the whole file under an exclusive lock. True when it ran."""
    if target.dialect != "postgresql":
        return False
    name = engine.dialect.identifier_preparer.format_table(target.table)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"VACUUM (ANALYZE, SKIP_LOCKED) {name}")
    return True

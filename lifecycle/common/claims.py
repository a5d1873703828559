"""Claims with leases, for any table: claim rows, act on them, then confirm or release.

A claim is one conditional ``UPDATE``: it sets a claim id and a lease end on the rows among the
given keys that still meet the caller's condition and are not leased by someone else, and
returns them. The condition is re-checked in that same statement, so a row that changed since
it was selected is left alone. Nobody else can claim a row until its claim is released or its
lease ends, which is how a crashed worker's rows come back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.sql.elements import ColumnElement


def at(column: sa.Column[Any], value: Any) -> ColumnElement[Any]:
    """``value`` as a bound literal of ``column``'s type (UTC datetimes on every backend)."""
    return sa.literal(value, column.type)


@dataclass(frozen=True)
class Claim:
    """One claim: its id (new per batch), when it was made, and how long its lease lasts."""

    id: str
    at: datetime
    lease: timedelta

    @classmethod
    def new(cls, now: datetime, lease: timedelta) -> Claim:
        return cls(id=str(uuid.uuid4()), at=now, lease=lease)


@dataclass(frozen=True)
class Lease:
    """The columns of one table that record one kind of claim."""

    key: sa.Column[Any]  # the primary key the claims name rows by
    claim_id: sa.Column[Any]
    until: sa.Column[Any]

    @property
    def table(self) -> sa.Table:
        table = self.key.table
        assert isinstance(table, sa.Table)
        return table

    def free(self, now: datetime) -> ColumnElement[bool]:
        """Not leased, or the lease has ended."""
        return sa.or_(self.until.is_(None), self.until < at(self.until, now))

    def held_by(self, claim_id: str) -> ColumnElement[bool]:
        return self.claim_id == claim_id


def _lockable(lease: Lease, keys: Sequence[Any], condition: ColumnElement[bool]) -> sa.Select[Any]:
    """Row-locked keys among ``keys`` that meet ``condition``, in key order.

    On PostgreSQL the rows are locked in one order and rows another run is claiming right now
    are skipped (``SKIP LOCKED``), so concurrent claims neither deadlock nor wait; SQLite takes
    one writer at a time and ignores the clause.
    """
    return (
        sa.select(lease.key)
        .where(lease.key.in_(keys), condition)
        .order_by(lease.key)
        .with_for_update(skip_locked=True)
        .correlate(None)  # its own scan of the table, not the UPDATE's row
    )


def in_order(keys: Sequence[Any], rows: Iterable[Row[Any]]) -> list[Row[Any]]:
    """RETURNING rows (key first) in the order of ``keys``: the database keeps no order."""
    position = {key: index for index, key in enumerate(keys)}
    return sorted(rows, key=lambda row: position[row[0]])


def claim(
    conn: sa.Connection,
    lease: Lease,
    keys: Sequence[Any],
    *,
    condition: ColumnElement[bool],
    claim: Claim,
    values: Mapping[str, Any] | None = None,
    returning: Sequence[sa.Column[Any]] = (),
) -> list[Row[Any]]:
    """Lease the rows among ``keys`` that meet ``condition`` and are free; (key, *returning)
    of each, in ``keys`` order. ``values`` are set on the claimed rows too."""
    claimable = sa.and_(condition, lease.free(claim.at))
    statement = (
        sa.update(lease.table)
        .where(lease.key.in_(_lockable(lease, keys, claimable).scalar_subquery()), claimable)
        .values(
            {
                lease.claim_id.name: claim.id,
                lease.until.name: claim.at + claim.lease,
                **(values or {}),
            }
        )
        .returning(lease.key, *returning)
    )
    return in_order(keys, conn.execute(statement))


def release_statement(
    lease: Lease, *, claim_id: str, values: Mapping[str, Any] | None = None
) -> sa.Update:
    """The UPDATE that ends our claim on the rows given as ``keys`` when executed (setting
    ``values`` too); rows another claim holds are left alone. Build it once, run it often."""
    return (
        sa.update(lease.table)
        .where(lease.key.in_(sa.bindparam("keys", expanding=True)), lease.held_by(claim_id))
        .values({lease.claim_id.name: None, lease.until.name: None, **(values or {})})
    )


def release(
    conn: sa.Connection,
    lease: Lease,
    keys: Sequence[Any],
    *,
    claim_id: str,
    values: Mapping[str, Any] | None = None,
) -> int:
    """End our claim on ``keys`` (setting ``values`` too); returns how many rows were ours."""
    if not keys:
        return 0
    statement = release_statement(lease, claim_id=claim_id, values=values)
    return conn.execute(statement, {"keys": list(keys)}).rowcount

"""Keyset pages: walk the rows that meet a condition in (position, key) order, a page at a time.

Each page starts after the last row of the one before, through an index on (position, key),
so a page costs the same on page 1 and page 10,000, and rows that change while the walk goes
on are neither skipped twice nor read twice. The page loop itself exists once, here:
:func:`each_page` hands each cursor to whatever runs one batch (a Prefect task, in the flows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from lifecycle.common.claims import at


@dataclass(frozen=True)
class Cursor:
    """A row's place in a walk: its key and the value of the column the walk is ordered by."""

    id: Any
    position: Any


@dataclass(frozen=True)
class KeyRange:
    """A shard of a table: rows whose key is at least ``low`` and below ``high`` (None: no
    bound). Shards split one big walk into walks that can run side by side."""

    low: Any = None
    high: Any = None

    def condition(self, key: sa.Column[Any]) -> ColumnElement[bool]:
        bounds = []
        if self.low is not None:
            bounds.append(key >= at(key, self.low))
        if self.high is not None:
            bounds.append(key < at(key, self.high))
        return sa.and_(sa.true(), *bounds)


#: The one shard of a walk that is not split.
WHOLE_TABLE = KeyRange()


def key_ranges(conn: sa.Connection, key: sa.Column[Any], count: int) -> list[KeyRange]:
    """``count`` shards of about equal size, bounded by keys read through the key's index."""
    if count == 1:
        return [WHOLE_TABLE]
    rows = conn.execute(sa.select(sa.func.count()).select_from(key.table)).scalar_one()
    bounds = []
    for part in range(1, count):
        offset = rows * part // count
        bound = conn.execute(sa.select(key).order_by(key).offset(offset).limit(1)).scalar()
        if bound is not None and bound not in bounds:
            bounds.append(bound)
    edges = [None, *bounds, None]
    return [KeyRange(low, high) for low, high in zip(edges, edges[1:], strict=False)]


def keyset_page(
    conn: sa.Connection,
    *,
    key: sa.Column[Any],
    position: sa.Column[Any],
    condition: ColumnElement[bool],
    after: Cursor | None,
    limit: int,
    shard: KeyRange = WHOLE_TABLE,
) -> list[Cursor]:
    """The next ``limit`` rows meeting ``condition`` in ``shard``, after ``after`` in
    (position, key) order."""
    query = sa.select(key, position).where(condition, shard.condition(key))
    if after is not None:
        query = query.where(
            sa.tuple_(position, key) > sa.tuple_(at(position, after.position), at(key, after.id))
        )
    rows = conn.execute(query.order_by(position, key).limit(limit))
    return [Cursor(id=row[0], position=row[1]) for row in rows]


def next_cursor(page: list[Cursor], limit: int) -> Cursor | None:
    """Where the next page starts, or None when this page was the last."""
    return page[-1] if len(page) == limit else None


class Paged(Protocol):
    """A batch's result that says where the next batch starts (None when done)."""

    @property
    def last(self) -> Cursor | None: ...


R = TypeVar("R", bound=Paged)


def each_page(
    run_batch: Callable[[Cursor | None], R], *, stop: Callable[[], bool] = lambda: False
) -> Iterator[R]:
    """Run batch after batch, each from where the last ended, until one ends the walk or
    ``stop()`` says so before the next starts."""
    after: Cursor | None = None
    while not stop():
        report = run_batch(after)
        yield report
        if report.last is None:
            return
        after = report.last

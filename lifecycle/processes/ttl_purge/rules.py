"""The TTL purge's rules as pure functions: what is expired, which walk to take, when to alert.

A row is expired when its expiry is *before* the cutoff (``expiry < as_of``, as in the guide's
``ttl_timestamp < EXTRACT(EPOCH FROM NOW())``); a NULL expiry never expires.

Which walk: deleting through the expiry index costs about the same per expired row whatever
the table size (~3-5 us a row measured here, PostgreSQL 15), while a walk over block ranges costs
per row *scanned* (~0.4 us) plus a little per row deleted. So the block walk wins once more than
roughly a tenth of the rows are expired (measured: 50% expired, 1.0 s by blocks against 3.4 s by
index; 1% expired, 0.31 s by index against 0.75 s by blocks, 2M rows). The threshold is the
setting ``LIFECYCLE_TTL_PURGE__BLOCK_WALK_ABOVE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

ExpiryKind = Literal["epoch", "timestamp"]

#: Lifetimes the maintenance guide gives its temporary data (``actingweb/constants.py``).
ATTRIBUTE_LIFETIMES: dict[str, timedelta] = {
    "oauth_sessions": timedelta(minutes=10),
    "spa_access_tokens": timedelta(hours=1),
    "spa_refresh_tokens": timedelta(days=14),
    "mcp_auth_codes": timedelta(minutes=10),
    "mcp_access_tokens": timedelta(hours=1),
    "mcp_refresh_tokens": timedelta(days=30),
}
#: Index entries live this much longer than the data they point at.
INDEX_TTL_BUFFER = timedelta(hours=2)


class Strategy(StrEnum):
    BLOCKS = "blocks"  # physical ranges: ctid on PostgreSQL, rowid on SQLite
    INDEX = "index"  # keyset over the expiry index: (expiry, row id)


def cutoff(kind: ExpiryKind, as_of: datetime) -> int | datetime:
    """The value an expiry is compared with: Unix seconds, or the instant itself."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    return int(as_of.timestamp()) if kind == "epoch" else as_of.astimezone(UTC)


def expiry_instant(value: int | datetime | None) -> datetime | None:
    """An expiry value as a UTC instant (naive timestamps are taken as UTC)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        return datetime.fromtimestamp(int(value), UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def choose_strategy(
    configured: Literal["auto", "blocks", "index"],
    *,
    expired: int,
    rows: int,
    block_walk_above: float,
    can_walk_blocks: bool,
    has_expiry_index: bool,
    finds_orphans: bool,
) -> Strategy:
    """The walk for this run: as configured, else by the share of rows that is expired.

    Orphans can be anywhere, so a target that removes them always walks its blocks; a table
    without an index on its expiry can only be walked by blocks.
    """
    if configured != "auto":
        return Strategy(configured)
    if finds_orphans or not has_expiry_index:
        return Strategy.BLOCKS
    if not can_walk_blocks:
        return Strategy.INDEX
    share = expired / rows if rows > 0 else 0.0
    return Strategy.BLOCKS if share > block_walk_above else Strategy.INDEX


def blocks_per_batch(batch_size: int, rows_per_block: float) -> int:
    """How many blocks hold about ``batch_size`` rows: a batch's share of the walk."""
    return max(1, round(batch_size / max(rows_per_block, 1.0)))


@dataclass(frozen=True)
class Backlog:
    """One target's rows expired but not yet purged, measured at ``measured_at``."""

    expired: int
    oldest_expiry: datetime | None
    rows: int  # all rows (PostgreSQL: the planner's estimate once analysed)
    table_bytes: int | None
    measured_at: datetime

    @property
    def oldest_age_seconds(self) -> int | None:
        if self.oldest_expiry is None:
            return None
        return max(0, int((self.measured_at - self.oldest_expiry).total_seconds()))

    def over(self, *, rows: int, age_seconds: int) -> bool:
        """True when the backlog crossed either alert threshold."""
        age = self.oldest_age_seconds
        return self.expired > rows or (age is not None and age > age_seconds)

"""Abandoned carts in SQL: expired carts, claims on them, and stream checkpoints.

Every statement that acts re-checks its condition: a claim takes only carts still expired and
not refused before; sending asks first that the cart is still ours, unchanged; the delete after
the marketing suite accepted it removes the row only while it is ours with the same expiry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from lifecycle.common import claims
from lifecycle.common.claims import Claim, Lease, at
from lifecycle.common.paging import Cursor, keyset_page
from lifecycle.db.schema import cart_activity, stream_checkpoints

carts = cart_activity.c

#: A cart being reported: claimed here, deleted once the marketing suite accepted it.
CART = Lease(key=carts.cart_id, claim_id=carts.claim_id, until=carts.lease_until)
#: A stream shard being read by one run.
SHARD = Lease(
    key=stream_checkpoints.c.id,
    claim_id=stream_checkpoints.c.claim_id,
    until=stream_checkpoints.c.lease_until,
)


def refused() -> ColumnElement[bool]:
    """The suite refused the cart as it is now (a cart changed since is offered again)."""
    return sa.and_(
        carts.rejected_expires_at.is_not(None), carts.rejected_expires_at == carts.expires_at
    )


def expired(cutoff: int) -> ColumnElement[bool]:
    """Expired before ``cutoff``, and not refused by the marketing suite at this expiry."""
    return sa.and_(carts.expires_at < cutoff, sa.not_(refused()))


def due_page(conn: sa.Connection, *, cutoff: int, after: Cursor | None, limit: int) -> list[Cursor]:
    """Expired carts in (expires_at, cart_id) order, through ``ix_cart_activity_expires_at``."""
    return keyset_page(
        conn,
        key=carts.cart_id,
        position=carts.expires_at,
        condition=expired(cutoff),
        after=after,
        limit=limit,
    )


def count_due(conn: sa.Connection, *, cutoff: int) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(cart_activity).where(expired(cutoff))
        ).scalar_one()
    )


@dataclass(frozen=True)
class CartRow:
    cart_id: str
    customer_id: str | None
    product_ids: Any
    expires_at: int


def carts_in(conn: sa.Connection, ids: Sequence[str]) -> list[CartRow]:
    """The carts with these ids, as they are (for a dry run, which claims nothing)."""
    rows = conn.execute(
        sa.select(carts.cart_id, carts.customer_id, carts.product_ids, carts.expires_at).where(
            carts.cart_id.in_(ids)
        )
    )
    return [CartRow(*row) for row in rows]


def claim_carts(
    conn: sa.Connection, ids: Sequence[str], *, cutoff: int, claim: Claim
) -> list[CartRow]:
    """Lease the carts among ``ids`` still expired and free; their contents at that moment."""
    rows = claims.claim(
        conn,
        CART,
        ids,
        condition=expired(cutoff),
        claim=claim,
        returning=(carts.customer_id, carts.product_ids, carts.expires_at),
    )
    return [CartRow(*row) for row in rows]


def _ours(cart_id: str, claim_id: str, expires_at: int) -> ColumnElement[bool]:
    return sa.and_(carts.cart_id == cart_id, CART.held_by(claim_id), carts.expires_at == expires_at)


def still_ours(
    conn: sa.Connection, cart_id: str, *, claim_id: str, expires_at: int, now: datetime
) -> bool:
    """The cart is still there, unchanged, and our lease on it has not run out."""
    found = conn.execute(
        sa.select(carts.cart_id).where(
            _ours(cart_id, claim_id, expires_at), carts.lease_until > at(carts.lease_until, now)
        )
    ).first()
    return found is not None


def remove_reported(conn: sa.Connection, cart_id: str, *, claim_id: str, expires_at: int) -> bool:
    """Delete a cart the marketing suite accepted, if it is still ours and unchanged."""
    result = conn.execute(sa.delete(cart_activity).where(_ours(cart_id, claim_id, expires_at)))
    return result.rowcount == 1


def remove_unreportable(
    conn: sa.Connection, ids: Sequence[str], *, claim_id: str, cutoff: int
) -> int:
    """Delete claimed carts with no customer or no products, still ours and still expired."""
    if not ids:
        return 0
    result = conn.execute(
        sa.delete(cart_activity).where(
            carts.cart_id.in_(ids), CART.held_by(claim_id), expired(cutoff)
        )
    )
    return result.rowcount


def reject(conn: sa.Connection, cart_id: str, *, claim_id: str, now: datetime, reason: str) -> None:
    """Record that the suite refused the cart: it is not offered again at this expiry."""
    claims.release(
        conn,
        CART,
        [cart_id],
        claim_id=claim_id,
        values={
            "rejected_at": at(carts.rejected_at, now),
            "rejected_expires_at": carts.expires_at,
            "rejection": reason[:300],
        },
    )


def release(conn: sa.Connection, ids: Sequence[str], *, claim_id: str) -> None:
    claims.release(conn, CART, ids, claim_id=claim_id)


def purge_rejected(conn: sa.Connection, *, before: datetime) -> int:
    """Delete carts the suite refused before ``before`` (kept that long for inspection)."""
    result = conn.execute(
        sa.delete(cart_activity).where(refused(), carts.rejected_at < at(carts.rejected_at, before))
    )
    return result.rowcount


# --- stream checkpoints -----------------------------------------------------------------------


def shard_key(stream_arn: str, shard_id: str) -> str:
    return f"{stream_arn}|{shard_id}"


def ensure_shards(
    conn: sa.Connection, stream_arn: str, shard_ids: Sequence[str], now: datetime
) -> None:
    """A checkpoint row for every shard (no position yet: read from the oldest record)."""
    known = set(
        conn.execute(
            sa.select(stream_checkpoints.c.shard_id).where(
                stream_checkpoints.c.stream_arn == stream_arn
            )
        ).scalars()
    )
    new = [
        {
            "id": shard_key(stream_arn, shard_id),
            "stream_arn": stream_arn,
            "shard_id": shard_id,
            "updated_at": now,
        }
        for shard_id in shard_ids
        if shard_id not in known
    ]
    if not new:
        return
    insert = (
        postgresql.insert(stream_checkpoints)
        if conn.dialect.name == "postgresql"
        else sqlite.insert(stream_checkpoints)
    )
    conn.execute(insert.on_conflict_do_nothing(), new)  # another run inserted them meanwhile


@dataclass(frozen=True)
class Checkpoint:
    id: str
    shard_id: str
    sequence_number: str | None
    finished: bool


def checkpoints(conn: sa.Connection, stream_arn: str) -> dict[str, Checkpoint]:
    rows = conn.execute(
        sa.select(
            stream_checkpoints.c.id,
            stream_checkpoints.c.shard_id,
            stream_checkpoints.c.sequence_number,
            stream_checkpoints.c.finished_at.is_not(None),
        ).where(stream_checkpoints.c.stream_arn == stream_arn)
    )
    return {row[1]: Checkpoint(*row) for row in rows}


def claim_shard(conn: sa.Connection, checkpoint_id: str, *, claim: Claim) -> bool:
    """Lease one unfinished shard to this run; False when another run is reading it."""
    rows = claims.claim(
        conn,
        SHARD,
        [checkpoint_id],
        condition=stream_checkpoints.c.finished_at.is_(None),
        claim=claim,
    )
    return bool(rows)


def save_checkpoint(
    conn: sa.Connection,
    checkpoint_id: str,
    *,
    claim: Claim,
    sequence_number: str | None,
    finished: bool,
    now: datetime,
) -> bool:
    """Record our position and renew our lease; False when the shard is no longer ours."""
    values: dict[str, Any] = {
        "updated_at": at(stream_checkpoints.c.updated_at, now),
        "lease_until": at(stream_checkpoints.c.lease_until, now + claim.lease),
    }
    if sequence_number is not None:
        values["sequence_number"] = sequence_number
    if finished:
        values["finished_at"] = at(stream_checkpoints.c.finished_at, now)
    result = conn.execute(
        sa.update(stream_checkpoints)
        .where(stream_checkpoints.c.id == checkpoint_id, SHARD.held_by(claim.id))
        .values(values)
    )
    return result.rowcount == 1


def release_shard(conn: sa.Connection, checkpoint_id: str, *, claim_id: str) -> None:
    claims.release(conn, SHARD, [checkpoint_id], claim_id=claim_id)


def restart_shard(conn: sa.Connection, checkpoint_id: str, *, claim_id: str, now: datetime) -> None:
    """Forget a position the stream no longer has: read from its oldest record next time."""
    conn.execute(
        sa.update(stream_checkpoints)
        .where(stream_checkpoints.c.id == checkpoint_id, SHARD.held_by(claim_id))
        .values(sequence_number=None, updated_at=at(stream_checkpoints.c.updated_at, now))
    )

"""Activation mail in SQL: who is due, pages of them, and the claim that makes "once" hold.

A user is due while ``activation_status`` is NONE (or SENDING under a lease that ended), they
have a username, and they were created within ``max_age``. Claiming is one conditional UPDATE
(:mod:`lifecycle.common.claims`) that sets SENDING and re-checks all of that; marking MAIL_SENT
(or giving the user back) happens only while our claim still holds the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from lifecycle.common import claims
from lifecycle.common.claims import Claim, Lease, at
from lifecycle.common.paging import Cursor, keyset_page
from lifecycle.db.schema import users
from lifecycle.processes.activation_mail.rules import Status

columns = users.c

#: An activation mail being sent: claimed here, marked MAIL_SENT once the backend accepted it.
ACTIVATION = Lease(
    key=columns.id, claim_id=columns.activation_claim_id, until=columns.activation_lease_until
)
_OPEN = (Status.NONE.value, Status.SENDING.value)  # the statuses ix_users_activation_due holds


@dataclass(frozen=True)
class Recipient:
    id: str
    email: str
    name: str | None
    username: str
    token: str | None


def due(*, now: datetime, created_after: datetime, created_before: datetime) -> ColumnElement[bool]:
    """Still to be mailed: NONE, or SENDING whose claim's lease ended (its run crashed)."""
    return sa.and_(
        columns.activation_status.in_(_OPEN),
        ACTIVATION.free(now),
        columns.username.is_not(None),
        columns.created_at >= at(columns.created_at, created_after),
        columns.created_at <= at(columns.created_at, created_before),
    )


def due_page(
    conn: sa.Connection,
    *,
    now: datetime,
    created_after: datetime,
    created_before: datetime,
    after: Cursor | None,
    limit: int,
) -> list[Cursor]:
    """Users due a mail in (created_at, id) order, through ``ix_users_activation_due``."""
    return keyset_page(
        conn,
        key=columns.id,
        position=columns.created_at,
        condition=due(now=now, created_after=created_after, created_before=created_before),
        after=after,
        limit=limit,
    )


def count_due(
    conn: sa.Connection, *, now: datetime, created_after: datetime, created_before: datetime
) -> int:
    condition = due(now=now, created_after=created_after, created_before=created_before)
    return conn.execute(sa.select(sa.func.count()).select_from(users).where(condition)).scalar_one()


def claim_due(
    conn: sa.Connection,
    ids: Sequence[str],
    *,
    claim: Claim,
    created_after: datetime,
    created_before: datetime,
) -> list[str]:
    """NONE (or stale SENDING) -> SENDING under ``claim``, for the users among ``ids`` still
    due; one statement, ``SKIP LOCKED`` on PostgreSQL. Returns the claimed ids."""
    rows = claims.claim(
        conn,
        ACTIVATION,
        ids,
        condition=due(now=claim.at, created_after=created_after, created_before=created_before),
        claim=claim,
        values={"activation_status": Status.SENDING.value},
    )
    return [row[0] for row in rows]


def statuses(conn: sa.Connection, ids: Sequence[str]) -> dict[str, tuple[str, datetime | None]]:
    """(status, lease end) of each user among ``ids`` that still exists."""
    rows = conn.execute(
        sa.select(columns.id, columns.activation_status, columns.activation_lease_until).where(
            columns.id.in_(list(ids))
        )
    )
    return {row[0]: (row[1], row[2]) for row in rows}


def held(conn: sa.Connection, claim_id: str) -> list[Recipient]:
    """The users our claim holds in SENDING, in id order."""
    rows = conn.execute(
        sa.select(
            columns.id, columns.email, columns.name, columns.username, columns.activation_token
        )
        .where(ACTIVATION.held_by(claim_id), columns.activation_status == Status.SENDING.value)
        .order_by(columns.id)
    )
    return [Recipient(*row) for row in rows]


def give_tokens(conn: sa.Connection, tokens: dict[str, str], *, claim_id: str) -> None:
    """Store a fresh token for each user we hold who has none (one statement, many rows)."""
    if not tokens:
        return
    statement = (
        sa.update(users)
        .where(
            columns.id == sa.bindparam("user_id"),
            ACTIVATION.held_by(claim_id),
            columns.activation_token.is_(None),
        )
        .values(activation_token=sa.bindparam("token"))
    )
    conn.execute(
        statement, [{"user_id": user_id, "token": token} for user_id, token in tokens.items()]
    )


def finish_statement(claim_id: str, status: Status) -> sa.Update:
    """Ends our claim on the users given as ``keys``, setting ``status``; a row another claim
    took over meanwhile is left alone. Build once, execute per mail with ``{"keys": [id]}``."""
    return claims.release_statement(
        ACTIVATION, claim_id=claim_id, values={"activation_status": status.value}
    )


def release_held(conn: sa.Connection, claim_id: str) -> int:
    """Every user our claim still holds goes back to NONE (the next run mails them)."""
    statement = (
        sa.update(users)
        .where(ACTIVATION.held_by(claim_id), columns.activation_status == Status.SENDING.value)
        .values(
            activation_status=Status.NONE.value,
            activation_claim_id=None,
            activation_lease_until=None,
        )
    )
    return conn.execute(statement).rowcount

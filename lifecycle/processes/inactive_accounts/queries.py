"""The inactive-accounts policy in SQL: who is due, pages of them, and claims on them.

Every statement that acts on a user re-checks the policy (:mod:`.rules`, expressed here in SQL)
in its own WHERE clause, so a user who visits, subscribes or is taken by another run between
selection and action is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from lifecycle.common import claims
from lifecycle.common.claims import Claim, Lease, at
from lifecycle.common.erasure import ACCOUNT_DELETION, unfinished_deletion
from lifecycle.common.paging import Cursor, keyset_page
from lifecycle.db.schema import users
from lifecycle.processes.inactive_accounts.rules import ACTIVE_SUBSCRIPTION_STATUSES, Policy

columns = users.c

#: A warning being sent: claimed here, confirmed once the mail is out.
WARNING = Lease(
    key=columns.id, claim_id=columns.warning_claim_id, until=columns.warning_lease_until
)


class DeletionQueue(StrEnum):
    """Which deletions a batch works on."""

    UNFINISHED = "unfinished"  # started by a run that crashed or failed: finished first
    DUE = "due"  # the policy says delete now


@dataclass(frozen=True)
class Recipient:
    id: str
    email: str
    name: str | None


def exempt(as_of: datetime) -> ColumnElement[bool]:
    return sa.or_(
        columns.lifetime_deal.is_(True),
        sa.and_(columns.free_trial_ends_at.is_not(None), columns.free_trial_ends_at > as_of),
        columns.subscription_status.in_(sorted(ACTIVE_SUBSCRIPTION_STATUSES)),
        sa.and_(columns.subscription_ends_at.is_not(None), columns.subscription_ends_at > as_of),
    )


def since_last_visit(moment: sa.Column[datetime]) -> ColumnElement[bool]:
    return sa.and_(moment.is_not(None), columns.last_visit_at < moment)


def warning_pending() -> ColumnElement[bool]:
    return since_last_visit(columns.deletion_warning_sent_at)


def undeliverable(as_of: datetime) -> ColumnElement[bool]:
    """The last warning could not be delivered, and the user has not visited since."""
    return sa.and_(
        sa.not_(warning_pending()),
        since_last_visit(columns.warning_undeliverable_at),
        sa.not_(exempt(as_of)),
    )


def due_for_warning(as_of: datetime, policy: Policy) -> ColumnElement[bool]:
    return sa.and_(
        columns.last_visit_at < as_of - policy.warn_after,
        sa.not_(warning_pending()),
        sa.not_(since_last_visit(columns.warning_undeliverable_at)),
        sa.not_(exempt(as_of)),
        columns.deletion_started_at.is_(None),
    )


def due_for_deletion(as_of: datetime, policy: Policy) -> ColumnElement[bool]:
    return sa.and_(
        warning_pending(),
        columns.deletion_warning_sent_at <= as_of - policy.grace,
        columns.last_visit_at <= as_of - policy.delete_after,
        sa.not_(exempt(as_of)),
        columns.deletion_started_at.is_(None),
    )


def warning_page(
    conn: sa.Connection, *, as_of: datetime, policy: Policy, after: Cursor | None, limit: int
) -> list[Cursor]:
    """Users due a warning, in (last_visit_at, id) order, read through ``ix_users_last_visit``."""
    return keyset_page(
        conn,
        key=columns.id,
        position=columns.last_visit_at,
        condition=due_for_warning(as_of, policy),
        after=after,
        limit=limit,
    )


def deletion_page(
    conn: sa.Connection,
    *,
    queue: DeletionQueue,
    as_of: datetime,
    policy: Policy,
    now: datetime,
    after: Cursor | None,
    limit: int,
) -> list[Cursor]:
    """Users whose deletion is unfinished, or due, in the order of the index that finds them."""
    if queue is DeletionQueue.UNFINISHED:
        position, condition = columns.deletion_started_at, unfinished_deletion(now)
    else:
        position, condition = columns.deletion_warning_sent_at, due_for_deletion(as_of, policy)
    return keyset_page(
        conn, key=columns.id, position=position, condition=condition, after=after, limit=limit
    )


@dataclass(frozen=True)
class DueCounts:
    warn: int
    delete: int
    unfinished: int
    undeliverable: int  # warned in vain, waiting (see settings: undeliverable)


def count_due(conn: sa.Connection, *, as_of: datetime, policy: Policy, now: datetime) -> DueCounts:
    def count(condition: ColumnElement[bool]) -> int:
        return conn.execute(
            sa.select(sa.func.count()).select_from(users).where(condition)
        ).scalar_one()

    return DueCounts(
        warn=count(due_for_warning(as_of, policy)),
        delete=count(due_for_deletion(as_of, policy)),
        unfinished=count(unfinished_deletion(now)),
        undeliverable=count(undeliverable(as_of)),
    )


def claim_warnings(
    conn: sa.Connection, ids: list[str], *, as_of: datetime, policy: Policy, claim: Claim
) -> list[Recipient]:
    """Lease the users still due a warning; no other run can claim them until released."""
    rows = claims.claim(
        conn,
        WARNING,
        ids,
        condition=due_for_warning(as_of, policy),
        claim=claim,
        returning=(columns.email, columns.name),
    )
    return [Recipient(id=row[0], email=row[1], name=row[2]) for row in rows]


def _unless_visited(
    column: sa.Column[datetime], moment: ColumnElement[datetime], claim: Claim
) -> ColumnElement[datetime]:
    """``moment`` for users who did not visit since the claim; the column's value otherwise."""
    return sa.case(
        (columns.last_visit_at < at(columns.last_visit_at, claim.at), moment), else_=column
    )


def confirm_statement(claim: Claim) -> sa.Update:
    """Records warnings sent under ``claim`` and drops their lease; a visit since the claim
    cancels it. Execute with ``{"keys": [user ids], "sent_at": when}``."""
    sent_at = sa.bindparam("sent_at", type_=columns.deletion_warning_sent_at.type)
    sent = _unless_visited(columns.deletion_warning_sent_at, sent_at, claim)
    return claims.release_statement(
        WARNING, claim_id=claim.id, values={"deletion_warning_sent_at": sent}
    )


def mark_undeliverable(
    conn: sa.Connection, ids: list[str], *, claim: Claim, now: datetime, as_notice: bool
) -> None:
    """Record that the warning could not be delivered, and drop the lease. With
    ``as_notice`` the attempt also counts as the warning the grace period runs from."""
    marks = [columns.warning_undeliverable_at]
    if as_notice:
        marks.append(columns.deletion_warning_sent_at)
    values = {column.name: _unless_visited(column, at(column, now), claim) for column in marks}
    claims.release(conn, WARNING, ids, claim_id=claim.id, values=values)


def release_warnings(conn: sa.Connection, ids: list[str], *, claim_id: str) -> None:
    """Give back leases for warnings that were not sent."""
    claims.release(conn, WARNING, ids, claim_id=claim_id)


def claim_deletions(
    conn: sa.Connection, ids: list[str], *, as_of: datetime, policy: Policy, claim: Claim
) -> list[str]:
    """The point of no return: mark the users the policy still says to delete, in ``ids`` order.

    Unfinished deletions are claimed whatever the user did since: their files may be gone.
    """
    rows = claims.claim(
        conn,
        ACCOUNT_DELETION,
        ids,
        condition=sa.or_(due_for_deletion(as_of, policy), unfinished_deletion(claim.at)),
        claim=claim,
        values={
            "deletion_started_at": sa.func.coalesce(
                columns.deletion_started_at, at(columns.deletion_started_at, claim.at)
            )
        },
    )
    return [row[0] for row in rows]

"""Database side of the inactive-accounts policy: candidate pages, claims and removal.

Every statement that acts on a user re-checks the policy (:mod:`lifecycle.rules`, expressed
here in SQL) in its own WHERE clause, so a user who visits, subscribes or is taken by another
run between selection and action is left alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.sql.elements import ColumnElement

from lifecycle.db.schema import UTCDateTime, deletion_receipts, users
from lifecycle.deletion_plan import DeletionPlan
from lifecycle.rules import ACTIVE_SUBSCRIPTION_STATUSES, Policy

u = users.c
DeletionKind = Literal["resume", "due"]


@dataclass(frozen=True)
class Candidate:
    id: str
    position: datetime  # value of the keyset column the page is ordered by


@dataclass(frozen=True)
class Recipient:
    id: str
    email: str
    name: str | None


def _ts(value: datetime) -> ColumnElement[datetime]:
    return sa.literal(value, UTCDateTime())


def exempt(as_of: datetime) -> ColumnElement[bool]:
    return sa.or_(
        u.lifetime_deal.is_(True),
        sa.and_(u.free_trial_ends_at.is_not(None), u.free_trial_ends_at > as_of),
        u.subscription_status.in_(sorted(ACTIVE_SUBSCRIPTION_STATUSES)),
        sa.and_(u.subscription_ends_at.is_not(None), u.subscription_ends_at > as_of),
    )


def warning_pending() -> ColumnElement[bool]:
    return sa.and_(
        u.deletion_warning_sent_at.is_not(None), u.last_visit_at < u.deletion_warning_sent_at
    )


def due_for_warning(as_of: datetime, policy: Policy) -> ColumnElement[bool]:
    return sa.and_(
        u.last_visit_at < as_of - policy.warn_after,
        sa.not_(warning_pending()),
        sa.not_(exempt(as_of)),
        u.deletion_started_at.is_(None),
    )


def due_for_deletion(as_of: datetime, policy: Policy) -> ColumnElement[bool]:
    return sa.and_(
        warning_pending(),
        u.deletion_warning_sent_at <= as_of - policy.grace,
        u.last_visit_at <= as_of - policy.delete_after,
        sa.not_(exempt(as_of)),
        u.deletion_started_at.is_(None),
    )


def interrupted_deletion(now: datetime) -> ColumnElement[bool]:
    """Deletions a crashed or failed run started: they are finished whatever the user did since."""
    return sa.and_(
        u.deletion_started_at.is_not(None),
        sa.or_(u.deletion_lease_until.is_(None), u.deletion_lease_until < now),
    )


def _page(
    condition: ColumnElement[bool],
    key: sa.Column[datetime],
    after: Candidate | None,
    limit: int,
) -> sa.Select[tuple[str, datetime]]:
    query = sa.select(u.id, key).where(condition)
    if after is not None:
        query = query.where(
            sa.tuple_(key, u.id) > sa.tuple_(_ts(after.position), sa.literal(after.id))
        )
    return query.order_by(key, u.id).limit(limit)


def warning_page(
    conn: sa.Connection, *, as_of: datetime, policy: Policy, after: Candidate | None, limit: int
) -> list[Candidate]:
    """Users due a warning, in (last_visit_at, id) order, read through ``ix_users_last_visit``."""
    rows = conn.execute(_page(due_for_warning(as_of, policy), u.last_visit_at, after, limit))
    return [Candidate(id=row[0], position=row[1]) for row in rows]


def deletion_page(
    conn: sa.Connection,
    *,
    kind: DeletionKind,
    as_of: datetime,
    policy: Policy,
    now: datetime,
    after: Candidate | None,
    limit: int,
) -> list[Candidate]:
    """Users due deletion (``due``) or whose deletion was interrupted (``resume``)."""
    if kind == "resume":
        query = _page(interrupted_deletion(now), u.deletion_started_at, after, limit)
    else:
        query = _page(due_for_deletion(as_of, policy), u.deletion_warning_sent_at, after, limit)
    return [Candidate(id=row[0], position=row[1]) for row in conn.execute(query)]


@dataclass(frozen=True)
class DueCounts:
    warn: int
    delete: int
    resume: int


def count_due(conn: sa.Connection, *, as_of: datetime, policy: Policy, now: datetime) -> DueCounts:
    def count(condition: ColumnElement[bool]) -> int:
        return conn.execute(
            sa.select(sa.func.count()).select_from(users).where(condition)
        ).scalar_one()

    return DueCounts(
        warn=count(due_for_warning(as_of, policy)),
        delete=count(due_for_deletion(as_of, policy)),
        resume=count(interrupted_deletion(now)),
    )


def _claimable(ids: list[str], condition: ColumnElement[bool]) -> sa.Select[tuple[str]]:
    """Row-locked ids among ``ids`` that meet ``condition``, in id order.

    On PostgreSQL the rows are locked in one order and rows another run is claiming right now
    are skipped (``SKIP LOCKED``), so concurrent claims neither deadlock nor wait; SQLite takes
    one writer at a time and ignores the clause.
    """
    return (
        sa.select(u.id)
        .where(u.id.in_(ids), condition)
        .order_by(u.id)
        .with_for_update(skip_locked=True)
        .correlate(None)  # its own scan of users, not the UPDATE's row
    )


def _in_order(ids: list[str], rows: Iterable[Row[Any]]) -> list[Row[Any]]:
    """RETURNING rows (id first) in the order of ``ids``: the database keeps no order."""
    position = {user_id: index for index, user_id in enumerate(ids)}
    return sorted(rows, key=lambda row: position[row[0]])


def claim_warnings(
    conn: sa.Connection,
    ids: list[str],
    *,
    as_of: datetime,
    policy: Policy,
    claim_id: str,
    now: datetime,
    lease: timedelta,
) -> list[Recipient]:
    """Lease the users still due a warning; no other run can claim them until released."""
    condition = sa.and_(
        due_for_warning(as_of, policy),
        sa.or_(u.warning_lease_until.is_(None), u.warning_lease_until < now),
    )
    statement = (
        sa.update(users)
        .where(u.id.in_(_claimable(ids, condition).scalar_subquery()), condition)
        .values(warning_claim_id=claim_id, warning_lease_until=now + lease)
        .returning(u.id, u.email, u.name)
    )
    rows = _in_order(ids, conn.execute(statement))
    return [Recipient(id=row[0], email=row[1], name=row[2]) for row in rows]


def confirm_warnings(
    conn: sa.Connection, ids: list[str], *, claim_id: str, claimed_at: datetime, sent_at: datetime
) -> None:
    """Record the warnings we sent and drop the lease; a visit since the claim cancels it."""
    conn.execute(
        sa.update(users)
        .where(u.id.in_(ids), u.warning_claim_id == claim_id)
        .values(
            deletion_warning_sent_at=sa.case(
                (u.last_visit_at < _ts(claimed_at), _ts(sent_at)),
                else_=u.deletion_warning_sent_at,
            ),
            warning_claim_id=None,
            warning_lease_until=None,
        )
    )


def release_warnings(conn: sa.Connection, ids: list[str], *, claim_id: str) -> None:
    """Give back leases for warnings that were not sent."""
    conn.execute(
        sa.update(users)
        .where(u.id.in_(ids), u.warning_claim_id == claim_id)
        .values(warning_claim_id=None, warning_lease_until=None)
    )


def claim_deletions(
    conn: sa.Connection,
    ids: list[str],
    *,
    as_of: datetime,
    policy: Policy,
    claim_id: str,
    now: datetime,
    lease: timedelta,
) -> list[str]:
    """The point of no return: mark the users the policy still says to delete, in ``ids`` order.

    Interrupted deletions are claimed whatever the user did since: their files may be gone.
    """
    condition = sa.or_(due_for_deletion(as_of, policy), interrupted_deletion(now))
    statement = (
        sa.update(users)
        .where(u.id.in_(_claimable(ids, condition).scalar_subquery()), condition)
        .values(
            deletion_started_at=sa.func.coalesce(u.deletion_started_at, _ts(now)),
            deletion_claim_id=claim_id,
            deletion_lease_until=now + lease,
        )
        .returning(u.id)
    )
    return [row[0] for row in _in_order(ids, conn.execute(statement))]


def release_deletion(conn: sa.Connection, user_ids: list[str], *, claim_id: str) -> None:
    """Let the next run finish these deletions at once (they stay marked as started)."""
    conn.execute(
        sa.update(users)
        .where(u.id.in_(user_ids), u.deletion_claim_id == claim_id)
        .values(deletion_lease_until=None)
    )


@dataclass(frozen=True)
class Removed:
    user_id: str
    rows: dict[str, int]


def remove_rows(
    conn: sa.Connection,
    plan: DeletionPlan,
    objects_deleted: dict[str, int],
    *,
    claim_id: str,
    subject_hashes: dict[str, str],
    flow_run_id: str | None,
    now: datetime,
) -> list[Removed]:
    """Referencing rows, then the users we still hold, then one receipt each; one transaction."""
    ids = list(objects_deleted)
    per_user: dict[str, Counter[str]] = {user_id: Counter() for user_id in ids}
    for ref in plan.references:
        label = f"{ref.table.name}.{ref.column.name}"
        counts = conn.execute(
            sa.select(ref.column, sa.func.count()).where(ref.column.in_(ids)).group_by(ref.column)
        )
        for user_id, count in counts:
            per_user[user_id][label] = count
        conn.execute(ref.statement(ids))
    deleted = [
        row[0]
        for row in conn.execute(
            sa.delete(users).where(u.id.in_(ids), u.deletion_claim_id == claim_id).returning(u.id)
        )
    ]
    if deleted:
        conn.execute(
            sa.insert(deletion_receipts),
            [
                {
                    "subject_hash": subject_hashes[user_id],
                    "reason": "inactive_account",
                    "flow_run_id": flow_run_id,
                    "deleted_at": now,
                    "objects_deleted": objects_deleted[user_id],
                    "rows_removed": dict(per_user[user_id]),
                }
                for user_id in deleted
            ],
        )
    return [Removed(user_id=user_id, rows=dict(per_user[user_id])) for user_id in deleted]

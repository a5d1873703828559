"""Consent deletion in SQL: revocations to request, operations to start, poll and escalate.

Every statement that acts re-checks its condition in its own WHERE clause, and every vendor
call happens under a claim (:mod:`lifecycle.common.claims`) on the rows it is about, so two
runs never start, check or escalate the same operation at once. Each step is also appended to
``processor_deletion_steps`` in the same transaction as the change it records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from lifecycle.common import claims
from lifecycle.common.claims import Claim, Lease, at
from lifecycle.common.paging import Cursor, keyset_page
from lifecycle.common.third_parties import DeletionRequest, Step, log_steps
from lifecycle.db import dialect
from lifecycle.db.schema import deletion_receipts, processor_alerts, processor_deletions, users
from lifecycle.processes.consent_deletion.rules import AlertState

columns = processor_deletions.c
#: A deletion being started, checked or escalated by one run.
OPERATION = Lease(key=columns.id, claim_id=columns.claim_id, until=columns.lease_until)
OPEN = ("requested", "pending")


@dataclass(frozen=True)
class Claimed:
    """A processor deletion held by our claim."""

    id: int
    user_id: str | None
    subject_hash: str
    reason: str
    operation_id: str | None
    started_at: datetime | None
    unconfirmed_starts: int
    first_attempt_at: datetime | None
    receipt_id: int | None
    vendor_status: str | None  # as of the last check


_CLAIMED = (
    columns.user_id,
    columns.subject_hash,
    columns.reason,
    columns.operation_id,
    columns.started_at,
    columns.unconfirmed_starts,
    columns.first_attempt_at,
    columns.receipt_id,
    columns.vendor_status,
)


# --- revocations -> requests ---------------------------------------------------------------------


def _missing_request(processor: str) -> ColumnElement[bool]:
    """The user's current revocation has no request at ``processor`` yet."""
    return ~sa.exists().where(
        columns.user_id == users.c.id,
        columns.processor == processor,
        columns.reason == "consent_revoked",
        columns.requested_at == users.c.analytics_consent_revoked_at,
    )


def revocations_page(
    conn: sa.Connection,
    *,
    processors: Sequence[str],
    as_of: datetime,
    after: Cursor | None,
    limit: int,
) -> list[Cursor]:
    """Users who revoked consent by ``as_of`` and lack a request at one of ``processors``,
    in (revoked_at, id) order through ``ix_users_consent_revoked``."""
    revoked = users.c.analytics_consent_revoked_at
    return keyset_page(
        conn,
        key=users.c.id,
        position=revoked,
        condition=sa.and_(
            revoked.is_not(None),
            revoked <= at(revoked, as_of),
            sa.or_(*(_missing_request(name) for name in processors)),
        ),
        after=after,
        limit=limit,
    )


def revocation_requests(
    conn: sa.Connection,
    user_ids: Sequence[str],
    *,
    processors: Sequence[str],
    subject: Callable[[str], str],
) -> list[DeletionRequest]:
    """One request per user and processor for their current revocation (duplicates of what
    is recorded already are dropped on insert)."""
    rows = conn.execute(
        sa.select(users.c.id, users.c.analytics_consent_revoked_at).where(
            users.c.id.in_(user_ids), users.c.analytics_consent_revoked_at.is_not(None)
        )
    )
    return [
        DeletionRequest(
            user_id=user_id,
            subject_hash=subject(user_id),
            reason="consent_revoked",
            requested_at=revoked_at,
            processor=processor,
        )
        for user_id, revoked_at in rows
        for processor in processors
    ]


# --- pages of operations ---------------------------------------------------------------------


def open_page(
    conn: sa.Connection,
    *,
    status: str,
    processor: str,
    now: datetime,
    after: Cursor | None,
    limit: int,
) -> list[Cursor]:
    """Deletions at ``processor`` in ``status`` (requested: not started yet, in request order;
    pending: started, not known complete or failed, in start order), not held by a live claim."""
    return keyset_page(
        conn,
        key=columns.id,
        position=columns.requested_at if status == "requested" else columns.started_at,
        condition=sa.and_(
            columns.status == status, columns.processor == processor, OPERATION.free(now)
        ),
        after=after,
        limit=limit,
    )


def claim(conn: sa.Connection, ids: Sequence[int], *, status: str, claim: Claim) -> list[Claimed]:
    """Lease the rows among ``ids`` still in ``status`` and free, in ``ids`` order."""
    rows = claims.claim(
        conn,
        OPERATION,
        ids,
        condition=columns.status == status,
        claim=claim,
        returning=_CLAIMED,
    )
    return [Claimed(*row) for row in rows]


def release(conn: sa.Connection, ids: Sequence[int], *, claim_id: str) -> None:
    claims.release(conn, OPERATION, ids, claim_id=claim_id)


# --- starting ----------------------------------------------------------------------------------


def record_attempt(
    conn: sa.Connection, ids: Sequence[int], *, claim_id: str, now: datetime, run: str | None
) -> None:
    """Before a start call: counted as unconfirmed until its answer says otherwise."""
    conn.execute(
        sa.update(processor_deletions)
        .where(columns.id.in_(ids), OPERATION.held_by(claim_id))
        .values(
            start_attempts=columns.start_attempts + 1,
            unconfirmed_starts=columns.unconfirmed_starts + 1,
            first_attempt_at=sa.func.coalesce(
                columns.first_attempt_at, at(columns.first_attempt_at, now)
            ),
        )
    )
    log_steps(conn, [Step(deletion_id, "start_called") for deletion_id in ids], now, run)


def _one_less_unconfirmed() -> ColumnElement[int]:
    return sa.case((columns.unconfirmed_starts > 0, columns.unconfirmed_starts - 1), else_=0)


def record_started(
    conn: sa.Connection,
    ids: Sequence[int],
    *,
    claim_id: str,
    operation_id: str,
    now: datetime,
    run: str | None,
    step: str = "started",
) -> list[int]:
    """The vendor took the deletion (or its listing shows it did): pending from now on."""
    started = (
        conn.execute(
            sa.update(processor_deletions)
            .where(columns.id.in_(ids), OPERATION.held_by(claim_id), columns.status == "requested")
            .values(
                status="pending",
                operation_id=operation_id,
                started_at=now,
                unconfirmed_starts=_one_less_unconfirmed(),
                error=None,
                claim_id=None,
                lease_until=None,
            )
            .returning(columns.id)
        )
        .scalars()
        .all()
    )
    log_steps(
        conn,
        [Step(deletion_id, step, operation_id=operation_id) for deletion_id in started],
        now,
        run,
    )
    return list(started)


def record_refused(
    conn: sa.Connection,
    ids: Sequence[int],
    *,
    claim_id: str,
    detail: str,
    now: datetime,
    run: str | None,
    fail: bool,
    keep_claim: bool = False,
) -> None:
    """The vendor answered no (or was not reached): nothing was created there. With ``fail``
    the request is given up (a person looks); otherwise it waits for the next run."""
    values: dict[str, Any] = {"unconfirmed_starts": _one_less_unconfirmed(), "error": detail}
    if fail:
        values |= {"status": "failed", "failed_at": now}
    if not keep_claim:
        values |= {"claim_id": None, "lease_until": None}
    conn.execute(
        sa.update(processor_deletions)
        .where(columns.id.in_(ids), OPERATION.held_by(claim_id))
        .values(values)
    )
    step = "start_rejected" if fail else "start_failed"
    log_steps(conn, [Step(deletion_id, step, detail=detail) for deletion_id in ids], now, run)


def record_unknown(
    conn: sa.Connection,
    ids: Sequence[int],
    *,
    claim_id: str,
    detail: str,
    now: datetime,
    run: str | None,
) -> None:
    """The start's answer was lost: the vendor may have an operation we cannot name. The claim
    is kept to its end, so the next attempt waits a lease (and reconciles first, where the
    vendor lists operations)."""
    conn.execute(
        sa.update(processor_deletions)
        .where(columns.id.in_(ids), OPERATION.held_by(claim_id))
        .values(error=detail)
    )
    log_steps(
        conn, [Step(deletion_id, "start_unknown", detail=detail) for deletion_id in ids], now, run
    )


# --- polling -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """What the vendor said of one row's operation."""

    row: Claimed
    state: str  # pending, complete, failed
    vendor_status: str


def record_checks(
    conn: sa.Connection,
    checks: Sequence[Check],
    *,
    claim_id: str,
    now: datetime,
    run: str | None,
) -> list[int]:
    """Record the answers and end the claim on those rows; returns the receipts touched by a
    completion. One UPDATE per distinct answer (most pages have one or two). A step is logged
    when the vendor's status changed: a check that found nothing new only counts (``checks``,
    ``last_checked_at``)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for check in checks:
        groups.setdefault((check.state, check.vendor_status), []).append(check.row.id)
    for (state, vendor_status), ids in groups.items():
        values: dict[str, Any] = {
            "checks": columns.checks + 1,
            "last_checked_at": now,
            "vendor_status": vendor_status,
            "claim_id": None,
            "lease_until": None,
        }
        if state == "complete":
            # An erased account's id goes once every third party has erased it too.
            erased = sa.case((columns.reason == "account_deleted", None), else_=columns.user_id)
            values |= {"status": "complete", "completed_at": now, "user_id": erased}
        elif state == "failed":
            values |= {
                "status": "failed",
                "failed_at": now,
                "error": f"the vendor reports {vendor_status}"[:300],
            }
        conn.execute(
            sa.update(processor_deletions)
            .where(columns.id.in_(ids), OPERATION.held_by(claim_id), columns.status == "pending")
            .values(values)
        )
    steps = [
        Step(
            check.row.id,
            "checked" if check.state == "pending" else check.state,
            operation_id=check.row.operation_id,
            vendor_status=check.vendor_status,
        )
        for check in checks
        if check.state != "pending" or check.row.vendor_status != check.vendor_status
    ]
    log_steps(conn, steps, now, run)
    return sorted({c.row.receipt_id for c in checks if c.state == "complete" and c.row.receipt_id})


def complete_receipts(conn: sa.Connection, receipt_ids: Sequence[int], now: datetime) -> int:
    """Receipts whose every processor deletion is complete become complete; returns how many.

    The receipts are locked first, so two runs completing a receipt's last two operations at
    once cannot both miss the other's (the second waits, then sees both).
    """
    if not receipt_ids:
        return 0
    receipts = deletion_receipts.c
    conn.execute(
        sa.select(receipts.id)
        .where(receipts.id.in_(receipt_ids))
        .order_by(receipts.id)
        .with_for_update()
    ).all()
    open_operation = sa.exists().where(
        columns.receipt_id == receipts.id, columns.status != "complete"
    )
    result = conn.execute(
        sa.update(deletion_receipts)
        .where(receipts.id.in_(receipt_ids), receipts.completed_at.is_(None), ~open_operation)
        .values(completed_at=now)
    )
    return result.rowcount


def requeue_failed(conn: sa.Connection, ids: Sequence[int], *, now: datetime) -> list[int]:
    """Failed deletions among ``ids`` become requests again (an operator retries them after
    looking at the vendor); the next start run starts a new operation for each."""
    requeued = list(
        conn.execute(
            sa.update(processor_deletions)
            .where(columns.id.in_(ids), columns.status == "failed")
            .values(
                status="requested",
                operation_id=None,
                vendor_status=None,
                started_at=None,
                failed_at=None,
                failure_reported_at=None,
                escalated_at=None,
                error=None,
                claim_id=None,
                lease_until=None,
            )
            .returning(columns.id)
        ).scalars()
    )
    log_steps(conn, [Step(deletion_id, "requeued") for deletion_id in requeued], now, None)
    return requeued


# --- escalations and failure reports -----------------------------------------------------------


def escalation_due(
    processor: str, *, escalate_after: timedelta, as_of: datetime
) -> ColumnElement[bool]:
    """:func:`.rules.escalation_due` in SQL, for one processor."""
    return sa.and_(
        columns.processor == processor,
        columns.status == "pending",
        columns.escalated_at.is_(None),
        columns.started_at <= at(columns.started_at, as_of - escalate_after),
    )


def count(conn: sa.Connection, condition: ColumnElement[bool]) -> int:
    return conn.execute(
        sa.select(sa.func.count()).select_from(processor_deletions).where(condition)
    ).scalar_one()


def failure_unreported(processor: str) -> ColumnElement[bool]:
    return sa.and_(
        columns.processor == processor,
        columns.status == "failed",
        columns.failure_reported_at.is_(None),
    )


@dataclass(frozen=True)
class Notice:
    """An operation the technical contacts must hear about (it names the raw user id: the
    mail goes to them only, never to Prefect)."""

    id: int
    processor: str
    operation_id: str | None
    user_id: str | None
    subject_hash: str
    reason: str
    requested_at: datetime
    started_at: datetime | None
    deadline_at: datetime
    vendor_status: str | None
    error: str | None


def claim_notices(
    conn: sa.Connection, condition: ColumnElement[bool], *, claim: Claim, limit: int
) -> list[Notice]:
    """Lease up to ``limit`` rows meeting ``condition`` (re-checked in the claim)."""
    ids = (
        conn.execute(
            sa.select(columns.id)
            .where(condition, OPERATION.free(claim.at))
            .order_by(columns.id)
            .limit(limit)
        )
        .scalars()
        .all()
    )
    rows = claims.claim(
        conn,
        OPERATION,
        list(ids),
        condition=condition,
        claim=claim,
        returning=(
            columns.processor,
            columns.operation_id,
            columns.user_id,
            columns.subject_hash,
            columns.reason,
            columns.requested_at,
            columns.started_at,
            columns.deadline_at,
            columns.vendor_status,
            columns.error,
        ),
    )
    return [Notice(*row) for row in rows]


def confirm_notices(
    conn: sa.Connection,
    ids: Sequence[int],
    *,
    column: str,
    step: str,
    claim_id: str,
    now: datetime,
    run: str | None,
) -> None:
    """The mail went out: record it (``escalated_at`` or ``failure_reported_at``), release."""
    claims.release(conn, OPERATION, ids, claim_id=claim_id, values={column: now})
    log_steps(conn, [Step(deletion_id, step) for deletion_id in ids], now, run)


# --- alerts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRecord:
    """An alert after one more occurrence."""

    first_seen_at: datetime
    occurrences: int
    state: AlertState  # when it was last mailed and resolved


def record_alert(
    conn: sa.Connection, processor: str, kind: str, detail: str, *, now: datetime
) -> AlertRecord:
    """Count one more occurrence of an alert (one upsert: concurrent runs take turns on the
    row, and the second sees the first's mail once it commits)."""
    alerts = processor_alerts.c
    statement = (
        dialect.insert(conn, processor_alerts)
        .values(
            processor=processor,
            kind=kind,
            first_seen_at=now,
            last_seen_at=now,
            occurrences=1,
            detail=detail,
        )
        .on_conflict_do_update(
            index_elements=["processor", "kind"],
            set_={"occurrences": alerts.occurrences + 1, "last_seen_at": now, "detail": detail},
        )
        .returning(alerts.first_seen_at, alerts.occurrences, alerts.mailed_at, alerts.resolved_at)
    )
    first_seen_at, occurrences, mailed_at, resolved_at = conn.execute(statement).one()
    return AlertRecord(first_seen_at, occurrences, AlertState(mailed_at, resolved_at))


def mark_alert_mailed(
    conn: sa.Connection, processor: str, kind: str, mailed_at: datetime | None
) -> None:
    """Set (or, when the mail failed, put back) when the alert was last mailed."""
    alerts = processor_alerts.c
    conn.execute(
        sa.update(processor_alerts)
        .where(alerts.processor == processor, alerts.kind == kind)
        .values(mailed_at=mailed_at)
    )


def resolve_alert(conn: sa.Connection, processor: str, kind: str, now: datetime) -> int:
    """The alert is over (if open): when it comes back, it is mailed at once."""
    alerts = processor_alerts.c
    return conn.execute(
        sa.update(processor_alerts)
        .where(alerts.processor == processor, alerts.kind == kind, alerts.resolved_at.is_(None))
        .values(resolved_at=now)
    ).rowcount


# --- counts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """Open processor deletions at the end of a run."""

    requested: int
    pending: int
    overdue: int  # past their legal deadline (:func:`.rules.overdue`)


def backlog(conn: sa.Connection, *, processors: Sequence[str], as_of: datetime) -> Backlog:
    mine = columns.processor.in_(processors)
    counts: dict[str, int] = {
        status: number
        for status, number in conn.execute(
            sa.select(columns.status, sa.func.count())
            .where(mine, columns.status.in_(OPEN))
            .group_by(columns.status)
        )
    }
    overdue = conn.execute(
        sa.select(sa.func.count())
        .select_from(processor_deletions)
        .where(mine, columns.status.in_(OPEN), columns.deadline_at < at(columns.deadline_at, as_of))
    ).scalar_one()
    return Backlog(
        requested=counts.get("requested", 0), pending=counts.get("pending", 0), overdue=overdue
    )

"""Requests to erase a user at third parties (processors), and the append-only log of steps.

Two processes ask for such deletions: consent revocation (lifecycle.processes.consent_deletion)
and account erasure (:mod:`lifecycle.common.erasure`, for accounts deleted by inactive-accounts).
Both record one ``processor_deletions`` row per processor, through :func:`request_deletions`;
the consent-deletion flows start, poll and escalate every such row the same way.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from lifecycle.db import dialect
from lifecycle.db.schema import processor_deletion_steps, processor_deletions

Reason = Literal["consent_revoked", "account_deleted"]


def legal_deadline(requested_at: datetime) -> datetime:
    """One calendar month after the request (GDPR art. 12(3)): the same day of the next
    month, or its last day when it has fewer days (31 January -> 28 or 29 February)."""
    year, month = divmod(requested_at.month, 12)
    year, month = requested_at.year + year, month + 1
    day = min(requested_at.day, calendar.monthrange(year, month)[1])
    return requested_at.replace(year=year, month=month, day=day)


@dataclass(frozen=True)
class DeletionRequest:
    """Erase ``user_id`` at ``processor``, because of ``reason`` at ``requested_at``."""

    user_id: str
    subject_hash: str
    reason: Reason
    requested_at: datetime
    processor: str
    receipt_id: int | None = None

    def row(self, now: datetime) -> dict[str, Any]:
        return {
            **vars(self),
            "deadline_at": legal_deadline(self.requested_at),
            "status": "requested",
            "created_at": now,
        }


def request_deletions(
    conn: sa.Connection,
    requests: Sequence[DeletionRequest],
    *,
    now: datetime,
    flow_run_id: str | None,
) -> list[int]:
    """Record the requests not recorded yet (a request is one per user, processor, reason and
    moment: a second run asking again records nothing) and log each; their ids."""
    if not requests:
        return []
    statement = (
        dialect.insert(conn, processor_deletions)
        .on_conflict_do_nothing(index_elements=["user_id", "processor", "reason", "requested_at"])
        .returning(processor_deletions.c.id)
    )
    ids = [row[0] for row in conn.execute(statement, [r.row(now) for r in requests])]
    log_steps(conn, [Step(deletion_id, "requested") for deletion_id in ids], now, flow_run_id)
    return ids


@dataclass(frozen=True)
class Step:
    """One line of the append-only log of a processor deletion."""

    deletion_id: int
    step: str
    operation_id: str | None = None
    vendor_status: str | None = None
    detail: str | None = None


def log_steps(
    conn: sa.Connection, steps: Sequence[Step], at: datetime, flow_run_id: str | None
) -> None:
    """Append these steps to ``processor_deletion_steps`` (in the caller's transaction)."""
    if steps:
        conn.execute(
            sa.insert(processor_deletion_steps),
            [{**vars(step), "at": at, "flow_run_id": flow_run_id} for step in steps],
        )

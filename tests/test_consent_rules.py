"""Consent-deletion rules: the legal deadline, escalation, alerts; the SQL agrees with them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from lifecycle.clients.http import AuthenticationFailed, OutcomeUnknown, RequestRejected
from lifecycle.clients.processors import SchemaChanged
from lifecycle.common.third_parties import DeletionRequest, legal_deadline, request_deletions
from lifecycle.db.schema import processor_deletion_steps, processor_deletions
from lifecycle.errors import ConfigError, DependencyDown
from lifecycle.processes.consent_deletion import queries
from lifecycle.processes.consent_deletion.rules import (
    AlertKind,
    AlertState,
    alert_due,
    alert_kind,
    escalation_due,
    overdue,
)

T = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
THREE_DAYS = timedelta(days=3)


@pytest.mark.parametrize(
    ("requested", "deadline"),
    [
        (datetime(2026, 3, 10, 12, 0, tzinfo=UTC), datetime(2026, 4, 10, 12, 0, tzinfo=UTC)),
        (datetime(2026, 1, 31, 9, 30, tzinfo=UTC), datetime(2026, 2, 28, 9, 30, tzinfo=UTC)),
        (datetime(2028, 1, 31, 9, 30, tzinfo=UTC), datetime(2028, 2, 29, 9, 30, tzinfo=UTC)),
        (datetime(2026, 12, 15, 0, 0, tzinfo=UTC), datetime(2027, 1, 15, 0, 0, tzinfo=UTC)),
        (datetime(2026, 8, 31, 23, 59, tzinfo=UTC), datetime(2026, 9, 30, 23, 59, tzinfo=UTC)),
    ],
)
def test_legal_deadline_is_one_calendar_month_later(
    requested: datetime, deadline: datetime
) -> None:
    assert legal_deadline(requested) == deadline


def test_escalation_is_due_at_the_line_not_before_and_only_once() -> None:
    def due(as_of: datetime, escalated_at: datetime | None = None) -> bool:
        return escalation_due(
            started_at=T, escalated_at=escalated_at, escalate_after=THREE_DAYS, as_of=as_of
        )

    assert not due(T + THREE_DAYS - timedelta(seconds=1))
    assert due(T + THREE_DAYS)
    assert not due(T + THREE_DAYS, escalated_at=T + THREE_DAYS)


def test_overdue_only_when_open_past_the_deadline() -> None:
    deadline = legal_deadline(T)
    assert not overdue(deadline_at=deadline, complete=False, as_of=deadline)
    assert overdue(deadline_at=deadline, complete=False, as_of=deadline + timedelta(seconds=1))
    assert not overdue(deadline_at=deadline, complete=True, as_of=deadline + timedelta(days=9))


@pytest.mark.parametrize(
    ("state", "now", "due"),
    [
        (None, T, True),
        (AlertState(mailed_at=None, resolved_at=None), T, True),
        (AlertState(mailed_at=T, resolved_at=None), T + timedelta(hours=23), False),
        (AlertState(mailed_at=T, resolved_at=None), T + timedelta(hours=24), True),
        (AlertState(mailed_at=T, resolved_at=T + timedelta(hours=1)), T + timedelta(hours=2), True),
        (
            AlertState(mailed_at=T, resolved_at=T - timedelta(hours=1)),
            T + timedelta(hours=2),
            False,
        ),
    ],
)
def test_alerts_are_mailed_once_until_resolved_or_repeated(
    state: AlertState | None, now: datetime, due: bool
) -> None:
    assert alert_due(state, now=now, repeat_after=timedelta(hours=24)) is due


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (AuthenticationFailed("401"), AlertKind.AUTHENTICATION),
        (SchemaChanged("shape"), AlertKind.SCHEMA_CHANGED),
        (OutcomeUnknown("lost"), AlertKind.START_UNKNOWN),
        (DependencyDown("x", "down", exhausted=True), AlertKind.NOT_ANSWERING),
        (RequestRejected("422", status=422), AlertKind.REJECTED),
        (ConfigError("a setting"), None),
        (httpx.ConnectError("db"), None),
    ],
)
def test_which_errors_alert(error: Exception, kind: AlertKind | None) -> None:
    assert alert_kind(error) is kind


def _operation(conn: sa.Connection, user_id: str, **values: object) -> int:
    (deletion_id,) = request_deletions(
        conn,
        [
            DeletionRequest(
                user_id=user_id,
                subject_hash=f"hash-{user_id}",
                reason="consent_revoked",
                requested_at=T - timedelta(days=1),
                processor="sim",
            )
        ],
        now=T,
        flow_run_id=None,
    )
    if values:
        row = processor_deletions.c.id == deletion_id
        conn.execute(sa.update(processor_deletions).where(row).values(values))
    return deletion_id


def test_escalation_sql_agrees_with_the_rule(engine: sa.Engine) -> None:
    cases: dict[str, dict[str, Any]] = {
        "at-the-line": {"status": "pending", "started_at": T},
        "a-second-short": {"status": "pending", "started_at": T + timedelta(seconds=1)},
        "escalated": {"status": "pending", "started_at": T - THREE_DAYS, "escalated_at": T},
        "complete": {"status": "complete", "started_at": T - THREE_DAYS},
        "not-started": {"status": "requested", "started_at": None},
    }
    as_of = T + THREE_DAYS
    with engine.begin() as conn:
        ids = {name: _operation(conn, name, **values) for name, values in cases.items()}
        found = set(
            conn.execute(
                sa.select(processor_deletions.c.id).where(
                    queries.escalation_due("sim", escalate_after=THREE_DAYS, as_of=as_of)
                )
            ).scalars()
        )
    expected = {
        ids[name]
        for name, values in cases.items()
        if values["status"] == "pending"
        and escalation_due(
            started_at=values["started_at"],
            escalated_at=values.get("escalated_at"),
            escalate_after=THREE_DAYS,
            as_of=as_of,
        )
    }
    assert found == expected == {ids["at-the-line"]}


def test_a_request_is_recorded_once_however_often_it_is_asked(engine: sa.Engine) -> None:
    request = DeletionRequest(
        user_id="u-1",
        subject_hash="hash",
        reason="consent_revoked",
        requested_at=T,
        processor="sim",
    )
    with engine.begin() as conn:
        first = request_deletions(conn, [request, request], now=T, flow_run_id=None)
        again = request_deletions(conn, [request], now=T, flow_run_id=None)
    assert len(first) == 1 and again == []


@pytest.mark.parametrize(
    "statement",
    [
        sa.update(processor_deletion_steps).values(step="rewritten"),
        sa.delete(processor_deletion_steps),
    ],
    ids=["update", "delete"],
)
def test_the_step_log_is_append_only(engine: sa.Engine, statement: sa.Executable) -> None:
    with engine.begin() as conn:
        _operation(conn, "u-1")
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), engine.begin() as conn:
        conn.execute(statement)
    with engine.connect() as conn:
        steps = conn.execute(sa.select(processor_deletion_steps.c.step)).scalars().all()
    assert steps == ["requested"]

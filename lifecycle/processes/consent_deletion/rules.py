"""The consent-deletion rules as pure functions: escalation, the legal deadline, alerts.

The SQL in :mod:`.queries` selects with the same conditions; ``tests/test_consent_rules.py``
checks the edges (exactly at the line, one second before).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from lifecycle.clients.http import AuthenticationFailed, OutcomeUnknown, RequestRejected
from lifecycle.clients.processors import SchemaChanged
from lifecycle.common.third_parties import legal_deadline
from lifecycle.errors import DependencyDown

__all__ = [
    "RESOLVED_BY",
    "AlertKind",
    "alert_due",
    "alert_kind",
    "escalation_due",
    "legal_deadline",
    "overdue",
]


def escalation_due(
    *,
    started_at: datetime,
    escalated_at: datetime | None,
    escalate_after: timedelta,
    as_of: datetime,
) -> bool:
    """An operation still pending ``escalate_after`` after it started is escalated, once."""
    return escalated_at is None and started_at + escalate_after <= as_of


def overdue(*, deadline_at: datetime, complete: bool, as_of: datetime) -> bool:
    """Not complete once its legal deadline (:func:`legal_deadline`) has passed."""
    return not complete and deadline_at < as_of


class AlertKind(StrEnum):
    """Why the technical contacts hear about a processor (one mail per kind, de-duplicated)."""

    AUTHENTICATION = "authentication"  # 401/403: the token is wrong, expired or too weak
    SCHEMA_CHANGED = "schema_changed"  # an answer in a shape the contract does not describe
    NOT_ANSWERING = "not_answering"  # timeouts, 429 or 5xx past every retry
    START_UNKNOWN = "start_unknown"  # a start call's answer was lost: maybe one extra operation
    REJECTED = "rejected"  # a 4xx to a call we make (the vendor refuses an id, say)


#: What a call that went well proves fixed: a start or a status check reached the API with our
#: token; a start's answer was read (so starts are heard again); a status answer was read in the
#: shape we know. A rejected call is never "resolved": it is mailed again after the repeat time.
RESOLVED_BY = {
    "start": frozenset(
        {AlertKind.AUTHENTICATION, AlertKind.NOT_ANSWERING, AlertKind.START_UNKNOWN}
    ),
    "status": frozenset(
        {AlertKind.AUTHENTICATION, AlertKind.NOT_ANSWERING, AlertKind.SCHEMA_CHANGED}
    ),
}


def alert_kind(exc: BaseException) -> AlertKind | None:
    """The alert an error raises, or None for errors that are not the processor's doing."""
    if isinstance(exc, AuthenticationFailed):
        return AlertKind.AUTHENTICATION
    if isinstance(exc, SchemaChanged):
        return AlertKind.SCHEMA_CHANGED
    if isinstance(exc, OutcomeUnknown):
        return AlertKind.START_UNKNOWN
    if isinstance(exc, DependencyDown):
        return AlertKind.NOT_ANSWERING
    if isinstance(exc, RequestRejected):
        return AlertKind.REJECTED
    return None


@dataclass(frozen=True)
class AlertState:
    """What we know of an alert from earlier runs."""

    mailed_at: datetime | None
    resolved_at: datetime | None


def alert_due(state: AlertState | None, *, now: datetime, repeat_after: timedelta) -> bool:
    """Mail an alert the first time, after it was resolved and came back, or once
    ``repeat_after`` has passed since the last mail: never every hour for one broken API."""
    if state is None or state.mailed_at is None:
        return True
    if state.resolved_at is not None and state.resolved_at >= state.mailed_at:
        return True
    return state.mailed_at + repeat_after <= now

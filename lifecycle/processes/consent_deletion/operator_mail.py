"""Mails to the technical contacts: operations that need a person, and processor alerts.

These go to the operators only (``LIFECYCLE_CONSENT_DELETION__TECHNICAL_CONTACTS``): a notice
names the operation and our raw user id, so it can be looked up at the vendor, but never an
e-mail address. Nothing here is logged or sent to Prefect.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from importlib.resources import files

from lifecycle.clients.mail.message import MailTemplate, OutgoingMail
from lifecycle.processes.consent_deletion.queries import Notice
from lifecycle.processes.consent_deletion.rules import AlertKind

_FOLDER = files(__package__) / "templates"
_NOTICE = MailTemplate(_FOLDER, "notice", subject="[lifecycle] $subject")
_ALERT = MailTemplate(_FOLDER, "alert", subject="[lifecycle] processor $processor: $what")

_WHAT = {
    AlertKind.AUTHENTICATION: "its API refuses our credentials",
    AlertKind.SCHEMA_CHANGED: "its API answers in a shape we do not know",
    AlertKind.NOT_ANSWERING: "its API is not answering",
    AlertKind.START_UNKNOWN: "a deletion may have been started twice",
    AlertKind.REJECTED: "its API rejects some of our calls",
}
_CHECK = {
    AlertKind.AUTHENTICATION: "the processor's token (token or token_block in "
    "LIFECYCLE_CONSENT_DELETION__PROCESSORS): expired, revoked or lacking a permission.",
    AlertKind.SCHEMA_CHANGED: "the vendor's API documentation and changelog; update the "
    "processor's contract (paths, JSON paths, status values). Operations are not read as "
    "pending meanwhile: their checks wait.",
    AlertKind.NOT_ANSWERING: "the vendor's status page and our network; the flows retry "
    "with backoff and the next run goes on.",
    AlertKind.START_UNKNOWN: "nothing urgent: a start call's answer was lost (a timeout, a "
    "crash), so the vendor may hold one extra deletion for the same user; it is retried after "
    "the claim's lease, after looking for it in the vendor's listing where there is one.",
    AlertKind.REJECTED: "the detail above: the vendor refused an id or a call; the operation "
    "concerned is reported as failed.",
}


def _line(notice: Notice, why: str) -> str:
    started = notice.started_at.isoformat(timespec="minutes") if notice.started_at else "-"
    return (
        f"- {why}: record {notice.id}, processor {notice.processor}, "
        f"operation {notice.operation_id or '-'}, "
        f"user id {notice.user_id or '(erased)'}, reason {notice.reason}, "
        f"requested {notice.requested_at.isoformat(timespec='minutes')}, started {started}, "
        f"legal deadline {notice.deadline_at.date().isoformat()}, "
        f"vendor status {notice.vendor_status or '-'}"
    )


def notice_mail(
    *, to: str, escalated: Sequence[Notice], failed: Sequence[Notice], escalate_after: timedelta
) -> OutgoingMail:
    """One mail listing operations still pending past ``escalate_after`` and failed ones."""
    lines = [_line(n, f"not complete after {_days(escalate_after)}") for n in escalated] + [
        _line(n, f"failed ({n.error or 'no detail'})") for n in failed
    ]
    parts = []
    if escalated:
        parts.append(f"{len(escalated)} still pending after {_days(escalate_after)}")
    if failed:
        parts.append(f"{len(failed)} failed")
    summary = f"Consent deletions at third parties that need a person: {', '.join(parts)}."
    return _NOTICE.render(
        to=to,
        values={
            "subject": f"consent deletions need a person ({', '.join(parts)})",
            "summary": summary,
            "rows": "\n".join(lines),
        },
    )


def alert_mail(
    *,
    to: str,
    processor: str,
    kind: AlertKind,
    detail: str,
    first_seen: datetime,
    occurrences: int,
    repeat_after: timedelta,
) -> OutgoingMail:
    return _ALERT.render(
        to=to,
        values={
            "processor": processor,
            "what": _WHAT[kind],
            "detail": detail,
            "first_seen": first_seen.isoformat(timespec="minutes"),
            "occurrences": str(occurrences),
            "check": _CHECK[kind],
            "repeat": _days(repeat_after),
        },
    )


def _days(length: timedelta) -> str:
    hours = length.total_seconds() / 3600
    amount, unit = (hours / 24, "day") if hours % 24 == 0 else (hours, "hour")
    return f"{amount:g} {unit}{'' if amount == 1 else 's'}"

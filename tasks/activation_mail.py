"""Thin Prefect tasks over :mod:`lifecycle.processes.activation_mail`, one per step and batch,
named after the seed's state machine: get-activation-status -> send-activation-mail ->
mark-mail-sent; and the event the application (or ``lifecycle listen``) emits for a new user.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.events import emit_event

from lifecycle.common.batch import BatchReport, Breaker
from lifecycle.common.claims import Claim
from lifecycle.common.paging import Cursor
from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import assert_current
from lifecycle.privacy import pseudonym
from lifecycle.processes.activation_mail import steps
from lifecycle.processes.activation_mail.steps import (
    ActivationContext,
    ActivationParams,
    ClaimedBatch,
)
from lifecycle.settings import Settings, get_settings
from tasks._prefect import batch_task, mail_sender, report_batch

#: What the application emits when it created a user (resource ``lifecycle.user.<pseudonym>``).
USER_CREATED_EVENT = "lifecycle.user.created"
SENT_EVENT = "lifecycle.activation.mail_sent"


def _key(settings: Settings) -> bytes | None:
    key = settings.pseudonym_key
    return key.get_secret_value().encode() if key else None


def emit_user_created(user_id: str, settings: Settings | None = None) -> None:
    """For the application, after it committed a new user: start ``activation-mail`` now.

    The event names the user by pseudonym only; the run it triggers mails every user still
    due (this one included), as the sweep does, so a burst of sign-ups starts few runs.
    """
    settings = settings or get_settings()
    emit_event(
        event=USER_CREATED_EVENT,
        resource={"prefect.resource.id": f"lifecycle.user.{pseudonym(user_id, _key(settings))}"},
    )


def emit_catch_up() -> None:
    """One ``lifecycle.user.created`` event for users whose notification may have been lost
    (the listener reconnected): its run mails every user still due, whoever they are."""
    emit_event(
        event=USER_CREATED_EVENT, resource={"prefect.resource.id": "lifecycle.user.catch-up"}
    )


def _context(settings: Settings, params: ActivationParams) -> ActivationContext:
    group = settings.activation_mail
    return ActivationContext(
        engine=get_engine(settings.resolved_database_url),
        url_base=group.url_base,
        product=settings.product_name,
        dry_run=params.dry_run,
        lease=timedelta(seconds=group.lease_seconds),
        created_after=params.as_of - group.max_age,
        min_age=timedelta(seconds=params.min_age_seconds),
        pseudonym_key=_key(settings),
    )


@batch_task("check-activation-mail")
def preflight(params: ActivationParams) -> int:
    """Check settings and schema; count the users due a mail. Changes nothing."""
    settings = get_settings()
    assert_current(get_engine(settings.resolved_database_url))
    return steps.count_due(_context(settings, params))


@batch_task("get-activation-status")
def get_activation_status(params: ActivationParams, after: Cursor | None) -> ClaimedBatch:
    """Read one page of users due, check each status, claim (SENDING) the ones to mail."""
    settings = get_settings()
    report = steps.read_status(_context(settings, params), after=after, limit=params.batch_size)
    return report_batch(report, {}, subject_label="users")


@batch_task("send-activation-mail")
def send_activation_mail(params: ActivationParams, claim: Claim) -> BatchReport:
    """Mail the users one claim holds, under the shared mail rate (first in line), recording
    each mail the moment it is accepted."""
    settings = get_settings()
    with mail_sender(settings, priority=settings.activation_mail.priority) as send:
        report = steps.send_mails(
            _context(settings, params),
            claim=claim,
            send=send,
            breaker=Breaker(f"the mail backend (LIFECYCLE_MAIL_BACKEND={settings.mail_backend})"),
        )
    return report_batch(report, {"sent": SENT_EVENT}, subject_label="users")


@batch_task("mark-mail-sent")
def mark_mail_sent(params: ActivationParams, claim: Claim) -> BatchReport:
    """Close a claim: users it still holds (not mailed) go back to NONE for the next run."""
    report = steps.mark_sent(_context(get_settings(), params), claim_id=claim.id)
    return report_batch(report, {}, subject_label="users")

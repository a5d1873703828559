"""Flow ``activation-mail``: mail every new user still due their activation link, exactly once.

Started three ways (see prefect.yaml and README): the ``lifecycle.user.created`` event (from
the application, or ``lifecycle listen`` on PostgreSQL's NOTIFY), and a sweep every few
minutes. Every run works on all users still due, never on one user, so a burst of sign-ups
starts a bounded number of runs and no user id sits in Prefect's history.

Each batch is the seed's state machine as three tasks: get-activation-status (read, check,
claim NONE -> SENDING), send-activation-mail (send; MAIL_SENT per mail), mark-mail-sent
(close the claim: users not mailed go back to NONE).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field, StrictBool, StrictInt

from lifecycle.common.batch import BatchReport
from lifecycle.common.paging import Cursor
from lifecycle.common.params import titled
from lifecycle.errors import RunFailed
from lifecycle.processes.activation_mail.steps import ActivationParams, ActivationSummary
from tasks._prefect import publish_summary
from tasks.activation_mail import (
    get_activation_status,
    mark_mail_sent,
    preflight,
    send_activation_mail,
)


@flow(name="activation-mail", validate_parameters=True)
def activation_mail(
    dry_run: StrictBool = titled(False, "Dry run"),
    min_age_seconds: Annotated[StrictInt, Field(ge=0, le=86_400)] = titled(
        0, "Only users created at least this many seconds ago"
    ),
    batch_size: Annotated[StrictInt, Field(ge=1, le=10_000)] = titled(1000, "Users per batch"),
) -> ActivationSummary:
    """Send the activation mail to every user still due it; see README.

    Args:
        dry_run: Count who would be mailed, and send and change nothing.
        min_age_seconds: Only users created at least this long before the run (0 to 86400).
            The event-triggered run uses 0; the sweep uses a few minutes, for users whose
            event was lost.
        batch_size: Users read, claimed and mailed per batch of three tasks (1 to 10000).
            The run goes on, page after page, until a page finds nobody: users who sign up
            while it runs are mailed by it too.
    """
    params = ActivationParams(
        as_of=datetime.now(UTC),
        dry_run=dry_run,
        batch_size=batch_size,
        min_age_seconds=min_age_seconds,
    )
    logger = get_run_logger()
    logger.info("dry_run=%s min_age_seconds=%d", dry_run, min_age_seconds)
    total, batches = BatchReport(), 0
    try:
        logger.info("users due an activation mail: %d", preflight(params))
        after: Cursor | None = None
        while True:
            claimed = get_activation_status(params, after)
            total.merge(claimed)
            batches += 1
            if claimed.claim is not None:
                try:
                    total.merge(send_activation_mail(params, claimed.claim))
                finally:
                    total.merge(mark_mail_sent(params, claimed.claim))
            if claimed.last is None:
                break
            after = claimed.last
    finally:
        summary = ActivationSummary.of(total, as_of=params.as_of, dry_run=dry_run, batches=batches)
        publish_summary("activation-mail", "Activation mail", summary)
    logger.info("summary: %s", summary.line())
    if summary.failed:
        raise RunFailed(
            f"{summary.failed} activation mails failed (their users are NONE again; the next "
            f"run retries them). Summary: {summary.line()}"
        )
    return summary

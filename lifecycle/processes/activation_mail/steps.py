"""One batch of activation mail, in the seed's three steps, as plain functions.

1. :func:`read_status` (GetActivationStatus + CheckActivationStatus): read a keyset page of the
   users still due, read their status, and claim those still NONE (or SENDING under an ended
   lease) in one conditional UPDATE that sets SENDING. Every user not claimed is counted under
   the status check's reason.
2. :func:`send_mails` (SendActivationMail): mail each user the claim holds, and record each
   mail (MAIL_SENT) the moment the backend accepted it, in a statement that checks the claim
   still holds the user. A crash between a send and its record repeats that one mail: the
   only window left (see README).
3. :func:`mark_sent` (MailSent): close the claim: a user it still holds (a failed send, or a
   send step that stopped) goes back to NONE for the next run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from pydantic import BaseModel

from lifecycle.clients.mail.errors import Undeliverable
from lifecycle.clients.mail.message import OutgoingMail
from lifecycle.common.batch import BatchReport, Breaker, RunSummary
from lifecycle.common.claims import Claim
from lifecycle.common.paging import Cursor
from lifecycle.db.engine import relaxed_connection
from lifecycle.errors import PermanentError, TransientError
from lifecycle.privacy import pseudonym
from lifecycle.processes.activation_mail import queries
from lifecycle.processes.activation_mail.mail import activation_mail
from lifecycle.processes.activation_mail.queries import Recipient
from lifecycle.processes.activation_mail.rules import Decision, Status, check_status, new_token

Send = Callable[[OutgoingMail], str]

#: Attempts per mail when the backend throttles or is briefly away, and the waits between them.
SEND_ATTEMPTS = 3
SEND_BACKOFF_SECONDS = (0.5, 2.0)


class ActivationParams(BaseModel):
    """A run's parameters, checked: the same for every batch of the run."""

    as_of: datetime  # when the run started: users created up to min_age before it are due
    dry_run: bool
    batch_size: int
    min_age_seconds: int = 0


class ActivationSummary(RunSummary):
    """What one activation-mail run did."""


@dataclass
class ClaimedBatch(BatchReport):
    """Step 1's report: the claim its users are held under (None: nobody claimed)."""

    claim: Claim | None = None


@dataclass(frozen=True)
class ActivationContext:
    engine: sa.Engine
    url_base: str
    product: str
    dry_run: bool
    lease: timedelta
    created_after: datetime
    min_age: timedelta = timedelta(0)
    pseudonym_key: bytes | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    sleep: Callable[[float], None] = time.sleep

    def subject(self, user_id: str) -> str:
        return pseudonym(user_id, self.pseudonym_key)

    @property
    def window(self) -> dict[str, datetime]:
        """Who is due: created after ``created_after`` and at least ``min_age`` ago (now, not
        when the run started: a run goes on with users who sign up while it works)."""
        return {"created_after": self.created_after, "created_before": self.clock() - self.min_age}


def read_status(ctx: ActivationContext, *, after: Cursor | None, limit: int) -> ClaimedBatch:
    """Read one page of users due, check each one's status, claim those to send."""
    with ctx.engine.connect() as conn:
        page = queries.due_page(conn, now=ctx.clock(), after=after, limit=limit, **ctx.window)
    # A short page does not end the walk: users who signed up meanwhile come after it. The
    # walk ends when a page finds nobody.
    report = ClaimedBatch(last=page[-1] if page else None)
    if ctx.dry_run:
        report.counts["would_send"] += len(page)
        return report
    claim_users(ctx, [cursor.id for cursor in page], report)
    return report


def claim_users(ctx: ActivationContext, ids: list[str], report: ClaimedBatch) -> None:
    """The status check and the claim for ``ids``; counts each user's reason in ``report``."""
    if not ids:
        return
    claim = Claim.new(ctx.clock(), ctx.lease)
    with ctx.engine.begin() as conn:
        before = queries.statuses(conn, ids)
        claimed = set(queries.claim_due(conn, ids, claim=claim, **ctx.window))
    if claimed:
        report.claim = claim
        report.counts["claimed"] += len(claimed)
    for user_id in ids:
        status, lease_until = before.get(user_id, (None, None))
        decision = check_status(status, lease_until, claim.at)
        if user_id in claimed:
            if decision is Decision.TAKE_OVER:
                report.counts["taken_over"] += 1
            continue
        if decision in (Decision.SEND, Decision.TAKE_OVER):
            decision = Decision.BEING_SENT  # another run claimed it between read and claim
        report.counts[f"skipped_{decision.value}"] += 1


def send_mails(
    ctx: ActivationContext, *, claim: Claim, send: Send, breaker: Breaker
) -> BatchReport:
    """Mail every user ``claim`` holds; record each mail as soon as it is accepted.

    Sending stops a margin before the lease ends, so no other run can take a user over while
    its mail is in flight; users not reached stay held, and :func:`mark_sent` gives them back.
    """
    report = BatchReport()
    send_until = claim.at + claim.lease - lease_margin(claim.lease)
    with relaxed_connection(ctx.engine) as conn:
        recipients = queries.held(conn, claim.id)
        fresh = {r.id: new_token() for r in recipients if r.token is None}
        if fresh:  # users without a token get one first, all in one statement
            queries.give_tokens(conn, fresh, claim_id=claim.id)
            recipients = queries.held(conn, claim.id)
        sender = _Sender(ctx, conn, send, breaker, claim.id, report)
        for index, recipient in enumerate(recipients):
            if ctx.clock() >= send_until:
                report.counts["deferred"] += len(recipients) - index
                break
            sender.mail(recipient)
    return report


def lease_margin(lease: timedelta) -> timedelta:
    """How long before its lease ends a claim stops sending: a quarter of it, at most 60 s."""
    return min(timedelta(seconds=60), lease / 4)


@dataclass
class _Sender:
    ctx: ActivationContext
    conn: sa.Connection  # autocommitted, relaxed: a record lost in a database crash repeats a mail
    send: Send
    breaker: Breaker
    claim_id: str
    report: BatchReport

    def __post_init__(self) -> None:
        self._finish = {
            status: queries.finish_statement(self.claim_id, status)
            for status in (Status.MAIL_SENT, Status.UNDELIVERABLE, Status.NONE)
        }

    def mail(self, recipient: Recipient) -> None:
        subject = self.ctx.subject(recipient.id)
        try:
            outgoing = activation_mail(
                to=recipient.email,
                name=recipient.name,
                username=recipient.username,
                token=_token_of(recipient),
                url_base=self.ctx.url_base,
                product=self.ctx.product,
            )
            self._send_with_retries(outgoing)
        except Undeliverable:
            self._finish_as(recipient.id, Status.UNDELIVERABLE)
            self.report.record("undeliverable", subject)
            self.breaker.success()  # the backend answered
            return
        except PermanentError:  # the backend refuses us whoever the recipient: stop here
            self._finish_as(recipient.id, Status.NONE)
            raise
        except Exception as exc:  # worth trying again: the next run will
            self._finish_as(recipient.id, Status.NONE)
            self.report.fail(subject, "send", exc)
            self.breaker.failure(exc)
            return
        if self._finish_as(recipient.id, Status.MAIL_SENT):
            self.report.record("sent", subject)
        else:  # our lease ended and another run took the user over: it may mail them too
            self.report.record("sent_after_lease", subject)
        self.breaker.success()

    def _send_with_retries(self, outgoing: OutgoingMail) -> None:
        """Throttling and brief outages are retried a few times before the mail counts as
        failed (and its user goes back to NONE for the next run)."""
        for attempt in range(SEND_ATTEMPTS):
            try:
                self.send(outgoing)
                return
            except TransientError:
                if attempt == SEND_ATTEMPTS - 1:
                    raise
                self.report.counts["send_retries"] += 1
                self.ctx.sleep(SEND_BACKOFF_SECONDS[min(attempt, len(SEND_BACKOFF_SECONDS) - 1)])

    def _finish_as(self, user_id: str, status: Status) -> bool:
        result = self.conn.execute(self._finish[status], {"keys": [user_id]})
        return bool(result.rowcount)


def _token_of(recipient: Recipient) -> str:
    if not recipient.token:  # given one above, under our claim
        raise PermanentError("a held user has no activation token")
    return recipient.token


def mark_sent(ctx: ActivationContext, *, claim_id: str) -> BatchReport:
    """Close the claim: users it still holds (not mailed) go back to NONE."""
    report = BatchReport()
    with ctx.engine.begin() as conn:
        returned = queries.release_held(conn, claim_id)
    if returned:
        report.counts["returned_to_none"] += returned
    return report


def count_due(ctx: ActivationContext) -> int:
    with ctx.engine.connect() as conn:
        return queries.count_due(conn, now=ctx.clock(), **ctx.window)

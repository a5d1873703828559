"""One batch of the inactive-accounts sweep, as plain functions over injected clients.

A batch reads one keyset page of candidates, then acts on each user through claims that
re-check the policy. One user's failure is recorded (with a pseudonym, never the address) and
the batch goes on. Deletions are claimed a few users at a time (one commit per group), then
erased group by group (:mod:`lifecycle.common.erasure`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from pydantic import BaseModel, model_validator

from lifecycle.clients.mail.message import OutgoingMail
from lifecycle.clients.storage import ObjectStorage
from lifecycle.common.batch import BatchReport, RunSummary
from lifecycle.common.claims import Claim
from lifecycle.common.erasure import DeletionPlan, Erasure
from lifecycle.common.paging import Cursor, next_cursor
from lifecycle.errors import ConfigError
from lifecycle.privacy import pseudonym
from lifecycle.processes.inactive_accounts import queries
from lifecycle.processes.inactive_accounts.queries import DeletionQueue, Recipient
from lifecycle.processes.inactive_accounts.rules import Policy
from lifecycle.processes.inactive_accounts.warning_mail import WarningContext, inactivity_warning

#: Confirm sent warnings in groups this large, so a crash re-sends at most this many.
CONFIRM_EVERY = 50
#: Stop sending from a claim this long before its lease runs out.
LEASE_MARGIN = timedelta(seconds=60)

Send = Callable[[OutgoingMail], str]


class SweepParams(BaseModel):
    """A run's parameters, checked: the same for every batch of the run."""

    as_of: datetime
    dry_run: bool
    warn_after_days: int
    delete_after_days: int
    batch_size: int

    @model_validator(mode="after")
    def _grace_period(self) -> SweepParams:
        if self.delete_after_days <= self.warn_after_days:
            raise ConfigError(
                f"delete_after_days ({self.delete_after_days}) must be greater than "
                f"warn_after_days ({self.warn_after_days}): the difference is the grace period"
            )
        return self

    @property
    def policy(self) -> Policy:
        return Policy(
            warn_after=timedelta(days=self.warn_after_days),
            delete_after=timedelta(days=self.delete_after_days),
        )


class SweepSummary(RunSummary):
    """What one inactive-accounts run did."""

    @property
    def objects_deleted(self) -> int:
        return self.totals.get("objects_deleted", 0)


@dataclass(frozen=True)
class SweepContext:
    engine: sa.Engine
    policy: Policy
    as_of: datetime
    dry_run: bool
    lease: timedelta
    pseudonym_key: bytes | None = None
    flow_run_id: str | None = None
    claim_group: int = 20
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def subject(self, user_id: str) -> str:
        return pseudonym(user_id, self.pseudonym_key)

    def erasure(self, storage: ObjectStorage, plan: DeletionPlan) -> Erasure:
        return Erasure(
            engine=self.engine,
            storage=storage,
            plan=plan,
            reason="inactive_account",
            subject=self.subject,
            clock=self.clock,
            flow_run_id=self.flow_run_id,
        )


def warn_batch(
    ctx: SweepContext,
    *,
    send: Send,
    mail_context: WarningContext,
    after: Cursor | None,
    limit: int,
) -> BatchReport:
    """Warn one page of users due a warning; each is mailed at most once per inactivity."""
    with ctx.engine.connect() as conn:
        page = queries.warning_page(
            conn, as_of=ctx.as_of, policy=ctx.policy, after=after, limit=limit
        )
    report = BatchReport(last=next_cursor(page, limit))
    if ctx.dry_run:
        report.counts["would_warn"] += len(page)
    elif page:
        claim = Claim.new(ctx.clock(), ctx.lease)
        with ctx.engine.begin() as conn:
            recipients = queries.claim_warnings(
                conn, [c.id for c in page], as_of=ctx.as_of, policy=ctx.policy, claim=claim
            )
        report.counts["skipped"] += len(page) - len(recipients)
        _send_warnings(ctx, recipients, send, mail_context, claim, report)
    return report


def _send_warnings(
    ctx: SweepContext,
    recipients: list[Recipient],
    send: Send,
    mail_context: WarningContext,
    claim: Claim,
    report: BatchReport,
) -> None:
    """Mail the claimed users while the lease lasts, confirming as we go; release the rest."""
    send_until = claim.at + claim.lease - LEASE_MARGIN
    sent: list[str] = []
    unsent: list[str] = []
    try:
        for recipient in recipients:
            if ctx.clock() >= send_until:
                unsent.append(recipient.id)
                report.counts["deferred"] += 1
                continue
            mail = inactivity_warning(to=recipient.email, name=recipient.name, context=mail_context)
            try:
                send(mail)
            except Exception as exc:  # one user's failure never stops the batch
                unsent.append(recipient.id)
                report.fail(ctx.subject(recipient.id), "warn", exc)
                continue
            sent.append(recipient.id)
            report.record("warned", ctx.subject(recipient.id))
            if len(sent) >= CONFIRM_EVERY:
                _confirm(ctx, sent, claim)
                sent = []
    finally:
        _confirm(ctx, sent, claim)
        if unsent:
            with ctx.engine.begin() as conn:
                queries.release_warnings(conn, unsent, claim_id=claim.id)


def _confirm(ctx: SweepContext, ids: list[str], claim: Claim) -> None:
    if ids:
        with ctx.engine.begin() as conn:
            queries.confirm_warnings(conn, ids, claim=claim, sent_at=ctx.clock())


def delete_batch(
    ctx: SweepContext,
    *,
    queue: DeletionQueue,
    storage: ObjectStorage,
    plan: DeletionPlan,
    after: Cursor | None,
    limit: int,
    budget: int,
) -> BatchReport:
    """Delete one page of users from ``queue``, at most ``budget`` of them."""
    with ctx.engine.connect() as conn:
        page = queries.deletion_page(
            conn,
            queue=queue,
            as_of=ctx.as_of,
            policy=ctx.policy,
            now=ctx.clock(),
            after=after,
            limit=limit,
        )
    report = BatchReport(last=next_cursor(page, limit))
    if ctx.dry_run:
        report.counts["would_delete"] += len(page)
        return report
    erasure = ctx.erasure(storage, plan)
    claim_id = str(uuid.uuid4())
    done = 0
    while done < len(page) and budget > 0:
        group = [c.id for c in page[done : done + min(ctx.claim_group, budget)]]
        done += len(group)
        budget -= _delete_group(ctx, erasure, group, claim_id, report)
    report.counts["over_budget"] += len(page) - done
    return report


def _delete_group(
    ctx: SweepContext, erasure: Erasure, ids: list[str], claim_id: str, report: BatchReport
) -> int:
    """Claim a few users, then erase them; returns how many were claimed."""
    try:
        with ctx.engine.begin() as conn:
            claimed = queries.claim_deletions(
                conn,
                ids,
                as_of=ctx.as_of,
                policy=ctx.policy,
                claim=Claim(id=claim_id, at=ctx.clock(), lease=ctx.lease),
            )
    except Exception as exc:
        for user_id in ids:
            report.fail(ctx.subject(user_id), "claim", exc)
        return 0
    report.counts["skipped"] += len(ids) - len(claimed)
    erasure.erase(claimed, claim_id=claim_id, report=report)
    return len(claimed)

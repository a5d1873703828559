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
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, model_validator

from lifecycle.clients.mail.errors import Undeliverable
from lifecycle.clients.mail.message import OutgoingMail
from lifecycle.clients.storage import ObjectStorage
from lifecycle.common.batch import BatchReport, Breaker, RunSummary
from lifecycle.common.claims import Claim
from lifecycle.common.erasure import DeletionPlan, Erasure
from lifecycle.common.paging import WHOLE_TABLE, Cursor, KeyRange, next_cursor
from lifecycle.db.engine import relaxed_connection
from lifecycle.errors import ConfigError, DependencyDown, PermanentError
from lifecycle.privacy import pseudonym
from lifecycle.processes.inactive_accounts import queries
from lifecycle.processes.inactive_accounts.queries import DeletionQueue, DueCounts, Recipient
from lifecycle.processes.inactive_accounts.rules import Policy
from lifecycle.processes.inactive_accounts.warning_mail import WarningContext, inactivity_warning

Send = Callable[[OutgoingMail], str]


class SweepParams(BaseModel):
    """A run's parameters, checked: the same for every batch of the run."""

    as_of: datetime
    dry_run: bool
    warn_after_days: int
    delete_after_days: int
    batch_size: int
    shards: int = 1

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


@dataclass(frozen=True)
class SweepPlan:
    """What a run found before starting: who is due, and whether deletions are paused."""

    due: DueCounts
    deletions_paused: bool
    shards: list[KeyRange]  # the run's walks, side by side


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
    undeliverable: Literal["keep", "delete"] = "keep"
    third_parties: tuple[str, ...] = ()  # processors asked to erase deleted accounts too
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def subject(self, user_id: str) -> str:
        return pseudonym(user_id, self.pseudonym_key)

    def erasure(self, storage: ObjectStorage, plan: DeletionPlan, breaker: Breaker) -> Erasure:
        return Erasure(
            engine=self.engine,
            storage=storage,
            plan=plan,
            reason="inactive_account",
            subject=self.subject,
            clock=self.clock,
            breaker=breaker,
            flow_run_id=self.flow_run_id,
            third_parties=self.third_parties,
        )


def warn_batch(
    ctx: SweepContext,
    *,
    send: Send,
    mail_context: WarningContext,
    breaker: Breaker,
    after: Cursor | None,
    limit: int,
    shard: KeyRange = WHOLE_TABLE,
) -> BatchReport:
    """Warn one page of users due a warning; each is mailed at most once per inactivity.

    Users are claimed ``claim_group`` at a time, right before their mails, so the lease covers
    the sends it protects and a visit stops a warning until a few mails before.
    """
    with ctx.engine.connect() as conn:
        page = queries.warning_page(
            conn, as_of=ctx.as_of, policy=ctx.policy, after=after, limit=limit, shard=shard
        )
    report = BatchReport(last=next_cursor(page, limit))
    if ctx.dry_run:
        report.counts["would_warn"] += len(page)
        return report
    ids = [c.id for c in page]
    with relaxed_connection(ctx.engine) as conn:
        for start in range(0, len(ids), ctx.claim_group):
            group = ids[start : start + ctx.claim_group]
            claim = Claim.new(ctx.clock(), ctx.lease)
            recipients = queries.claim_warnings(
                conn, group, as_of=ctx.as_of, policy=ctx.policy, claim=claim
            )
            report.counts["skipped"] += len(group) - len(recipients)
            _Warner(ctx, conn, send, mail_context, breaker, claim, report).warn(recipients)
    return report


def lease_margin(lease: timedelta) -> timedelta:
    """How long before its lease ends a claim stops sending: a quarter of it, at most 60 s."""
    return min(timedelta(seconds=60), lease / 4)


@dataclass
class _Warner:
    """Mails the users of one claim, recording each mail as soon as it is accepted, so a crash
    repeats at most the mail in flight."""

    ctx: SweepContext
    conn: sa.Connection  # each statement commits at once, without waiting for the disk
    send: Send
    mail_context: WarningContext
    breaker: Breaker
    claim: Claim
    report: BatchReport

    def __post_init__(self) -> None:
        self._confirm = queries.confirm_statement(self.claim)

    def warn(self, recipients: list[Recipient]) -> None:
        """Mail while the lease lasts; give back the users it no longer covers."""
        send_until = self.claim.at + self.claim.lease - lease_margin(self.claim.lease)
        pending = list(recipients)
        try:
            while pending and self.ctx.clock() < send_until:
                self._warn_one(pending.pop(0))
            self.report.counts["deferred"] += len(pending)
        finally:
            self._release([r.id for r in pending])

    def _warn_one(self, recipient: Recipient) -> None:
        subject = self.ctx.subject(recipient.id)
        mail = inactivity_warning(
            to=recipient.email,
            name=recipient.name,
            context=self.mail_context,
            sent_at=self.ctx.clock(),
        )
        try:
            self.send(mail)
        except Undeliverable:
            self._record_undeliverable(recipient.id)
            self.report.record("undeliverable", subject)
            self.breaker.success()  # the backend answered
            return
        except PermanentError:  # the backend refuses us, whoever the recipient: stop here
            self._release([recipient.id])
            raise
        except Exception as exc:  # worth trying again later
            self._release([recipient.id])
            self.report.fail(subject, "warn", exc)
            self.breaker.failure(exc)
            return
        self.conn.execute(self._confirm, {"keys": [recipient.id], "sent_at": self.ctx.clock()})
        self.report.record("warned", subject)
        self.breaker.success()

    def _record_undeliverable(self, user_id: str) -> None:
        queries.mark_undeliverable(
            self.conn,
            [user_id],
            claim=self.claim,
            now=self.ctx.clock(),
            as_notice=self.ctx.undeliverable == "delete",
        )

    def _release(self, ids: list[str]) -> None:
        if ids:
            queries.release_warnings(self.conn, ids, claim_id=self.claim.id)


def delete_batch(
    ctx: SweepContext,
    *,
    queue: DeletionQueue,
    storage: ObjectStorage,
    plan: DeletionPlan,
    breaker: Breaker,
    after: Cursor | None,
    limit: int,
    budget: int,
    shard: KeyRange = WHOLE_TABLE,
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
            shard=shard,
        )
    report = BatchReport(last=next_cursor(page, limit))
    if ctx.dry_run:
        report.counts["would_delete"] += len(page)
        return report
    erasure = ctx.erasure(storage, plan, breaker)
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
    claim = Claim(id=claim_id, at=ctx.clock(), lease=ctx.lease)
    try:
        with ctx.engine.begin() as conn:
            claimed = queries.claim_deletions(
                conn, ids, as_of=ctx.as_of, policy=ctx.policy, claim=claim
            )
    except Exception as exc:
        for user_id in ids:
            report.fail(ctx.subject(user_id), "claim", exc)
        return 0
    report.counts["skipped"] += len(ids) - len(claimed)
    try:
        erasure.erase(claimed, claim_id=claim_id, report=report)
    except DependencyDown:  # storage stopped answering: leave the rest as it was
        erasure.give_back(claimed, claim)
        raise
    return len(claimed)

"""One batch of the inactive-accounts sweep, as plain functions over injected clients.

A batch reads one keyset page of candidates, then acts on each user through claims that
re-check the policy. One user's failure is recorded (with a pseudonym, never the address) and
the batch goes on. Deletions are claimed a few users at a time (one commit each); then, per
group: object storage, then referencing rows and user rows in one transaction. A crash in
between leaves the users marked as started, and the next run finishes them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from lifecycle import accounts
from lifecycle.accounts import Candidate, DeletionKind
from lifecycle.deletion_plan import DeletionPlan
from lifecycle.mail.backends import OutgoingMail
from lifecycle.mail.templates import WarningContext, inactivity_warning
from lifecycle.privacy import describe_error, pseudonym
from lifecycle.rules import Policy
from lifecycle.storage import ObjectStorage

#: Confirm sent warnings in groups this large, so a crash re-sends at most this many.
CONFIRM_EVERY = 50
#: Users claimed for deletion together: one commit per group, and a user's files are deleted
#: at most one group's storage work after the claim that re-checked their inactivity.
CLAIM_GROUP = 20
#: Stop sending from a claim this long before its lease runs out.
LEASE_MARGIN = timedelta(seconds=60)


@dataclass(frozen=True)
class Failure:
    subject: str  # pseudonym of the user id
    stage: str
    error: str  # redacted


@dataclass
class BatchReport:
    counts: Counter[str] = field(default_factory=Counter)
    warned: list[str] = field(default_factory=list)  # pseudonyms
    deleted: list[str] = field(default_factory=list)  # pseudonyms
    failures: list[Failure] = field(default_factory=list)
    objects_deleted: int = 0
    last: Candidate | None = None  # keyset cursor for the next page; None when done


@dataclass(frozen=True)
class SweepContext:
    engine: sa.Engine
    policy: Policy
    as_of: datetime
    dry_run: bool
    lease: timedelta
    pseudonym_key: bytes | None = None
    flow_run_id: str | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def subject(self, user_id: str) -> str:
        return pseudonym(user_id, self.pseudonym_key)


def _finish_page(report: BatchReport, page: list[Candidate], limit: int) -> BatchReport:
    report.last = page[-1] if len(page) == limit else None
    return report


def warn_batch(
    ctx: SweepContext,
    *,
    send: Callable[[OutgoingMail], str],
    mail_context: WarningContext,
    after: Candidate | None,
    limit: int,
) -> BatchReport:
    """Warn one page of users due a warning; each is mailed at most once per inactivity."""
    report = BatchReport()
    with ctx.engine.connect() as conn:
        page = accounts.warning_page(
            conn, as_of=ctx.as_of, policy=ctx.policy, after=after, limit=limit
        )
    if ctx.dry_run:
        report.counts["would_warn"] += len(page)
    if ctx.dry_run or not page:
        return _finish_page(report, page, limit)

    claim_id, claimed_at = str(uuid.uuid4()), ctx.clock()
    with ctx.engine.begin() as conn:
        recipients = accounts.claim_warnings(
            conn,
            [c.id for c in page],
            as_of=ctx.as_of,
            policy=ctx.policy,
            claim_id=claim_id,
            now=claimed_at,
            lease=ctx.lease,
        )
    report.counts["skipped"] += len(page) - len(recipients)
    send_until = claimed_at + ctx.lease - LEASE_MARGIN
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
                report.failures.append(
                    Failure(ctx.subject(recipient.id), "warn", describe_error(exc))
                )
                continue
            sent.append(recipient.id)
            report.warned.append(ctx.subject(recipient.id))
            if len(sent) >= CONFIRM_EVERY:
                _confirm(ctx, sent, claim_id=claim_id, claimed_at=claimed_at)
                sent = []
    finally:
        _confirm(ctx, sent, claim_id=claim_id, claimed_at=claimed_at)
        if unsent:
            with ctx.engine.begin() as conn:
                accounts.release_warnings(conn, unsent, claim_id=claim_id)
    report.counts["warned"] += len(report.warned)
    report.counts["failed"] += len(report.failures)
    return _finish_page(report, page, limit)


def _confirm(ctx: SweepContext, ids: list[str], *, claim_id: str, claimed_at: datetime) -> None:
    if ids:
        with ctx.engine.begin() as conn:
            accounts.confirm_warnings(
                conn, ids, claim_id=claim_id, claimed_at=claimed_at, sent_at=ctx.clock()
            )


def delete_batch(
    ctx: SweepContext,
    *,
    kind: DeletionKind,
    storage: ObjectStorage,
    plan: DeletionPlan,
    after: Candidate | None,
    limit: int,
    budget: int,
) -> BatchReport:
    """Delete one page of users due deletion (or finish interrupted ones), at most ``budget``."""
    report = BatchReport()
    with ctx.engine.connect() as conn:
        page = accounts.deletion_page(
            conn,
            kind=kind,
            as_of=ctx.as_of,
            policy=ctx.policy,
            now=ctx.clock(),
            after=after,
            limit=limit,
        )
    if ctx.dry_run:
        report.counts["would_delete"] += len(page)
        return _finish_page(report, page, limit)

    claim_id = str(uuid.uuid4())
    done = 0
    while done < len(page) and budget > 0:
        group = [c.id for c in page[done : done + min(CLAIM_GROUP, budget)]]
        done += len(group)
        budget -= _delete_group(ctx, storage, plan, group, claim_id, report)
    report.counts["over_budget"] += len(page) - done
    report.counts["deleted"] += len(report.deleted)
    report.counts["failed"] += len(report.failures)
    return _finish_page(report, page, limit)


def _delete_group(
    ctx: SweepContext,
    storage: ObjectStorage,
    plan: DeletionPlan,
    ids: list[str],
    claim_id: str,
    report: BatchReport,
) -> int:
    """Claim a few users, delete their files, then their rows; returns how many were claimed."""
    try:
        with ctx.engine.begin() as conn:
            claimed = accounts.claim_deletions(
                conn,
                ids,
                as_of=ctx.as_of,
                policy=ctx.policy,
                claim_id=claim_id,
                now=ctx.clock(),
                lease=ctx.lease,
            )
    except Exception as exc:
        error = describe_error(exc)
        report.failures.extend(Failure(ctx.subject(user_id), "claim", error) for user_id in ids)
        return 0
    report.counts["skipped"] += len(ids) - len(claimed)
    cleaned: dict[str, int] = {}
    failed: list[str] = []
    for user_id in claimed:
        try:
            cleaned[user_id] = storage.delete_prefix(plan.prefix_for(user_id))
        except Exception as exc:
            failed.append(user_id)
            report.failures.append(Failure(ctx.subject(user_id), "storage", describe_error(exc)))
    _remove_rows(ctx, plan, cleaned, claim_id, report)
    if failed:
        with ctx.engine.begin() as conn:
            accounts.release_deletion(conn, failed, claim_id=claim_id)
    return len(claimed)


def _remove_rows(
    ctx: SweepContext,
    plan: DeletionPlan,
    cleaned: dict[str, int],
    claim_id: str,
    report: BatchReport,
) -> None:
    """Remove the rows of users whose files are gone: all at once, or one by one on error."""
    if not cleaned:
        return
    try:
        _remove_group(ctx, plan, cleaned, claim_id, report)
        return
    except Exception as exc:
        if len(cleaned) == 1:
            _row_failure(ctx, next(iter(cleaned)), exc, claim_id, report)
            return
    for user_id, objects in cleaned.items():  # isolate the users that fail
        try:
            _remove_group(ctx, plan, {user_id: objects}, claim_id, report)
        except Exception as exc:
            _row_failure(ctx, user_id, exc, claim_id, report)


def _remove_group(
    ctx: SweepContext, plan: DeletionPlan, group: dict[str, int], claim_id: str, report: BatchReport
) -> None:
    hashes = {user_id: ctx.subject(user_id) for user_id in group}
    with ctx.engine.begin() as conn:
        removed = accounts.remove_rows(
            conn,
            plan,
            group,
            claim_id=claim_id,
            subject_hashes=hashes,
            flow_run_id=ctx.flow_run_id,
            now=ctx.clock(),
        )
    for item in removed:
        report.deleted.append(hashes[item.user_id])
        report.objects_deleted += group[item.user_id]
    report.counts["skipped"] += len(group) - len(removed)


def _row_failure(
    ctx: SweepContext, user_id: str, exc: Exception, claim_id: str, report: BatchReport
) -> None:
    report.failures.append(Failure(ctx.subject(user_id), "rows", describe_error(exc)))
    with ctx.engine.begin() as conn:
        accounts.release_deletion(conn, [user_id], claim_id=claim_id)

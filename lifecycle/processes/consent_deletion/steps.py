"""One batch of consent deletion, as plain functions over injected clients.

- :func:`request_revocations`: users who revoked consent get one request per processor.
- :func:`start_batch`: requests at one processor are claimed, a group at a time
  (``ids_per_request``), and started with one call per group; each answer is recorded at once.
- :func:`poll_batch`: a page of pending operations is claimed and checked with a thread pool
  (one call per distinct operation id); the answers are recorded in one transaction.
- :func:`notify`: operations pending past ``escalate_after`` and failed ones are mailed to the
  technical contacts, once each (claimed, mailed, then confirmed).
- :func:`raise_alert`: processor-wide trouble is mailed once until resolved or repeated.

The crash window. A start call is not idempotent at Mixpanel or Segment (no idempotency key),
so a crash, timeout or lost answer after the vendor acted and before our record leaves one
operation there that no record names. The window is one call long: each answer is committed
right after its call, never at the end of a batch. Each attempt is counted
(``unconfirmed_starts``) before the call and discounted when an answer arrives, so a record
says how many extra operations it may have; a row whose answer was lost keeps its claim to the
end of the lease, so it is tried at most once a lease, and the next attempt first looks for the
operation in the vendor's listing where there is one (Segment, the simulator), adopting it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import sqlalchemy as sa
from pydantic import BaseModel

from lifecycle.clients.http import AuthenticationFailed, OutcomeUnknown, RequestRejected
from lifecycle.clients.mail.message import OutgoingMail
from lifecycle.clients.processors import (
    DeletionProcessor,
    OperationState,
    OperationStatus,
    SchemaChanged,
)
from lifecycle.common.batch import BatchReport, Breaker, Failure, RunSummary
from lifecycle.common.claims import Claim
from lifecycle.common.paging import Cursor, next_cursor
from lifecycle.common.third_parties import request_deletions
from lifecycle.errors import DependencyDown
from lifecycle.privacy import describe_error, pseudonym
from lifecycle.processes.consent_deletion import queries
from lifecycle.processes.consent_deletion.operator_mail import alert_mail, notice_mail
from lifecycle.processes.consent_deletion.queries import Check, Claimed, Notice
from lifecycle.processes.consent_deletion.rules import (
    RESOLVED_BY,
    AlertKind,
    alert_due,
    alert_kind,
)

Send = Callable[[OutgoingMail], str]
#: Operations claimed for one notice mail at most.
NOTICE_LIMIT = 200
#: How far before the first lost start the vendor's listing is searched (clock skew).
RECONCILE_MARGIN = timedelta(minutes=10)


@dataclass(frozen=True)
class Alert:
    """Trouble with a processor as a whole (no personal data in ``detail``)."""

    processor: str
    kind: AlertKind
    detail: str


@dataclass(frozen=True)
class Escalation:
    """An operation escalated: what the Prefect event carries (never the raw user id)."""

    processor: str
    operation_id: str
    subject: str


@dataclass
class ConsentReport(BatchReport):
    """A batch's report, plus what the flow turns into alerts and escalation events."""

    alerts: list[Alert] = field(default_factory=list)
    escalations: list[Escalation] = field(default_factory=list)
    resolved: set[tuple[str, AlertKind]] = field(default_factory=set)  # proven fixed

    def merge(self, other: BatchReport) -> None:
        super().merge(other)
        if isinstance(other, ConsentReport):
            self.alerts.extend(other.alerts)
            self.escalations.extend(other.escalations)
            self.resolved |= other.resolved

    def went_well(self, processor: str, call: str) -> None:
        """A ``call`` ("start" or "status") to ``processor`` was answered as expected."""
        self.resolved |= {(processor, kind) for kind in RESOLVED_BY[call]}

    def anomaly(self, processor: str, exc: BaseException, detail: str) -> None:
        """Trouble with ``processor`` (kind from the error), counted and alerted."""
        kind = alert_kind(exc) or AlertKind.NOT_ANSWERING
        self.counts["anomalies"] += 1
        self.failures.append(Failure(f"processor:{processor}", kind.value, detail))
        self.alerts.append(Alert(processor, kind, detail))


class ConsentParams(BaseModel):
    """A run's parameters, checked: the same for every batch of the run."""

    as_of: datetime
    dry_run: bool
    max_concurrency: int
    escalate_after: timedelta | None = None  # None: each processor's own setting


@dataclass(frozen=True)
class ConsentPlan:
    """What a run found before starting: the processors it works on, and the kill switch."""

    processors: list[str]
    deletions_paused: bool


class ConsentSummary(RunSummary):
    """What one consent-deletion run did; the table always shows the main outcomes."""

    SHOWN: ClassVar[tuple[str, ...]] = (
        "started",
        "still_pending",
        "completed",
        "failed",
        "escalated",
        "anomalies",
    )

    @property
    def anomalies(self) -> int:
        return self.counts.get("anomalies", 0)

    def rows(self) -> list[dict[str, object]]:
        shown = [{"outcome": key, "count": self.counts.get(key, 0)} for key in self.SHOWN]
        others = sorted(set(self.counts) - set(self.SHOWN))
        return shown + [{"outcome": key, "count": self.counts[key]} for key in others]


@dataclass(frozen=True)
class ConsentContext:
    engine: sa.Engine
    as_of: datetime
    dry_run: bool
    lease: timedelta
    pseudonym_key: bytes | None = None
    flow_run_id: str | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def subject(self, user_id: str) -> str:
        return pseudonym(user_id, self.pseudonym_key)


@dataclass(frozen=True)
class ProcessorRun:
    """One processor as this run uses it."""

    processor: DeletionProcessor
    ids_per_request: int = 1
    concurrency: int = 1
    escalate_after: timedelta = timedelta(days=3)

    @property
    def name(self) -> str:
        return self.processor.name


def safe_detail(exc: BaseException, user_ids: Iterable[str | None] = ()) -> str:
    """An error, redacted, without any of these user ids (a vendor may echo them back)."""
    text = describe_error(exc)
    for user_id in user_ids:
        if user_id:
            text = text.replace(user_id, "<user id>")
    return text


# --- requests ------------------------------------------------------------------------------------


def request_revocations(
    ctx: ConsentContext, processors: Sequence[str], *, after: Cursor | None, limit: int
) -> ConsentReport:
    """One page of users whose revocation lacks a request at some processor: record them."""
    with ctx.engine.connect() as conn:
        page = queries.revocations_page(
            conn, processors=processors, as_of=ctx.as_of, after=after, limit=limit
        )
    report = ConsentReport(last=next_cursor(page, limit))
    if ctx.dry_run:
        report.counts["would_request"] += len(page)
        return report
    with ctx.engine.begin() as conn:
        wanted = queries.revocation_requests(
            conn, [c.id for c in page], processors=processors, subject=ctx.subject
        )
        recorded = request_deletions(conn, wanted, now=ctx.clock(), flow_run_id=ctx.flow_run_id)
    report.counts["requested"] += len(recorded)
    return report


# --- starting ------------------------------------------------------------------------------------


def _page(
    ctx: ConsentContext, run: ProcessorRun, status: str, *, after: Cursor | None, limit: int
) -> tuple[list[Cursor], ConsentReport]:
    """The next page of deletions in ``status`` at ``run``'s processor, and a report for it."""
    with ctx.engine.connect() as conn:
        page = queries.open_page(
            conn, status=status, processor=run.name, now=ctx.clock(), after=after, limit=limit
        )
    return page, ConsentReport(last=next_cursor(page, limit))


def start_batch(
    ctx: ConsentContext, run: ProcessorRun, *, breaker: Breaker, after: Cursor | None, limit: int
) -> ConsentReport:
    """Start one page of requests at one processor, ``ids_per_request`` per call."""
    page, report = _page(ctx, run, "requested", after=after, limit=limit)
    if ctx.dry_run:
        report.counts["would_start"] += len(page)
        return report
    starter = _Starter(ctx, run, breaker, report)
    ids = [c.id for c in page]
    for start in range(0, len(ids), run.ids_per_request):
        starter.claim_and_start(ids[start : start + run.ids_per_request])
    return report


@dataclass
class _Starter:
    ctx: ConsentContext
    run: ProcessorRun
    breaker: Breaker
    report: ConsentReport

    def claim_and_start(self, ids: list[int]) -> None:
        claim = Claim.new(self.ctx.clock(), self.ctx.lease)
        with self.ctx.engine.begin() as conn:
            rows = queries.claim(conn, ids, status="requested", claim=claim)
        self.report.counts["skipped"] += len(ids) - len(rows)
        try:
            rows = self._reconcile(rows, claim)
        except Exception:  # the listing failed: nothing was started, so let them go
            with self.ctx.engine.begin() as conn:
                queries.release(conn, [r.id for r in rows], claim_id=claim.id)
            raise
        if rows:
            self._start(rows, claim)

    def _start(self, rows: list[Claimed], claim: Claim) -> None:
        """One start call for ``rows``; its answer is recorded at once, whatever it is."""
        ids, user_ids = [r.id for r in rows], [str(r.user_id) for r in rows]
        run_id, name = self.ctx.flow_run_id, self.run.name
        with self.ctx.engine.begin() as conn:
            queries.record_attempt(conn, ids, claim_id=claim.id, now=self.ctx.clock(), run=run_id)
        try:
            operation_id = self.run.processor.start(user_ids)
        except (OutcomeUnknown, SchemaChanged) as exc:  # the vendor may have acted
            detail = safe_detail(exc, user_ids)
            with self.ctx.engine.begin() as conn:
                queries.record_unknown(
                    conn, ids, claim_id=claim.id, detail=detail, now=self.ctx.clock(), run=run_id
                )
            self.report.anomaly(name, exc, detail)
            if isinstance(exc, SchemaChanged):
                raise
            self.breaker.failure(exc)
            return
        except RequestRejected as exc:  # nothing was created; one bad id may spoil a group
            self._refused(rows, claim, exc, fail=len(rows) == 1, keep_claim=len(rows) > 1)
            self.breaker.success()
            if len(rows) > 1:
                for row in rows:
                    self._start([row], claim)
            return
        except (AuthenticationFailed, DependencyDown) as exc:  # not reached, or refused: retry
            self._refused(rows, claim, exc, fail=False, keep_claim=False)
            raise
        with self.ctx.engine.begin() as conn:
            queries.record_started(
                conn,
                ids,
                claim_id=claim.id,
                operation_id=operation_id,
                now=self.ctx.clock(),
                run=run_id,
            )
        self.breaker.success()
        self.report.went_well(name, "start")
        for row in rows:
            self.report.record("started", row.subject_hash)

    def _refused(
        self, rows: list[Claimed], claim: Claim, exc: Exception, *, fail: bool, keep_claim: bool
    ) -> None:
        detail = safe_detail(exc, [r.user_id for r in rows])
        with self.ctx.engine.begin() as conn:
            queries.record_refused(
                conn,
                [r.id for r in rows],
                claim_id=claim.id,
                detail=detail,
                now=self.ctx.clock(),
                run=self.ctx.flow_run_id,
                fail=fail,
                keep_claim=keep_claim,
            )
        if fail:
            self.report.fail(rows[0].subject_hash, "start", exc)
            self.report.alerts.append(Alert(self.run.name, AlertKind.REJECTED, detail))

    def _reconcile(self, rows: list[Claimed], claim: Claim) -> list[Claimed]:
        """Adopt operations the vendor lists for starts whose answer we lost; the rest."""
        unsure = [row for row in rows if row.unconfirmed_starts > 0 and row.first_attempt_at]
        processor = self.run.processor
        if not unsure or not processor.can_list:
            return rows
        since = min(row.first_attempt_at for row in unsure if row.first_attempt_at)
        since -= RECONCILE_MARGIN
        wanted = {str(row.user_id): row for row in unsure}
        found: dict[str, list[Claimed]] = {}
        for operation in processor.recent(since):
            if operation.created_at is not None and operation.created_at < since:
                continue
            for user_id in operation.user_ids & wanted.keys():
                found.setdefault(operation.operation_id, []).append(wanted.pop(user_id))
        for operation_id, adopted in found.items():
            with self.ctx.engine.begin() as conn:
                queries.record_started(
                    conn,
                    [r.id for r in adopted],
                    claim_id=claim.id,
                    operation_id=operation_id,
                    now=self.ctx.clock(),
                    run=self.ctx.flow_run_id,
                    step="reconciled",
                )
            for row in adopted:
                self.report.record("reconciled", row.subject_hash)
        adopted_ids = {r.id for group in found.values() for r in group}
        return [row for row in rows if row.id not in adopted_ids]


# --- polling -------------------------------------------------------------------------------------


def poll_batch(
    ctx: ConsentContext, run: ProcessorRun, *, after: Cursor | None, limit: int
) -> ConsentReport:
    """Check one page of pending operations at one processor, ``concurrency`` calls at once.

    Processor-wide trouble (authentication, a changed schema, no answer past every retry)
    stops the checks; what was answered is recorded, the rest released, then it is raised.
    """
    page, report = _page(ctx, run, "pending", after=after, limit=limit)
    if ctx.dry_run:
        report.counts["would_check"] += len(page)
        return report
    claim = Claim.new(ctx.clock(), ctx.lease)
    with ctx.engine.begin() as conn:
        rows = queries.claim(conn, [c.id for c in page], status="pending", claim=claim)
    report.counts["skipped"] += len(page) - len(rows)
    answers, trouble = check_all(run, {str(r.operation_id) for r in rows})
    checks = []
    for row in rows:
        answer = answers.get(str(row.operation_id))
        if isinstance(answer, OperationStatus):
            checks.append(Check(row, answer.state, answer.vendor_status))
    unanswered = [
        r.id for r in rows if not isinstance(answers.get(str(r.operation_id)), OperationStatus)
    ]
    with ctx.engine.begin() as conn:
        now = ctx.clock()
        receipts = queries.record_checks(
            conn, checks, claim_id=claim.id, now=now, run=ctx.flow_run_id
        )
        queries.complete_receipts(conn, receipts, now)
        queries.release(conn, unanswered, claim_id=claim.id)
    _report_checks(report, run, rows, checks, answers)
    if trouble is not None:
        raise trouble
    return report


def check_all(
    run: ProcessorRun, operation_ids: set[str]
) -> tuple[dict[str, OperationStatus | Exception], Exception | None]:
    """Each operation's status, ``run.concurrency`` calls at once. A refusal of one operation
    is its answer; the first processor-wide error cancels the calls not started yet and is
    returned with the answers that came before it."""
    answers: dict[str, OperationStatus | Exception] = {}
    trouble: Exception | None = None
    workers = min(run.concurrency, max(len(operation_ids), 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run.processor.status, op): op for op in sorted(operation_ids)}
        for future in as_completed(futures):
            if future.cancelled():
                continue
            error = future.exception()
            if error is None:
                answers[futures[future]] = future.result()
            elif not isinstance(error, Exception) or _processor_wide(error):
                trouble = trouble or error  # type: ignore[assignment]
                for pending in futures:
                    pending.cancel()
            else:
                answers[futures[future]] = error
    return answers, trouble


def _processor_wide(exc: BaseException | None) -> bool:
    """Errors that say nothing about one operation and everything about the processor."""
    return exc is not None and not isinstance(exc, RequestRejected)


def _report_checks(
    report: ConsentReport,
    run: ProcessorRun,
    rows: list[Claimed],
    checks: list[Check],
    answers: dict[str, OperationStatus | Exception],
) -> None:
    for check in checks:
        if check.state == OperationState.PENDING:  # counted only: no event lists them
            report.counts["still_pending"] += 1
            continue
        if check.state == OperationState.FAILED:
            report.failures.append(
                Failure(check.row.subject_hash, "vendor", f"{run.name}: {check.vendor_status}")
            )
        report.record(
            "completed" if check.state == OperationState.COMPLETE else "failed",
            check.row.subject_hash,
        )
    if checks:
        report.went_well(run.name, "status")
    rejected = [r for r in rows if isinstance(answers.get(str(r.operation_id)), RequestRejected)]
    for row in rejected:
        error = answers[str(row.operation_id)]
        assert isinstance(error, Exception)
        report.anomaly(run.name, error, safe_detail(error, [row.user_id]))
        report.counts["still_pending"] += 1


# --- notices and alerts ------------------------------------------------------------------------


def notify(
    ctx: ConsentContext, run: ProcessorRun, *, send: Send, contacts: Sequence[str]
) -> ConsentReport:
    """Mail the contacts, once each, about operations at ``run``'s processor pending past
    ``escalate_after`` and those that failed; a crash may repeat only the mail in flight."""
    report = ConsentReport()
    due = queries.escalation_due(run.name, escalate_after=run.escalate_after, as_of=ctx.as_of)
    unreported = queries.failure_unreported(run.name)
    if ctx.dry_run:
        with ctx.engine.connect() as conn:
            for outcome, condition in (("would_escalate", due), ("would_report", unreported)):
                report.counts[outcome] += queries.count(conn, condition)
        return report
    while True:
        claim = Claim.new(ctx.clock(), ctx.lease)
        with ctx.engine.begin() as conn:
            escalated = queries.claim_notices(conn, due, claim=claim, limit=NOTICE_LIMIT)
            left = NOTICE_LIMIT - len(escalated)
            failed = (
                queries.claim_notices(conn, unreported, claim=claim, limit=left) if left else []
            )
        if not escalated and not failed:
            return report
        _mail_notices(ctx, run, send, contacts, claim, escalated, failed)
        for notice in escalated:
            report.record("escalated", notice.subject_hash)
            if notice.operation_id:
                report.escalations.append(
                    Escalation(run.name, notice.operation_id, notice.subject_hash)
                )
        report.counts["failures_reported"] += len(failed)


def _mail_notices(
    ctx: ConsentContext,
    run: ProcessorRun,
    send: Send,
    contacts: Sequence[str],
    claim: Claim,
    escalated: list[Notice],
    failed: list[Notice],
) -> None:
    """One mail per contact, then the rows are confirmed (or released if the mail failed)."""
    try:
        for contact in contacts:
            send(
                notice_mail(
                    to=contact,
                    escalated=escalated,
                    failed=failed,
                    escalate_after=run.escalate_after,
                )
            )
    except BaseException:
        with ctx.engine.begin() as conn:
            queries.release(conn, [n.id for n in [*escalated, *failed]], claim_id=claim.id)
        raise
    with ctx.engine.begin() as conn:
        now, run_id = ctx.clock(), ctx.flow_run_id
        for notices, column, step in (
            (escalated, "escalated_at", "escalated"),
            (failed, "failure_reported_at", "failure_reported"),
        ):
            queries.confirm_notices(
                conn,
                [n.id for n in notices],
                column=column,
                step=step,
                claim_id=claim.id,
                now=now,
                run=run_id,
            )


def raise_alert(
    ctx: ConsentContext,
    alert: Alert,
    *,
    send: Send,
    contacts: Sequence[str],
    repeat_after: timedelta,
) -> bool:
    """Record the alert; mail it unless the same was mailed lately. Whether it was mailed."""
    now = ctx.clock()
    with ctx.engine.begin() as conn:
        record = queries.record_alert(conn, alert.processor, alert.kind, alert.detail, now=now)
        due = alert_due(record.state, now=now, repeat_after=repeat_after)
        if due:
            queries.mark_alert_mailed(conn, alert.processor, alert.kind, now)
    if not due:
        return False
    try:
        for contact in contacts:
            send(
                alert_mail(
                    to=contact,
                    processor=alert.processor,
                    kind=alert.kind,
                    detail=alert.detail,
                    first_seen=record.first_seen_at,
                    occurrences=record.occurrences,
                    repeat_after=repeat_after,
                )
            )
    except BaseException:
        with ctx.engine.begin() as conn:  # not mailed after all: the next occurrence mails it
            queries.mark_alert_mailed(conn, alert.processor, alert.kind, record.state.mailed_at)
        raise
    return True


def resolve_alerts(ctx: ConsentContext, resolved: Iterable[tuple[str, AlertKind]]) -> int:
    """These (processor, kind) alerts were proven over this run; how many were open."""
    with ctx.engine.begin() as conn:
        return sum(
            queries.resolve_alert(conn, processor, kind, ctx.clock())
            for processor, kind in sorted(resolved)
        )

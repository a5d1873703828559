"""What a batch did and what a run did: counts per outcome, failures, and where to go on.

Every process reports in these terms, so the tasks log and emit them, and the flows sum and
show them, in one way. Subjects are pseudonyms (:mod:`lifecycle.privacy`), never raw ids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Self

from pydantic import BaseModel

from lifecycle.common.paging import Cursor, each_page
from lifecycle.errors import ConfigError, DependencyDown, is_retryable
from lifecycle.privacy import describe_error

#: Failures logged one by one per batch; the rest are counted.
LOGGED_FAILURES = 20
#: Failures kept in a run's summary (every one is logged by its batch).
KEPT_FAILURES = 50
#: Tolerated clock skew between whoever starts a run and the worker, for ``as_of``.
CLOCK_SKEW = timedelta(minutes=5)


def resolve_as_of(
    as_of: datetime | None, now: datetime, *, look_ahead: timedelta = timedelta(0)
) -> datetime:
    """The instant a run evaluates its rules at: ``now`` by default, never in the future
    (beyond ``look_ahead``, for processes where an early evaluation does no harm)."""
    if as_of is None:
        return now
    if as_of.tzinfo is None:
        raise ConfigError("as_of needs a time zone, e.g. 2026-11-01T00:00:00Z")
    if as_of > now + CLOCK_SKEW + look_ahead:
        if look_ahead:
            raise ConfigError(
                f"as_of {as_of.isoformat()} is more than {look_ahead.days} days ahead"
            )
        raise ConfigError(f"as_of {as_of.isoformat()} is in the future; deletions cannot be early")
    return as_of.astimezone(UTC)


@dataclass(frozen=True)
class Failure:
    subject: str  # pseudonym of the item
    stage: str
    error: str  # redacted


@dataclass
class BatchReport:
    """One batch: items per outcome, quantities, who (by pseudonym), failures, next cursor."""

    counts: Counter[str] = field(default_factory=Counter)
    totals: Counter[str] = field(default_factory=Counter)
    subjects: dict[str, list[str]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    last: Cursor | None = None  # where the next page starts; None when done

    def record(self, outcome: str, subject: str) -> None:
        """One item ended in ``outcome``; its pseudonym goes into that outcome's event."""
        self.counts[outcome] += 1
        self.subjects.setdefault(outcome, []).append(subject)

    def fail(self, subject: str, stage: str, exc: BaseException) -> None:
        """One item failed at ``stage``; the run goes on and fails at the end."""
        self.counts["failed"] += 1
        self.failures.append(Failure(subject, stage, describe_error(exc)))

    def merge(self, other: BatchReport) -> None:
        """Add ``other``'s counts, totals, subjects and failures to this report."""
        self.counts.update(other.counts)
        self.totals.update(other.totals)
        for outcome, subjects in other.subjects.items():
            self.subjects.setdefault(outcome, []).extend(subjects)
        self.failures.extend(other.failures)


def run_pages(
    run_batch: Callable[[Cursor | None], BatchReport],
    total: BatchReport,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Run a walk's batches one after another, adding each report to ``total``; returns how
    many batches ran."""
    batches = 0
    for report in each_page(run_batch, stop=stop):
        total.merge(report)
        batches += 1
    return batches


class Breaker:
    """Stops a batch after ``limit`` transient failures of one dependency in a row.

    A dependency that stopped answering then costs a few timeouts, not one per item: the
    batch raises :class:`~lifecycle.errors.DependencyDown`, its task retries within its
    budget, and the items not reached are left as they were. An item the dependency refused
    (a permanent error) proves it answers, and resets the count.
    """

    def __init__(self, dependency: str, *, limit: int = 3) -> None:
        self.dependency = dependency
        self._limit = limit
        self._streak = 0

    def success(self) -> None:
        self._streak = 0

    def failure(self, exc: BaseException) -> None:
        """Count ``exc``; raise :class:`DependencyDown` once ``limit`` transient ones ran."""
        if not is_retryable(exc):
            self._streak = 0
            return
        self._streak += 1
        if self._streak >= self._limit:
            raise DependencyDown(
                self.dependency, f"{self._streak} failures in a row, last: {describe_error(exc)}"
            )


class RunSummary(BaseModel):
    """What a whole run did, as shown in its artifact and returned by its flow."""

    as_of: datetime
    dry_run: bool
    counts: dict[str, int]
    totals: dict[str, int] = {}
    batches: int
    failures: list[Failure]

    @classmethod
    def of(cls, total: BatchReport, *, as_of: datetime, dry_run: bool, batches: int) -> Self:
        return cls(
            as_of=as_of,
            dry_run=dry_run,
            counts={key: value for key, value in total.counts.items() if value},
            totals=dict(total.totals),
            batches=batches,
            failures=total.failures[:KEPT_FAILURES],
        )

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    def line(self) -> str:
        counts = ", ".join(f"{key}={value}" for key, value in sorted(self.counts.items()))
        return f"as_of={self.as_of.isoformat()} dry_run={self.dry_run} {counts or 'nothing to do'}"

    def rows(self) -> list[dict[str, object]]:
        """The summary as table rows (outcome, count), quantities last."""
        return [{"outcome": key, "count": value} for key, value in sorted(self.counts.items())] + [
            {"outcome": key, "count": value} for key, value in sorted(self.totals.items())
        ]

"""Units of work of the abandoned-carts process, as plain functions over injected clients.

- :func:`expire_batch`: one keyset page of expired carts in the database: claim them (re-
  checking the expiry), purge the ones with no customer or products, report the others one by
  one, and delete each only once the marketing suite accepted it.
- :func:`read_stream`: a DynamoDB table's stream from its checkpoints: report the carts TTL
  removed, checkpointing after each one, so a restart re-sends at most the cart in flight.
- :func:`sweep_table`: carts long expired that DynamoDB's TTL has not removed yet.

The race with an order: the shop deletes a cart when the order is placed. Right before every
attempt to send (retries included) the cart is read again, and it is sent only if it is still
there, unchanged, and ours. An order placed after that read, while the request is in flight,
can still be reported: the window is one request (at most
``LIFECYCLE_ABANDONED_CARTS__REQUEST_TIMEOUT_SECONDS``), never the retries or the whole batch.
Closing it entirely would mean holding a row lock during the HTTP call, which would make the
shop's checkout wait for the marketing suite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

import sqlalchemy as sa
from pydantic import BaseModel

from lifecycle.clients.dynamodb import (
    TTL_HORIZON,
    CartStream,
    DynamoItems,
    Shard,
    StreamTrimmed,
    key_of,
    sequence_number,
)
from lifecycle.clients.http import RequestRejected
from lifecycle.clients.marketing import AbandonedCart, CartChanged, MarketingSuite
from lifecycle.common.batch import BatchReport, Breaker, RunSummary
from lifecycle.common.claims import Claim
from lifecycle.common.paging import Cursor, next_cursor
from lifecycle.errors import LifecycleError
from lifecycle.privacy import pseudonym
from lifecycle.processes.abandoned_carts import queries, rules
from lifecycle.processes.abandoned_carts.queries import CartRow, Checkpoint
from lifecycle.settings import DynamoCartTable

#: Stop sending from a claim this long before its lease runs out.
LEASE_MARGIN = timedelta(seconds=60)
#: A stream shard counts as read to its end after this many empty pages in a row.
EMPTY_PAGES = 3


class CartParams(BaseModel):
    """A run's parameters, the same for every batch of the run."""

    as_of: datetime
    dry_run: bool
    batch_size: int
    deadline: datetime

    @property
    def cutoff(self) -> int:
        return rules.epoch(self.as_of)


@dataclass(frozen=True)
class CartPlan:
    """What preflight found: expired carts in the database, DynamoDB cart tables to read."""

    due: int
    dynamodb_tables: tuple[str, ...] = ()


class CartSummary(RunSummary):
    """What one abandoned-carts run did."""

    stopped_early: bool = False


@dataclass(frozen=True)
class CartContext:
    engine: sa.Engine
    params: CartParams
    lease: timedelta
    pseudonym_key: bytes | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def subject(self, customer_id: str) -> str:
        return pseudonym(customer_id, self.pseudonym_key)

    def out_of_time(self) -> bool:
        return self.clock() >= self.params.deadline


class Delivery(Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"  # a 4xx: retrying will not help
    CHANGED = "changed"  # ordered, refreshed or taken over before it was sent
    FAILED = "failed"  # something unexpected; tried again by a later run


def deliver(
    ctx: CartContext,
    suite: MarketingSuite,
    cart: AbandonedCart,
    report: BatchReport,
    breaker: Breaker,
    still_wanted: Callable[[], bool] | None = None,
) -> Delivery:
    """Send one cart to the marketing suite and say how it went.

    Bad settings (401/403, a redirect) and a suite down past its retries raise, which stops
    the batch: the remaining carts are released for the next run.
    """
    subject = ctx.subject(cart.customer_id)
    try:
        suite.report(cart, still_wanted=still_wanted)
    except CartChanged:
        report.counts["changed"] += 1
        return Delivery.CHANGED
    except RequestRejected as exc:
        breaker.success()  # it answered
        report.fail(subject, "report", exc)
        return Delivery.REFUSED
    except LifecycleError:
        raise
    except Exception as exc:  # one cart's failure does not stop the batch...
        report.fail(subject, "report", exc)
        breaker.failure(exc)  # ...unless it keeps happening
        return Delivery.FAILED
    breaker.success()
    report.record("reported", subject)
    return Delivery.ACCEPTED


# --- carts in the database -----------------------------------------------------------------


def expire_batch(
    ctx: CartContext, suite: MarketingSuite | None, *, after: Cursor | None, limit: int
) -> BatchReport:
    """Handle one page of expired carts; ``suite`` may be None only in a dry run."""
    params = ctx.params
    with ctx.engine.connect() as conn:
        page = queries.due_page(conn, cutoff=params.cutoff, after=after, limit=limit)
    report = BatchReport(last=next_cursor(page, limit))
    ids = [cursor.id for cursor in page]
    if not ids:
        return report
    if params.dry_run:
        with ctx.engine.connect() as conn:
            for row in queries.carts_in(conn, ids):
                reportable = _cart(row) is not None
                report.counts["would_report" if reportable else "would_purge"] += 1
        return report
    assert suite is not None
    claim = Claim.new(ctx.clock(), ctx.lease)
    with ctx.engine.begin() as conn:
        claimed = queries.claim_carts(conn, ids, cutoff=params.cutoff, claim=claim)
    report.counts["skipped"] += len(ids) - len(claimed)
    silent = [row.cart_id for row in claimed if _cart(row) is None]
    with ctx.engine.begin() as conn:
        report.counts["purged_unreported"] += queries.remove_unreportable(
            conn, silent, claim_id=claim.id, cutoff=params.cutoff
        )
    sendable = [row for row in claimed if row.cart_id not in silent]
    _send_claimed(ctx, suite, sendable, claim, report)
    return report


def _cart(row: CartRow) -> AbandonedCart | None:
    return rules.abandoned_cart(row.cart_id, row.customer_id, row.product_ids, row.expires_at)


def _send_claimed(
    ctx: CartContext, suite: MarketingSuite, rows: list[CartRow], claim: Claim, report: BatchReport
) -> None:
    """Report the claimed carts while lease and run time last; release what was not done."""
    send_until = min(claim.at + claim.lease - LEASE_MARGIN, ctx.params.deadline)
    breaker = Breaker("marketing suite")
    left = [row.cart_id for row in rows]
    try:
        for row in rows:
            if ctx.clock() >= send_until:
                report.counts["deferred"] += len(left)
                break
            cart = _cart(row)
            assert cart is not None
            outcome = deliver(ctx, suite, cart, report, breaker, _still_ours(ctx, row, claim))
            _settle(ctx, row, claim, outcome, report)
            left.remove(row.cart_id)
    finally:
        if left:
            with ctx.engine.begin() as conn:
                queries.release(conn, left, claim_id=claim.id)


def _still_ours(ctx: CartContext, row: CartRow, claim: Claim) -> Callable[[], bool]:
    def check() -> bool:
        with ctx.engine.connect() as conn:
            return queries.still_ours(
                conn, row.cart_id, claim_id=claim.id, expires_at=row.expires_at, now=ctx.clock()
            )

    return check


def _settle(
    ctx: CartContext, row: CartRow, claim: Claim, outcome: Delivery, report: BatchReport
) -> None:
    """Delete an accepted cart (if unchanged), mark a refused one, release the rest."""
    with ctx.engine.begin() as conn:
        if outcome is Delivery.ACCEPTED:
            if queries.remove_reported(
                conn, row.cart_id, claim_id=claim.id, expires_at=row.expires_at
            ):
                return
            report.counts["changed_while_sending"] += 1  # ordered or refreshed meanwhile
        elif outcome is Delivery.REFUSED:
            reason = report.failures[-1].error if report.failures else "refused"
            queries.reject(conn, row.cart_id, claim_id=claim.id, now=ctx.clock(), reason=reason)
            return
        queries.release(conn, [row.cart_id], claim_id=claim.id)


def purge_refused(ctx: CartContext, keep_days: int) -> int:
    """Delete carts the suite refused more than ``keep_days`` ago."""
    if ctx.params.dry_run:
        return 0
    with ctx.engine.begin() as conn:
        return queries.purge_rejected(conn, before=ctx.clock() - timedelta(days=keep_days))


# --- DynamoDB: the stream -------------------------------------------------------------------


@dataclass(frozen=True)
class StreamSource:
    """One DynamoDB cart table's stream, and how to read it."""

    stream: CartStream
    table: DynamoCartTable
    page_size: int
    variable: str = "LIFECYCLE_ABANDONED_CARTS__DYNAMODB_TABLES"


def read_stream(
    ctx: CartContext, suite: MarketingSuite | None, source: StreamSource
) -> BatchReport:
    """Report the carts TTL removed since our checkpoints, shard after shard (parents first)."""
    report = BatchReport()
    arn = source.stream.stream_arn(source.table.table, source.variable)
    shards = source.stream.shards(arn)
    with ctx.engine.begin() as conn:
        queries.ensure_shards(conn, arn, [shard.id for shard in shards], ctx.clock())
        known = queries.checkpoints(conn, arn)
    finished = {shard_id for shard_id, point in known.items() if point.finished}
    present = {shard.id for shard in shards}
    for shard in shards:
        if shard.id in finished:
            continue
        if ctx.out_of_time():
            report.counts["stopped_by_max_runtime"] += 1
            break
        if shard.parent_id in present and shard.parent_id not in finished:
            report.counts["shards_waiting_for_parent"] += 1
            continue
        reader = _ShardReader(ctx, suite, source, arn, shard, known[shard.id], report)
        if reader.read():
            finished.add(shard.id)
    return report


@dataclass
class _ShardReader:
    """Reads one shard from its checkpoint: under a lease, sending and checkpointing as it
    goes, or (a dry run, ``suite`` None) only counting."""

    ctx: CartContext
    suite: MarketingSuite | None
    source: StreamSource
    arn: str
    shard: Shard
    point: Checkpoint
    report: BatchReport
    claim: Claim | None = None

    def read(self) -> bool:
        """True when the shard is finished (closed and read to its end)."""
        if self.ctx.params.dry_run:
            return self._walk()
        claim = self.claim = Claim.new(self.ctx.clock(), self.ctx.lease)
        with self.ctx.engine.begin() as conn:
            if not queries.claim_shard(conn, self.point.id, claim=claim):
                self.report.counts["shards_busy"] += 1  # another run is reading it
                return False
        try:
            return self._walk()
        except StreamTrimmed as exc:
            self.report.fail(f"shard:{self.shard.id}", "stream", exc)
            with self.ctx.engine.begin() as conn:
                queries.restart_shard(conn, self.point.id, claim_id=claim.id, now=self.ctx.clock())
            return False
        finally:
            with self.ctx.engine.begin() as conn:
                queries.release_shard(conn, self.point.id, claim_id=claim.id)

    def _walk(self) -> bool:
        breaker = Breaker("marketing suite")
        empty = 0
        pages = self.source.stream.pages(
            self.arn, self.shard.id, self.point.sequence_number, limit=self.source.page_size
        )
        for page in pages:
            for record in page.records:
                cart = rules.from_stream_record(record, self.source.table)
                if cart is None:
                    self.report.counts["stream_ignored"] += 1
                elif self.suite is None:
                    self.report.counts["would_report"] += 1
                elif deliver(self.ctx, self.suite, cart, self.report, breaker) is Delivery.FAILED:
                    return False  # not past this record: the next run tries it again
                elif not self._checkpoint(sequence_number(record)):
                    return False  # the lease went to another run
            last = sequence_number(page.records[-1]) if page.records else None
            if not self._checkpoint(last, finished=page.closed) or page.closed:
                return page.closed
            empty = 0 if page.records else empty + 1
            if empty >= EMPTY_PAGES or self.ctx.out_of_time():
                return False
        return True

    def _checkpoint(self, sequence: str | None, finished: bool = False) -> bool:
        """Save our position (and renew the lease); False when the shard is no longer ours."""
        if self.claim is None:
            return True
        with self.ctx.engine.begin() as conn:
            return queries.save_checkpoint(
                conn,
                self.point.id,
                claim=self.claim,
                sequence_number=sequence,
                finished=finished,
                now=self.ctx.clock(),
            )


# --- DynamoDB: carts TTL has not removed yet ------------------------------------------------


def sweep_table(
    ctx: CartContext,
    suite: MarketingSuite | None,
    items: DynamoItems,
    table: DynamoCartTable,
    *,
    grace_seconds: int,
    page_size: int,
) -> BatchReport:
    """Report carts expired more than ``grace_seconds`` ago that are still in the table, then
    delete each (only while its TTL is unchanged) once the suite accepted it."""
    report = BatchReport()
    breaker = Breaker("marketing suite")
    before = ctx.params.cutoff - grace_seconds
    floor = rules.epoch(ctx.params.as_of - TTL_HORIZON)
    for page in items.expired(
        table.ttl_attribute, before=before, not_before=floor, page_size=page_size
    ):
        for item in page:
            if ctx.out_of_time():
                report.counts["stopped_by_max_runtime"] += 1
                return report
            cart = rules.from_item(item, table)
            if cart is None:
                report.counts["left_to_ttl"] += 1  # nothing to report: TTL will remove it
                continue
            if suite is None:
                report.counts["would_report"] += 1
                continue
            key = key_of(table.key_attribute, item[table.key_attribute])
            still = _unchanged(items, key, table.ttl_attribute, cart.expired_at)
            if deliver(ctx, suite, cart, report, breaker, still) is Delivery.ACCEPTED:
                if not items.delete_unchanged(key, table.ttl_attribute, cart.expired_at):
                    report.counts["changed_while_sending"] += 1
    return report


def _unchanged(
    items: DynamoItems, key: dict[str, object], ttl_attribute: str, ttl: int
) -> Callable[[], bool]:
    def check() -> bool:
        current = items.current(key)
        return current is not None and int(current.get(ttl_attribute, -1)) == ttl

    return check

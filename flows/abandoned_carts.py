"""Flow ``abandoned-carts``: report expired carts to the marketing suite, then delete them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field, StrictBool, StrictInt

from lifecycle.common.batch import BatchReport, resolve_as_of
from lifecycle.common.paging import each_page
from lifecycle.common.params import Instant, titled
from lifecycle.processes.abandoned_carts.steps import CartParams, CartSummary
from tasks._prefect import conclude, kill_switch, publish_summary
from tasks.abandoned_carts import (
    expire_carts_batch,
    preflight_carts,
    purge_refused_carts,
    read_cart_stream,
    sweep_dynamodb_carts,
)


@flow(name="abandoned-carts", validate_parameters=True)
def abandoned_carts(
    as_of: Instant | None = titled(None, "As of (empty: now)"),
    dry_run: StrictBool = titled(False, "Dry run"),
    batch_size: Annotated[StrictInt, Field(ge=1, le=1000)] = titled(100, "Carts per batch"),
    max_runtime: Annotated[StrictInt, Field(ge=10, le=86_400)] = titled(
        900, "Longest run (seconds)"
    ),
    read_streams: StrictBool = titled(True, "Read DynamoDB streams"),
    sweep_dynamodb: StrictBool = titled(True, "Sweep DynamoDB for late TTL"),
) -> CartSummary:
    """Report abandoned carts to the marketing suite; see README for the exact rules.

    Args:
        as_of: Carts whose expiry is before this instant (with time zone) are abandoned;
            default now. The future is refused.
        dry_run: Count the carts that would be reported or purged, and change nothing (no
            request to the marketing suite, no checkpoint moved).
        batch_size: Carts claimed per batch (1 to 1000); one Prefect task per batch, one
            request per cart.
        max_runtime: Seconds after which the run stops cleanly between two carts (10 to
            86400); claimed carts not sent are released for the next run.
        read_streams: Read the streams of the configured DynamoDB cart tables for carts their
            TTL removed.
        sweep_dynamodb: Also report DynamoDB carts expired long ago (see
            LIFECYCLE_ABANDONED_CARTS__SWEEP_GRACE_SECONDS) that TTL has not removed yet.
    """
    started = datetime.now(UTC)
    total = BatchReport()
    batches = 0
    as_used = started
    paused = False
    try:
        paused = kill_switch()
        params = CartParams(
            as_of=resolve_as_of(as_of, started),
            dry_run=dry_run or paused,  # paused: count, send and delete nothing
            batch_size=batch_size,
            deadline=started + timedelta(seconds=max_runtime),
        )
        as_used = params.as_of
        plan = preflight_carts(params)
        get_run_logger().info("expired carts in the database: %d", plan.due)
        if paused:
            total.counts["deletions_paused"] += plan.due
        for report in each_page(
            lambda after: expire_carts_batch(params, after), stop=lambda: _late(params)
        ):
            total.merge(report)
            batches += 1
        total.counts["refused_purged"] += purge_refused_carts(params)
        for table in plan.dynamodb_tables:
            if read_streams and not _late(params):
                total.merge(read_cart_stream(params, table))
                batches += 1
            if sweep_dynamodb and not _late(params):
                total.merge(sweep_dynamodb_carts(params, table))
                batches += 1
    finally:
        summary = CartSummary.of(total, as_of=as_used, dry_run=dry_run or paused, batches=batches)
        summary.stopped_early = datetime.now(UTC) >= started + timedelta(seconds=max_runtime)
        publish_summary("abandoned-carts", "Abandoned carts", summary)
    conclude(summary, "carts", "see logs; refused carts are kept, the others are tried next run")
    return summary


def _late(params: CartParams) -> bool:
    return datetime.now(UTC) >= params.deadline

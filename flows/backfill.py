"""Flow ``backfill``: replay a process for past dates, one run after another, in date order."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import Field, StrictBool, StrictInt

from lifecycle.common.backfill import backfill_instants
from lifecycle.common.params import titled
from lifecycle.errors import RunFailed
from lifecycle.settings import get_settings
from tasks.backfill import DateOutcome, check_target, run_for_date

Process = Literal[
    "inactive-accounts",
    "ttl-purge",
    "abandoned-carts",
    "consent-deletion-start",
    "consent-deletion-poll",
    "activation-mail",
]


@flow(name="backfill", validate_parameters=True)
def backfill(
    process: Process = titled("inactive-accounts", "Process"),
    start: date | None = titled(None, "First date (empty: yesterday)"),
    end: date | None = titled(None, "Last date (empty: the first)"),
    step_days: Annotated[StrictInt, Field(ge=1, le=365)] = titled(1, "Days between runs"),
    hour_utc: Annotated[StrictInt, Field(ge=0, le=23)] = titled(3, "Hour of each run (UTC)"),
    dry_run: StrictBool = titled(False, "Dry run"),
    on_failure: Literal["stop", "continue"] = titled("stop", "After a failed date"),
    max_wait_minutes: Annotated[StrictInt, Field(ge=1, le=1440)] = titled(
        360, "Longest wait for a busy deployment (minutes)"
    ),
) -> list[DateOutcome]:
    """Run the process's deployment once per date from start to end, strictly one after another.

    Args:
        process: The process to replay; only processes whose flow takes as_of can be.
        start: The first date (YYYY-MM-DD); empty: yesterday.
        end: The last date (YYYY-MM-DD), included, not in the future; empty: the first date.
        step_days: Days between two runs (1 to 365).
        hour_utc: The hour of day, UTC, each run evaluates as_of at (0 to 23; the schedules
            use 3).
        dry_run: Pass dry_run to every run: count, change nothing.
        on_failure: stop at the first failed date, or continue with the next ones.
        max_wait_minutes: When a scheduled run holds the deployment, how long a date waits for
            it to end before it is reported as not run (1 to 1440).
    """
    now = datetime.now(UTC)
    start = start or (now - timedelta(days=1)).date()
    end = end or start
    instants = backfill_instants(
        start=start,
        end=end,
        step_days=step_days,
        hour_utc=hour_utc,
        now=now,
        max_runs=get_settings().backfill.max_runs,
    )
    check_target(process)
    outcomes: list[DateOutcome] = []
    try:
        for as_of in instants:
            outcome = run_for_date(process, as_of, dry_run, max_wait_minutes * 60)
            outcomes.append(outcome)
            get_run_logger().info("%s: %s %s", as_of.date(), outcome.flow_run, outcome.state)
            if outcome.state != "Completed" and on_failure == "stop":
                break
    finally:
        create_table_artifact(
            key=f"backfill-{process}-{start:%Y%m%d}-{end:%Y%m%d}",
            table=[outcome.model_dump(mode="json") for outcome in outcomes],
            description=f"Backfill of {process}, {start} to {end}: {len(outcomes)} of "
            f"{len(instants)} dates run",
        )
    failed = [o for o in outcomes if o.state != "Completed"]
    if failed:
        raise RunFailed(
            f"{len(failed)} of {len(outcomes)} dates did not complete (first: "
            f"{failed[0].as_of.date()} {failed[0].state}: {failed[0].message})"
        )
    return outcomes

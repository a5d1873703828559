"""Backfill tasks: check the target deployment, and run it for one date, waiting for the end."""

from __future__ import annotations

import time
from datetime import datetime
from typing import cast

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from pydantic import BaseModel

from lifecycle.errors import ConfigError

#: What Prefect says when a deployment's concurrency limit cancels a run (CANCEL_NEW).
LIMIT_REACHED = "Deployment concurrency limit reached."
ACTIVE = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
POLL_SECONDS = 2.0


class DateOutcome(BaseModel):
    """What happened to one backfilled date."""

    as_of: datetime
    flow_run: str
    state: str
    message: str


def deployment_name(process: str) -> str:
    return f"{process}/{process}"


@task(name="check-backfill-target", cache_policy=NO_CACHE)
def check_target(process: str) -> None:
    """Refuse a process that has no deployment, or whose flow takes no ``as_of``."""
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_name(process))
        except ObjectNotFound:
            raise ConfigError(
                f"no deployment {deployment_name(process)!r}: run `prefect deploy --all`"
            ) from None
    schema = deployment.parameter_openapi_schema or {}
    if "as_of" not in schema.get("properties", {}):
        raise ConfigError(
            f"{process} cannot be backfilled: its flow takes no as_of (it works on what is "
            "due now); start it normally instead"
        )


@task(name="run-for-date", cache_policy=NO_CACHE)
def run_for_date(
    process: str, as_of: datetime, dry_run: bool, max_wait_seconds: int
) -> DateOutcome:
    """Run the process for ``as_of`` and wait for its end. A run the deployment's concurrency
    limit cancelled (a scheduled run was going on) is started again once that run has ended."""
    deadline = time.monotonic() + max_wait_seconds
    parameters = {"as_of": as_of.isoformat(), "dry_run": dry_run}
    attempt = 0
    while True:
        # The key makes a create request the client repeats (say after a timeout) return the
        # same run instead of starting the date twice; a new attempt gets a new key.
        key = f"backfill-{flow_run.get_id()}-{as_of.isoformat()}-{attempt}"
        run = cast(  # run_deployment is typed for async callers too; here it returns a FlowRun
            FlowRun,
            run_deployment(
                deployment_name(process),
                parameters=parameters,
                poll_interval=POLL_SECONDS,
                idempotency_key=key,
            ),
        )
        state = run.state
        cancelled_by_limit = (
            state is not None and state.is_cancelled() and state.message == LIMIT_REACHED
        )
        if not cancelled_by_limit or time.monotonic() > deadline:
            return DateOutcome(
                as_of=as_of,
                flow_run=run.name,
                state=state.name if state else "unknown",
                message=(state.message if state else None) or "",
            )
        get_run_logger().info("%s: another run holds the deployment; waiting", as_of.date())
        with get_client(sync_client=True) as client:
            _wait_until_idle(client, run.deployment_id, deadline)
        attempt += 1


def _wait_until_idle(client: SyncPrefectClient, deployment_id: object, deadline: float) -> None:
    """Until the deployment has no run pending or running (or the deadline passed)."""
    busy = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ACTIVE)))
    only = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    while time.monotonic() < deadline and client.read_flow_runs(
        flow_run_filter=busy, deployment_filter=only, limit=1
    ):
        time.sleep(POLL_SECONDS)

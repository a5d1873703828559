"""What a flow run left in Prefect: its events, logs and artifacts, read back from the server."""

from __future__ import annotations

import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import Artifact, TaskRun
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.events.schemas.events import ReceivedEvent
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker


def run_events(
    flow_run_id: UUID | None, *, minimum: int = 1, prefix: str = "lifecycle."
) -> list[ReceivedEvent]:
    """The run's events named ``prefix...``, once at least ``minimum`` arrived (or ~10 s)."""
    EventsWorker.drain_all(timeout=10)
    event_filter = EventFilter(
        event=EventNameFilter(prefix=[prefix]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    with get_client(sync_client=True) as client:
        for _ in range(50):  # the server stores events asynchronously
            events = client.read_events(filter=event_filter, limit=50).events
            if len(events) >= minimum:
                return events
            time.sleep(0.2)
    return events


def flow_task_runs(flow_run_id: UUID | None) -> list[TaskRun]:
    """The run's task runs (up to 200)."""
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
        )


def run_artifacts(flow_run_id: UUID | None) -> list[Artifact]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def run_text(flow_run_id: UUID | None, *, minimum_events: int = 1) -> str:
    """Everything the run wrote to Prefect (logs, artifacts, events) as one text."""
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    artifacts = run_artifacts(flow_run_id)
    events = run_events(flow_run_id, minimum=minimum_events)
    assert logs and artifacts and len(events) >= minimum_events
    return (
        " ".join(log.message for log in logs)
        + " ".join(f"{a.description} {a.data}" for a in artifacts)
        + " ".join(event.model_dump_json() for event in events)
    )

"""What a flow run left behind: mails in the outbox, and its events, logs and artifacts."""

from __future__ import annotations

import email
import time
from email.message import Message
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.events.schemas.events import ReceivedEvent
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker

from lifecycle.settings import Settings


def outbox(settings: Settings) -> list[Message]:
    folder = settings.resolved_outbox_dir
    if not folder.exists():
        return []
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(folder.glob("*.eml"))]


def text_of(message: Message) -> str:
    """The plain-text part of a mail."""
    part = next(p for p in message.walk() if p.get_content_type() == "text/plain")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def run_events(flow_run_id: UUID | None, *, expected: int = 2) -> list[ReceivedEvent]:
    """The run's ``lifecycle.*`` events, once ``expected`` have arrived (or after ~10 s)."""
    EventsWorker.drain_all(timeout=10)
    event_filter = EventFilter(
        event=EventNameFilter(prefix=["lifecycle."]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    with get_client(sync_client=True) as client:
        for _ in range(50):  # the server stores events asynchronously
            events = client.read_events(filter=event_filter, limit=50).events
            if len(events) >= expected:
                return events
            time.sleep(0.2)
    return events


def run_text(flow_run_id: UUID | None) -> str:
    """Every log line, artifact and event of a run, as one text to search."""
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    assert logs and artifacts
    return (
        " ".join(log.message for log in logs)
        + " ".join(f"{a.description} {a.data}" for a in artifacts)
        + " ".join(event.model_dump_json() for event in run_events(flow_run_id, expected=1))
    )

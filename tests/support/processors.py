"""Pytest plugin: the processor simulator, and local servers speaking Mixpanel's and Segment's
documented shapes (sources in lifecycle/clients/processors.py), for the consent-deletion tests.

The vendor fakes reuse the simulator's state and faults and answer in the vendor's JSON.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lifecycle.clients.simulator import Fault, ProcessorSimulator, Reply, Route
from lifecycle.settings import Settings

TOKEN = "sim-token-5ecr3t-value"
PROJECT_TOKEN = "mp-project-t0ken"
CONTACTS = ["privacy-oncall@example.com", "dpo@example.com"]


class MixpanelServer(ProcessorSimulator):
    """Mixpanel GDPR API v3 data deletions: create (either documented answer), check."""

    PATH = "/data-deletions/v3.0"
    STATES = {"pending": "STAGING", "complete": "SUCCESS", "failed": "FAILURE"}

    def __init__(self, *, list_answer: bool = False, **kwargs: Any) -> None:
        super().__init__(token=TOKEN, **kwargs)
        self.list_answer = list_answer  # the prose reference's create answer, not the OpenAPI's
        self.bodies: list[Any] = []
        self.queries: list[dict[str, str]] = []

    def route_of(self, method: str, path: str) -> tuple[Route, str] | None:
        if method == "POST" and path.rstrip("/") == self.PATH:
            return "start", ""
        if method == "GET" and path.startswith(f"{self.PATH}/"):
            return "status", path.removeprefix(f"{self.PATH}/")
        return None

    def answer(self, route: Route, operation_id: str, query: dict[str, str], body: Any) -> Reply:
        self.queries.append(query)
        if query.get("token") != PROJECT_TOKEN:
            return Reply(401, {"error": "Invalid project token", "status": "error"})
        if route == "start":
            self.bodies.append(body)
            ids = body.get("distinct_ids") if isinstance(body, dict) else None
            if not isinstance(ids, list) or not 0 < len(ids) <= 1999:
                return Reply(400, {"error": "distinct_ids: 1 to 1999 ids", "status": "error"})
            operation = self.create([str(i) for i in ids])
            if self.list_answer:
                result = [{"status": "PENDING", "tracking_id": operation.id, "project_id": 1}]
                return Reply(200, {"status": "ok", "results": result})
            return Reply(201, {"status": "ok", "results": {"task_id": operation.id}})
        found = self.operations.get(operation_id)
        if found is None:
            return Reply(200, {"status": "ok", "results": {"status": "NOT_FOUND"}})
        results = {
            "tracking_id": found.id,
            "status": self.STATES[self.state_of(found)],
            "requesting_user": "admin@example.com",
            "compliance_type": "GDPR",
            "project_id": 1,
            "date_requested": found.created_at.strftime("%Y-%m-%dT%H:%M:%S"),
            "distinct_ids": found.user_ids,
        }
        return Reply(200, {"status": "ok", "results": results})

    def reply_to(self, fault: Fault, route: Route) -> Reply:
        if fault.kind == "unknown_status":
            return Reply(200, {"status": "ok", "results": {"status": "ARCHIVED"}})
        if fault.kind == "missing_status":
            return Reply(200, {"status": "ok", "results": {}})
        return super().reply_to(fault, route)


class SegmentServer(ProcessorSimulator):
    """Segment Public API workspace regulations: create, get, list (cursor pages)."""

    STATES = {"pending": "RUNNING", "complete": "FINISHED", "failed": "FAILED"}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(token=TOKEN, **kwargs)
        self.bodies: list[Any] = []

    def route_of(self, method: str, path: str) -> tuple[Route, str] | None:
        if path == "/regulations":
            return {"POST": "start", "GET": "list"}.get(method), ""  # type: ignore[return-value]
        if method == "GET" and path.startswith("/regulations/"):
            return "status", path.removeprefix("/regulations/")
        return None

    def answer(self, route: Route, operation_id: str, query: dict[str, str], body: Any) -> Reply:
        if route == "start":
            self.bodies.append(body)
            ids = body.get("subjectIds") if isinstance(body, dict) else None
            valid = (
                isinstance(ids, list)
                and 0 < len(ids) <= 5000
                and body.get("subjectType") == "USER_ID"
                and body.get("regulationType") in ("SUPPRESS_WITH_DELETE", "DELETE_ONLY")
            )
            if not valid or not isinstance(ids, list):
                error = {"type": "input-validation", "message": "invalid regulation"}
                return Reply(422, {"errors": [error]})
            return Reply(200, {"data": {"regulateId": self.create([str(i) for i in ids]).id}})
        if route == "status":
            found = self.operations.get(operation_id)
            if found is None:
                return Reply(404, {"errors": [{"type": "not-found", "message": "not found"}]})
            regulation = {
                "id": found.id,
                "workspaceId": "ws-1",
                "overallStatus": self.STATES[self.state_of(found)],
                "createdAt": found.created_at.isoformat(),
                "streamStatus": [],
            }
            return Reply(200, {"data": {"regulation": regulation}})
        start = int(query.get("pagination.cursor") or 0)
        count = int(query.get("pagination.count") or 10)
        operations = self.newest_first()
        page = [
            {
                "id": item.id,
                "subjectType": "USER_ID",
                "subjects": item.user_ids,
                "status": self.STATES[self.state_of(item)],
                "createdAt": item.created_at.isoformat(),
                "regulationType": "SUPPRESS_WITH_DELETE",
            }
            for item in operations[start : start + count]
        ]
        more = start + count < len(operations)
        pagination = {"current": str(start), "next": str(start + count) if more else None}
        return Reply(200, {"data": {"regulations": page, "pagination": pagination}})

    def reply_to(self, fault: Fault, route: Route) -> Reply:
        if fault.kind == "unknown_status":
            return Reply(200, {"data": {"regulation": {"id": "x", "overallStatus": "PAUSED"}}})
        if fault.kind == "missing_status":
            return Reply(200, {"data": {}})
        return super().reply_to(fault, route)


@pytest.fixture
def simulator() -> Iterator[ProcessorSimulator]:
    """The generic simulator; operations stay pending until a test settles them."""
    with ProcessorSimulator(token=TOKEN, complete_after=None) as server:
        yield server


def simulator_processor(url: str, **overrides: Any) -> dict[str, Any]:
    """Settings of a ``kind: rest`` processor on the simulator, with short waits for tests."""
    return {
        "kind": "rest",
        "name": "sim",
        "base_url": url,
        "token": TOKEN,
        "timeout_seconds": 1.0,
        "retry_budget_seconds": 1.0,
        "concurrency": 4,
        **overrides,
    }


def configure(monkeypatch: pytest.MonkeyPatch, *processors: dict[str, Any]) -> Settings:
    """Point the flows at these processors, with the test contacts."""
    monkeypatch.setenv("LIFECYCLE_CONSENT_DELETION__PROCESSORS", json.dumps(list(processors)))
    monkeypatch.setenv("LIFECYCLE_CONSENT_DELETION__TECHNICAL_CONTACTS", json.dumps(CONTACTS))
    return Settings()


@pytest.fixture
def consent_env(
    monkeypatch: pytest.MonkeyPatch, lifecycle_env: Settings, simulator: ProcessorSimulator
) -> Settings:
    """lifecycle_env plus one processor, the simulator."""
    assert os.environ["LIFECYCLE_DATABASE_URL"]
    return configure(monkeypatch, simulator_processor(simulator.url))


def unique_id() -> str:
    return str(uuid.uuid4())

"""A local processor simulator: a small HTTP server that deletes nothing, slowly, on purpose.

It speaks the generic contract of ``kind: rest`` (:data:`~lifecycle.clients.processors.
SIMULATOR_CONTRACT`), so the demo (``lifecycle demo``) and the tests can run the whole
consent-deletion process with no third party. ``lifecycle simulator`` runs it on its own.

- ``POST /deletions`` ``{"user_ids": [...]}`` -> 202 ``{"id": "op-...", "status": "pending"}``
- ``GET /deletions/{id}`` -> ``{"id": ..., "status": "pending" | "complete" | "failed"}``
- ``GET /deletions[?cursor=N]`` -> ``{"deletions": [{"id", "user_ids", "status",
  "created_at"}], "next": "N" | null}``, newest first, 100 a page

Behaviour is configurable: ``latency`` before every answer, ``complete_after`` seconds (None:
only :meth:`ProcessorSimulator.settle` finishes an operation), ``fail_user_ids`` whose
operations fail, a bearer ``token`` to require, and :class:`Fault` s queued for the next calls
of a route: throttling (429 with Retry-After), server errors, hangs, answers that are not JSON
or have changed shape, and a start that is carried out but never answered (the crash window:
the connection drops, or hangs until the caller gives up or dies).
Vendor-shaped fakes (tests/support) subclass it and override :meth:`route_of` and :meth:`answer`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

Route = Literal["start", "status", "list"]
FaultKind = Literal[
    "throttle",  # 429 with Retry-After
    "unavailable",  # 503
    "error",  # 500
    "hang",  # never answers
    "not_json",  # 200 with an HTML page
    "missing_status",  # 200 JSON without the status (or operation id)
    "unknown_status",  # 200 JSON with a status value nobody documented
    "drop_after_acting",  # carries the call out, then closes the connection unanswered
    "hang_after_acting",  # carries the call out, then never answers (a caller that dies)
    "unauthorized",  # 401
]
PAGE = 100


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    retry_after: float = 1.0  # for throttle


@dataclass
class Operation:
    id: str
    user_ids: list[str]
    created_at: datetime
    created: float  # on the simulator's clock
    settled: str | None = None  # "complete" or "failed", once decided


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class ProcessorSimulator:
    """The server; start it, point a ``kind: rest`` processor at :attr:`url`, stop it."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        latency: float = 0.0,
        complete_after: float | None = 0.0,
        fail_user_ids: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token = token
        self.latency = latency
        self.complete_after = complete_after
        self.fail_user_ids = fail_user_ids
        self.operations: dict[str, Operation] = {}
        self.calls: defaultdict[str, int] = defaultdict(int)  # per route
        self._order: list[str] = []
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._clock = clock
        self._server = _Server((host, port), self)
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests and the demo control ------------------------------------------------------

    def fail_next(self, route: Route, *faults: Fault) -> None:
        """Answer the next calls of ``route`` with these faults, in order."""
        with self._lock:
            self._faults[route].extend(faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def settle(self, operation_id: str, state: Literal["complete", "failed"]) -> None:
        with self._lock:
            self.operations[operation_id].settled = state

    def create(self, user_ids: list[str]) -> Operation:
        with self._lock:
            operation = Operation(
                id=f"op-{uuid.uuid4().hex[:20]}",
                user_ids=list(user_ids),
                created_at=datetime.now(UTC),
                created=self._clock(),
            )
            self.operations[operation.id] = operation
            self._order.append(operation.id)
        return operation

    def state_of(self, operation: Operation) -> str:
        if operation.settled:
            return operation.settled
        if self.fail_user_ids & set(operation.user_ids):
            return "failed"
        done = self.complete_after is not None and (
            self._clock() - operation.created >= self.complete_after
        )
        return "complete" if done else "pending"

    def newest_first(self) -> list[Operation]:
        with self._lock:
            return [self.operations[key] for key in reversed(self._order)]

    # --- the wire (vendor fakes override these two) --------------------------------------------

    def route_of(self, method: str, path: str) -> tuple[Route, str] | None:
        """Which route a request is, and the operation id in its path (or "")."""
        if method == "POST" and path == "/deletions":
            return "start", ""
        if method == "GET" and path == "/deletions":
            return "list", ""
        if method == "GET" and path.startswith("/deletions/"):
            return "status", path.removeprefix("/deletions/")
        return None

    def answer(self, route: Route, operation_id: str, query: dict[str, str], body: Any) -> Reply:
        """The answer of the generic contract."""
        if route == "start":
            user_ids = body.get("user_ids") if isinstance(body, dict) else None
            if not isinstance(user_ids, list) or not user_ids:
                return Reply(422, {"error": "user_ids must be a non-empty list"})
            operation = self.create([str(user_id) for user_id in user_ids])
            return Reply(202, {"id": operation.id, "status": "pending"})
        if route == "status":
            found = self.operations.get(operation_id)
            if found is None:
                return Reply(404, {"error": "no such operation"})
            return Reply(200, {"id": found.id, "status": self.state_of(found)})
        start = int(query.get("cursor") or 0)
        page = self.newest_first()[start : start + PAGE]
        items = [
            {
                "id": item.id,
                "user_ids": item.user_ids,
                "status": self.state_of(item),
                "created_at": item.created_at.isoformat(),
            }
            for item in page
        ]
        more = start + PAGE < len(self.operations)
        return Reply(200, {"deletions": items, "next": str(start + PAGE) if more else None})

    def reply_to(self, fault: Fault, route: Route) -> Reply:
        """The answer a fault gives instead of the contract's."""
        if fault.kind == "throttle":
            return Reply(429, {"error": "rate limited"}, {"Retry-After": f"{fault.retry_after}"})
        if fault.kind == "unavailable":
            return Reply(503, {"error": "maintenance"})
        if fault.kind == "error":
            return Reply(500, {"error": "internal"})
        if fault.kind == "unauthorized":
            return Reply(401, {"error": "invalid token"})
        if fault.kind == "not_json":
            return Reply(
                200, b"<html><body>Service moved</body></html>", {"Content-Type": "text/html"}
            )
        if fault.kind == "unknown_status":
            return Reply(200, {"id": "x", "status": "archived"})
        return Reply(200, {"result": "ok"})  # missing_status: neither status nor id

    # --- serving ------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        if self.latency:
            time.sleep(self.latency)
        found = self.route_of(handler.command, parts.path)
        if found is None:
            self._send(handler, Reply(404, {"error": "not found"}))
            return
        route, operation_id = found
        with self._lock:
            self.calls[route] += 1
            queued = self._faults[route]
            fault = queued.popleft() if queued else None
        if (
            self.token is not None
            and handler.headers.get("Authorization") != f"Bearer {self.token}"
        ):
            self._send(handler, Reply(401, {"error": "invalid token"}))
            return
        if fault is not None and fault.kind == "hang":
            self._stopping.wait()
            return
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        acting = fault is not None and fault.kind.endswith("_after_acting")
        if fault is not None and not acting:
            self._send(handler, self.reply_to(fault, route))
            return
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            self._send(handler, Reply(400, {"error": "body is not JSON"}))
            return
        reply = self.answer(route, operation_id, query, body)
        if acting:  # done, but the caller never hears of it
            if fault is not None and fault.kind == "hang_after_acting":
                self._stopping.wait()
            handler.close_connection = True
            return
        self._send(handler, reply)

    def _send(self, handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        body = reply.body
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **reply.headers}
        try:
            handler.send_response(reply.status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client gave up first
            handler.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], simulator: ProcessorSimulator) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per answer, sent at once: with the default (unbuffered headers, then
            # the body, Nagle on) a keep-alive client waits ~40 ms for every answer.
            wbufsize = -1
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                simulator._serve(self)

            do_POST = do_GET

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(address, Handler)

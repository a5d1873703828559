"""A local HTTP server scripted per request, standing in for a third-party API at the wire.

Tests queue replies per (method, path) with :meth:`ScriptedHttpServer.reply`; unscripted
requests get the ``default`` reply. Every request is recorded with its headers and body.
A reply can be slow (``delay``) or never come (``hang``: the server holds the connection
until the test ends or the client gives up).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes or str
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False


@dataclass(frozen=True)
class Received:
    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ScriptedHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.default = Reply(404, {"error": "not scripted"})
        self._replies: dict[tuple[str, str], deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per answer, sent at once: otherwise Nagle holds the body back ~40 ms.
            wbufsize = -1
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                server._serve(self)

            do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def reply(self, method: str, path: str, *replies: Reply) -> None:
        """Answer the next requests to ``method path`` (path without query) with ``replies``."""
        with self._lock:
            self._replies[(method, path)].extend(replies)

    def received(self, method: str | None = None, path: str | None = None) -> list[Received]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method)
                and (path is None or r.path.split("?")[0] == path)
            ]

    def wait_for_requests(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Block until ``count`` requests arrived (True), or ``timeout`` seconds passed."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.requests) >= count, timeout)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = handler.path.split("?")[0]
        with self._lock:
            self.requests.append(
                Received(handler.command, handler.path, dict(handler.headers.items()), body)
            )
            queue = self._replies.get((handler.command, path))
            reply = queue.popleft() if queue else self.default
            self._arrived.notify_all()
        if reply.hang:
            self._stopping.wait()
            return
        if reply.delay:
            time.sleep(reply.delay)
        data = _encode(reply.body)
        try:
            handler.send_response(reply.status)
            for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client gave up first
            pass

    def stop(self) -> None:
        self._stopping.set()
        self.shutdown()
        self.server_close()


def _encode(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def closed_port() -> int:
    """A local port with nothing listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """(host, port) of a server that accepts connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # connections complete in the backlog; nothing ever answers
        yield "127.0.0.1", int(listener.getsockname()[1])


@contextmanager
def scripted_server() -> Iterator[ScriptedHttpServer]:
    """A scripted server serving in a thread until the block ends."""
    server = ScriptedHttpServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def http_server() -> Iterator[ScriptedHttpServer]:
    with scripted_server() as server:
        yield server

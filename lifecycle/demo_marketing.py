"""A local stand-in for the marketing suite, for ``lifecycle demo``: a real HTTP endpoint.

It does what a receiver of abandoned carts should: refuses a bad or stale signature (401),
keeps each idempotency key once (a repeat is acknowledged, not stored twice), and answers 202.
Accepted carts are appended to ``<data dir>/marketing/abandoned-carts.jsonl``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lifecycle.clients.marketing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify


@dataclass(frozen=True)
class LocalSuite:
    url: str
    secret: str
    inbox: Path


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, secret: bytes, inbox: Path) -> None:
        self.secret = secret
        self.inbox = inbox
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        signature = self.headers.get(SIGNATURE_HEADER, "")
        if not verify(self.server.secret, signature, body, now=time.time()):
            self._answer(401, {"error": "bad signature"})
            return
        key = self.headers.get(IDEMPOTENCY_HEADER, "")
        with self.server.lock:
            duplicate = key in self.server.seen
            if not duplicate:
                self.server.seen.add(key)
                with self.server.inbox.open("a") as inbox:
                    inbox.write(body.decode() + "\n")
        self._answer(202, {"accepted": True, "duplicate": duplicate})

    def _answer(self, status: int, payload: dict[str, object]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def local_suite(data_dir: Path) -> Iterator[LocalSuite]:
    """Run the receiver on a free local port with a fresh secret, until the block ends."""
    inbox = data_dir.resolve() / "marketing" / "abandoned-carts.jsonl"
    inbox.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(24)
    server = _Receiver(secret.encode(), inbox)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield LocalSuite(url=f"http://{host!s}:{port}/abandoned-carts", secret=secret, inbox=inbox)
    finally:
        server.shutdown()
        server.server_close()

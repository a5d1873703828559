"""A mail rate shared by every run and worker, enforced through a Prefect global concurrency limit.

Prefect's ``rate_limit`` is a token bucket whose decay is recomputed (and floored) on every
request, so a waiting client slows it down: at 14/s it delivers 7-10/s, with bursts above 14 in
the first second. Instead, the limit named ``limit_name`` (limit 1, no decay) acts as a
cluster-wide mutex held under a lease, and :class:`PacedSender` keeps its holder's sends (and
the hand-over to the next holder) within ``rate`` per 1-second window. A killed holder's lease
expires on its own.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Protocol

import httpx
from prefect.client.base import PrefectHttpxSyncClient
from prefect.client.orchestration import SyncPrefectClient
from prefect.exceptions import ObjectAlreadyExists

from lifecycle.mail.backends import Mailer, OutgoingMail

#: Spaces sends a hair wider than 1/rate so timer jitter never puts rate+1 sends in one second.
SAFETY = 1.002


class Mutex(Protocol):
    def acquire(self) -> None: ...
    def release(self) -> None: ...


def ensure_mail_limit(client: SyncPrefectClient, name: str) -> None:
    """Create (or reset to) the limit-1, no-decay global limit the pacer locks on."""
    try:
        client.upsert_global_concurrency_limit_by_name(name, limit=1, slot_decay_per_second=0.0)
    except ObjectAlreadyExists:  # a concurrent run created it between read and create
        pass


#: Answers that mean "ask again": the slot is held (423), or the server is busy (429, 502, 503).
_ASK_AGAIN = frozenset({423, 429, 502, 503})


class PrefectLeaseMutex:
    """Holds the single slot of a Prefect global concurrency limit under a lease.

    Requests go out once each, past the Prefect client's retry loop: that loop sleeps about two
    seconds on a 503, which a busy SQLite-backed server answers now and then while another
    worker polls, and every such stall is mail not sent. Polling again after ``poll_seconds``
    is the retry here.
    """

    def __init__(
        self,
        *,
        client: SyncPrefectClient,
        limit_name: str,
        lease_seconds: float = 120.0,
        poll_seconds: float = 0.02,
        timeout_seconds: float = 3600.0,
        release_seconds: float = 30.0,
    ) -> None:
        if not isinstance(client._client, PrefectHttpxSyncClient):
            raise TypeError("PrefectLeaseMutex needs a client built by prefect's get_client()")
        self._http = client._client
        self._name = limit_name
        self._lease_seconds = lease_seconds
        self._poll_seconds = poll_seconds
        self._timeout_seconds = timeout_seconds
        self._release_seconds = release_seconds
        self._lease_id: str | None = None
        self._connected = False

    def acquire(self) -> None:
        body = {
            "names": [self._name],
            "slots": 1,
            "mode": "concurrency",
            "lease_duration": self._lease_seconds,
        }
        path = "/v2/concurrency_limits/increment-with-lease"
        response = self._post_until(path, body, self._timeout_seconds)
        if response is None:
            raise TimeoutError(f"waited {self._timeout_seconds:.0f}s for mail limit {self._name!r}")
        response.raise_for_status()
        answer = response.json()
        if not answer.get("limits"):
            raise RuntimeError(
                f"global concurrency limit {self._name!r} does not exist or is inactive"
            )
        self._lease_id = str(answer["lease_id"])

    def release(self) -> None:
        """Give the slot back; if the server cannot be reached, the lease expires on its own."""
        if self._lease_id is None:
            return
        body, self._lease_id = {"lease_id": self._lease_id}, None
        path = "/v2/concurrency_limits/decrement-with-lease"
        response = self._post_until(path, body, self._release_seconds)
        if response is not None and response.status_code != 404:  # 404: lease already expired
            response.raise_for_status()

    def _post_until(
        self, path: str, body: Mapping[str, object], seconds: float
    ) -> httpx.Response | None:
        """POST every ``poll_seconds`` until a definite answer; ``None`` after ``seconds``."""
        deadline = time.monotonic() + seconds
        while (response := self._post(path, body)) is None:
            if time.monotonic() > deadline:
                return None
            time.sleep(self._poll_seconds)
        return response

    def _post(self, path: str, body: Mapping[str, object]) -> httpx.Response | None:
        """One POST through the client's connection; ``None`` means "ask again"."""
        request = self._http.build_request("POST", path, json=body)
        if self._http.enable_csrf_support:
            self._http._add_csrf_headers(request)
        try:
            response = httpx.Client.send(self._http, request)
        except httpx.TransportError:
            if not self._connected:  # a wrong URL fails at once, a restart is waited out
                raise
            return None
        self._connected = True
        return None if response.status_code in _ASK_AGAIN else response


class PacedSender:
    """Sends mail at no more than ``rate_per_second`` across all holders of ``mutex``.

    Two rules, both measured on this process's clock: sends start at least ``1/rate`` apart,
    and no send starts within a second (``burst/rate``) of the completion of the send
    ``burst = floor(rate)`` sends before it. The second rule keeps every one-second window at
    or under the rate even when a slow send completes right next to the one after it. On
    hand-over the holder waits until the next holder could keep both rules from scratch.
    """

    def __init__(
        self,
        *,
        mailer: Mailer,
        mutex: Mutex | None,
        rate_per_second: float,
        hold_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``mutex=None`` with ``rate_per_second=0`` sends unpaced (local outbox only)."""
        self._mailer = mailer
        self._mutex = mutex
        self._interval = SAFETY / rate_per_second if rate_per_second > 0 else 0.0
        self._burst = max(1, math.floor(rate_per_second)) if rate_per_second > 0 else 0
        self._window = self._burst * self._interval
        self._completed: deque[float] = deque(maxlen=max(self._burst, 1))
        self._hold_seconds = hold_seconds
        self._clock = clock
        self._sleep = sleep
        self._held_since: float | None = None
        self._last_start = float("-inf")

    def send(self, mail: OutgoingMail) -> str:
        if self._mutex is not None and self._held_since is None:
            self._mutex.acquire()
            self._held_since = self._clock()
        self._wait_until(self._next_start())
        self._last_start = self._clock()
        try:
            return self._mailer.send(mail)
        finally:
            self._completed.append(self._clock())
            held_since = self._held_since
            if held_since is not None and self._clock() - held_since >= self._hold_seconds:
                self.release()

    def release(self) -> None:
        """Let another run send, once it could start at once without breaking the rate."""
        if self._mutex is None or self._held_since is None:
            return
        # The next holder's k-th send (k = 0, 1, ...) starts at release + k/rate at the earliest,
        # and must start a window after our send `burst - k` back completed.
        moment = self._last_start + self._interval
        first_k = self._burst - len(self._completed)
        for k, completed in enumerate(self._completed, start=first_k):
            moment = max(moment, completed + self._window - k * self._interval)
        self._wait_until(moment)
        self._held_since = None
        self._mutex.release()

    def _next_start(self) -> float:
        moment = self._last_start + self._interval
        if self._burst and len(self._completed) == self._burst:
            moment = max(moment, self._completed[0] + self._window)
        return moment

    def _wait_until(self, moment: float) -> None:
        delay = moment - self._clock()
        if delay > 0:
            self._sleep(delay)

    def __enter__(self) -> PacedSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

"""A mail rate shared by every run and worker, enforced through a Prefect global concurrency limit.

Prefect's ``rate_limit`` is a token bucket whose decay is recomputed (and floored) on every
request, so a waiting client slows it down: at 14/s it delivers 7-10/s, with bursts above 14 in
the first second. Instead, the limit named ``limit_name`` (limit 1, no decay) acts as a
cluster-wide mutex held under a lease: whoever holds it sends with sends spaced at least
``1/rate`` apart, and waits out the last interval before releasing. Every 1-second window
therefore holds at most ``rate`` sends, and a killed holder's lease expires on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol
from uuid import UUID

import httpx
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


class PrefectLeaseMutex:
    """Holds the single slot of a Prefect global concurrency limit under a lease."""

    def __init__(
        self,
        *,
        client: SyncPrefectClient,
        limit_name: str,
        lease_seconds: float = 120.0,
        poll_seconds: float = 0.02,
        timeout_seconds: float = 3600.0,
    ) -> None:
        self._client = client
        self._name = limit_name
        self._lease_seconds = lease_seconds
        self._poll_seconds = poll_seconds
        self._timeout_seconds = timeout_seconds
        self._lease_id: UUID | None = None

    def acquire(self) -> None:
        deadline = time.monotonic() + self._timeout_seconds
        while True:
            try:
                response = self._client.increment_concurrency_slots_with_lease(
                    names=[self._name],
                    slots=1,
                    mode="concurrency",
                    lease_duration=self._lease_seconds,
                )
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:
                    raise
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"waited {self._timeout_seconds:.0f}s for mail limit {self._name!r}"
                    ) from None
                time.sleep(self._poll_seconds)
                continue
            limits = response.json().get("limits") or []
            if not limits:
                raise RuntimeError(
                    f"global concurrency limit {self._name!r} does not exist or is inactive"
                )
            self._lease_id = UUID(response.json()["lease_id"])
            return

    def release(self) -> None:
        if self._lease_id is not None:
            lease_id, self._lease_id = self._lease_id, None
            self._client.release_concurrency_slots_with_lease(lease_id)


class PacedSender:
    """Sends mail at no more than ``rate_per_second`` across all holders of ``mutex``."""

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
        self._hold_seconds = hold_seconds
        self._clock = clock
        self._sleep = sleep
        self._held_since: float | None = None
        self._last_start = float("-inf")

    def send(self, mail: OutgoingMail) -> str:
        if self._mutex is not None and self._held_since is None:
            self._mutex.acquire()
            self._held_since = self._clock()
        self._wait_until(self._last_start + self._interval)
        self._last_start = self._clock()
        try:
            return self._mailer.send(mail)
        finally:
            held_since = self._held_since
            if held_since is not None and self._clock() - held_since >= self._hold_seconds:
                self.release()

    def release(self) -> None:
        """Let another run send, once our last interval has passed."""
        if self._mutex is None or self._held_since is None:
            return
        self._wait_until(self._last_start + self._interval)
        self._held_since = None
        self._mutex.release()

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

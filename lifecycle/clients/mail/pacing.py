"""A mail rate shared by every run and worker: one sender at a time, paced while it holds.

Whoever holds a cluster-wide :class:`Mutex` may send; :class:`PacedSender` keeps the holder's
sends (and the hand-over to the next holder) within ``rate`` per 1-second window. The mutex is
an interface: ``tasks/_prefect.py`` implements it on a Prefect global concurrency limit held
under a lease, so a killed holder's lease expires on its own.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from lifecycle.clients.mail.backends import Mailer
from lifecycle.clients.mail.message import OutgoingMail

#: Spaces sends a hair wider than 1/rate so timer jitter never puts rate+1 sends in one second.
SAFETY = 1.002


class Mutex(Protocol):
    """Held by one sender at a time across every run and worker."""

    def acquire(self) -> None: ...
    def release(self) -> None: ...


class PacedSender:
    """Sends mail at no more than ``rate_per_second`` across all holders of ``mutex``.

    Two rules, both measured on this process's clock: sends start at least ``1/rate`` apart,
    and no send starts within a second (``burst/rate``) of the completion of the send
    ``burst = floor(rate)`` sends before it. The second rule keeps every one-second window at
    or under the rate even when a slow send completes right next to the one after it. On
    hand-over the holder waits until the next holder could keep both rules from scratch.

    Priority (activation mail goes before warnings): a priority sender holds ``lane`` (a
    second, shared mutex any number of priority senders may hold) from before it asks for
    ``mutex`` until after it gives it back. Other senders pass ``yield_to``, which says
    whether a priority sender holds the lane: they do not ask for the mutex while it does,
    and while holding it they look every ``yield_check_seconds`` and hand it over at once.
    A priority sender thus waits at most about ``yield_check_seconds`` plus one hand-over.
    """

    def __init__(
        self,
        *,
        mailer: Mailer,
        mutex: Mutex | None,
        rate_per_second: float,
        hold_seconds: float = 5.0,
        lane: Mutex | None = None,
        yield_to: Callable[[], bool] | None = None,
        yield_check_seconds: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``mutex=None`` with ``rate_per_second=0`` sends unpaced (local outbox only)."""
        if lane is not None and yield_to is not None:
            raise ValueError("a sender either has priority (lane) or yields to it (yield_to)")
        self._mailer = mailer
        self._mutex = mutex
        self._lane = lane
        self._yield_to = yield_to
        self._yield_check_seconds = yield_check_seconds
        self._last_yield_check = float("-inf")
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
            self._acquire()
        self._wait_until(self._next_start())
        self._last_start = self._clock()
        try:
            return self._mailer.send(mail)
        finally:
            self._completed.append(self._clock())
            held_since = self._held_since
            if held_since is not None and (
                self._clock() - held_since >= self._hold_seconds or self._priority_waits()
            ):
                self.release()

    def _acquire(self) -> None:
        assert self._mutex is not None
        if self._lane is not None:
            self._lane.acquire()
        while self._yield_to is not None and self._yield_to():
            self._sleep(self._yield_check_seconds)
        try:
            self._mutex.acquire()
        except BaseException:
            if self._lane is not None:
                self._lane.release()
            raise
        self._held_since = self._clock()

    def _priority_waits(self) -> bool:
        """Whether a priority sender waits (asked at most every ``yield_check_seconds``)."""
        if self._yield_to is None:
            return False
        now = self._clock()
        if now - self._last_yield_check < self._yield_check_seconds:
            return False
        self._last_yield_check = now
        return self._yield_to()

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
        try:
            self._mutex.release()
        finally:
            if self._lane is not None:
                self._lane.release()

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

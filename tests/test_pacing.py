"""The shared mail pace: spacing, hand-over between holders, and the Prefect-backed mutex."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from prefect.client.orchestration import get_client

from lifecycle.mail.backends import OutgoingMail
from lifecycle.mail.pacing import SAFETY, PacedSender, PrefectLeaseMutex, ensure_mail_limit

MAIL = OutgoingMail(to="a@example.com", subject="s", text="t", html="<p>h</p>")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class RecordingMailer:
    def __init__(self, clock: FakeClock | None = None) -> None:
        self.times: list[float] = []
        self._clock = clock or time.monotonic

    def send(self, mail: OutgoingMail) -> str:
        self.times.append(self._clock())
        return "id"


class CountingMutex:
    def __init__(self) -> None:
        self.acquired = self.released = 0

    def acquire(self) -> None:
        self.acquired += 1

    def release(self) -> None:
        self.released += 1


def test_sends_are_spaced_and_the_mutex_is_handed_over() -> None:
    clock = FakeClock()
    mailer, mutex = RecordingMailer(clock), CountingMutex()
    with PacedSender(
        mailer=mailer,
        mutex=mutex,
        rate_per_second=10,
        hold_seconds=1.0,
        clock=clock,
        sleep=clock.sleep,
    ) as sender:
        for _ in range(25):
            sender.send(MAIL)
    gaps = [b - a for a, b in zip(mailer.times, mailer.times[1:], strict=False)]
    assert min(gaps) == pytest.approx(SAFETY / 10)
    assert mutex.acquired == mutex.released == 3  # held ~1 s at a time
    # The last holder waits out its interval before releasing, so the next may send at once.
    assert clock.now == pytest.approx(mailer.times[-1] + SAFETY / 10)


def test_unpaced_sender_does_not_wait() -> None:
    clock = FakeClock()
    mailer = RecordingMailer(clock)
    sender = PacedSender(
        mailer=mailer, mutex=None, rate_per_second=0, clock=clock, sleep=clock.sleep
    )
    for _ in range(5):
        sender.send(MAIL)
    assert mailer.times == [100.0] * 5


def test_two_senders_share_the_rate_through_prefect() -> None:
    name = f"test-pace-{uuid.uuid4().hex[:8]}"
    rate = 40.0
    mailer = RecordingMailer()

    def run() -> None:
        with get_client(sync_client=True) as client:
            mutex = PrefectLeaseMutex(client=client, limit_name=name)
            with PacedSender(
                mailer=mailer, mutex=mutex, rate_per_second=rate, hold_seconds=0.3
            ) as sender:
                for _ in range(30):
                    sender.send(MAIL)

    with get_client(sync_client=True) as client:
        ensure_mail_limit(client, name)
        limit = client.read_global_concurrency_limit_by_name(name)
        assert (limit.limit, limit.slot_decay_per_second) == (1, 0.0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(run) for _ in range(2)]:
            future.result()

    times = sorted(mailer.times)
    assert len(times) == 60
    # Never more than `rate` sends in any one-second window, across both senders.
    assert max(sum(1 for t in times if start <= t < start + 1) for start in times) <= rate
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 1 / rate * 0.999


def test_missing_limit_is_an_error_not_a_silent_skip() -> None:
    with get_client(sync_client=True) as client:
        mutex = PrefectLeaseMutex(client=client, limit_name=f"absent-{uuid.uuid4().hex[:8]}")
        with pytest.raises(RuntimeError, match="does not exist"):
            mutex.acquire()

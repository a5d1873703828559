"""The shared mail pace: spacing, hand-over between holders, and the Prefect-backed mutex."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from lifecycle.clients.mail.message import OutgoingMail
from lifecycle.clients.mail.pacing import SAFETY, PacedSender
from tasks._prefect import PrefectLeaseMutex, ensure_mail_limit, mutex_client
from tests.support.http_server import Reply, ScriptedHttpServer, closed_port

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

    def close(self) -> None:
        pass


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


class TimedMailer:
    """Records (start, completion) of each send; send ``i`` takes ``durations.get(i, 0)``."""

    def __init__(self, clock: FakeClock, log: list[tuple[float, float]], **durations: float):
        self._clock, self.log = clock, log
        self._durations = {int(key.removeprefix("send")): value for key, value in durations.items()}
        self._count = 0

    def send(self, mail: OutgoingMail) -> str:
        start = self._clock()
        self._clock.sleep(self._durations.get(self._count, 0.0))
        self._count += 1
        self.log.append((start, self._clock()))
        return "id"

    def close(self) -> None:
        pass


def most_in_one_second(times: list[float]) -> int:
    return max(sum(1 for t in times if start <= t < start + 1) for start in times)


def test_a_slow_send_does_not_let_completions_bunch_up() -> None:
    """Send 0 takes 0.5 s; spacing starts alone would put 11 completions in [0.5, 1.5)."""
    clock, log = FakeClock(), list[tuple[float, float]]()
    mailer = TimedMailer(clock, log, send0=0.5)
    sender = PacedSender(
        mailer=mailer, mutex=None, rate_per_second=10, clock=clock, sleep=clock.sleep
    )
    for _ in range(30):
        sender.send(MAIL)
    assert most_in_one_second([end for _, end in log]) == 10
    assert most_in_one_second([start for start, _ in log]) == 10


def test_hand_over_keeps_every_window_within_the_rate() -> None:
    """The first holder's slow first send ends late; the second holder must not start early."""
    clock, log = FakeClock(), list[tuple[float, float]]()
    first = TimedMailer(clock, log, send0=0.5)
    second = TimedMailer(clock, log, send1=0.2)
    for mailer, count in ((first, 10), (second, 25)):
        with PacedSender(
            mailer=mailer,
            mutex=CountingMutex(),
            rate_per_second=10,
            clock=clock,
            sleep=clock.sleep,
        ) as sender:
            for _ in range(count):
                sender.send(MAIL)
    assert len(log) == 35
    assert most_in_one_second([end for _, end in log]) <= 10
    assert most_in_one_second([start for start, _ in log]) <= 10
    starts = [start for start, _ in log]
    assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) >= SAFETY / 10 - 1e-9


def test_two_senders_share_the_rate_through_prefect() -> None:
    name = f"test-pace-{uuid.uuid4().hex[:8]}"
    rate = 40.0
    mailer = RecordingMailer()

    def run() -> None:
        with mutex_client() as client:
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
    assert most_in_one_second(times) <= rate
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 1 / rate * 0.999


def test_missing_limit_is_an_error_not_a_silent_skip() -> None:
    with get_client(sync_client=True) as client:
        mutex = PrefectLeaseMutex(client=client, limit_name=f"absent-{uuid.uuid4().hex[:8]}")
        with pytest.raises(RuntimeError, match="does not exist"):
            mutex.acquire()


INCREMENT = "/api/v2/concurrency_limits/increment-with-lease"
DECREMENT = "/api/v2/concurrency_limits/decrement-with-lease"


def test_mutex_polls_again_on_busy_answers_instead_of_backing_off(
    http_server: ScriptedHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 503 or 429 is asked again after poll_seconds, never through the client's backoff."""
    lease = str(uuid.uuid4())
    http_server.reply(
        "POST",
        INCREMENT,
        Reply(503, {"detail": "database is locked"}),
        Reply(423, {"detail": "slot held"}),
        Reply(429, {"detail": "slow down"}),
        Reply(200, {"limits": [{"name": "mail", "limit": 1}], "lease_id": lease}),
    )
    http_server.reply("POST", DECREMENT, Reply(503, {"detail": "database is locked"}), Reply(200))
    sleeps: list[float] = []  # the Prefect client's backoff would sleep here for seconds
    monkeypatch.setattr(time, "sleep", sleeps.append)
    api = f"{http_server.url}/api"
    with temporary_settings({PREFECT_API_URL: api}), mutex_client() as client:
        mutex = PrefectLeaseMutex(client=client, limit_name="mail")
        mutex.acquire()
        mutex.release()

    calls = (
        len(http_server.received("POST", INCREMENT)),
        len(http_server.received("POST", DECREMENT)),
    )
    assert calls == (4, 2)
    assert sleeps == [0.02] * 4  # poll_seconds after each of the 3 + 1 busy answers


def test_mutex_fails_at_once_when_the_api_is_unreachable() -> None:
    api = f"http://127.0.0.1:{closed_port()}/api"
    with temporary_settings({PREFECT_API_URL: api}), mutex_client() as client:
        mutex = PrefectLeaseMutex(client=client, limit_name="mail")
        with pytest.raises(httpx.ConnectError):
            mutex.acquire()


# --- priority: activation mail first --------------------------------------------------------


def test_a_sender_hands_the_mutex_over_as_soon_as_priority_waits() -> None:
    clock = FakeClock()
    mutex = CountingMutex()
    waiting = {"now": False}
    sender = PacedSender(
        mailer=RecordingMailer(clock),
        mutex=mutex,
        rate_per_second=10,
        hold_seconds=60,
        yield_to=lambda: waiting["now"],
        yield_check_seconds=0.25,
        clock=clock,
        sleep=clock.sleep,
    )
    for _ in range(5):
        sender.send(MAIL)
    assert (mutex.acquired, mutex.released) == (1, 0)  # holds: nobody with priority waits
    waiting["now"] = True
    sends = 0
    while not mutex.released:
        sender.send(MAIL)
        sends += 1
    # Priority is looked at every 0.25 s: at 10 mails/s, within three sends.
    assert sends <= 3 and mutex.acquired == 1
    polls: list[float] = []
    clock_sleep = clock.sleep

    def sleep_then_clear(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 3:
            waiting["now"] = False  # the priority sender is done
        clock_sleep(seconds)

    sender._sleep = sleep_then_clear  # noqa: SLF001
    sender.send(MAIL)
    # It did not ask for the mutex while priority waited; then it did, once.
    assert polls[:3] == [0.25, 0.25, 0.25]
    assert (mutex.acquired, mutex.released) == (2, 1)


def test_a_priority_sender_holds_the_lane_around_the_mutex() -> None:
    clock = FakeClock()
    events: list[str] = []

    class Recording:
        def __init__(self, name: str) -> None:
            self.name = name

        def acquire(self) -> None:
            events.append(f"{self.name}+")

        def release(self) -> None:
            events.append(f"{self.name}-")

    with PacedSender(
        mailer=RecordingMailer(clock),
        mutex=Recording("mutex"),
        rate_per_second=10,
        hold_seconds=0.5,
        lane=Recording("lane"),
        clock=clock,
        sleep=clock.sleep,
    ) as sender:
        for _ in range(8):
            sender.send(MAIL)
    assert events[:4] == ["lane+", "mutex+", "mutex-", "lane-"]
    assert events.count("lane+") == events.count("lane-") == events.count("mutex+") >= 2


def test_sender_has_priority_or_yields_not_both() -> None:
    with pytest.raises(ValueError, match="either"):
        PacedSender(
            mailer=RecordingMailer(),
            mutex=CountingMutex(),
            rate_per_second=10,
            lane=CountingMutex(),
            yield_to=lambda: False,
        )


def test_the_priority_lane_is_seen_through_prefect() -> None:
    from tasks._prefect import ensure_priority_lane, lane_occupied

    name = f"test-lane-{uuid.uuid4().hex[:8]}"
    with mutex_client() as client:
        ensure_priority_lane(client, name)
        occupied = lane_occupied(client, name)
        assert occupied() is False
        first = PrefectLeaseMutex(client=client, limit_name=name)
        second = PrefectLeaseMutex(client=client, limit_name=name)
        first.acquire()
        second.acquire()  # many priority senders may hold the lane at once
        assert occupied() is True
        first.release()
        assert occupied() is True
        second.release()
        assert occupied() is False

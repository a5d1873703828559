"""The Prefect side of lifecycle's interfaces, and the options every batch task shares.

- :func:`batch_task`: retries only what :func:`lifecycle.errors.is_retryable` calls transient.
- :func:`report_batch`: one batch's log lines and events (one event per outcome, by pseudonym).
- :class:`PrefectLeaseMutex` and :func:`paced_mail`: the mail rate every run and worker shares,
  on a Prefect global concurrency limit (``lifecycle.clients.mail.pacing`` explains the pace).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

import httpx
from prefect import Task, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import TaskRun
from prefect.events import emit_event
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run, task_run
from prefect.states import State
from prefect.tasks import exponential_backoff
from prefect.variables import Variable

from lifecycle.clients.build import Clients
from lifecycle.clients.mail.backends import Mailer
from lifecycle.clients.mail.message import OutgoingMail
from lifecycle.clients.mail.pacing import PacedSender
from lifecycle.common.batch import LOGGED_FAILURES, BatchReport, RunSummary
from lifecycle.common.paging import Cursor, KeyRange
from lifecycle.errors import ConfigError, RunFailed, is_retryable
from lifecycle.settings import Settings, get_settings

P = ParamSpec("P")
R = TypeVar("R")

#: Batches are idempotent (claims), so a transient failure simply reruns the batch.
RETRIES = 2
RETRY_DELAYS = exponential_backoff(backoff_factor=5)


def retry_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a failed batch unless its error says retrying cannot help (bad config, say).

    A plain function on purpose: Prefect silently ignores a partial or callable object here.
    """
    try:
        state.result()
    except Exception as exc:
        return is_retryable(exc)
    return False


def batch_task(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """``@batch_task("warn-inactive-batch")``: a task with the shared retry options."""
    return task(
        name=name,
        retries=RETRIES,
        retry_delay_seconds=RETRY_DELAYS,
        retry_jitter_factor=0.5,
        retry_condition_fn=retry_transient,
        cache_policy=NO_CACHE,
    )


B = TypeVar("B", bound=BatchReport)


def report_batch(report: B, events: Mapping[str, str], *, subject_label: str = "accounts") -> B:
    """Log the batch and emit one event per outcome in ``events`` (outcome -> event name).

    One event per batch, not per item: an event per account would cost the Prefect server
    more than the work itself. The payload lists the items by pseudonym under
    ``subject_label`` ("accounts", "customers", ...).
    """
    logger = get_run_logger()
    for outcome, event in events.items():
        subjects = report.subjects.get(outcome, [])
        if subjects:
            emit_batch_event(event, {"count": len(subjects), subject_label: subjects})
    for failure in report.failures[:LOGGED_FAILURES]:
        logger.error("item %s failed at %s: %s", failure.subject[:16], failure.stage, failure.error)
    if len(report.failures) > LOGGED_FAILURES:
        logger.error("... and %d more failures", len(report.failures) - LOGGED_FAILURES)
    logger.info("batch: %s", dict(report.counts))
    return report


def emit_batch_event(event: str, payload: dict[str, Any]) -> None:
    """An event about the running task's batch (resource ``lifecycle.batch.<task run id>``)."""
    emit_event(
        event=event,
        resource={
            "prefect.resource.id": f"lifecycle.batch.{task_run.get_id()}",
            "prefect.resource.name": task_run.get_name() or "batch",
        },
        payload=payload,
    )


#: Starts a shard's next batch from where it stands (``None``: the shard is done).
SubmitBatch = Callable[[KeyRange, Cursor | None, BatchReport], PrefectFuture[BatchReport] | None]


def walk_shards(
    submit: SubmitBatch,
    shards: list[KeyRange],
    total: BatchReport,
    so_far: dict[KeyRange, BatchReport] | None = None,
) -> int:
    """Walk every shard page by page, the shards side by side; returns how many batches ran.

    A shard's next batch is submitted when its last one ends, with the shard's report so far
    (``so_far``, which walks that share a budget pass on). How many batches run at once is the
    task runner's business: threads in the flow's process by default, processes (and other
    machines) with a Dask task runner.
    """
    so_far = so_far if so_far is not None else {}
    for shard in shards:
        so_far.setdefault(shard, BatchReport())
    running: dict[PrefectFuture[BatchReport], KeyRange] = {}
    for shard in shards:
        if (future := submit(shard, None, so_far[shard])) is not None:
            running[future] = shard
    batches = 0
    while running:
        done = next(as_completed(list(running)))
        shard = running.pop(done)
        report = done.result()
        so_far[shard].merge(report)
        total.merge(report)
        batches += 1
        if (
            report.last is not None
            and (future := submit(shard, report.last, so_far[shard])) is not None
        ):
            running[future] = shard
    return batches


# --- the kill switch ---------------------------------------------------------------------------

#: A Prefect variable operators can flip in the UI to pause every deletion, like the setting.
PAUSE_VARIABLE = "lifecycle_deletions_paused"
_ON = {"true", "yes", "on", "1"}
_OFF = {"false", "no", "off", "0", ""}


def deletions_paused(settings: Settings) -> bool:
    """Whether deletions are paused: LIFECYCLE_DELETIONS_PAUSED, or the Prefect variable."""
    if settings.deletions_paused:
        return True
    value = str(Variable.get(PAUSE_VARIABLE, default=False)).strip().lower()
    if value not in _ON | _OFF:
        raise ConfigError(f"Prefect variable {PAUSE_VARIABLE} must be true or false")
    return value in _ON


@task(name="check-kill-switch", cache_policy=NO_CACHE)
def kill_switch() -> bool:
    """Whether deletions are paused, read once per run."""
    paused = deletions_paused(get_settings())
    if paused:
        get_run_logger().warning("deletions are paused (kill switch): nothing is deleted")
    return paused


# --- the shared mail rate ---------------------------------------------------------------------


def ensure_mail_limit(client: SyncPrefectClient, name: str) -> None:
    """Create (or reset to) the limit-1, no-decay global limit the pacer locks on."""
    try:
        client.upsert_global_concurrency_limit_by_name(name, limit=1, slot_decay_per_second=0.0)
    except ObjectAlreadyExists:  # a concurrent run created it between read and create
        pass


class ServerBusy(Exception):
    """The Prefect API answered 429, 502 or 503: ask again shortly."""


class _BusyIsAnAnswer(httpx.BaseTransport):
    """Turns a busy answer (429, 502, 503) into :class:`ServerBusy` at once.

    Why: the Prefect client's own retry loop sleeps 2, 4, 8 s (jittered, or the server's
    Retry-After) on those codes, and a SQLite-backed server answers 503 now and then while
    other workers poll the mail limit. Every such stall is mail not sent at the shared rate,
    so the mutex polls again after 20 ms instead. This transport is the only place that
    bypasses the client's retries, and only the mutex's client uses it.
    """

    BUSY = frozenset({429, 502, 503})

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport(retries=3)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if response.status_code in self.BUSY:
            response.close()
            raise ServerBusy(f"Prefect API answered {response.status_code}")
        return response

    def close(self) -> None:
        self._inner.close()


@contextmanager
def mutex_client() -> Iterator[SyncPrefectClient]:
    """A Prefect client for the mail mutex: busy answers raise :class:`ServerBusy`."""
    with get_client(sync_client=True, httpx_settings={"transport": _BusyIsAnAnswer()}) as client:
        yield client


@dataclass(kw_only=True)
class PrefectLeaseMutex:
    """Holds the single slot of a Prefect global concurrency limit under a lease.

    Uses the client's public lease calls. A held slot (423) or a busy server is asked again
    after ``poll_seconds``, not after the server's Retry-After (up to 30 s), which would stall
    every hand-over between senders.
    """

    client: SyncPrefectClient
    limit_name: str
    lease_seconds: float = 120.0
    poll_seconds: float = 0.02
    timeout_seconds: float = 3600.0
    release_seconds: float = 30.0
    _lease_id: UUID | None = field(default=None, init=False)

    def acquire(self) -> None:
        response = self._until_answered(
            lambda: self.client.increment_concurrency_slots_with_lease(
                names=[self.limit_name],
                slots=1,
                mode="concurrency",
                lease_duration=self.lease_seconds,
            ),
            self.timeout_seconds,
        )
        if response is None:
            raise TimeoutError(
                f"waited {self.timeout_seconds:.0f}s for mail limit {self.limit_name!r}"
            )
        answer = response.json()
        if not answer.get("limits"):
            raise ConfigError(
                f"global concurrency limit {self.limit_name!r} does not exist or is inactive; "
                "run `python -m deployments.bootstrap`"
            )
        self._lease_id = UUID(str(answer["lease_id"]))

    def release(self) -> None:
        """Give the slot back; if the server cannot be reached, the lease expires on its own."""
        if self._lease_id is None:
            return
        lease_id, self._lease_id = self._lease_id, None
        try:
            self._until_answered(
                lambda: self.client.release_concurrency_slots_with_lease(lease_id),
                self.release_seconds,
            )
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 404:  # 404: the lease already expired
                raise

    def _until_answered(
        self, call: Callable[[], httpx.Response], seconds: float
    ) -> httpx.Response | None:
        """``call()`` every ``poll_seconds`` while the slot is held (423) or the server busy;
        ``None`` after ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                return call()
            except ServerBusy:
                pass
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code != 423:
                    raise
            if time.monotonic() > deadline:
                return None
            time.sleep(self.poll_seconds)


#: Priority senders (activation mail) at once, at most: the lane never makes one of them wait.
PRIORITY_LANE_SIZE = 1000
#: How long a sender holds the mail limit before handing it over (then takes it again if it
#: still has mail). Others yield to a priority sender anyway, so it holds longer: every
#: hand-over costs a few API calls of sending time. Both stay well under the mutex's lease.
HOLD_SECONDS = 5.0
PRIORITY_HOLD_SECONDS = 60.0


def priority_lane_name(settings: Settings) -> str:
    """The global limit a priority sender holds a slot of while it wants the mail limit."""
    return f"{settings.mail_limit_name}-priority"


def ensure_priority_lane(client: SyncPrefectClient, name: str) -> None:
    """Create (or reset) the priority lane: many slots, no decay; held slots mean "waiting"."""
    try:
        client.upsert_global_concurrency_limit_by_name(
            name, limit=PRIORITY_LANE_SIZE, slot_decay_per_second=0.0
        )
    except ObjectAlreadyExists:
        pass


def lane_occupied(client: SyncPrefectClient, name: str) -> Callable[[], bool]:
    """Whether a priority sender holds the lane now (a busy server, or a lane somebody
    deleted, counts as "no": warnings are never stopped by the lane's own trouble)."""

    def occupied() -> bool:
        try:
            return client.read_global_concurrency_limit_by_name(name).active_slots > 0
        except (ServerBusy, PrefectHTTPStatusError, ObjectNotFound):
            return False

    return occupied


@contextmanager
def paced_mail(
    settings: Settings, mailer: Mailer, *, priority: bool = False
) -> Iterator[Callable[[OutgoingMail], str]]:
    """``mailer.send`` under the shared mail rate (unpaced at rate 0: local outbox only).

    ``priority`` senders (activation mail, when LIFECYCLE_ACTIVATION_MAIL__PRIORITY allows)
    hold the priority lane while they want the limit; every other sender steps aside for them
    (:class:`lifecycle.clients.mail.pacing.PacedSender`).
    """
    if settings.mail_rate_per_second <= 0:
        yield mailer.send
        return
    lane_name = priority_lane_name(settings)
    with mutex_client() as client:
        ensure_mail_limit(client, settings.mail_limit_name)
        ensure_priority_lane(client, lane_name)
        mutex = PrefectLeaseMutex(client=client, limit_name=settings.mail_limit_name)
        lane = PrefectLeaseMutex(client=client, limit_name=lane_name) if priority else None
        with PacedSender(
            mailer=mailer,
            mutex=mutex,
            rate_per_second=settings.mail_rate_per_second,
            hold_seconds=PRIORITY_HOLD_SECONDS if priority else HOLD_SECONDS,
            lane=lane,
            yield_to=None if priority else lane_occupied(client, lane_name),
        ) as sender:
            yield sender.send


def conclude(summary: RunSummary, what: str, advice: str) -> None:
    """Log the run's summary, and fail the run (:class:`RunFailed`) when items failed."""
    get_run_logger().info("summary: %s", summary.line())
    if summary.failed:
        raise RunFailed(f"{summary.failed} {what} failed ({advice}). Summary: {summary.line()}")


@contextmanager
def mail_sender(
    settings: Settings, *, dry_run: bool = False, priority: bool = False
) -> Iterator[Callable[[OutgoingMail], str]]:
    """The configured mailer's send under the shared mail rate (unpaced in a dry run, which
    sends nothing through it), with its connections closed afterwards."""
    with closing(Clients(settings)) as clients:
        if dry_run:
            yield clients.mailer.send
            return
        with paced_mail(settings, clients.mailer, priority=priority) as send:
            yield send


def publish_summary(process: str, title: str, summary: RunSummary) -> None:
    """The run's summary as a table artifact (outcome, count) in the Prefect UI.

    Each run has a key of its own, so runs never overwrite each other's summary: the process,
    dry run or not, the instant evaluated at, and the flow run.
    """
    kind = "dry-run" if summary.dry_run else "run"
    run = (flow_run.get_id() or "local")[:8]
    key = f"{process}-{kind}-{summary.as_of:%Y%m%d-%H%M%S}-{run}"
    create_table_artifact(key=key, table=summary.rows(), description=f"{title}: {summary.line()}")


def publish_table(key: str, description: str, rows: list[dict[str, Any]]) -> None:
    """Any table (a list of rows with the same keys) as an artifact in the Prefect UI."""
    create_table_artifact(key=key, table=rows, description=description)

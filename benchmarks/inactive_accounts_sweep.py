"""Benchmark: the ``inactive-accounts`` flow against a port of the source post's full scan.

Run: ``.venv/bin/python benchmarks/inactive_accounts_sweep.py [--sizes 1000000,100000]``

For each size a throwaway PostgreSQL database is migrated and bulk-loaded with COPY. The
actionable users are a fixed absolute number whatever the size: 10,000 due a warning, 5,000
due deletion and 2,000 paying-but-inactive users that must be left alone; everyone else
visited in the last 30 days. For the first size, a copy of the data (``CREATE DATABASE ...
TEMPLATE``, plus a copy of the storage folder) is swept by a sequential port of the source's
``deleteInactiveAccounts`` Lambda, for comparison. Our flow runs against Prefect's ephemeral
API, started by a warm-up flow first so that server start-up is not timed.

Targets (PASS/FAIL lines, exit status 1 when one is missed):
  * our flow uses at most one Prefect task per 500 actionable users;
  * our flow on the first size takes at most 1.5 times as long as on the second size;
  * both sweeps warn exactly 10,000 users and delete exactly 5,000.

The headline figure is our wall time divided by the floor: the work no design can avoid,
timed in the same run on the same disk (rendering and writing the 10,000 warning .eml files,
and deleting the 10,000 files of the 5,000 users due deletion). The ratio to the port is
printed as context. (A target of 20x over the port cannot be met here: the port's time
divided by the floor alone is under 20x, so even a flow that did nothing but the floor's work
would miss it.)

Environment: ``LIFECYCLE_BENCH_POSTGRES_URL`` is the admin URL used to create and drop the
databases (default ``postgresql://postgres@127.0.0.1:5432/postgres``). Unless ``PREFECT_API_URL``
or ``PREFECT_HOME`` is already set, Prefect keeps its ephemeral server in a temporary home.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import io
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from _common import Postgres, Verdicts  # benchmarks/_common.py, next to this script
from psycopg import sql

if TYPE_CHECKING:  # lifecycle is imported late, once the environment is set
    from lifecycle.clients.mail.backends import OutboxMailer
    from lifecycle.processes.inactive_accounts.warning_mail import WarningContext

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# Absolute counts: they stay fixed when the table size changes.
WARN_DUE = 10_000
DELETE_DUE = 5_000
PAYING_INACTIVE = 2_000
ACTIONABLE = WARN_DUE + DELETE_DUE

FEATURE_SHARE = 0.02  # features proposed by ~2% of users
FEATURES_BY_DELETABLE = 1_000  # of which this many by users due deletion
SCOREBOARD_USERS = 2_500  # users on a scoreboard (1-3 periods each)
SCOREBOARD_DELETABLE = 500  # of which this many are due deletion
PERIODS = ("week", "month", "year")
FILES_PER_DELETABLE = 2

MAX_DELETIONS = 10_000
TARGET_USERS_PER_TASK = 500
TARGET_SIZE_RATIO = 1.5

# Policy of the flow's defaults and of the source (60 days to a warning, 30 more to deletion).
WARN_AFTER = timedelta(days=60)
GRACE = timedelta(days=30)

USER_COLUMNS = (
    "id",
    "email",
    "name",
    "created_at",
    "last_visit_at",
    "free_trial_ends_at",
    "lifetime_deal",
    "subscription_status",
    "subscription_ends_at",
    "deletion_warning_sent_at",
)
NULL = "\\N"

ACTIVE, WARN, DELETE, PAYING = range(4)


# --------------------------------------------------------------------------- data set


@dataclass
class Dataset:
    """What was loaded, so that results can be checked."""

    size: int
    loaded_at: datetime
    deletable_ids: list[str] = field(default_factory=list)
    features: int = 0
    scoreboard_entries: int = 0
    files: int = 0


class Timestamps:
    """ISO timestamps ``days`` before ``now``, as PostgreSQL's COPY text format reads them."""

    def __init__(self, now: datetime) -> None:
        self._now = now.timestamp()

    def ago(self, days: float) -> str:
        return datetime.fromtimestamp(self._now - days * 86_400, UTC).isoformat()

    def ahead(self, days: float) -> str:
        return self.ago(-days)


def _user_line(index: int, user_id: str, kind: int, ts: Timestamps, rng: random.Random) -> str:
    """One tab-separated users row of the given kind."""
    trial: str = NULL
    lifetime = "f"
    status = "none"
    ends: str = NULL
    warned: str = NULL
    if kind == WARN:  # non-paying, last visit 61-200 days ago, never warned
        visit_days = rng.uniform(61, 200)
        roll = rng.random()
        if roll < 0.3:
            trial = ts.ago(visit_days - rng.uniform(0, 30))  # trial ended long ago
        elif roll < 0.45:
            status, ends = rng.choice(("canceled", "expired")), ts.ago(rng.uniform(61, 120))
    elif kind == DELETE:  # warned 31-60 days ago, no visit since, last visit >= 90 days ago
        warned_days = rng.uniform(31, 60)
        warned = ts.ago(warned_days)
        visit_days = warned_days + rng.uniform(60, 120)
        if rng.random() < 0.3:
            trial = ts.ago(visit_days + rng.uniform(1, 30))
    elif kind == PAYING:  # subscribed but gone quiet: never touched
        visit_days = rng.uniform(100, 400)
        status = "active"
    else:  # visited in the last 30 days, in every commercial state
        visit_days = rng.uniform(0, 30)
        roll = rng.random()
        if roll < 0.10:
            status = "active"
        elif roll < 0.15:
            status, trial = "trialing", ts.ahead(rng.uniform(1, 14))
        elif roll < 0.17:
            lifetime = "t"
        elif roll < 0.20:
            status, ends = "canceled", ts.ahead(rng.uniform(-30, 30))
        elif roll < 0.22:
            status = "past_due"
        elif roll < 0.25:  # warned once, came back since: the warning no longer counts
            warned = ts.ago(visit_days + rng.uniform(1, 40))
    created = ts.ago(visit_days + rng.uniform(0, 700))
    return "\t".join(
        (
            user_id,
            f"user{index}@example.com",
            f"User {index}",
            created,
            ts.ago(visit_days),
            trial,
            lifetime,
            status,
            ends,
            warned,
        )
    )


def _chunks(lines: Iterator[str], size: int = 50_000) -> Iterator[bytes]:
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield ("\n".join(batch) + "\n").encode()
            batch = []
    if batch:
        yield ("\n".join(batch) + "\n").encode()


def _copy(
    conn: psycopg.Connection[Any], table: str, columns: tuple[str, ...], lines: Iterator[str]
) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        for chunk in _chunks(lines):
            copy.write(chunk)


def load_dataset(conninfo: str, storage_root: Path, *, size: int, seed: int) -> Dataset:
    """Bulk-load ``size`` users (plus features and scoreboard entries) and the deletable files."""
    fixed = WARN_DUE + DELETE_DUE + PAYING_INACTIVE
    if size < fixed * 2:
        raise SystemExit(f"--users must be at least {fixed * 2}")
    rng = random.Random(seed)
    now = datetime.now(UTC)
    ts = Timestamps(now)
    kinds = [WARN] * WARN_DUE + [DELETE] * DELETE_DUE + [PAYING] * PAYING_INACTIVE
    kinds += [ACTIVE] * (size - len(kinds))
    rng.shuffle(kinds)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(size)]
    data = Dataset(size=size, loaded_at=now)
    data.deletable_ids = [
        user_id for user_id, kind in zip(ids, kinds, strict=True) if kind == DELETE
    ]

    features: list[str | None] = [
        rng.choice(data.deletable_ids) for _ in range(FEATURES_BY_DELETABLE)
    ]
    features += [
        rng.choice(ids) if rng.random() < 0.9 else None
        for _ in range(round(size * FEATURE_SHARE) - FEATURES_BY_DELETABLE)
    ]
    rng.shuffle(features)
    board_users = rng.sample(data.deletable_ids, SCOREBOARD_DELETABLE)
    board_users += rng.sample(ids, SCOREBOARD_USERS - SCOREBOARD_DELETABLE)
    board = [
        (period, user_id)
        for user_id in dict.fromkeys(board_users)
        for period in rng.sample(PERIODS, rng.randint(1, len(PERIODS)))
    ]
    data.features, data.scoreboard_entries = len(features), len(board)

    with psycopg.connect(conninfo) as conn:
        _copy(
            conn,
            "users",
            USER_COLUMNS,
            (
                _user_line(index, user_id, kind, ts, rng)
                for index, (user_id, kind) in enumerate(zip(ids, kinds, strict=True))
            ),
        )
        _copy(
            conn,
            "features",
            ("title", "proposed_by"),
            (f"Feature {i}\t{by or NULL}" for i, by in enumerate(features)),
        )
        _copy(
            conn,
            "scoreboard_entries",
            ("period", "user_id", "score"),
            (f"{period}\t{user_id}\t{rng.randint(1, 5000)}" for period, user_id in board),
        )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # a production table has statistics and a visibility map

    for user_id in data.deletable_ids:
        folder = storage_root / "users" / user_id
        folder.mkdir(parents=True)
        (folder / "avatar.png").write_bytes(b"\x89PNG fake avatar")
        (folder / "notes.md").write_bytes(b"# notes\n")
    data.files = len(data.deletable_ids) * FILES_PER_DELETABLE
    return data


# --------------------------------------------------------------------------- databases


# --------------------------------------------------------------------------- the port


@dataclass
class PortResult:
    seconds: float
    warned: int = 0
    deleted: int = 0
    errors: int = 0
    phases: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def breakdown(self) -> str:
        return ", ".join(f"{name} {secs:.1f} s" for name, secs in self.phases.items())


def warning_outbox(outbox: Path) -> tuple[OutboxMailer, WarningContext]:
    """The outbox and warning context the port and the mail floor write with (the policy's)."""
    from lifecycle.clients.mail.backends import OutboxMailer
    from lifecycle.processes.inactive_accounts.warning_mail import WarningContext
    from lifecycle.settings import get_settings

    settings = get_settings()
    context = WarningContext(
        product_name=settings.product_name,
        app_url=settings.app_url,
        inactive_days=WARN_AFTER.days,
        grace_days=GRACE.days,
    )
    return OutboxMailer(directory=outbox, sender=settings.sender), context


def run_port(conninfo: str, storage_root: Path, outbox: Path) -> PortResult:
    """The source's ``deleteInactiveAccounts``, statement for statement, run sequentially.

    Differences from the TypeScript: it talks to a local PostgreSQL through plain psycopg, with
    no network round trip per request, and mail goes to the local outbox without the source's
    14/s rate limiter (both in the port's favour); and it runs sequentially on one connection,
    where the source's ``Promise.all`` overlaps its requests (against it).
    """
    from lifecycle.clients.storage import LocalStorage
    from lifecycle.processes.inactive_accounts.rules import ACTIVE_SUBSCRIPTION_STATUSES
    from lifecycle.processes.inactive_accounts.warning_mail import inactivity_warning

    mailer, context = warning_outbox(outbox)
    storage = LocalStorage(root=storage_root)
    result = PortResult(seconds=0.0)
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:  # one request = one write, as DynamoDB

        def delete_user(user_id: str) -> None:
            # The source deletes the user row first, then the folder, then the references.
            # Our schema's foreign keys refuse a users row that is still referenced, so the
            # references go first here; otherwise it does the same work, in the same way.
            for feature_id, proposed_by in conn.execute("SELECT id, proposed_by FROM features"):
                if proposed_by == user_id:
                    conn.execute(
                        "UPDATE features SET proposed_by = NULL WHERE id = %s", (feature_id,)
                    )
            for period in PERIODS:
                entries = conn.execute(
                    "SELECT id, user_id FROM scoreboard_entries WHERE period = %s", (period,)
                ).fetchall()
                if any(entry_user == user_id for _, entry_user in entries):
                    conn.execute(
                        "DELETE FROM scoreboard_entries WHERE period = %s AND user_id = %s",
                        (period, user_id),
                    )
            conn.execute("DELETE FROM users WHERE id = %s", (user_id,))
            storage.delete_prefix(f"users/{user_id}/")

        # getAllUsers([...]): every user, the needed columns only.
        mark = time.perf_counter()
        everyone = conn.execute(
            "SELECT id, email, name, deletion_warning_sent_at, last_visit_at, lifetime_deal,"
            " subscription_status, subscription_ends_at, free_trial_ends_at FROM users"
        ).fetchall()
        now = datetime.now(UTC)
        result.phases["scan"] += time.perf_counter() - mark
        for user_id, email, name, warned, last_visit, lifetime, status, ends, trial in everyone:
            mark = time.perf_counter()
            try:
                if trial is not None and trial > now:
                    continue
                if lifetime:
                    continue
                # isActiveSubscription: a paying status, or paid time still running.
                if status in ACTIVE_SUBSCRIPTION_STATUSES or (ends is not None and ends > now):
                    continue
                if warned is not None and last_visit < warned:
                    if warned + GRACE < now:
                        delete_user(user_id)
                        result.deleted += 1
                        result.phases["delete"] += time.perf_counter() - mark
                elif now - last_visit > WARN_AFTER:
                    mailer.send(
                        inactivity_warning(
                            to=email, name=name, context=context, sent_at=datetime.now(UTC)
                        )
                    )
                    conn.execute(
                        "UPDATE users SET deletion_warning_sent_at = %s WHERE id = %s",
                        (now, user_id),
                    )
                    result.warned += 1
                    result.phases["warn"] += time.perf_counter() - mark
            except Exception as exc:  # reportError: log and go on with the next user
                result.errors += 1
                print(f"port: user failed: {type(exc).__name__}", file=sys.stderr)
    result.seconds = time.perf_counter() - started
    result.phases["decide (rest)"] = result.seconds - sum(result.phases.values())
    return result


@dataclass
class Floor:
    """The work every sweep must do, timed alone."""

    mail: float  # render and write WARN_DUE warnings
    files: float  # delete the FILES_PER_DELETABLE files of DELETE_DUE users, folder by folder

    @property
    def seconds(self) -> float:
        return self.mail + self.files


def measure_floor(root: Path) -> Floor:
    """Time the unavoidable work on the same disk: the mails, then the users' files."""
    from lifecycle.clients.storage import LocalStorage
    from lifecycle.processes.inactive_accounts.warning_mail import inactivity_warning

    mailer, context = warning_outbox(root / "outbox")
    started = time.perf_counter()
    for index in range(WARN_DUE):
        mailer.send(
            inactivity_warning(
                to=f"user{index}@example.com", name="Jo", context=context, sent_at=datetime.now(UTC)
            )
        )
    mail = time.perf_counter() - started

    storage = LocalStorage(root=root / "storage")
    folders = [f"users/{uuid.uuid4()}/" for _ in range(DELETE_DUE)]
    for folder in folders:  # set-up, not timed
        for index in range(FILES_PER_DELETABLE):
            storage.put(f"{folder}file-{index}", b"x" * 64)
    started = time.perf_counter()
    for folder in folders:
        storage.delete_prefix(folder)
    return Floor(mail=mail, files=time.perf_counter() - started)


# --------------------------------------------------------------------------- our flow


@dataclass
class FlowResult:
    seconds: float
    state: str
    tasks: int
    counts: dict[str, int]
    task_seconds: dict[str, tuple[int, float]]  # task name -> (runs, seconds running)

    def breakdown(self) -> str:
        parts = [f"{name} x{n} {secs:.1f} s" for name, (n, secs) in self.task_seconds.items()]
        outside = self.seconds - sum(secs for _, secs in self.task_seconds.values())
        return ", ".join([*parts, f"outside tasks {outside:.1f} s"])


def configure_environment(db_url: str, storage_root: Path, outbox: Path, data_dir: Path) -> None:
    """Point the flow's settings at this database, storage and outbox, with mail unpaced."""
    os.environ.update(
        {
            "LIFECYCLE_DATABASE_URL": db_url,
            "LIFECYCLE_DATA_DIR": str(data_dir),
            "LIFECYCLE_STORAGE_URL": storage_root.resolve().as_uri(),
            "LIFECYCLE_OUTBOX_DIR": str(outbox),
            "LIFECYCLE_MAIL_BACKEND": "outbox",
            "LIFECYCLE_MAIL_RATE_PER_SECOND": "0",  # unpaced: the port has no limiter either
            "LIFECYCLE_MAIL_LIMIT_NAME": "bench-mail",
        }
    )


def warm_up_prefect() -> float:
    """Start the ephemeral API and run one flow with one task, so neither is timed later."""
    from prefect import flow, task

    @task
    def noop() -> int:
        return 1

    @flow(name="bench-warm-up")
    def warm_up() -> int:
        return noop()

    started = time.perf_counter()
    warm_up()
    return time.perf_counter() - started


def task_runs(flow_run_id: uuid.UUID) -> list[Any]:
    """Every task run of the flow run, read through the API in pages."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    page, runs = 200, list[Any]()
    with get_client(sync_client=True) as client:
        while True:
            batch = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                limit=page,
                offset=len(runs),
            )
            runs.extend(batch)
            if len(batch) < page:
                return runs


def seconds_per_task(runs: list[Any]) -> dict[str, tuple[int, float]]:
    totals: dict[str, tuple[int, float]] = {}
    for run in runs:
        name = run.name.rsplit("-", 1)[0]  # "warn-inactive-batch-3aa" -> "warn-inactive-batch"
        n, secs = totals.get(name, (0, 0.0))
        totals[name] = (n + 1, secs + run.total_run_time.total_seconds())
    return totals


def run_our_flow(profile_to: Path | None) -> FlowResult:
    from flows.inactive_accounts import inactive_accounts
    from lifecycle.processes.inactive_accounts.steps import SweepSummary

    def call() -> Any:
        return inactive_accounts(max_deletions=MAX_DELETIONS, return_state=True)

    profiler = cProfile.Profile() if profile_to else None
    started = time.perf_counter()
    state = profiler.runcall(call) if profiler else call()
    seconds = time.perf_counter() - started
    if profiler and profile_to:
        profiler.dump_stats(profile_to)
    summary = state.result(raise_on_failure=False)
    counts = summary.counts if isinstance(summary, SweepSummary) else {}
    if not isinstance(summary, SweepSummary):
        print(f"our flow ended {state.type.value}: {summary!r}")
    flow_run_id = state.state_details.flow_run_id
    runs = task_runs(flow_run_id) if flow_run_id else []
    return FlowResult(
        seconds=seconds,
        state=state.type.value,
        tasks=len(runs),
        counts=dict(counts),
        task_seconds=seconds_per_task(runs),
    )


# --------------------------------------------------------------------------- checks


@dataclass
class Outcome:
    users_left: int
    warned: int
    deleted: int
    files_left: int
    mails: int


def outcome(
    conninfo: str, data: Dataset, since: datetime, storage_root: Path, outbox: Path
) -> Outcome:
    with psycopg.connect(conninfo) as conn:
        left = conn.execute("SELECT count(*) FROM users").fetchone()
        warned = conn.execute(
            "SELECT count(*) FROM users WHERE deletion_warning_sent_at >= %s", (since,)
        ).fetchone()
    users_left = int(left[0]) if left else -1
    files_left = sum(
        len(files)
        for user_id in data.deletable_ids
        for _, _, files in os.walk(storage_root / "users" / user_id)
    )
    return Outcome(
        users_left=users_left,
        warned=int(warned[0]) if warned else -1,
        deleted=data.size - users_left,
        files_left=files_left,
        mails=sum(1 for _ in outbox.glob("*.eml")),
    )


def check_outcome(verdicts: Verdicts, who: str, result: Outcome) -> None:
    verdicts.check(
        f"{who} correctness",
        result.warned == WARN_DUE
        and result.deleted == DELETE_DUE
        and result.mails == WARN_DUE
        and result.files_left == 0,
        f"warned {result.warned:,} (want {WARN_DUE:,}), deleted {result.deleted:,} "
        f"(want {DELETE_DUE:,}), mails {result.mails:,}, files left {result.files_left}",
    )


# --------------------------------------------------------------------------- main


class Stopwatch:
    """Prints how long a set-up step took."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        print(f"  {self._label}: {time.perf_counter() - self._started:.1f} s")


@dataclass
class SizeRun:
    size: int
    ours: FlowResult
    port: PortResult | None


def bench_size(
    pg: Postgres,
    workdir: Path,
    verdicts: Verdicts,
    *,
    size: int,
    with_port: bool,
    seed: int,
    profile: Path | None,
    warm: bool,
) -> SizeRun:
    """Load one table size, optionally sweep a copy with the port, then sweep with our flow."""
    from lifecycle.db.engine import get_engine
    from lifecycle.db.migrate import upgrade

    name = f"lifecycle_bench_{os.getpid()}_{size}"
    root = workdir / str(size)
    storage, outbox = root / "storage", root / "outbox"
    print(f"\n=== {size:,} users ===")
    pg.create(name)
    with Stopwatch("migrate"):
        upgrade(pg.sqlalchemy_url(name))
        get_engine(pg.sqlalchemy_url(name)).dispose()  # a template database must be unused
    with Stopwatch("COPY load + VACUUM ANALYZE + files"):
        data = load_dataset(pg.conninfo(name), storage, size=size, seed=seed)
    print(
        f"  users {data.size:,}, features {data.features:,}, scoreboard entries "
        f"{data.scoreboard_entries:,}, files {data.files:,}"
    )
    configure_environment(pg.sqlalchemy_url(name), storage, outbox, root / "data")

    port: PortResult | None = None
    port_outcome: Outcome | None = None
    if with_port:
        port_name, port_root = f"{name}_port", root / "port"
        with Stopwatch("copy database and storage for the port"):
            pg.create(port_name, template=name)
            shutil.copytree(storage, port_root / "storage")
        print("  running the port of the source (sequential full scan) ...")
        port = run_port(pg.conninfo(port_name), port_root / "storage", port_root / "outbox")
        port_outcome = outcome(
            pg.conninfo(port_name),
            data,
            data.loaded_at,
            port_root / "storage",
            port_root / "outbox",
        )

    floor = measure_floor(root / "floor")
    if warm:
        print(f"  Prefect warm-up flow (not timed): {warm_up_prefect():.1f} s")
    started_at = datetime.now(UTC)
    print("  running our flow ...")
    ours = run_our_flow(profile / f"ours-{size}.prof" if profile else None)
    ours_outcome = outcome(pg.conninfo(name), data, started_at, storage, outbox)

    print(f"users in table:         {data.size:>10,}")
    print(
        f"actionable users:       {ACTIONABLE:>10,}  (warn {WARN_DUE:,} + delete "
        f"{DELETE_DUE:,}; {PAYING_INACTIVE:,} paying-but-inactive left alone)"
    )
    print(
        f"our flow:               {ours.seconds:>10.1f} s  "
        f"({data.size / ours.seconds:,.0f} users/s), state {ours.state}, counts {ours.counts}"
    )
    print(f"  where it went:        {ours.breakdown()}")
    if port is not None:
        print(
            f"port of the source:     {port.seconds:>10.1f} s  "
            f"({data.size / port.seconds:,.0f} users/s), errors {port.errors}"
        )
        print(f"  where it went:        {port.breakdown()}")
    print(
        f"Prefect task runs:      {ours.tasks:>10,}  "
        f"({ACTIONABLE / max(ours.tasks, 1):,.0f} actionable users per task)"
    )
    note = "  (our run was under cProfile: not comparable)" if profile else ""
    print(
        f"floor:                  {floor.seconds:>10.1f} s  (render + write {WARN_DUE:,} .eml "
        f"files {floor.mail:.1f} s, delete {DELETE_DUE * FILES_PER_DELETABLE:,} files "
        f"{floor.files:.1f} s: the work no design avoids)"
    )
    print(f"ours / floor:           {ours.seconds / floor.seconds:>10.1f}x{note}")
    if port is not None:
        print(
            f"port / ours:            {port.seconds / ours.seconds:>10.1f}x  (context; the port "
            f"at most {port.seconds / floor.seconds:.1f}x, were ours at the floor alone)"
        )
    limit = ACTIONABLE // TARGET_USERS_PER_TASK
    verdicts.check(
        f"task count ({size:,} users)",
        0 < ours.tasks <= limit,
        f"{ours.tasks} tasks (target <= {limit} = actionable/{TARGET_USERS_PER_TASK})",
    )
    check_outcome(verdicts, f"our flow ({size:,} users)", ours_outcome)
    if port_outcome is not None:
        check_outcome(verdicts, "port", port_outcome)
    return SizeRun(size=size, ours=ours, port=port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Our inactive-accounts flow vs the source.")
    parser.add_argument(
        "--sizes", default="1000000,100000", help="table sizes; the port runs on the first"
    )
    parser.add_argument("--users", type=int, help="run this single size (overrides --sizes)")
    parser.add_argument("--skip-port", action="store_true", help="time our flow only")
    parser.add_argument(
        "--profile", type=Path, help="directory for cProfile stats of our runs (slows them)"
    )
    parser.add_argument("--seed", type=int, default=20240826)
    args = parser.parse_args(argv)
    sizes = [args.users] if args.users else [int(s) for s in args.sizes.split(",") if s.strip()]

    if "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="bench-prefect-home-")
        os.environ["PREFECT_HOME"] = home
        # Registered before Prefect is imported, so it runs after Prefect's own exit handlers
        # have stopped the ephemeral server.
        atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    pg = Postgres(os.environ.get("LIFECYCLE_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL))
    workdir = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    verdicts = Verdicts()
    runs: list[SizeRun] = []
    try:
        for position, size in enumerate(sizes):
            runs.append(
                bench_size(
                    pg,
                    workdir,
                    verdicts,
                    size=size,
                    seed=args.seed,
                    with_port=position == 0 and not args.skip_port,
                    profile=args.profile,
                    warm=position == 0,
                )
            )
            pg.drop_all()  # free the disk before the next size
    finally:
        pg.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    if len(runs) >= 2:
        big, small = runs[0], runs[1]
        size_ratio = big.ours.seconds / small.ours.seconds
        print(
            f"\nour flow, {big.size:,} vs {small.size:,} users: {big.ours.seconds:.1f} s / "
            f"{small.ours.seconds:.1f} s = {size_ratio:.2f}x"
        )
        verdicts.check(
            "time follows actionable users, not table size",
            size_ratio <= TARGET_SIZE_RATIO,
            f"{size_ratio:.2f}x (target <= {TARGET_SIZE_RATIO}x)",
        )
    if args.profile and runs:
        stats = args.profile / f"ours-{runs[0].size}.prof"
        out = io.StringIO()
        pstats.Stats(str(stats), stream=out).sort_stats("cumulative").print_stats(40)
        print(f"\ncProfile of our first run (cumulative, top 40; full stats: {stats})")
        print(out.getvalue())
    print("\nall targets met" if not verdicts.failed else f"\nmissed: {', '.join(verdicts.failed)}")
    return 1 if verdicts.failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the big sweeps on one worker process and on two (Dask), in the same run.

Run: ``.venv/bin/python benchmarks/scale_out.py [--users 1000000] [--rows 2000000]``

Two cases, each measured on fresh copies of the same data (``CREATE DATABASE ... TEMPLATE``):

* the ``inactive-accounts`` sweep of ``--users`` users (10,000 due a warning, 5,000 due
  deletion, as in ``inactive_accounts_sweep.py``), mail unpaced to the outbox (the shared
  14/s limit is the same for any number of workers, so it would hide the speed-up);
* the ``ttl-purge`` of ``--rows`` attributes, half of them expired (as in ``ttl_purge.py``).

Each runs as one flow with one shard in one process (threads), then as one flow with two
shards on a Dask task runner with two single-threaded worker processes
(``flows/scale_out.py``). Printed: wall times, the speed-up, and where the CPU went (seconds
used by PostgreSQL's processes and by ours, against the machine's cores), which says what
bounds the speed-up. Checked (PASS/FAIL, exit status 1 on a miss): exactly 10,000 mails to
10,000 different users (0 duplicates), exactly 5,000 deletions with one receipt each (0 double
deletions), every expired row purged once and no other row touched. The speed-up itself is
reported, not asserted: on a 2-core machine the database shares the cores with the workers.

A Prefect server backed by PostgreSQL is started for the run (Dask's worker processes report
to it), unless ``PREFECT_API_URL`` is set. ``LIFECYCLE_BENCH_POSTGRES_URL`` is the admin URL
for the throwaway databases (default ``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import argparse
import email
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
from _common import Postgres, Verdicts, postgres_prefect_server  # benchmarks/_common.py
from inactive_accounts_sweep import (
    DELETE_DUE,
    WARN_DUE,
    configure_environment,
    load_dataset,
    outcome,
)
from ttl_purge import build_dataset, counts

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
WORKERS = 2


@dataclass
class Cpu:
    """CPU seconds used during a measurement: by PostgreSQL, the Prefect server, the flow."""

    database: float
    server: float
    flow: float
    wall: float

    def line(self) -> str:
        cores = psutil.cpu_count() or 1
        used = self.database + self.server + self.flow
        return (
            f"CPU s: PostgreSQL {self.database:.1f}, Prefect server {self.server:.1f}, flow "
            f"processes {self.flow:.1f}; {used / self.wall:.2f} of {cores} cores"
        )


def _cpu_of(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass
    return total


def _groups() -> tuple[list[psutil.Process], list[psutil.Process], list[psutil.Process]]:
    """(PostgreSQL's processes, the Prefect server's, this flow's: us and our Dask workers)."""
    database = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]
    me = psutil.Process()
    server = [p for p in me.children() if "server" in " ".join(p.cmdline()[1:3])]
    server += [child for p in server for child in p.children(recursive=True)]
    flow = [me, *(p for p in me.children(recursive=True) if p not in server)]
    return database, server, flow


@contextmanager
def measured(into: list[Cpu]) -> Iterator[None]:
    """Adds the CPU each group used while the block runs (Dask workers that ended inside it
    count through their parent's children times)."""
    before = [_cpu_of(group) for group in _groups()]
    started = time.time()
    yield
    database, server, flow = (
        _cpu_of(group) - was for group, was in zip(_groups(), before, strict=True)
    )
    into.append(Cpu(database=database, server=server, flow=flow, wall=time.time() - started))


@dataclass
class Result:
    label: str
    seconds: float
    cpu: Cpu
    detail: str


def show(case: str, results: list[Result]) -> None:
    one, two = results
    print(f"\n--- {case}")
    for result in results:
        print(f"{result.label:<44} {result.seconds:>8.1f} s   {result.detail}")
        print(f"{'':<44} {result.cpu.line()}")
    print(f"speed-up with {WORKERS} worker processes: {one.seconds / two.seconds:.2f}x")


# --------------------------------------------------------------------------- inactive accounts


def mail_recipients(outbox: Path) -> list[str]:
    return [str(email.message_from_bytes(path.read_bytes())["To"]) for path in outbox.glob("*.eml")]


def receipts(conninfo: str) -> tuple[int, int]:
    """(receipts, distinct deleted subjects)."""
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT subject_hash) FROM deletion_receipts"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def bench_inactive_accounts(pg: Postgres, workdir: Path, verdicts: Verdicts, users: int) -> None:
    from flows.inactive_accounts import inactive_accounts
    from flows.scale_out import inactive_accounts_on_dask
    from lifecycle.db.engine import get_engine
    from lifecycle.db.migrate import upgrade

    template = pg.create(f"bench_scale_users_{os.getpid()}")
    upgrade(pg.sqlalchemy_url(template))
    get_engine(pg.sqlalchemy_url(template)).dispose()  # a template database must be unused
    started = time.perf_counter()
    data = load_dataset(pg.conninfo(template), workdir / "storage", size=users, seed=20261127)
    print(
        f"loaded {users:,} users and {data.files:,} files in {time.perf_counter() - started:.0f} s"
    )

    runs: list[tuple[str, Callable[..., Any], int]] = [
        ("1 process (threads), 1 shard", inactive_accounts, 1),
        (f"Dask, {WORKERS} worker processes, {WORKERS} shards", inactive_accounts_on_dask, WORKERS),
    ]
    results = []
    for position, (label, sweep, shards) in enumerate(runs):
        name = pg.create(f"{template}_{position}", template=template)
        root = workdir / f"run-{position}"
        shutil.copytree(workdir / "storage", root / "storage")
        configure_environment(
            pg.sqlalchemy_url(name), root / "storage", root / "outbox", root / "data"
        )
        since, cpu = datetime.now(UTC), list[Cpu]()
        with measured(cpu):
            began = time.perf_counter()
            state = sweep(max_deletions=DELETE_DUE * 2, shards=shards, return_state=True)
            seconds = time.perf_counter() - began
        summary = state.result(raise_on_failure=False)
        found = outcome(pg.conninfo(name), data, since, root / "storage", root / "outbox")
        recipients = mail_recipients(root / "outbox")
        duplicates = len(recipients) - len(set(recipients))
        receipt_count, deleted_subjects = receipts(pg.conninfo(name))
        results.append(
            Result(
                label,
                seconds,
                cpu[0],
                f"state {state.type.value}, {getattr(summary, 'counts', summary)}",
            )
        )
        verdicts.check(
            f"inactive accounts, {label}: every user acted on once",
            state.is_completed()
            and found.warned == WARN_DUE
            and len(recipients) == WARN_DUE
            and duplicates == 0
            and found.deleted == DELETE_DUE
            and receipt_count == deleted_subjects == DELETE_DUE
            and found.files_left == 0,
            f"mails {len(recipients):,} to {len(set(recipients)):,} users ({duplicates} "
            f"duplicates), warned {found.warned:,}, deleted {found.deleted:,} with "
            f"{receipt_count:,} receipts for {deleted_subjects:,} users, files left "
            f"{found.files_left}",
        )
        get_engine(pg.sqlalchemy_url(name)).dispose()
        pg.drop(name)
    show(f"inactive-accounts sweep, {users:,} users, mail unpaced", results)


# --------------------------------------------------------------------------- TTL purge


def bench_ttl_purge(pg: Postgres, verdicts: Verdicts, rows: int) -> None:
    from flows.scale_out import ttl_purge_on_dask
    from flows.ttl_purge import ttl_purge
    from lifecycle.db.engine import get_engine

    template = f"bench_scale_ttl_{os.getpid()}"
    seconds = build_dataset(pg, template, rows=rows, per_mille=500, now=int(time.time()))
    print(f"\nloaded {rows:,} attributes, half expired, in {seconds:.0f} s")
    runs: list[tuple[str, Callable[..., Any], int]] = [
        ("1 process (threads), 1 shard", ttl_purge, 1),
        (f"Dask, {WORKERS} worker processes, {WORKERS} shards", ttl_purge_on_dask, WORKERS),
    ]
    results = []
    for position, (label, purge, shards) in enumerate(runs):
        name = pg.create(f"{template}_{position}", template=template)
        os.environ["LIFECYCLE_DATABASE_URL"] = pg.sqlalchemy_url(name)
        expired_before, fresh_before = counts(pg.conninfo(name))
        cpu = list[Cpu]()
        with measured(cpu):
            began = time.perf_counter()
            summary = purge(
                targets=["attributes"], check_dynamodb=False, vacuum=False, shards=shards
            )
            seconds = time.perf_counter() - began
        (target,) = summary.targets
        expired_after, fresh_after = counts(pg.conninfo(name))
        window = (
            (target.last_batch_at - target.first_batch_at).total_seconds()
            if target.first_batch_at and target.last_batch_at
            else 0.0
        )
        results.append(
            Result(label, seconds, cpu[0], f"{target.batches} batches over {window:.1f} s")
        )
        verdicts.check(
            f"TTL purge, {label}: each expired row purged once, no other row",
            target.purged == expired_before - expired_after
            and expired_after == 0
            and fresh_after == fresh_before,
            f"reported {target.purged:,} purged, {expired_before - expired_after:,} rows went "
            f"({expired_after} expired left), rows not expired {fresh_before:,} -> {fresh_after:,}",
        )
        get_engine(pg.sqlalchemy_url(name)).dispose()
        pg.drop(name)
    show(f"TTL purge, {rows:,} rows, half expired", results)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One worker process against two.")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=2_000_000)
    args = parser.parse_args(argv)

    pg = Postgres(os.environ.get("LIFECYCLE_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL))
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-out-"))
    verdicts = Verdicts()
    print(f"machine: {psutil.cpu_count()} cores; load {os.getloadavg()[0]:.2f}")
    try:
        with postgres_prefect_server(pg, workdir / "prefect"):
            bench_inactive_accounts(pg, workdir, verdicts, args.users)
            pg.drop_all()
            bench_ttl_purge(pg, verdicts, args.rows)
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)  # before the server stops
    finally:
        pg.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    if verdicts.failed:
        print(f"\nmissed: {', '.join(verdicts.failed)}")
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

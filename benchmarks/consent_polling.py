"""Benchmark: the ``consent-deletion-poll`` flow checking 10,000 pending operations.

Run: ``.venv/bin/python benchmarks/consent_polling.py [--operations 10000] [--concurrency 128]``
(about five minutes, most of it the sequential loop).

A throwaway PostgreSQL database holds 10,000 pending processor deletions (steady state: each
was checked before and is still pending, so a check that finds nothing new logs no step). The
local processor simulator runs in a process of its own and answers every call after 20 ms.
In the same run:

- our flow (Prefect's ephemeral API, warmed up by a dry run first so start-up is not timed):
  pages of ``batch_size`` operations, one task each, ``--concurrency`` status calls in flight
  per task, all answers of a page recorded in one transaction;
- a sequential poll loop, the source's design (a function that loops through the stored
  operations, calls the status endpoint for each, and updates its row): one call, then one
  committed UPDATE, per operation, through the same client;
- the floors, with no database and no Prefect: the simulator's own capacity (10,000 status
  calls from ``--concurrency`` threads on plain keep-alive ``http.client`` connections), and
  our HTTP client's (the same 10,000 calls through ``RestProcessor.status`` in the poll step's
  thread pool): what polling costs before any bookkeeping.

Targets (PASS/FAIL lines, exit status 1 when one is missed): every operation checked exactly
once with no anomaly; our flow at least 25 times faster than the sequential loop; our flow
under 30 s. Environment: ``LIFECYCLE_BENCH_POSTGRES_URL`` (admin URL; default
``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import Postgres, Verdicts  # benchmarks/_common.py, next to this script

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TOKEN = "bench-token"
PROCESSOR = "bench"
TARGET_SPEEDUP = 25.0
TARGET_SECONDS = 30.0


# --------------------------------------------------------------------------- the simulator


def serve(pipe: Connection, operations: int, latency: float) -> None:
    """In its own process: the simulator with ``operations`` pending operations."""
    from lifecycle.clients.simulator import Operation, ProcessorSimulator

    server = ProcessorSimulator(token=TOKEN, latency=latency, complete_after=None)
    created = datetime.now(UTC)
    for index in range(operations):
        operation_id = f"op-{index:06d}"
        server.operations[operation_id] = Operation(operation_id, [f"u-{index}"], created, 0.0)
    server.start()
    pipe.send(server.url)
    pipe.recv()  # until told to stop
    server.stop()


def measure_server(url: str, operations: int, threads: int) -> float:
    """Seconds for the simulator to answer every status call, from plain keep-alive clients."""
    parts = urlsplit(url)
    ids = [f"op-{index:06d}" for index in range(operations)]
    failures: list[str] = []

    def worker(share: list[str]) -> None:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for operation_id in share:
            connection.request("GET", f"/deletions/{operation_id}", headers=headers)
            response = connection.getresponse()
            if json.loads(response.read()).get("status") != "pending":
                failures.append(operation_id)
        connection.close()

    workers = [threading.Thread(target=worker, args=(ids[i::threads],)) for i in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - started
    assert not failures, f"{len(failures)} bad answers"
    return elapsed


def measure_client(url: str, operations: int, concurrency: int) -> float:
    """Seconds for the poll step's thread pool and HTTP client alone to check every operation."""
    from pydantic import SecretStr

    from lifecycle.clients.processors import SIMULATOR_CONTRACT, RestProcessor
    from lifecycle.processes.consent_deletion.steps import ProcessorRun, check_all

    processor = RestProcessor(
        name=PROCESSOR,
        base_url=url,
        token=SecretStr(TOKEN),
        contract=SIMULATOR_CONTRACT,
    )
    run = ProcessorRun(processor=processor, concurrency=concurrency)
    started = time.perf_counter()
    answers, trouble = check_all(run, {f"op-{index:06d}" for index in range(operations)})
    elapsed = time.perf_counter() - started
    processor.close()
    assert trouble is None and len(answers) == operations, trouble
    return elapsed


# --------------------------------------------------------------------------- the database


def load_operations(url: str, operations: int) -> None:
    """``operations`` pending deletions at the bench processor, checked once before."""
    import sqlalchemy as sa

    from lifecycle.db.engine import get_engine
    from lifecycle.db.schema import processor_deletions

    now = datetime.now(UTC)
    rows = [
        {
            "user_id": f"u-{index}",
            "subject_hash": f"{index:064x}",
            "reason": "consent_revoked",
            "requested_at": now - timedelta(hours=2),
            "deadline_at": now + timedelta(days=28),
            "processor": PROCESSOR,
            "status": "pending",
            "operation_id": f"op-{index:06d}",
            "vendor_status": "pending",
            "started_at": now - timedelta(hours=1),
            "start_attempts": 1,
            "checks": 1,
            "created_at": now - timedelta(hours=2),
        }
        for index in range(operations)
    ]
    with get_engine(url).begin() as conn:
        conn.execute(sa.insert(processor_deletions), rows)


def checks_made(url: str) -> dict[int, int]:
    """How many operations were checked how many times."""
    import sqlalchemy as sa

    from lifecycle.db.engine import get_engine
    from lifecycle.db.schema import processor_deletions

    columns = processor_deletions.c
    with get_engine(url).connect() as conn:
        rows = conn.execute(sa.select(columns.checks, sa.func.count()).group_by(columns.checks))
        return {checks: count for checks, count in rows}


# --------------------------------------------------------------------------- the two designs


def configure(db_url: str, server_url: str, data_dir: Path, concurrency: int, batch: int) -> None:
    processor = {
        "kind": "rest",
        "name": PROCESSOR,
        "base_url": server_url,
        "token": TOKEN,
        "concurrency": concurrency,
        "rate_per_second": 10_000,  # the simulator sets no rate limit
        "list_path": None,
    }
    os.environ.update(
        {
            "LIFECYCLE_DATABASE_URL": db_url,
            "LIFECYCLE_DATA_DIR": str(data_dir),
            "LIFECYCLE_MAIL_RATE_PER_SECOND": "0",
            "LIFECYCLE_CONSENT_DELETION__PROCESSORS": json.dumps([processor]),
            "LIFECYCLE_CONSENT_DELETION__TECHNICAL_CONTACTS": '["ops@example.com"]',
            "LIFECYCLE_CONSENT_DELETION__BATCH_SIZE": str(batch),
        }
    )


def run_our_flow(concurrency: int) -> tuple[float, Any]:
    from flows.consent_deletion import consent_deletion_poll

    consent_deletion_poll(dry_run=True)  # starts the ephemeral API: not timed
    started = time.perf_counter()
    state = consent_deletion_poll(max_concurrency=concurrency, return_state=True)
    elapsed = time.perf_counter() - started
    print(f"  where the time went: {task_seconds(state.state_details.flow_run_id)}")
    return elapsed, state.result()


def task_seconds(flow_run_id: Any) -> str:
    """Task runs of the flow run, by name: how many, and their total seconds."""
    from collections import defaultdict

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    totals: defaultdict[str, list[float]] = defaultdict(list)
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    for run in runs:
        totals[run.name.rsplit("-", 1)[0]].append(run.total_run_time.total_seconds())
    return ", ".join(
        f"{name} {len(times)}x {sum(times):.1f} s" for name, times in sorted(totals.items())
    )


def run_sequential_loop(db_url: str, server_url: str) -> tuple[float, int]:
    """The source's loop: for each stored operation, ask its status, then update its row."""
    import sqlalchemy as sa
    from pydantic import SecretStr

    from lifecycle.clients.processors import SIMULATOR_CONTRACT, RestProcessor
    from lifecycle.db.engine import get_engine
    from lifecycle.db.schema import processor_deletions

    columns = processor_deletions.c
    processor = RestProcessor(
        name=PROCESSOR, base_url=server_url, token=SecretStr(TOKEN), contract=SIMULATOR_CONTRACT
    )
    engine = get_engine(db_url)
    started = time.perf_counter()
    with engine.connect() as conn:
        pending = conn.execute(
            sa.select(columns.id, columns.operation_id).where(columns.status == "pending")
        ).all()
    for deletion_id, operation_id in pending:
        status = processor.status(operation_id)
        with engine.begin() as conn:
            conn.execute(
                sa.update(processor_deletions)
                .where(columns.id == deletion_id)
                .values(
                    checks=columns.checks + 1,
                    last_checked_at=datetime.now(UTC),
                    vendor_status=status.vendor_status,
                )
            )
    processor.close()
    return time.perf_counter() - started, len(pending)


# --------------------------------------------------------------------------- main


def timed(label: str, work: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = work()
    print(f"  {label}: {time.perf_counter() - started:.1f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="consent-deletion-poll vs a sequential loop")
    parser.add_argument("--operations", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.020, help="server answer time, s")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    parser.add_argument("--batch-size", type=int, default=10_000, help="operations per task")
    parser.add_argument(
        "--flow-only", action="store_true", help="time our flow and the floors, not the loop"
    )
    args = parser.parse_args(argv)

    if "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="bench-prefect-home-")
        os.environ["PREFECT_HOME"] = home
        atexit.register(shutil.rmtree, home, ignore_errors=True)  # after Prefect's own handlers
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    n, latency = args.operations, args.latency

    postgres = Postgres(os.environ.get("LIFECYCLE_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL))
    data_dir = Path(tempfile.mkdtemp(prefix="bench-consent-"))
    ours, here = multiprocessing.get_context("spawn").Pipe()
    server = multiprocessing.get_context("spawn").Process(
        target=serve, args=(here, n, latency), daemon=True
    )
    verdicts = Verdicts()
    try:
        from lifecycle.db.migrate import upgrade

        db_url = postgres.sqlalchemy_url(
            postgres.create(f"lifecycle_bench_consent_{uuid.uuid4().hex[:8]}")
        )
        timed("migrate", lambda: upgrade(db_url))
        timed(f"load {n:,} pending operations", lambda: load_operations(db_url, n))
        server.start()
        server_url = ours.recv()
        configure(db_url, server_url, data_dir, args.concurrency, args.batch_size)
        print(f"simulator at {server_url}, answering in {latency * 1000:.0f} ms")

        flow_seconds, summary = run_our_flow(args.concurrency)
        counts = checks_made(db_url)
        print(
            f"our flow: {flow_seconds:.1f} s ({n / flow_seconds:,.0f} checks/s), {summary.line()}"
        )
        verdicts.check(
            "every operation checked once",
            counts == {2: n} and summary.counts.get("still_pending") == n and not summary.anomalies,
            f"rows by checks made: {counts}",
        )
        server_seconds = measure_server(server_url, n, args.concurrency)
        client_seconds = measure_client(server_url, n, args.concurrency)
        print(
            f"floor, the simulator alone ({args.concurrency} plain keep-alive clients): "
            f"{server_seconds:.1f} s ({n / server_seconds:,.0f} answers/s); "
            f"latency alone: {n * latency / args.concurrency:.2f} s"
        )
        print(
            f"floor, our HTTP client alone ({args.concurrency} threads, no database, no "
            f"Prefect): {client_seconds:.1f} s ({n / client_seconds:,.0f} checks/s)"
        )
        verdicts.check(
            f"under {TARGET_SECONDS:.0f} s",
            flow_seconds < TARGET_SECONDS,
            f"{flow_seconds:.1f} s (floors: simulator {server_seconds:.1f} s, HTTP client "
            f"{client_seconds:.1f} s)",
        )
        if not args.flow_only:
            loop_seconds, looped = run_sequential_loop(db_url, server_url)
            print(f"sequential loop: {loop_seconds:.1f} s for {looped:,}")
            verdicts.check(
                f"at least {TARGET_SPEEDUP:.0f}x faster than the sequential loop",
                loop_seconds / flow_seconds >= TARGET_SPEEDUP,
                f"{loop_seconds / flow_seconds:.1f}x ({loop_seconds:.1f} s / {flow_seconds:.1f} "
                f"s); the simulator alone would allow {loop_seconds / server_seconds:.1f}x, our "
                f"HTTP client alone {loop_seconds / client_seconds:.1f}x",
            )
    finally:
        if server.is_alive():
            ours.send("stop")
            server.join(timeout=10)
        postgres.drop_all()
        shutil.rmtree(data_dir, ignore_errors=True)
    return 1 if verdicts.failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the mail rate two concurrent ``inactive-accounts`` runs achieve together.

Run: ``.venv/bin/python benchmarks/mail_rate.py`` (about four minutes).

A real Prefect server is started in a subprocess (its own temporary ``PREFECT_HOME``), and a
SQLite database is filled with 1,000 users due a warning. Two processes then run the
``inactive_accounts`` flow at the same time against that server, with
``LIFECYCLE_MAIL_RATE_PER_SECOND=14``, a shared outbox and ``batch_size=100``: claims split the
users between them and the shared limit paces their sends. Send times are the ``.eml`` files'
modification times.

Targets (PASS/FAIL lines, exit status 1 when one is missed):
  * 1,000 mails, no recipient mailed twice;
  * achieved rate, (n - 1) / (last - first), at least 95% of 14/s;
  * at most 14 mails in any 1-second window [t, t + 1 s) starting at a send.

For comparison (no target), two processes send 500 mails each through Prefect's plain
``prefect.concurrency.sync.rate_limit`` on a global limit of limit=14, slot_decay_per_second=14.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from _common import PrefectServer  # benchmarks/_common.py, next to this script

RATE = 14.0
USERS = 1_000
BATCH_SIZE = 100
TARGET_SHARE = 0.95
MAIL_LIMIT = "bench-mail-rate"
BASELINE_LIMIT = "bench-rate-limit-baseline"
SERVER_START_TIMEOUT = 120.0
WORKER_TIMEOUT = 400.0
RESULT_PREFIX = "RESULT "
SCRIPT = Path(__file__).resolve()
PROJECT = SCRIPT.parent.parent


# --------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Sends:
    """What an outbox holds: send times (ns, sorted) and recipients."""

    times_ns: list[int]
    recipients: list[str]

    @classmethod
    def read(cls, outbox: Path) -> Sends:
        parser = BytesParser(policy=default_policy)
        stamped: list[tuple[int, str]] = []
        for path in outbox.glob("*.eml"):
            with path.open("rb") as file:
                headers = parser.parse(file, headersonly=True)
            stamped.append((path.stat().st_mtime_ns, str(headers["To"])))
        stamped.sort()
        return cls([t for t, _ in stamped], [to for _, to in stamped])

    @property
    def count(self) -> int:
        return len(self.times_ns)

    @property
    def duplicates(self) -> int:
        """Recipients who received more than one mail."""
        return sum(1 for n in Counter(self.recipients).values() if n > 1)

    @property
    def span_seconds(self) -> float:
        return (self.times_ns[-1] - self.times_ns[0]) / 1e9 if self.count > 1 else 0.0

    @property
    def rate(self) -> float:
        span = self.span_seconds
        return (self.count - 1) / span if span > 0 else 0.0

    def max_window(self, width_ns: int = 1_000_000_000) -> int:
        """The most sends in any window [t, t + 1 s) that starts at a send."""
        best, end = 0, 0
        for start, t in enumerate(self.times_ns):
            end = max(end, start)
            while end < self.count and self.times_ns[end] < t + width_ns:
                end += 1
            best = max(best, end - start)
        return best

    def gaps_ms(self) -> list[float]:
        return [(b - a) / 1e6 for a, b in zip(self.times_ns, self.times_ns[1:], strict=False)]

    def slowest_second(self) -> int:
        """Fewest sends in any whole second of the run (shows gaps at hand-overs)."""
        if self.count < 2:
            return self.count
        first = self.times_ns[0]
        per_second = Counter((t - first) // 1_000_000_000 for t in self.times_ns)
        last = (self.times_ns[-1] - first) // 1_000_000_000
        return min(per_second.get(second, 0) for second in range(last))  # full seconds only


def print_sends(label: str, sends: Sends, split: dict[str, int]) -> None:
    print(f"\n--- {label} ---")
    print(f"mails sent:              {sends.count:,}")
    print(f"duplicates:              {sends.duplicates}")
    print(f"first to last mail:      {sends.span_seconds:.2f} s")
    print(f"achieved rate:           {sends.rate:.2f} mails/s (target rate {RATE:g}/s)")
    print(f"max in a 1-s window:     {sends.max_window()}")
    print(f"fewest in a full second: {sends.slowest_second()}")
    gaps = sends.gaps_ms()
    if gaps:
        stalls = [gap for gap in gaps if gap > 500]
        print(
            f"gaps between mails:      min {min(gaps):.1f} ms, median "
            f"{sorted(gaps)[len(gaps) // 2]:.1f} ms, {len(stalls)} over 0.5 s "
            f"(together {sum(stalls) / 1000:.1f} s)"
        )
    print(f"per-process split:       {split}")


# --------------------------------------------------------------------------- server


def base_env(prefect_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")])),
        }
    )
    return env


# --------------------------------------------------------------------------- data


def seed_users(database_url: str, count: int) -> None:
    """``count`` non-paying users last seen 61-200 days ago and never warned."""
    import sqlalchemy as sa

    from lifecycle.db.engine import get_engine
    from lifecycle.db.migrate import upgrade
    from lifecycle.db.schema import users

    upgrade(database_url)
    rng = random.Random(14)
    now = datetime.now(UTC)
    rows = []
    for index in range(count):
        visit = now - timedelta(days=rng.uniform(61, 200))
        rows.append(
            {
                "id": f"00000000-0000-4000-8000-{index:012d}",
                "email": f"user{index}@example.com",
                "name": f"User {index}",
                "created_at": visit - timedelta(days=rng.uniform(0, 300)),
                "last_visit_at": visit,
            }
        )
    engine = get_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(users), rows)
    engine.dispose()


# --------------------------------------------------------------------------- workers


def run_flow_worker() -> int:
    """Child process: one run of the flow, against PREFECT_API_URL and the LIFECYCLE_* env."""
    from flows.inactive_accounts import inactive_accounts
    from lifecycle.processes.inactive_accounts.steps import SweepSummary

    state = inactive_accounts(batch_size=BATCH_SIZE, return_state=True)
    summary = state.result(raise_on_failure=False)
    if isinstance(summary, SweepSummary):
        print(RESULT_PREFIX + json.dumps({"state": state.type.value, **summary.counts}))
        return 0
    print(RESULT_PREFIX + json.dumps({"state": state.type.value, "error": repr(summary)}))
    return 1


def run_rate_limit_worker(first: int, count: int, outbox: Path) -> int:
    """Child process: ``count`` warnings, each after Prefect's plain ``rate_limit``."""
    from prefect.concurrency.sync import rate_limit

    from lifecycle.clients.mail.backends import OutboxMailer
    from lifecycle.processes.inactive_accounts.warning_mail import (
        WarningContext,
        inactivity_warning,
    )

    mailer = OutboxMailer(directory=outbox, sender="Lifecycle Demo <lifecycle@localhost>")
    context = WarningContext(
        product_name="Lifecycle Demo",
        app_url="http://localhost:8000",
        inactive_days=60,
        grace_days=30,
    )
    for index in range(first, first + count):
        rate_limit(BASELINE_LIMIT, occupy=1, strict=True)
        mailer.send(
            inactivity_warning(
                to=f"user{index}@example.com",
                name=f"User {index}",
                context=context,
                sent_at=datetime.now(UTC),
            )
        )
    print(RESULT_PREFIX + json.dumps({"sent": count}))
    return 0


def run_pair(
    label: str, commands: list[list[str]], env: dict[str, str], logs: Path
) -> list[dict[str, Any]]:
    """Start the commands together, wait for both, and return their RESULT lines."""
    processes = []
    for number, command in enumerate(commands, start=1):
        out = (logs / f"{label}{number}.out").open("wb")
        err = (logs / f"{label}{number}.err").open("wb")
        processes.append((subprocess.Popen(command, env=env, stdout=out, stderr=err), out, err))
    results: list[dict[str, Any]] = []
    try:
        for number, (process, out, err) in enumerate(processes, start=1):
            code = process.wait(timeout=WORKER_TIMEOUT)
            out.close()
            err.close()
            text = (logs / f"{label}{number}.out").read_text(errors="replace")
            lines = [line for line in text.splitlines() if line.startswith(RESULT_PREFIX)]
            result = json.loads(lines[-1][len(RESULT_PREFIX) :]) if lines else {}
            result["exit"] = code
            if code != 0 or not lines:
                tail = (logs / f"{label}{number}.err").read_text(errors="replace")[-2000:]
                print(f"worker {number} exited {code}; stderr tail:\n{tail}")
            results.append(result)
    finally:
        for process, out, err in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            out.close()
            err.close()
    return results


# --------------------------------------------------------------------------- main


def flow_env(workdir: Path, api_url: str) -> dict[str, str]:
    """The environment of a flow process: our server, the test database and a shared outbox."""
    (workdir / "storage").mkdir(exist_ok=True)  # the flows check it exists before they start
    env = base_env(workdir / "client-home")
    env.update(
        {
            "PREFECT_API_URL": api_url,
            "LIFECYCLE_DATABASE_URL": f"sqlite:///{workdir / 'lifecycle.db'}",
            "LIFECYCLE_DATA_DIR": str(workdir / "data"),
            "LIFECYCLE_STORAGE_URL": (workdir / "storage").as_uri(),
            "LIFECYCLE_OUTBOX_DIR": str(workdir / "outbox"),
            "LIFECYCLE_MAIL_BACKEND": "outbox",
            "LIFECYCLE_MAIL_RATE_PER_SECOND": f"{RATE:g}",
            "LIFECYCLE_MAIL_LIMIT_NAME": MAIL_LIMIT,
        }
    )
    return env


def measure_flows(workdir: Path, logs: Path, api_url: str) -> list[str]:
    """Two concurrent runs of our flow; returns the names of missed targets."""
    failed: list[str] = []

    def check(name: str, ok: bool, detail: str) -> None:
        print(f"{'PASS' if ok else 'FAIL'}: {name}: {detail}")
        if not ok:
            failed.append(name)

    env = flow_env(workdir, api_url)
    seed_users(env["LIFECYCLE_DATABASE_URL"], USERS)
    print(f"running two inactive-accounts flows ({USERS:,} users due a warning) ...")
    started = time.perf_counter()
    flow_cmd = [sys.executable, str(SCRIPT), "flow-worker"]
    results = run_pair("flow", [flow_cmd, flow_cmd], env, logs)
    print(f"both flows finished in {time.perf_counter() - started:.1f} s")
    sends = Sends.read(workdir / "outbox")
    split = {f"process {n}": int(r.get("warned", 0)) for n, r in enumerate(results, start=1)}
    print_sends(f"our flow x2, mail rate {RATE:g}/s (PacedSender + lease mutex)", sends, split)
    for number, result in enumerate(results, start=1):
        check(f"flow run {number} completed", result.get("state") == "COMPLETED", str(result))
    check("all mails sent", sends.count == USERS, f"{sends.count} of {USERS}")
    check("no duplicates", sends.duplicates == 0, f"{sends.duplicates} recipients twice")
    check(
        "achieved rate",
        sends.rate >= TARGET_SHARE * RATE,
        f"{sends.rate:.2f}/s (target >= {TARGET_SHARE * RATE:.2f}/s = 95% of {RATE:g}/s)",
    )
    check("max 1-s window", sends.max_window() <= RATE, f"{sends.max_window()} (target <= 14)")
    return failed


def measure_baseline(workdir: Path, logs: Path, api_url: str) -> None:
    """Prefect's plain rate_limit from two processes, 500 mails each (no target)."""
    from prefect.client.orchestration import get_client

    print(f"\nrunning the baseline: rate_limit(limit={RATE:g}, decay={RATE:g}/s) x2 ...")
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(
            BASELINE_LIMIT, limit=int(RATE), slot_decay_per_second=RATE
        )
    outbox, half = workdir / "baseline-outbox", USERS // 2
    command = [sys.executable, str(SCRIPT), "rate-limit-worker", "--outbox", str(outbox)]
    started = time.perf_counter()
    results = run_pair(
        "baseline",
        [[*command, "--first", str(first), "--count", str(half)] for first in (0, half)],
        flow_env(workdir, api_url),
        logs,
    )
    print(f"both baseline processes finished in {time.perf_counter() - started:.1f} s")
    split = {f"process {n}": int(r.get("sent", 0)) for n, r in enumerate(results, start=1)}
    print_sends(
        "baseline: prefect.concurrency.sync.rate_limit (no target)", Sends.read(outbox), split
    )


def measure(workdir: Path, logs: Path, *, baseline: bool) -> list[str]:
    """Both measurements against one server; returns the names of missed targets."""
    with (
        (logs / "server.log").open("wb") as server_log,
        PrefectServer(workdir / "prefect-home", server_log, env=base_env) as server,
    ):
        print(f"Prefect server up at {server.api_url}")
        os.environ["PREFECT_API_URL"] = server.api_url  # before this process imports prefect
        os.environ["PREFECT_HOME"] = str(workdir / "client-home")
        os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        failed = measure_flows(workdir, logs, server.api_url)
        if baseline:
            measure_baseline(workdir, logs, server.api_url)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Shared mail rate of two concurrent runs.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("flow-worker", help="(internal) run the flow once")
    worker = commands.add_parser("rate-limit-worker", help="(internal) baseline sender")
    worker.add_argument("--first", type=int, required=True)
    worker.add_argument("--count", type=int, required=True)
    worker.add_argument("--outbox", type=Path, required=True)
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.add_argument("--skip-baseline", action="store_true", help="measure our flow only")
    args = parser.parse_args(argv)
    if args.command == "flow-worker":
        return run_flow_worker()
    if args.command == "rate-limit-worker":
        return run_rate_limit_worker(args.first, args.count, args.outbox)

    workdir = Path(tempfile.mkdtemp(prefix="bench-mail-rate-"))
    logs = workdir / "logs"
    logs.mkdir()
    try:
        failed = measure(workdir, logs, baseline=not args.skip_baseline)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nall targets met" if not failed else f"\nmissed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

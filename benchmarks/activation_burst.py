"""Benchmark: a sign-up burst through the whole event path, and activation mail's priority.

Run: ``.venv/bin/python benchmarks/activation_burst.py`` (about eight minutes; ``--users`` and
``--warn-users`` make it smaller while trying it out).

What runs, all real and on this machine:

* a Prefect server backed by PostgreSQL (a SQLite-backed one stalls under this load, see
  PREFECT_NOTES), with the ``activation-mail`` deployment served from this checkout: its event
  trigger and concurrency limit are read from ``prefect.yaml``, so the configuration measured
  is the one deployed;
* ``lifecycle listen`` on a throwaway PostgreSQL database with migration 0005's NOTIFY trigger;
* the outbox mail backend under the shared limit of 14 mails/s.

Part 1, the burst: 5,000 users are inserted within one minute (one INSERT per user, as an
application would). Each insert notifies the listener, which emits ``lifecycle.user.created``;
the trigger starts runs, each of which mails every user still due. Printed: the time from the
first insert to the last mail against the floor of 5,000 / 14 s (the ratio's target is 1.1x),
the flow runs and task runs the burst created, and duplicates (target 0).

Part 2, priority: a 10,000-user ``inactive-accounts`` warning run sends on the same limit; while
it does, a priority sender (as the activation task opens it) asks for the limit five times, and
we print how long each waited for its first send (target: at most 5 s). For context, one more
user is inserted and the time until their mail is in the outbox is printed too (that figure
adds the event, the trigger and a flow-run process start to the wait).

Environment: ``LIFECYCLE_BENCH_POSTGRES_URL`` is the admin URL used to create and drop the
databases (default ``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import IO, Any

SCRIPT = Path(__file__).resolve()
PROJECT = SCRIPT.parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks._common import Postgres, Verdicts  # noqa: E402

RATE = 14.0
USERS = 5_000
INSERT_SECONDS = 60.0
WARN_USERS = 10_000
TARGET_RATIO = 1.1
PRIORITY_TARGET_SECONDS = 5.0
PRIORITY_SAMPLES = 5
MAIL_LIMIT = "bench-activation-mail"
DEPLOYMENT = "activation-mail-bench"
SERVER_START_TIMEOUT = 180.0
ADMIN_URL = os.environ.get(
    "LIFECYCLE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIFECYCLE_", "PREFECT_"))}
    env.update(
        {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PYTHONPATH": str(PROJECT),
        }
    )
    return env


class Child:
    """A process in its own session, stopped (with its children) on exit."""

    def __init__(self, args: list[str], env: dict[str, str], log: IO[bytes]) -> None:
        self.process = subprocess.Popen(
            args,
            env=env,
            cwd=PROJECT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


def start_server(home: Path, database_url: str, log: IO[bytes]) -> tuple[Child, str]:
    import httpx

    port = free_port()
    env = base_env(home)
    env["PREFECT_UI_ENABLED"] = "false"
    env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    prefect = str(Path(sys.executable).with_name("prefect"))
    child = Child(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log
    )
    api_url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {child.process.returncode}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return child, api_url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    child.stop()
    raise TimeoutError("prefect server not healthy")


# --------------------------------------------------------------------------- children


def serve_deployment() -> int:
    """Child: serve ``activation-mail`` with prefect.yaml's trigger and concurrency limit."""
    import yaml
    from prefect import serve
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    from flows.activation_mail import activation_mail

    [config] = [
        d
        for d in yaml.safe_load((PROJECT / "prefect.yaml").read_text())["deployments"]
        if d["name"] == "activation-mail"
    ]
    triggers: list[Any] = [
        DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"})
        for t in config["triggers"]
    ]
    deployment: Any = activation_mail.to_deployment(
        name=DEPLOYMENT,
        triggers=triggers,
        concurrency_limit=ConcurrencyLimitConfig(**config["concurrency_limit"]),
    )
    serve(deployment, limit=4)
    return 0


def run_warnings() -> int:
    """Child: one inactive-accounts run (the warnings the activation mail must overtake)."""
    from flows.inactive_accounts import inactive_accounts

    inactive_accounts(batch_size=500, max_deletions=0)
    return 0


# --------------------------------------------------------------------------- measurements


def read_outbox(outbox: Path) -> list[tuple[float, str]]:
    """(mtime, recipient) of every .eml in ``outbox``."""
    parser = BytesParser(policy=default_policy)
    found = []
    for path in outbox.glob("*.eml"):
        with path.open("rb") as file:
            headers = parser.parse(file, headersonly=True)
        found.append((path.stat().st_mtime, str(headers["To"])))
    return sorted(found)


def count_outbox(outbox: Path) -> int:
    return sum(1 for _ in outbox.glob("*.eml")) if outbox.exists() else 0


def insert_users(database_url: str, count: int, seconds: float) -> float:
    """Insert ``count`` sign-ups spread over ``seconds``, one statement and commit each;
    returns the wall-clock time of the first insert."""
    import sqlalchemy as sa

    from lifecycle.db.engine import get_engine
    from lifecycle.db.schema import users

    engine = get_engine(database_url)
    statement = sa.insert(users)
    first = time.time()
    started = time.monotonic()
    with engine.connect() as conn:
        for index in range(count):
            due = started + seconds * index / count
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = datetime.now(UTC)
            user_id = str(uuid.uuid4())
            conn.execute(
                statement,
                {
                    "id": user_id,
                    "email": f"signup-{index}-{user_id[:6]}@example.com",
                    "name": f"New User {index}",
                    "username": f"new_{index}_{user_id[:6]}",
                    "created_at": now,
                    "last_visit_at": now,
                },
            )
            conn.commit()
    return first


def seed_warnings(database_url: str, count: int) -> None:
    import sqlalchemy as sa

    from lifecycle.db.engine import get_engine
    from lifecycle.db.schema import users

    now = datetime.now(UTC)
    rows = [
        {
            "id": str(uuid.uuid4()),
            "email": f"inactive-{index}@example.com",
            "name": f"Inactive {index}",
            "created_at": now - timedelta(days=400),
            "last_visit_at": now - timedelta(days=75, minutes=index),
            "activation_status": "DONE",
        }
        for index in range(count)
    ]
    with get_engine(database_url).begin() as conn:
        conn.execute(sa.insert(users), rows)


def wait_listening(admin_url: str, database: str, timeout: float = 60.0) -> None:
    import psycopg

    from lifecycle.clients.notify import CHANNEL

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
                (database, f"LISTEN {CHANNEL}%"),
            ).fetchone()
        if row:
            return
        time.sleep(0.3)
    raise TimeoutError("lifecycle listen did not start listening")


def wait_deployment(timeout: float = 120.0) -> Any:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            try:
                return client.read_deployment_by_name(f"activation-mail/{DEPLOYMENT}")
            except Exception:
                time.sleep(1)
    raise TimeoutError("the served deployment did not appear")


def runs_and_tasks(api_url: str, deployment_id: Any) -> tuple[int, int, Counter[str]]:
    import httpx

    body = {"deployments": {"id": {"any_": [str(deployment_id)]}}}
    with httpx.Client(base_url=api_url, timeout=30) as http:
        runs = http.post("/flow_runs/filter", json={**body, "limit": 200}).json()
        tasks = http.post("/task_runs/count", json=body).json()
    states = Counter(str(run["state_type"]) for run in runs)
    return len(runs), int(tasks), states


def priority_waits(samples: int, settings: Any) -> list[float]:
    """How long a priority sender waits for its first send, ``samples`` times, while another
    run sends on the same limit."""
    from lifecycle.clients.mail.message import OutgoingMail
    from tasks._prefect import paced_mail

    mail = OutgoingMail(to="probe@example.com", subject="s", text="t", html="<p>t</p>")

    class Stopwatch:
        sent_at = 0.0

        def send(self, outgoing: OutgoingMail) -> str:
            self.sent_at = time.monotonic()
            return "probe"

        def close(self) -> None:
            pass

    waits = []
    for _ in range(samples):
        stopwatch = Stopwatch()
        asked = time.monotonic()
        with paced_mail(settings, stopwatch, priority=True) as send:
            send(mail)
        waits.append(stopwatch.sent_at - asked)
        time.sleep(3.0)
    return waits


# --------------------------------------------------------------------------- main


def flow_env(workdir: Path, api_url: str, database_url: str, outbox: Path) -> dict[str, str]:
    (workdir / "storage").mkdir(exist_ok=True)
    env = base_env(workdir / "client-home")
    env.update(
        {
            "PREFECT_API_URL": api_url,
            "LIFECYCLE_DATABASE_URL": database_url,
            "LIFECYCLE_DATA_DIR": str(workdir / "data"),
            "LIFECYCLE_STORAGE_URL": (workdir / "storage").as_uri(),
            "LIFECYCLE_OUTBOX_DIR": str(outbox),
            "LIFECYCLE_MAIL_BACKEND": "outbox",
            "LIFECYCLE_MAIL_RATE_PER_SECOND": f"{RATE:g}",
            "LIFECYCLE_MAIL_LIMIT_NAME": MAIL_LIMIT,
        }
    )
    return env


def measure(args: argparse.Namespace, workdir: Path, postgres: Postgres) -> Verdicts:
    from lifecycle.db.migrate import upgrade

    verdicts = Verdicts()
    suffix = uuid.uuid4().hex[:8]
    prefect_db = postgres.create(f"bench_prefect_{suffix}")
    app_db = postgres.create(f"bench_activation_{suffix}")
    warn_db = postgres.create(f"bench_warnings_{suffix}")
    server_url = postgres.sqlalchemy_url(prefect_db).replace("+psycopg", "+asyncpg")
    app_url, warn_url = postgres.sqlalchemy_url(app_db), postgres.sqlalchemy_url(warn_db)
    upgrade(app_url)
    upgrade(warn_url)
    logs = workdir / "logs"
    logs.mkdir()
    children: list[Child] = []
    server, api_url = start_server(
        workdir / "server-home", server_url, (logs / "server.log").open("wb")
    )
    children.append(server)
    try:
        os.environ["PREFECT_API_URL"] = api_url
        os.environ["PREFECT_HOME"] = str(workdir / "client-home")
        outbox = workdir / "outbox"
        env = flow_env(workdir, api_url, app_url, outbox)
        python = sys.executable
        children.append(
            Child([python, str(SCRIPT), "--serve"], env, (logs / "serve.log").open("wb"))
        )
        deployment = wait_deployment()
        lifecycle = str(Path(python).with_name("lifecycle"))
        children.append(Child([lifecycle, "listen"], env, (logs / "listen.log").open("wb")))
        wait_listening(ADMIN_URL, app_db)
        # A deployed system has run before the burst: one sign-up first, so that the
        # server's automation cache, the limits and the listener are warm (not timed).
        warm_up = time.time()
        insert_users(app_url, 1, 0.0)
        deadline = time.monotonic() + 120
        while count_outbox(outbox) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"warm-up sign-up mailed {time.time() - warm_up:.1f} s after its insert")
        for path in outbox.glob("*.eml"):
            path.unlink()
        time.sleep(12.0)  # past the trigger's 10 s window and the warm-up run
        print(f"server, deployment and listener ready; inserting {args.users} users")

        # ---- part 1: the burst
        first_insert = insert_users(app_url, args.users, args.insert_seconds)
        inserted = time.time() - first_insert
        floor = args.users / RATE
        deadline = time.monotonic() + floor * 2.5 + 120
        while count_outbox(outbox) < args.users and time.monotonic() < deadline:
            time.sleep(1.0)
        time.sleep(3.0)  # late duplicates, if any, would show up here
        sent = read_outbox(outbox)
        recipients = Counter(to for _, to in sent)
        duplicates = sum(n - 1 for n in recipients.values() if n > 1)
        last = max(t for t, _ in sent) if sent else float("nan")
        elapsed = last - first_insert
        time.sleep(15.0)  # let runs queued by the last events start and end
        runs, tasks, states = runs_and_tasks(api_url, deployment.id)
        print(f"inserted {args.users} users in {inserted:.1f} s")
        print(
            f"mailed {len(recipients)} distinct users, {len(sent)} mails, {duplicates} duplicates"
        )
        print(
            f"time from first insert to last mail: {elapsed:.1f} s; floor {args.users} / "
            f"{RATE:g} = {floor:.1f} s; ratio {elapsed / floor:.3f}"
        )
        print(f"flow runs created: {runs} {dict(states)}; task runs created: {tasks}")
        verdicts.check("every user mailed", len(recipients) == args.users, f"{len(recipients)}")
        verdicts.check("no duplicates", duplicates == 0, f"{duplicates}")
        verdicts.check(
            f"time to last mail within {TARGET_RATIO}x of the floor",
            elapsed / floor <= TARGET_RATIO,
            f"{elapsed / floor:.3f}x",
        )
        verdicts.check("runs bounded (not one per user)", runs <= 20, f"{runs} runs")

        # ---- part 2: priority while a warning run sends
        from lifecycle.settings import Settings

        seed_warnings(warn_url, args.warn_users)
        warn_outbox = workdir / "warn-outbox"
        warn_env = flow_env(workdir, api_url, warn_url, warn_outbox)
        warnings = Child([python, str(SCRIPT), "--warn"], warn_env, (logs / "warn.log").open("wb"))
        children.append(warnings)
        deadline = time.monotonic() + 180
        while count_outbox(warn_outbox) < 30 and time.monotonic() < deadline:
            time.sleep(0.5)
        print(f"warning run sending ({count_outbox(warn_outbox)} warnings so far)")
        settings = Settings(
            database_url=warn_url,
            mail_rate_per_second=RATE,
            mail_limit_name=MAIL_LIMIT,
            data_dir=workdir / "data",
        )
        waits = priority_waits(PRIORITY_SAMPLES, settings)
        print(
            "priority sender's wait for the shared limit: " + ", ".join(f"{w:.2f} s" for w in waits)
        )
        verdicts.check(
            f"activation mail waits at most {PRIORITY_TARGET_SECONDS:g} s behind warnings",
            max(waits) <= PRIORITY_TARGET_SECONDS,
            f"max {max(waits):.2f} s",
        )
        before = count_outbox(outbox)
        inserted_at = time.time()
        insert_users(app_url, 1, 0.0)
        deadline = time.monotonic() + 120
        while count_outbox(outbox) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        newest = read_outbox(outbox)[-1][0]
        warned = count_outbox(warn_outbox)
        print(
            f"context: one more sign-up during the warning run was mailed "
            f"{newest - inserted_at:.1f} s after its insert (event, trigger, run start, send)"
        )
        print(f"warnings sent meanwhile: {warned} of {args.warn_users} (the run is then stopped)")
    finally:
        for child in reversed(children):
            child.stop()
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--insert-seconds", type=float, default=INSERT_SECONDS)
    parser.add_argument("--warn-users", type=int, default=WARN_USERS)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--warn", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve_deployment()
    if args.warn:
        return run_warnings()
    workdir = Path(tempfile.mkdtemp(prefix="bench-activation-"))
    postgres = Postgres(ADMIN_URL)
    try:
        verdicts = measure(args, workdir, postgres)
    finally:
        postgres.drop_all()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work folder: {workdir}")
    return 1 if verdicts.failed else 0


if __name__ == "__main__":
    sys.exit(main())

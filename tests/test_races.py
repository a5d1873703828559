"""Races and crashes: concurrent runs, visits mid-sweep, failures between files and rows."""

from __future__ import annotations

import email
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.settings import PREFECT_API_URL

from flows.inactive_accounts import inactive_accounts
from lifecycle.clients.storage import LocalStorage
from lifecycle.common.claims import Claim
from lifecycle.db.engine import get_engine
from lifecycle.db.schema import deletion_receipts, users
from lifecycle.processes.inactive_accounts import queries
from lifecycle.processes.inactive_accounts.queries import DeletionQueue
from lifecycle.processes.inactive_accounts.rules import Policy
from lifecycle.settings import Settings
from tests.support.clock import NOW, days_ago
from tests.support.factories import delete_due_batch, insert_user, storage_of, user_row

POLICY = Policy()
LEASE = timedelta(minutes=15)
CLAIM_GROUP = Settings().inactive_accounts.claim_group


def due_for_deletion(engine: sa.Engine) -> str:
    return insert_user(engine, last_visit_at=days_ago(100), deletion_warning_sent_at=days_ago(35))


def visit(engine: sa.Engine, user_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(users).where(users.c.id == user_id).values(last_visit_at=datetime.now(UTC))
        )


@pytest.mark.parametrize("action", ["warning", "deletion"])
def test_visit_between_selection_and_claim_prevents_the_action(
    engine: sa.Engine, action: str
) -> None:
    warning = action == "warning"
    user_id = (
        insert_user(engine, last_visit_at=days_ago(70)) if warning else due_for_deletion(engine)
    )
    with engine.connect() as conn:
        page = (
            queries.warning_page(conn, as_of=NOW, policy=POLICY, after=None, limit=10)
            if warning
            else queries.deletion_page(
                conn,
                queue=DeletionQueue.DUE,
                as_of=NOW,
                policy=POLICY,
                now=NOW,
                after=None,
                limit=10,
            )
        )
    assert [c.id for c in page] == [user_id]

    visit(engine, user_id)
    claim = queries.claim_warnings if warning else queries.claim_deletions
    with engine.begin() as conn:
        claimed = claim(conn, [user_id], as_of=NOW, policy=POLICY, claim=Claim("run-a", NOW, LEASE))
    assert claimed == []
    row = user_row(engine, user_id)
    assert row is not None and row.deletion_started_at is None


class VisitingStorage(LocalStorage):
    """Local storage during whose first deletion the application records a visit."""

    def __init__(self, *, root: Path, engine: sa.Engine, visitor: str) -> None:
        super().__init__(root=root)
        self._engine, self._visitor = engine, visitor

    def delete_prefix(self, prefix: str) -> int:
        if self._visitor:
            visit(self._engine, self._visitor)
            self._visitor = ""
        return super().delete_prefix(prefix)


def test_user_who_visits_during_a_batch_is_not_deleted(engine: sa.Engine, tmp_path: Path) -> None:
    """The visitor's group is claimed after the visit, while the first group is being deleted."""
    first_group = [
        insert_user(engine, last_visit_at=days_ago(100), deletion_warning_sent_at=days_ago(40))
        for _ in range(CLAIM_GROUP)
    ]
    visitor = due_for_deletion(engine)  # warned 35 days ago: after the first group
    storage = VisitingStorage(root=tmp_path, engine=engine, visitor=visitor)
    for user_id in [*first_group, visitor]:
        storage.put(f"users/{user_id}/file.txt", b"x")

    report = delete_due_batch(engine, storage, "storage")

    assert report.counts["deleted"] == CLAIM_GROUP and report.counts["skipped"] == 1
    assert all(user_row(engine, user_id) is None for user_id in first_group)
    row = user_row(engine, visitor)
    assert row is not None and row.deletion_started_at is None
    assert storage.count_prefix(f"users/{visitor}/") == 1


@pytest.mark.postgres
def test_claims_skip_users_another_run_is_claiming(postgres_url: str) -> None:
    """Two runs claiming overlapping users never wait on (or deadlock with) each other.

    PostgreSQL only: SQLite admits one writer at a time, so there is nothing to skip past.
    """
    engine = get_engine(postgres_url)
    ids = sorted(due_for_deletion(engine) for _ in range(4))

    def claim(conn: sa.Connection, wanted: list[str], claim_id: str) -> list[str]:
        return queries.claim_deletions(
            conn, wanted, as_of=NOW, policy=POLICY, claim=Claim(claim_id, NOW, LEASE)
        )

    with engine.connect() as slow, slow.begin():  # run A claimed two users, not committed yet
        assert claim(slow, ids[:2], "run-a") == ids[:2]
        with engine.connect() as fast, fast.begin():
            fast.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            assert claim(fast, ids[::-1], "run-b") == [ids[3], ids[2]]  # in the order asked
    with engine.connect() as conn:
        rows = conn.execute(sa.select(users.c.id, users.c.deletion_claim_id))
        claimed_by = {user_id: claim_id for user_id, claim_id in rows}
    assert claimed_by == {ids[0]: "run-a", ids[1]: "run-a", ids[2]: "run-b", ids[3]: "run-b"}


def _break_user_deletes(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER break_deletes BEFORE DELETE ON users "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION break_deletes() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER break_deletes BEFORE DELETE ON users "
                "FOR EACH ROW EXECUTE FUNCTION break_deletes()"
            )


def _mend_user_deletes(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "DROP TRIGGER break_deletes"
            if engine.dialect.name == "sqlite"
            else "DROP TRIGGER break_deletes ON users"
        )


def test_failure_after_files_before_row_is_finished_by_next_run(
    engine: sa.Engine, lifecycle_env: Settings
) -> None:
    broken = due_for_deletion(engine)
    healthy_warn = insert_user(engine, last_visit_at=days_ago(65))
    storage = storage_of(lifecycle_env)
    for i in range(3):
        storage.put(f"users/{broken}/f{i}", b"x")
    _break_user_deletes(engine)

    state = inactive_accounts(return_state=True)

    assert state.is_failed()
    assert "1 accounts failed" in str(state.message)
    row = user_row(engine, broken)
    assert row is not None and row.deletion_started_at is not None
    assert row.deletion_lease_until is None  # released: the next run may finish at once
    assert storage.count_prefix(f"users/{broken}/") == 0
    warned = user_row(engine, healthy_warn)
    assert warned is not None and warned.deletion_warning_sent_at is not None  # others went on

    _mend_user_deletes(engine)
    visit(engine, broken)  # too late: the files are gone, the deletion must complete
    summary = inactive_accounts()

    assert summary.counts == {"deleted": 1}
    assert user_row(engine, broken) is None
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(deletion_receipts)).scalar() == 1


def test_crashed_run_is_resumed_after_its_lease_expires(
    engine: sa.Engine, lifecycle_env: Settings
) -> None:
    crashed = insert_user(
        engine,
        last_visit_at=days_ago(100),
        deletion_warning_sent_at=days_ago(35),
        deletion_started_at=NOW - timedelta(hours=1),
        deletion_claim_id="dead-run",
        deletion_lease_until=NOW - timedelta(minutes=1),
    )
    in_flight = insert_user(
        engine,
        last_visit_at=days_ago(100),
        deletion_warning_sent_at=days_ago(35),
        deletion_started_at=NOW,
        deletion_claim_id="live-run",
        # From the real clock, not the session's NOW: the suite may have run for 10 minutes.
        deletion_lease_until=datetime.now(UTC) + timedelta(minutes=10),
    )
    storage_of(lifecycle_env).put(f"users/{crashed}/left-over.txt", b"x")

    summary = inactive_accounts()

    assert summary.counts == {"deleted": 1}
    assert user_row(engine, crashed) is None
    assert storage_of(lifecycle_env).count_prefix(f"users/{crashed}/") == 0
    assert user_row(engine, in_flight) is not None  # another live run holds it


def test_two_concurrent_runs_never_mail_or_delete_twice(
    engine: sa.Engine, lifecycle_env: Settings
) -> None:
    warn_ids = [insert_user(engine, last_visit_at=days_ago(61 + i % 30)) for i in range(40)]
    delete_ids = [due_for_deletion(engine) for _ in range(12)]
    storage = storage_of(lifecycle_env)
    for user_id in delete_ids:
        storage.put(f"users/{user_id}/a.txt", b"x")

    inactive_accounts(dry_run=True)  # warm up the client in this thread first
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [pool.submit(inactive_accounts, batch_size=5, return_state=True) for _ in range(2)]
        states = [run.result() for run in runs]

    assert all(state.is_completed() for state in states)
    totals: Counter[str] = Counter()
    for state in states:
        totals.update(state.result().counts)
    assert totals["warned"] == 40 and totals["deleted"] == 12
    mails = [
        email.message_from_bytes(p.read_bytes())["To"]
        for p in lifecycle_env.resolved_outbox_dir.glob("*.eml")
    ]
    assert len(mails) == 40 and len(set(mails)) == 40
    with engine.connect() as conn:
        receipts = conn.execute(sa.select(sa.func.count()).select_from(deletion_receipts)).scalar()
        remaining = conn.execute(
            sa.select(sa.func.count()).select_from(users).where(users.c.id.in_(delete_ids))
        ).scalar()
    assert receipts == 12 and remaining == 0
    assert all(user_row(engine, uid).deletion_warning_sent_at for uid in warn_ids)  # type: ignore[union-attr]


KILL_ROUNDS = 4


def _run_flow_in_a_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    code = "from flows.inactive_accounts import inactive_accounts; inactive_accounts(batch_size=7)"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _mails(outbox: Path) -> list[str]:
    return [email.message_from_bytes(p.read_bytes())["To"] for p in outbox.glob("*.eml")]


@pytest.mark.postgres
def test_a_killed_worker_repeats_at_most_the_mail_in_flight(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Workers killed (SIGKILL) mid-batch, again and again: each kill repeats at most one mail."""
    engine = get_engine(postgres_url)
    ids = [insert_user(engine, last_visit_at=days_ago(61 + i % 40)) for i in range(60)]
    settings = {
        "LIFECYCLE_DATA_DIR": str(tmp_path / "data"),
        "LIFECYCLE_DATABASE_URL": postgres_url,
        "LIFECYCLE_MAIL_RATE_PER_SECOND": "25",
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")},
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        **settings,
    }
    outbox = tmp_path / "data" / "outbox"
    for round_ in range(KILL_ROUNDS):
        before = len(_mails(outbox))
        # A mail limit of its own per worker: a killed holder keeps its slot until its lease ends.
        limit = {"LIFECYCLE_MAIL_LIMIT_NAME": f"kill-{round_}-{os.getpid()}"}
        worker = _run_flow_in_a_worker({**env, **limit})
        deadline = time.monotonic() + 60
        while len(_mails(outbox)) < before + 5 and worker.poll() is None:
            assert time.monotonic() < deadline, "the worker sent nothing"
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        with engine.begin() as conn:  # the killed worker's claims: as if their leases ran out
            conn.execute(
                sa.update(users)
                .where(users.c.warning_claim_id.is_not(None))
                .values(warning_lease_until=datetime.now(UTC) - timedelta(seconds=1))
            )

    for key in [k for k in os.environ if k.startswith("LIFECYCLE_")]:
        monkeypatch.delenv(key)
    for key, value in {**settings, "LIFECYCLE_MAIL_LIMIT_NAME": f"kill-end-{os.getpid()}"}.items():
        monkeypatch.setenv(key, value)
    inactive_accounts(batch_size=7)  # a healthy run finishes the job

    mails = Counter(_mails(outbox))
    addresses = {user_row(engine, user_id).email for user_id in ids}  # type: ignore[union-attr]
    assert set(mails) == addresses  # everyone warned
    assert sum(count - 1 for count in mails.values()) <= KILL_ROUNDS  # duplicates
    assert all(user_row(engine, uid).deletion_warning_sent_at for uid in ids)  # type: ignore[union-attr]

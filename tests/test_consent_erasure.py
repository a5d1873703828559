"""Accounts deleted by inactive-accounts are erased at every processor too, and their receipt
is complete only once every processor's operation is."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from flows.consent_deletion import consent_deletion_poll
from flows.inactive_accounts import inactive_accounts
from lifecycle.clients.simulator import ProcessorSimulator
from lifecycle.db.engine import get_engine
from lifecycle.db.schema import deletion_receipts, processor_deletions
from lifecycle.privacy import pseudonym
from lifecycle.processes.consent_deletion.queries import complete_receipts
from lifecycle.settings import Settings
from tests.support.clock import days_ago
from tests.support.factories import insert_user
from tests.support.processors import TOKEN, configure, simulator_processor


def due_for_deletion(engine: sa.Engine) -> str:
    return insert_user(engine, last_visit_at=days_ago(100), deletion_warning_sent_at=days_ago(35))


def receipt(engine: sa.Engine) -> sa.Row[Any]:
    with engine.connect() as conn:
        return conn.execute(sa.select(deletion_receipts)).one()


def requests(engine: sa.Engine) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(
            conn.execute(sa.select(processor_deletions).order_by(processor_deletions.c.processor))
        )


def test_receipt_is_complete_only_when_every_processor_erased_the_account(
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    lifecycle_env: Settings,
    simulator: ProcessorSimulator,
) -> None:
    with ProcessorSimulator(token=TOKEN, complete_after=None) as second:
        configure(
            monkeypatch,
            simulator_processor(simulator.url),
            simulator_processor(second.url, name="sim-two"),
        )
        user_id = due_for_deletion(engine)

        assert inactive_accounts().counts == {"deleted": 1}

        proof = receipt(engine)
        assert proof.completed_at is None  # not erased everywhere yet
        rows = requests(engine)
        assert [(r.processor, r.reason, r.status) for r in rows] == [
            ("sim", "account_deleted", "requested"),
            ("sim-two", "account_deleted", "requested"),
        ]
        assert {(r.receipt_id, r.user_id, r.subject_hash) for r in rows} == {
            (proof.id, user_id, pseudonym(user_id))
        }
        assert all(r.requested_at == proof.deleted_at for r in rows)

        assert consent_deletion_poll().counts == {"started": 2, "still_pending": 2}
        for server in (simulator, second):
            (operation,) = server.operations.values()
            assert operation.user_ids == [user_id]

        simulator.settle(next(iter(simulator.operations)), "complete")
        assert consent_deletion_poll().counts == {"completed": 1, "still_pending": 1}
        assert receipt(engine).completed_at is None

        second.settle(next(iter(second.operations)), "complete")
        assert consent_deletion_poll().counts == {"completed": 1}

    proof = receipt(engine)
    assert proof.completed_at is not None and proof.completed_at >= proof.deleted_at
    rows = requests(engine)
    assert {r.status for r in rows} == {"complete"}
    # The receipt and its operations prove erasure everywhere, without personal data.
    assert {r.user_id for r in rows} == {None}
    assert {r.subject_hash for r in rows} == {proof.subject_hash}


def test_without_processors_a_receipt_is_complete_at_once(
    engine: sa.Engine, lifecycle_env: Settings
) -> None:
    due_for_deletion(engine)
    assert inactive_accounts().counts == {"deleted": 1}
    proof = receipt(engine)
    assert proof.completed_at == proof.deleted_at
    assert requests(engine) == []


@pytest.mark.postgres
def test_two_runs_completing_a_receipts_last_operations_at_once_complete_it(
    postgres_url: str,
) -> None:
    """Each transaction marks one of the two operations complete; the receipt lock makes the
    second wait for the first and see both."""
    engine = get_engine(postgres_url)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        receipt_id = conn.execute(
            sa.insert(deletion_receipts)
            .values(
                subject_hash="h",
                reason="inactive_account",
                deleted_at=now,
                started_at=now,
                objects_deleted=0,
                rows_removed={},
            )
            .returning(deletion_receipts.c.id)
        ).scalar_one()
        conn.execute(
            sa.insert(processor_deletions),
            [
                {
                    "subject_hash": "h",
                    "reason": "account_deleted",
                    "requested_at": now,
                    "deadline_at": now,
                    "processor": name,
                    "receipt_id": receipt_id,
                    "status": "pending",
                    "created_at": now,
                }
                for name in ("a", "b")
            ],
        )

    def complete(conn: sa.Connection, processor: str) -> None:
        conn.execute(
            sa.update(processor_deletions)
            .where(processor_deletions.c.processor == processor)
            .values(status="complete")
        )
        complete_receipts(conn, [receipt_id], now)

    with engine.connect() as first, first.begin():
        complete(first, "a")
        second = threading.Thread(target=lambda: _in_transaction(engine, complete, "b"))
        second.start()
        second.join(timeout=1)
        assert second.is_alive()  # waiting for the receipt's lock
    second.join(timeout=10)
    assert receipt(engine).completed_at is not None


def _in_transaction(engine: sa.Engine, work: Any, *args: Any) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
        work(conn, *args)

"""A worker killed between a processor's start call and our record of its answer.

The vendor (the simulator) carries the call out; the worker dies before it hears back. No
idempotency key exists at Mixpanel or Segment, so this is the window where one extra operation
can appear. It must be bounded (one call, one lease) and visible, and reconciled where the
vendor lists its operations.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from flows.consent_deletion import consent_deletion_start
from lifecycle.clients.simulator import Fault, ProcessorSimulator
from lifecycle.db.schema import processor_deletion_steps, processor_deletions
from lifecycle.settings import Settings
from tests.support.clock import days_ago
from tests.support.factories import insert_user

#: A worker running one start batch, as the start-deletions task would (without Prefect).
WORKER = """
from datetime import UTC, datetime, timedelta
from lifecycle.clients.processors import open_processor
from lifecycle.common.batch import Breaker
from lifecycle.db.engine import get_engine
from lifecycle.processes.consent_deletion.steps import ConsentContext, ProcessorRun, start_batch
from lifecycle.settings import get_settings

settings = get_settings()
ctx = ConsentContext(
    engine=get_engine(settings.resolved_database_url),
    as_of=datetime.now(UTC),
    dry_run=False,
    lease=timedelta(seconds=settings.lease_seconds),
)
run = ProcessorRun(processor=open_processor(settings.consent_deletion.processors[0]))
start_batch(ctx, run, breaker=Breaker("sim"), after=None, limit=100)
"""


def test_a_worker_killed_mid_start_leaves_one_bounded_reconciled_operation(
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    consent_env: Settings,
    simulator: ProcessorSimulator,
) -> None:
    user_id = insert_user(
        engine, last_visit_at=days_ago(1), analytics_consent_revoked_at=days_ago(0.01)
    )
    monkeypatch.setenv("LIFECYCLE_DELETIONS_PAUSED", "true")
    assert consent_deletion_start().counts == {"requested": 1, "deletions_paused": 1}
    monkeypatch.setenv("LIFECYCLE_DELETIONS_PAUSED", "false")
    simulator.fail_next("start", Fault("hang_after_acting"))

    worker = subprocess.Popen([sys.executable, "-c", WORKER])
    try:
        deadline = time.monotonic() + 60
        while not simulator.operations and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(simulator.operations) == 1, "the worker never reached the processor"
    finally:
        worker.kill()
        worker.wait()

    # What the crash left: a claimed request, one attempt that may have acted, logged.
    with engine.connect() as conn:
        row = conn.execute(sa.select(processor_deletions)).one()
        steps = conn.execute(
            sa.select(processor_deletion_steps.c.step).order_by(processor_deletion_steps.c.id)
        ).scalars()
        logged = list(steps)
    assert (row.status, row.operation_id) == ("requested", None)
    assert (row.start_attempts, row.unconfirmed_starts) == (1, 1)
    assert row.lease_until > datetime.now(UTC)
    assert logged == ["requested", "start_called"]

    # Bounded: until the lease ends, no run calls the processor again for this user.
    assert consent_deletion_start().counts == {"requests_waiting": 1}
    assert simulator.calls["start"] == 1

    # After the lease: the vendor's listing shows the operation, which is adopted.
    with engine.begin() as conn:
        conn.execute(sa.update(processor_deletions).values(lease_until=datetime.now(UTC)))
    assert consent_deletion_start().counts == {"reconciled": 1}

    (operation,) = simulator.operations.values()
    assert operation.user_ids == [user_id] and simulator.calls["start"] == 1
    with engine.connect() as conn:
        row = conn.execute(sa.select(processor_deletions)).one()
    assert (row.status, row.operation_id, row.unconfirmed_starts) == ("pending", operation.id, 0)

"""The purge against other transactions on PostgreSQL: concurrent runs, rows the app holds."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from lifecycle.common.paging import Cursor
from lifecycle.db.engine import get_engine
from lifecycle.db.schema import attributes
from lifecycle.processes.ttl_purge import queries, steps
from lifecycle.processes.ttl_purge.steps import PurgeContext, PurgePlan, PurgeReport, Strategy
from lifecycle.settings import TtlPurgeSettings
from tests.support.ttl import EPOCH, insert_attributes, names

pytestmark = pytest.mark.postgres

ROWS = 3000  # about 50 blocks


@pytest.fixture
def engine(postgres_url: str) -> sa.Engine:
    engine = get_engine(postgres_url)
    insert_attributes(engine, [EPOCH - 10 - n if n % 2 else EPOCH + 86_400 for n in range(ROWS)])
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE attributes")
    return engine


def context(engine: sa.Engine) -> PurgeContext:
    now = datetime.now(UTC)
    return PurgeContext(
        engine=engine, as_of=now, deadline=now + timedelta(minutes=2), lock_wait_ms=20
    )


def target(engine: sa.Engine) -> queries.Target:
    return queries.resolve_target(engine, TtlPurgeSettings().targets[0])


def plan_for(engine: sa.Engine, strategy: Strategy, batch_size: int) -> PurgePlan:
    if strategy is Strategy.INDEX:
        return PurgePlan("attributes", strategy, batch_size)
    with engine.connect() as conn:
        extent = queries.extent(conn, target(engine))
    return PurgePlan("attributes", strategy, batch_size, extent=extent, batch_blocks=2)


def walk(engine: sa.Engine, plan: PurgePlan) -> PurgeReport:
    total = PurgeReport()
    after: Cursor | None = None
    while True:
        report = steps.purge_slice(context(engine), target(engine), plan, after)
        total.merge(report)
        if report.last is None:
            return total
        after = report.last


@pytest.mark.parametrize("strategy", [Strategy.BLOCKS, Strategy.INDEX])
def test_two_runs_at_once_purge_each_row_once(engine: sa.Engine, strategy: Strategy) -> None:
    plan = plan_for(engine, strategy, batch_size=50)
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(lambda _: walk(engine, plan), range(2)))
    assert sum(report.counts["purged"] for report in reports) == ROWS // 2
    assert len(names(engine)) == ROWS // 2
    if strategy is Strategy.BLOCKS:  # each range went to one run; the other skipped it or
        # found nothing left in it
        assert all(report.totals["lock_fallbacks"] == 0 for report in reports)


@pytest.mark.parametrize("strategy", [Strategy.BLOCKS, Strategy.INDEX])
def test_a_row_the_application_holds_is_skipped_not_waited_for(
    engine: sa.Engine, strategy: Strategy
) -> None:
    """The application has an expired row locked (say, refreshing it): the purge does not wait
    for it (at most ``lock_wait_ms``), purges everything else, and the row's new expiry counts."""
    held = "n1"  # expired
    app = engine.connect()
    app.begin()
    app.execute(sa.select(attributes.c.name).where(attributes.c.name == held).with_for_update())
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            purge = pool.submit(walk, engine, plan_for(engine, strategy, batch_size=5000))
            report = purge.result(timeout=60)  # it returns while the application holds the row
        app.execute(
            sa.update(attributes)
            .where(attributes.c.name == held)
            .values(ttl_timestamp=EPOCH + 3600)
        )
        app.commit()
    finally:
        app.close()
    assert report.counts["purged"] == ROWS // 2 - 1
    assert held in names(engine)
    if strategy is Strategy.BLOCKS:
        assert report.totals["lock_fallbacks"] == 1
    assert walk(engine, plan_for(engine, strategy, batch_size=5000)).counts["purged"] == 0


@pytest.mark.parametrize("strategy", [Strategy.BLOCKS, Strategy.INDEX])
def test_rows_a_writer_moves_are_never_lost_nor_wrongly_deleted(
    engine: sa.Engine, strategy: Strategy
) -> None:
    """A writer updating rows while a walk runs moves row versions around the table: an
    expired row moved behind the walk is left for the next run; no fresh row ever goes, and
    the walk does not end early because a row changed under it."""
    fresh = {f"n{n}" for n in range(0, ROWS, 2)}
    done = threading.Event()
    updates = 0

    def writer() -> None:
        nonlocal updates
        while not done.is_set():
            name = f"n{(updates * 7919) % ROWS}"
            with engine.begin() as conn:
                conn.execute(
                    sa.update(attributes).where(attributes.c.name == name).values(data="touched")
                )
            updates += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        first = walk(engine, plan_for(engine, strategy, batch_size=100))
    finally:
        done.set()
        thread.join()
    assert updates > 0
    assert fresh <= names(engine)
    assert first.counts["purged"] >= ROWS // 2 * 0.95
    second = walk(engine, plan_for(engine, strategy, batch_size=100))
    assert first.counts["purged"] + second.counts["purged"] == ROWS // 2
    assert names(engine) == fresh

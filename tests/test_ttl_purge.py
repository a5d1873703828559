"""The TTL purge on SQLite and PostgreSQL: what goes, what stays, monitoring, misconfiguration."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from flows.ttl_purge import ttl_purge
from lifecycle.cli import app
from lifecycle.common.paging import Cursor
from lifecycle.db.schema import attribute_index, attributes
from lifecycle.errors import ConfigError
from lifecycle.processes.ttl_purge import queries, steps
from lifecycle.processes.ttl_purge.queries import TargetError
from lifecycle.processes.ttl_purge.rules import cutoff
from lifecycle.processes.ttl_purge.steps import PurgeContext, PurgeReport, PurgeSummary
from lifecycle.settings import PurgeTarget, Settings, TtlPurgeSettings
from tests.support.commands import run_lifecycle
from tests.support.prefect_runs import flow_task_runs, run_artifacts, run_events
from tests.support.ttl import EPOCH, configure_targets, insert_attributes, insert_index, names

EXPIRED, FRESH = EPOCH - 3600, EPOCH + 86_400


@pytest.fixture
def reference_data(engine: sa.Engine) -> dict[str, set[str]]:
    """40 attributes (expired, fresh, permanent) and index entries (live, expired, orphaned)."""
    expiries = [EXPIRED - n if n % 3 == 0 else (FRESH if n % 3 == 1 else None) for n in range(40)]
    insert_attributes(engine, expiries)
    insert_index(
        engine,
        [
            ("live", "n1", FRESH),  # points at a fresh attribute
            ("expired", "n4", EXPIRED),  # expired itself
            ("orphan", "n3", FRESH),  # n3 is expired: gone after the purge, so orphaned
            ("dangling", "n999", FRESH),  # never had an attribute
            ("permanent", "n2", None),
        ],
    )
    return {
        "attributes": {f"n{n}" for n in range(40) if n % 3},
        "index": {"live", "permanent"},
    }


def purge_all(engine: sa.Engine, target: queries.Target, plan: steps.PurgePlan) -> PurgeReport:
    context = PurgeContext(
        engine=engine,
        as_of=datetime.now(UTC),
        deadline=datetime.now(UTC) + timedelta(minutes=5),
        lock_wait_ms=20,
    )
    total = PurgeReport()
    after: Cursor | None = None
    while True:
        report = steps.purge_slice(context, target, plan, after)
        total.merge(report)
        if report.last is None:
            return total
        after = report.last


def resolved(engine: sa.Engine, name: str, **changes: Any) -> queries.Target:
    (target,) = [t for t in TtlPurgeSettings().targets if t.name == name]
    return queries.resolve_target(engine, target.model_copy(update=changes))


def planned(engine: sa.Engine, target: queries.Target) -> steps.PurgePlan:
    now = datetime.now(UTC)
    with engine.connect() as conn:
        backlog = queries.measure_backlog(conn, target, cutoff("epoch", now), now)
        return steps.plan(conn, target, backlog, TtlPurgeSettings())


@pytest.mark.parametrize("strategy", ["blocks", "index"])
def test_each_walk_removes_exactly_the_expired_rows(
    engine: sa.Engine, reference_data: dict[str, set[str]], strategy: str
) -> None:
    target = resolved(engine, "attributes", strategy=strategy, batch_size=100)
    plan = planned(engine, target)
    assert plan.strategy == strategy
    small = steps.PurgePlan(  # small batches: several per walk
        plan.target, plan.strategy, batch_size=4, extent=plan.extent, batch_blocks=1
    )
    report = purge_all(engine, target, small)
    assert report.counts["purged"] == 14
    assert names(engine) == reference_data["attributes"]
    extent = plan.extent
    walked = 4 if extent is None else extent.end - extent.first  # one batch per block (rowid)
    assert report.totals["batches"] == walked

    index = resolved(engine, "attribute-index")
    report = purge_all(engine, index, planned(engine, index))
    assert (report.counts["purged"], report.counts["orphans_purged"]) == (1, 2)
    assert names(engine, attribute_index) == reference_data["index"]
    assert purge_all(engine, target, small).counts["purged"] == 0  # a rerun finds nothing


def test_flow_purges_reports_and_is_idempotent(
    engine: sa.Engine, lifecycle_env: Settings, reference_data: dict[str, set[str]]
) -> None:
    state = ttl_purge(check_dynamodb=False, return_state=True)
    summary = state.result()
    assert isinstance(summary, PurgeSummary)
    assert summary.counts == {"purged": 15, "orphans_purged": 2}
    by_target = {result.target: result for result in summary.targets}
    assert by_target["attributes"].expired_before == 14
    assert by_target["attributes"].expired_after == 0 and by_target["attributes"].finished
    assert by_target["attribute-index"].strategy == "blocks"  # orphans can be anywhere
    assert names(engine) == reference_data["attributes"]
    keys = {a.key for a in run_artifacts(state.state_details.flow_run_id)}
    assert "ttl-purge-backlog" in keys
    assert any((key or "").startswith("ttl-purge-run-") for key in keys)  # a summary of its own

    assert ttl_purge(check_dynamodb=False).counts == {}


def test_shards_walk_block_ranges_side_by_side_and_remove_exactly_the_expired_rows(
    engine: sa.Engine, lifecycle_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_attributes(engine, [EXPIRED - n if n % 3 == 0 else FRESH for n in range(1200)])
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(
            "ANALYZE attributes" if engine.dialect.name == "postgresql" else "ANALYZE"
        )
    configure_targets(
        monkeypatch,
        [
            {
                "name": "attributes",
                "table": "attributes",
                "expiry_column": "ttl_timestamp",
                "expiry_kind": "epoch",
                "strategy": "blocks",
                "batch_size": 100,
            }
        ],
    )

    state = ttl_purge(check_dynamodb=False, shards=3, return_state=True)

    summary = state.result()
    assert summary.counts == {"purged": 400}
    assert summary.targets[0].finished and summary.targets[0].expired_after == 0
    assert names(engine) == {f"n{n}" for n in range(1200) if n % 3}
    slices = [
        run
        for run in flow_task_runs(state.state_details.flow_run_id)
        if run.name.startswith("purge-ttl-slice")
    ]
    assert len(slices) == 3  # one walk per shard, each done within one slice


def test_dry_run_measures_and_changes_nothing(
    engine: sa.Engine, lifecycle_env: Settings, reference_data: dict[str, set[str]]
) -> None:
    before = names(engine), names(engine, attribute_index)
    summary = ttl_purge(dry_run=True, check_dynamodb=False)
    assert summary.counts == {"would_purge": 15, "would_purge_orphans": 1}
    assert (names(engine), names(engine, attribute_index)) == before
    assert {result.target: result.expired_after for result in summary.targets} == {
        "attributes": 14,
        "attribute-index": 1,
    }


def test_max_runtime_ends_a_walk_between_batches(
    engine: sa.Engine, reference_data: dict[str, set[str]]
) -> None:
    target = resolved(engine, "attributes", strategy="index")
    plan = steps.PurgePlan(target.name, steps.Strategy.INDEX, batch_size=5)
    start = datetime.now(UTC)
    ticks = count()
    context = PurgeContext(
        engine=engine,
        as_of=start,
        deadline=start + timedelta(seconds=2),
        lock_wait_ms=20,
        clock=lambda: start + timedelta(seconds=next(ticks)),  # a second per batch
    )
    report = steps.purge_slice(context, target, plan, None)
    assert report.counts["purged"] == 10 and report.totals["batches"] == 2
    assert report.last is not None  # where the next run would go on
    assert len(names(engine)) == 40 - 10


def test_timestamp_expiry_on_a_table_of_the_application(engine: sa.Engine) -> None:
    sessions = sa.Table(
        "app_sessions",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("expires", sa.DateTime(timezone=True), index=True),
    )
    sessions.create(engine)
    now = datetime.now(UTC)
    offsets = [-7200, -60, 60, 7200, None]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sessions),
            [
                {"id": n, "expires": None if s is None else now + timedelta(seconds=s)}
                for n, s in enumerate(offsets)
            ],
        )
    target = queries.resolve_target(
        engine,
        PurgeTarget(
            name="sessions", table="app_sessions", expiry_column="expires", expiry_kind="timestamp"
        ),
    )
    with engine.connect() as conn:
        backlog = queries.measure_backlog(conn, target, now, now)
    assert backlog.expired == 2 and backlog.oldest_age_seconds in (7199, 7200)
    plan = steps.PurgePlan("sessions", steps.Strategy.INDEX, batch_size=100)
    assert purge_all(engine, target, plan).counts["purged"] == 2
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(sessions.c.id)).scalars()) == [2, 3, 4]


@pytest.fixture
def odd_table(engine: sa.Engine) -> Iterator[None]:
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE odd (id INTEGER PRIMARY KEY, expires VARCHAR(20))"))
    yield


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"table": "missing"}, "table 'missing' does not exist"),
        ({"expiry_column": "ttl"}, "column attributes.ttl does not exist"),
        ({"expiry_kind": "timestamp"}, "not a timestamp as expiry_kind='timestamp' says"),
        ({"table": "odd", "expiry_column": "expires"}, "not an integer (Unix seconds)"),
        ({"table": "odd", "expiry_column": "id", "strategy": "index"}, "strategy 'index' needs"),
        (
            {"orphan_of": {"table": "attributes", "columns": {"owner": "actor_id"}}},
            "orphan_of column attributes.owner does not exist",
        ),
        (
            {"orphan_of": {"table": "gone", "columns": {"actor_id": "actor_id"}}},
            "orphan_of table 'gone' does not exist",
        ),
    ],
)
def test_misconfigured_targets_are_refused_by_name(
    engine: sa.Engine, odd_table: None, target: dict[str, Any], message: str
) -> None:
    base = {"name": "broken", "table": "attributes", "expiry_column": "ttl_timestamp"}
    config = PurgeTarget.model_validate(base | {"expiry_kind": "epoch"} | target)
    with pytest.raises(TargetError, match="target 'broken'") as raised:
        queries.resolve_target(engine, config)
    assert message in str(raised.value) and "LIFECYCLE_TTL_PURGE__TARGETS" in str(raised.value)


def test_a_bad_target_stops_the_run_before_anything_is_deleted(
    engine: sa.Engine,
    lifecycle_env: Settings,
    reference_data: dict[str, set[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good = {"name": "attributes", "table": "attributes", "expiry_column": "ttl_timestamp"}
    configure_targets(
        monkeypatch,
        [good | {"expiry_kind": "epoch"}, good | {"name": "late", "expiry_kind": "timestamp"}],
    )
    state = ttl_purge(check_dynamodb=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match="target 'late'"):
        state.result()
    assert len(names(engine)) == 40
    keys = {a.key for a in run_artifacts(state.state_details.flow_run_id)}
    assert any((key or "").startswith("ttl-purge-run-") for key in keys)  # failed runs too


def test_backlog_view_cli_and_alert_event_agree(
    engine: sa.Engine,
    lifecycle_env: Settings,
    reference_data: dict[str, set[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with engine.connect() as conn:
        view = {row.target: row for row in conn.execute(sa.text("SELECT * FROM ttl_backlog"))}
    assert view["attributes"].expired_rows == 14
    assert view["attributes"].oldest_expiry == EXPIRED - 39
    assert view["attribute-index"].expired_rows == 1
    if engine.dialect.name == "postgresql":
        assert view["attributes"].table_bytes > 0

    result = CliRunner().invoke(app, ["ttl-status"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "attributes " in line)
    assert " 14 " in line and " 40 " in line

    monkeypatch.setenv("LIFECYCLE_TTL_PURGE__BACKLOG_ALERT_ROWS", "10")
    state = ttl_purge(dry_run=True, check_dynamodb=False, return_state=True)
    (event,) = run_events(state.state_details.flow_run_id, prefix="lifecycle.ttl.backlog")
    assert event.resource.id == "lifecycle.ttl-target.attributes"
    assert event.payload["expired"] == 14 and event.payload["alert_rows"] == 10


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"dry_run": 1}, "dry_run"),
        ({"max_runtime": True}, "max_runtime"),
        ({"max_runtime": 5}, "max_runtime"),
        ({"targets": ["nope"]}, r"\['nope'\] are not configured"),
        ({"as_of": datetime.now(UTC) + timedelta(days=1)}, "in the future"),
    ],
)
def test_invalid_parameters_are_refused(
    engine: sa.Engine,
    lifecycle_env: Settings,
    reference_data: dict[str, set[str]],
    parameters: dict[str, object],
    message: str,
) -> None:
    with pytest.raises(Exception, match=message):
        ttl_purge(check_dynamodb=False, **parameters)  # type: ignore[call-overload]
    assert len(names(engine)) == 40


def test_index_entries_keep_their_attribute(engine: sa.Engine) -> None:
    """An index entry is an orphan only when no attribute matches on all three columns."""
    insert_attributes(engine, [FRESH])  # n0 of actor-0 in bucket b
    insert_index(engine, [("same", "n0", FRESH)])
    with engine.begin() as conn:
        conn.execute(
            sa.insert(attribute_index),
            {
                "index_name": "t",
                "index_key": "other-bucket",
                "actor_id": "actor-0",
                "bucket": "c",
                "name": "n0",
                "ttl_timestamp": FRESH,
            },
        )
    index = resolved(engine, "attribute-index")
    report = purge_all(engine, index, planned(engine, index))
    assert report.counts["orphans_purged"] == 1
    assert names(engine, attribute_index) == {"same"}
    assert names(engine, attributes) == {"n0"}


def test_ttl_status_on_an_unmigrated_database(tmp_path: Path) -> None:
    result = run_lifecycle(
        "ttl-status", LIFECYCLE_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}"
    )
    assert result.returncode == 2 and "lifecycle migrate" in result.stdout
    assert not (tmp_path / "empty.db").exists()


def test_index_walk_through_many_rows_sharing_one_expiry(engine: sa.Engine) -> None:
    """Rows with the same expiry are still taken a batch at a time (the walk's key is the
    expiry and the row's physical id), and every one of them goes."""
    insert_attributes(engine, [EXPIRED] * 25 + [FRESH] * 5)
    target = resolved(engine, "attributes", strategy="index")
    report = purge_all(engine, target, steps.PurgePlan("attributes", steps.Strategy.INDEX, 10))
    assert report.counts["purged"] == 25 and report.totals["batches"] == 3
    assert len(names(engine)) == 5

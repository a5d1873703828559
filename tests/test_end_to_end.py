"""End to end, as operators run it: a real Prefect server, the bootstrap, `prefect deploy --all`
from prefect.yaml, and a process worker started from another folder that fetches the code with
the pull step; flows run against real PostgreSQL.

The worker clones this repository, so these tests run the committed code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterStartTime,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from lifecycle.db.engine import get_engine
from lifecycle.db.schema import deletion_receipts
from tests.conftest import fresh_database
from tests.support.clock import days_ago
from tests.support.factories import insert_user, user_row
from tests.support.prefect_stack import (
    BIN,
    ROOT,
    PrefectServer,
    clean_environment,
    prefect_server,
    process_worker,
    run_command,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@dataclass(frozen=True)
class Stack:
    server: PrefectServer
    database_url: str
    data_dir: Path

    def run(self, name: str, parameters: dict[str, Any] | None = None) -> FlowRun:
        """Start a deployment's run and wait for its end (through the worker)."""
        with temporary_settings({PREFECT_API_URL: self.server.api_url}):
            run = run_deployment(name, parameters=parameters or {}, timeout=600, poll_interval=1)
        assert isinstance(run, FlowRun)
        return run


@pytest.fixture(scope="module")
def stack(postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("e2e")
    with fresh_database(postgres_admin_url) as database_url:
        settings = {
            "LIFECYCLE_DATABASE_URL": database_url,
            "LIFECYCLE_DATA_DIR": str(work / "data"),
            "LIFECYCLE_MAIL_RATE_PER_SECOND": "50",
            "LIFECYCLE_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/alerts",
        }
        with prefect_server(work / "prefect-home", work / "server.log") as server:
            env = clean_environment(PREFECT_API_URL=server.api_url, **settings)
            run_command([str(BIN / "python"), "-m", "deployments.bootstrap"], env)
            run_command([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
            elsewhere = work / "elsewhere"
            elsewhere.mkdir()
            worker_env = {**env, "LIFECYCLE_GIT_REPOSITORY": str(ROOT)}
            with process_worker("lifecycle", worker_env, elsewhere, work / "worker.log"):
                yield Stack(server=server, database_url=database_url, data_dir=work / "data")


def test_inactive_accounts_runs_on_a_worker_in_another_folder(stack: Stack) -> None:
    engine = get_engine(stack.database_url)
    warned = insert_user(engine, last_visit_at=days_ago(70))
    deleted = insert_user(
        engine, last_visit_at=days_ago(100), deletion_warning_sent_at=days_ago(35)
    )

    run = stack.run("inactive-accounts/inactive-accounts")

    assert run.state is not None and run.state.is_completed(), run.state
    row = user_row(engine, warned)
    assert row is not None and row.deletion_warning_sent_at is not None
    assert user_row(engine, deleted) is None
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(deletion_receipts)).scalar() == 1
    assert len(list((stack.data_dir / "outbox").glob("*.eml"))) == 1


def test_backfill_replays_three_days_one_after_another_in_date_order(stack: Stack) -> None:
    started = datetime.now(UTC)
    first = date.today() - timedelta(days=3)
    run = stack.run(
        "backfill/backfill",
        {
            "process": "inactive-accounts",
            "start": str(first),
            "dry_run": True,
            "end": str(first + timedelta(days=2)),
        },
    )

    assert run.state is not None and run.state.is_completed(), run.state
    with temporary_settings({PREFECT_API_URL: stack.server.api_url}):
        with get_client(sync_client=True) as client:
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)),
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=["inactive-accounts"])
                ),
            )
    children = [child for child in children if "as_of" in child.parameters]  # not the schedule's
    children.sort(key=lambda child: child.start_time or started)
    assert [child.parameters["as_of"][:10] for child in children] == [
        str(first + timedelta(days=offset)) for offset in range(3)
    ]
    assert all(child.state is not None and child.state.is_completed() for child in children)
    for earlier, later in zip(children, children[1:], strict=False):
        assert earlier.end_time is not None and later.start_time is not None
        assert earlier.end_time <= later.start_time  # strictly one after another

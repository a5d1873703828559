"""Pytest plugin: one real Prefect stack for the session, shared by every end-to-end module.

``e2e_stack`` starts, once: a migrated throwaway PostgreSQL database; on the session's moto
server an S3 bucket (user files) and two DynamoDB tables (cart activity with a stream, for
abandoned-carts; one whose native TTL ttl-purge switches on); the processor simulator (consent
deletion); a scripted HTTP server standing in for the marketing suite; then ``prefect server
start`` (SQLite, random port, no scheduler), the bootstrap, ``prefect deploy --all`` and a
process worker started from another folder, whose environment points every ``LIFECYCLE_*``
setting at those. Everything stops at the end of the session.

The worker clones this repository (the ``pull:`` step), so the runs execute committed code.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import boto3
import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import Artifact, FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from lifecycle.clients.simulator import ProcessorSimulator
from lifecycle.db.engine import get_engine
from tests.support.databases import fresh_database
from tests.support.dynamodb import REGION, create_cart_table
from tests.support.http_server import Reply, ScriptedHttpServer, scripted_server
from tests.support.moto_server import FAKE_AWS_ENV
from tests.support.prefect_stack import (
    BIN,
    ROOT,
    PrefectServer,
    clean_environment,
    prefect_server,
    process_worker,
    run_command,
)
from tests.support.processors import CONTACTS, TOKEN, simulator_processor
from tests.support.ttl import SECRET

#: Where the marketing suite stand-in takes abandoned carts.
MARKETING_PATH = "/carts"


@dataclass(frozen=True)
class E2EStack:
    """The running stack, and the systems its worker's flows talk to."""

    server: PrefectServer
    database_url: str
    data_dir: Path  # the worker's LIFECYCLE_DATA_DIR (outbox mail)
    moto_endpoint: str
    bucket: str  # S3: the users' files
    cart_table: str  # DynamoDB cart activity, with a stream: abandoned-carts
    ttl_table: str  # DynamoDB: ttl-purge switches its TTL on and counts what is expired
    simulator: ProcessorSimulator  # the one consent-deletion processor, "sim"
    marketing: ScriptedHttpServer  # answers 202 to every cart

    @property
    def engine(self) -> sa.Engine:
        return get_engine(self.database_url)

    def start(self, name: str, parameters: dict[str, Any] | None = None) -> UUID:
        """Start a run of a deployment ("flow/deployment"); its id, without waiting."""
        with temporary_settings({PREFECT_API_URL: self.server.api_url}):
            run = run_deployment(name, parameters=parameters or {}, timeout=0)
        assert isinstance(run, FlowRun)
        return run.id

    def run(self, name: str, parameters: dict[str, Any] | None = None) -> FlowRun:
        """Start a run of a deployment and wait for its end (through the worker)."""
        return self.wait(self.start(name, parameters))

    def wait(self, flow_run_id: UUID, timeout: float = 600) -> FlowRun:
        """A run once it reached a final state (Completed, Failed, Crashed, Cancelled)."""
        deadline = time.monotonic() + timeout
        with temporary_settings({PREFECT_API_URL: self.server.api_url}):
            with get_client(sync_client=True) as client:
                while True:
                    run = client.read_flow_run(flow_run_id)
                    if run.state is not None and run.state.is_final():
                        return run
                    assert time.monotonic() < deadline, f"{flow_run_id} is still {run.state}"
                    time.sleep(1)

    def artifacts(self, flow_run_id: UUID) -> list[Artifact]:
        """The artifacts a run created, read from the stack's server."""
        with temporary_settings({PREFECT_API_URL: self.server.api_url}):
            with get_client(sync_client=True) as client:
                return client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                    )
                )


def worker_settings(stack: E2EStack) -> dict[str, str]:
    """The worker's ``LIFECYCLE_*`` settings and AWS credentials: every system of the stack."""
    processor = simulator_processor(stack.simulator.url)
    return {
        "LIFECYCLE_DATABASE_URL": stack.database_url,
        "LIFECYCLE_DATA_DIR": str(stack.data_dir),
        "LIFECYCLE_MAIL_RATE_PER_SECOND": "50",
        "LIFECYCLE_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/alerts",
        "LIFECYCLE_STORAGE_URL": f"s3://{stack.bucket}",
        "LIFECYCLE_S3_ENDPOINT_URL": stack.moto_endpoint,
        "LIFECYCLE_DYNAMODB_ENDPOINT_URL": stack.moto_endpoint,
        "LIFECYCLE_AWS_REGION": REGION,
        "LIFECYCLE_TTL_PURGE__DYNAMODB_TABLES": json.dumps(
            [{"table": stack.ttl_table, "attribute": "ttl"}]
        ),
        "LIFECYCLE_ABANDONED_CARTS__MARKETING_URL": f"{stack.marketing.url}{MARKETING_PATH}",
        "LIFECYCLE_ABANDONED_CARTS__MARKETING_SECRET": SECRET,
        "LIFECYCLE_ABANDONED_CARTS__DYNAMODB_TABLES": json.dumps([{"table": stack.cart_table}]),
        "LIFECYCLE_CONSENT_DELETION__PROCESSORS": json.dumps([processor]),
        "LIFECYCLE_CONSENT_DELETION__TECHNICAL_CONTACTS": json.dumps(CONTACTS),
        **{name: value for name, value in FAKE_AWS_ENV.items() if value is not None},
    }


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the e2e tests last (in their order), all on one pytest-xdist worker: the stack then
    starts once, after every other test of that worker, and its server and worker do not load
    the machine while most of the suite runs."""
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(pytest.mark.xdist_group("e2e"))
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


@pytest.fixture(scope="session")
def e2e_stack(
    postgres_admin_url: str, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[E2EStack]:
    """The stack described above, started once for the session and stopped at its end."""
    work = tmp_path_factory.mktemp("e2e")
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION).create_bucket(Bucket=bucket)
    with ExitStack() as running:
        marketing = running.enter_context(scripted_server())
        marketing.default = Reply(202, {"accepted": True})
        simulator = running.enter_context(ProcessorSimulator(token=TOKEN, complete_after=None))
        server = running.enter_context(prefect_server(work / "prefect-home", work / "server.log"))
        stack = E2EStack(
            server=server,
            database_url=running.enter_context(fresh_database(postgres_admin_url)),
            data_dir=work / "data",
            moto_endpoint=moto_endpoint,
            bucket=bucket,
            cart_table=create_cart_table(moto_endpoint),
            ttl_table=create_cart_table(moto_endpoint, stream=False),
            simulator=simulator,
            marketing=marketing,
        )
        env = clean_environment(PREFECT_API_URL=server.api_url, **worker_settings(stack))
        run_command([str(BIN / "python"), "-m", "deployments.bootstrap"], env)
        run_command([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
        elsewhere = work / "elsewhere"
        elsewhere.mkdir()
        worker_env = {**env, "LIFECYCLE_GIT_REPOSITORY": str(ROOT)}
        running.enter_context(
            process_worker("lifecycle", worker_env, elsewhere, work / "worker.log")
        )
        yield stack

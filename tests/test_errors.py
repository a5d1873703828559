"""Errors decide retries: configuration and permanent errors never retry, the rest do."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun
from prefect.states import Failed

from flows.inactive_accounts import inactive_accounts
from lifecycle.clients.mail.backends import PermanentMailError, TransientMailError
from lifecycle.errors import ConfigError, PermanentError, RunFailed, TransientError
from lifecycle.settings import Settings
from tasks._prefect import retry_transient
from tasks.inactive_accounts import preflight


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ConfigError("LIFECYCLE_X is wrong"), False),
        (PermanentError("rejected"), False),
        (PermanentMailError("550"), False),
        (RunFailed("2 failed"), False),
        (TransientError("throttled"), True),
        (TransientMailError("421"), True),
        (sa.exc.OperationalError("SELECT 1", {}, Exception("server closed")), True),
    ],
)
def test_retry_condition_decides_by_kind(error: Exception, retried: bool) -> None:
    state: Any = Failed(data=error)
    assert retry_transient(preflight, cast(TaskRun, None), state) is retried


def test_bad_configuration_fails_the_run_at_once(
    engine: sa.Engine, lifecycle_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule = {"table": "comments", "column": "author_id", "action": "delete"}
    monkeypatch.setenv("LIFECYCLE_DELETION_PLAN", json.dumps({"references": [rule]}))

    state = inactive_accounts(return_state=True)

    assert state.is_failed() and "'comments', which does not exist" in str(state.message)
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    assert [(run.name.split("-")[0], run.run_count) for run in task_runs] == [("preflight", 1)]

"""prefect.yaml is what `prefect deploy --all` accepts, and bootstrap prepares the server for it.

Prefect 3.8.8 silently ignores unknown keys in a deployment (its models use ``extra="ignore"``),
so a typo such as ``schedule_s:`` or ``concurency_limit:`` deploys "fine" and does nothing.
These tests are what catch that.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
import zoneinfo
from pathlib import Path
from typing import Any

import prefect
import pytest
import yaml
from prefect.cli.deploy._models import (
    ConcurrencyLimitSpec,
    DeploymentConfig,
    PrefectYamlModel,
    RawScheduleConfig,
    WorkPoolConfig,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule
from prefect.events import emit_event
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.flows import Flow, load_flow_from_entrypoint

from deployments.bootstrap import EVENT_ALERTS, RUN_FAILED, WORK_POOL, bootstrap
from tests.support.http_server import Reply, ScriptedHttpServer

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"

# The keys Prefect 3.8.8 reads from prefect.yaml come from the pydantic models that
# `prefect deploy` validates the file with: prefect/cli/deploy/_models.py
# (`PrefectYamlModel`, `DeploymentConfig`, `WorkPoolConfig`, `ConcurrencyLimitSpec`,
# `RawScheduleConfig`), loaded by `_load_deploy_configs_and_actions` in
# prefect/cli/deploy/_config.py and consumed by `_run_single_deploy` in prefect/cli/deploy/_core.py.
# All but RawScheduleConfig use extra="ignore"; their field names are the accepted keys.
TOP_LEVEL_KEYS = {field.alias or name for name, field in PrefectYamlModel.model_fields.items()}
DEPLOYMENT_KEYS = set(DeploymentConfig.model_fields)
WORK_POOL_KEYS = set(WorkPoolConfig.model_fields)
CONCURRENCY_KEYS = set(ConcurrencyLimitSpec.model_fields)
SCHEDULE_KEYS = set(RawScheduleConfig.model_fields)
SCHEDULE_SELECTORS = ("cron", "interval", "rrule")

#: Our own convention: shared pieces live under `definitions:` as YAML anchors (prefect.yaml).
PROJECT_TOP_LEVEL_KEYS = {"definitions"}

#: Parameters each flow documents in the Prefect UI form.
DOCUMENTED_PARAMETERS = {
    "inactive-accounts": {
        "as_of",
        "dry_run",
        "warn_after_days",
        "delete_after_days",
        "batch_size",
        "max_deletions",
    },
    "ttl-purge": {
        "as_of",
        "dry_run",
        "targets",
        "max_runtime",
        "vacuum",
        "check_dynamodb",
        "shards",
    },
    "abandoned-carts": {
        "as_of",
        "dry_run",
        "batch_size",
        "max_runtime",
        "read_streams",
        "sweep_dynamodb",
    },
    "consent-deletion-start": {"as_of", "dry_run", "max_concurrency"},
    "activation-mail": {"dry_run", "min_age_seconds", "batch_size"},
    "consent-deletion-poll": {"as_of", "dry_run", "max_concurrency", "escalate_after"},
}

SECRET_PATTERNS = {
    "password/secret/token assignment": re.compile(
        r"(?i)[\w-]*(password|passwd|secret|token|api[_-]?key|access[_-]?key)[\w-]*\s*[=:]\s*"
        r"(?![\s'\"]*(\{\{|$))\S+"
    ),
    "credentials in a URL": re.compile(r"[a-z][a-z0-9+.-]*://[^\s/:@]+:[^\s/@]+@"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def _raw() -> dict[str, Any]:
    loaded = yaml.safe_load(PREFECT_YAML.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _deployments() -> list[dict[str, Any]]:
    deployments = _raw().get("deployments")
    assert isinstance(deployments, list) and deployments, "prefect.yaml defines no deployments"
    return deployments


def _ids() -> list[str]:
    return [str(d.get("name")) for d in _deployments()]


@pytest.fixture(params=_deployments(), ids=_ids())
def deployment(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(request.param)


@pytest.fixture
def flow(deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Flow[Any, Any]:
    # Entrypoints are relative to the project root, as for `prefect deploy`.
    monkeypatch.chdir(ROOT)
    loaded: object = load_flow_from_entrypoint(deployment["entrypoint"])
    assert isinstance(loaded, Flow)
    return loaded


# --- shape of prefect.yaml --------------------------------------------------------------------


def test_known_key_lists_are_plausible() -> None:
    # If a Prefect upgrade renames these models, fail loudly instead of comparing to nothing.
    assert {"name", "entrypoint", "schedules", "work_pool", "concurrency_limit"} <= DEPLOYMENT_KEYS
    assert {"prefect-version", "deployments", "pull"} <= TOP_LEVEL_KEYS
    assert {"cron", "interval", "rrule", "timezone", "active", "parameters"} <= SCHEDULE_KEYS


def test_top_level_keys() -> None:
    unknown = set(_raw()) - TOP_LEVEL_KEYS - PROJECT_TOP_LEVEL_KEYS
    assert not unknown, f"prefect.yaml: keys Prefect ignores: {sorted(unknown)}"


def test_prefect_accepts_the_file() -> None:
    model = PrefectYamlModel.model_validate(_raw())
    assert [d.name for d in model.deployments] == _ids()
    assert model.prefect_version == "3.8.8"


def test_deployment_names_unique() -> None:
    assert len(set(_ids())) == len(_ids())


def test_deployment_keys(deployment: dict[str, Any]) -> None:
    unknown = set(deployment) - DEPLOYMENT_KEYS
    assert not unknown, f"{deployment.get('name')}: keys Prefect ignores: {sorted(unknown)}"
    for required in ("name", "entrypoint", "description", "work_pool", "tags"):
        assert deployment.get(required), f"{deployment.get('name')}: {required} missing"


def test_work_pool(deployment: dict[str, Any]) -> None:
    work_pool = deployment["work_pool"]
    assert isinstance(work_pool, dict)
    assert not set(work_pool) - WORK_POOL_KEYS, sorted(set(work_pool) - WORK_POOL_KEYS)
    assert work_pool["name"] == WORK_POOL  # the pool deployments.bootstrap creates


def test_schedules(deployment: dict[str, Any], flow: Flow[Any, Any]) -> None:
    assert "schedule" not in deployment, "use `schedules:` (a list)"
    schedules = deployment.get("schedules") or []
    assert isinstance(schedules, list)
    for schedule in schedules:
        assert isinstance(schedule, dict)
        unknown = set(schedule) - SCHEDULE_KEYS
        assert not unknown, f"schedule keys Prefect does not know: {sorted(unknown)}"
        selectors = [key for key in SCHEDULE_SELECTORS if schedule.get(key) is not None]
        assert len(selectors) == 1, f"exactly one of {SCHEDULE_SELECTORS}, got {selectors}"
        RawScheduleConfig.model_validate(schedule)

        timezone = schedule.get("timezone", "UTC")
        zoneinfo.ZoneInfo(timezone)
        if "cron" in selectors:
            CronSchedule(cron=schedule["cron"], timezone=timezone)
        elif "interval" in selectors:
            IntervalSchedule(interval=schedule["interval"], timezone=timezone)
        else:
            RRuleSchedule(rrule=schedule["rrule"], timezone=timezone)
        assert isinstance(schedule.get("active", True), bool)
        parameters = schedule.get("parameters") or {}
        assert set(parameters) <= set(flow.parameters.properties), parameters


def test_concurrency_limit(deployment: dict[str, Any]) -> None:
    limit = deployment.get("concurrency_limit")
    if limit is None:
        return
    if isinstance(limit, int):
        assert limit >= 1
        return
    assert isinstance(limit, dict)
    assert not set(limit) - CONCURRENCY_KEYS, sorted(set(limit) - CONCURRENCY_KEYS)
    assert isinstance(limit.get("limit"), int) and limit["limit"] >= 1
    strategies = {strategy.value for strategy in ConcurrencyLimitStrategy}
    assert limit.get("collision_strategy", "ENQUEUE") in strategies
    grace = limit.get("grace_period_seconds")
    assert grace is None or (isinstance(grace, int) and grace > 0)


def test_deployment_parameters_exist(deployment: dict[str, Any], flow: Flow[Any, Any]) -> None:
    assert set(deployment.get("parameters") or {}) <= set(flow.parameters.properties)


def test_event_triggers(deployment: dict[str, Any], flow: Flow[Any, Any]) -> None:
    """Trigger keys Prefect knows (it ignores the others), and parameters the flow takes."""
    for trigger in deployment.get("triggers") or []:
        assert trigger["type"] == "event", trigger
        fields = set(DeploymentEventTrigger.model_fields)
        assert not set(trigger) - fields - {"type"}, sorted(set(trigger) - fields)
        DeploymentEventTrigger.model_validate(trigger)
        assert set(trigger.get("parameters") or {}) <= set(flow.parameters.properties)
        assert trigger["expect"] and trigger["match"]


# --- entrypoints --------------------------------------------------------------------------------


def test_entrypoint_loads_a_flow_named_like_the_deployment(
    deployment: dict[str, Any], flow: Flow[Any, Any]
) -> None:
    path, _, function = deployment["entrypoint"].partition(":")
    assert (ROOT / path).is_file() and function
    assert flow.name == deployment["name"]


def test_parameters_are_bounded(deployment: dict[str, Any], flow: Flow[Any, Any]) -> None:
    properties = flow.parameters.properties
    documented = DOCUMENTED_PARAMETERS.get(deployment["name"], set())
    assert documented <= set(properties), sorted(documented - set(properties))
    assert not flow.parameters.required, "every parameter needs a safe default"
    for name, spec in properties.items():
        if spec.get("type") == "integer":
            assert "minimum" in spec and "maximum" in spec, f"{name} has no bounds: {spec}"
            assert spec["minimum"] <= spec["default"] <= spec["maximum"], name


def test_inactive_accounts_parameter_defaults() -> None:
    flow: Flow[Any, Any] = load_flow_from_entrypoint(
        str(ROOT / "flows" / "inactive_accounts.py") + ":inactive_accounts"
    )
    properties = flow.parameters.properties
    assert properties["dry_run"]["default"] is False
    assert properties["as_of"]["default"] is None
    assert {"format": "date-time", "type": "string"} in properties["as_of"]["anyOf"]
    bounds = {
        name: (
            properties[name]["minimum"],
            properties[name]["default"],
            properties[name]["maximum"],
        )
        for name in ("warn_after_days", "delete_after_days", "batch_size", "max_deletions")
    }
    assert bounds == {
        "warn_after_days": (1, 60, 3650),
        "delete_after_days": (2, 90, 3650),
        "batch_size": (1, 1000, 10_000),
        "max_deletions": (0, 1000, 10_000_000),
    }


def test_parameters_are_documented(deployment: dict[str, Any], flow: Flow[Any, Any]) -> None:
    properties = flow.parameters.properties
    undocumented = sorted(name for name, spec in properties.items() if not spec.get("description"))
    assert not undocumented, f"{flow.name}: parameters without a description: {undocumented}"
    untitled = sorted(name for name, spec in properties.items() if spec.get("title") == name)
    assert not untitled, f"{flow.name}: parameters the UI shows by their code name: {untitled}"


# --- no secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "found"),
    [
        ("password=hunter2", True),
        ("  smtp_password: hunter2", True),
        ("url: postgresql://app:s3cret@db.internal/app", True),
        ("key: AKIAIOSFODNN7EXAMPLE", True),
        ("password: '{{ prefect.blocks.secret.smtp-password }}'", False),
        ('password: "{{ $SMTP_PASSWORD }}"', False),
        ("url: postgresql://app@db.internal/app", False),
        ("# Workers read LIFECYCLE_* settings, so no secret is stored here.", False),
    ],
)
def test_secret_patterns(line: str, found: bool) -> None:
    assert any(p.search(line) for p in SECRET_PATTERNS.values()) is found


def test_no_secret_literals_in_prefect_yaml() -> None:
    hits = [
        f"line {number}: {kind}"
        for number, line in enumerate(PREFECT_YAML.read_text().splitlines(), start=1)
        for kind, pattern in SECRET_PATTERNS.items()
        if pattern.search(line)
    ]
    assert not hits, hits


# --- bootstrap ------------------------------------------------------------------------------------


@pytest.fixture
def limit_name(monkeypatch: pytest.MonkeyPatch) -> str:
    for key in list(os.environ):
        if key.startswith("LIFECYCLE_"):
            monkeypatch.delenv(key)
    name = f"test-bootstrap-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("LIFECYCLE_MAIL_LIMIT_NAME", name)
    return name


def test_bootstrap_is_idempotent(limit_name: str) -> None:
    bootstrap()
    bootstrap()
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(WORK_POOL)
        limit = client.read_global_concurrency_limit_by_name(limit_name)
        same_name = [
            gcl
            for gcl in client.read_global_concurrency_limits(limit=200)
            if gcl.name == limit_name
        ]
    assert pool.name == WORK_POOL and pool.type == "process"
    assert (limit.limit, limit.slot_decay_per_second, limit.active) == (1, 0.0, True)
    assert len(same_name) == 1


def test_bootstrap_resets_a_changed_limit(limit_name: str) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=limit_name, limit=5, slot_decay_per_second=2.0)
        )
    bootstrap()
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(limit_name)
    assert (limit.limit, limit.slot_decay_per_second) == (1, 0.0)


@prefect.flow(name="lifecycle-test-failing")
def failing_flow() -> None:
    raise RuntimeError("disk on fire")


@pytest.fixture
def alert_hook(
    limit_name: str, monkeypatch: pytest.MonkeyPatch, http_server: ScriptedHttpServer
) -> ScriptedHttpServer:
    """The alert webhook: a local HTTP server answering 200 at /hook."""
    http_server.reply("POST", "/hook", Reply(200, {}))
    monkeypatch.setenv("LIFECYCLE_ALERT_WEBHOOK_URL", f"{http_server.url}/hook")
    return http_server


def test_bootstrap_alerts_on_failed_runs_through_a_webhook(alert_hook: ScriptedHttpServer) -> None:
    http_server = alert_hook
    bootstrap()
    bootstrap()  # idempotent: one automation of that name, updated in place
    with get_client(sync_client=True) as client:
        named = [a for a in client.read_automations() if a.name == RUN_FAILED]
    assert len(named) == 1

    with prefect.tags("lifecycle"):
        failing_flow(return_state=True)

    deadline = time.monotonic() + 30
    while not http_server.received("POST", "/hook"):
        assert time.monotonic() < deadline, "no alert reached the webhook"
        time.sleep(0.2)
    [alert] = http_server.received("POST", "/hook")
    body = alert.json()
    assert body["subject"].startswith("[lifecycle] lifecycle-test-failing run ")
    assert "Failed" in body["subject"] and "disk on fire" in body["text"]


def test_bootstrap_routes_events_that_need_a_person_to_the_webhook(
    alert_hook: ScriptedHttpServer,
) -> None:
    http_server = alert_hook
    bootstrap()
    with get_client(sync_client=True) as client:
        names = {a.name for a in client.read_automations()}
    assert {alert.name for alert in EVENT_ALERTS} <= names

    operation = f"op-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + 30
    while not http_server.received("POST", "/hook"):  # automations load a moment after saving
        emit_event(
            event="lifecycle.consent.deletion.escalated",
            resource={
                "prefect.resource.id": f"lifecycle.deletion-operation.{operation}",
                "prefect.resource.name": "mixpanel deletion",
            },
            payload={"operation_id": operation, "subject": "pseudonym"},
        )
        assert time.monotonic() < deadline, "no alert reached the webhook"
        time.sleep(2)
    body = http_server.received("POST", "/hook")[0].json()
    assert (
        body["subject"]
        == "[lifecycle] A third-party deletion is still pending past escalate_after."
    )
    assert f"mixpanel deletion: operation {operation} is still pending" in body["text"]
    assert "lifecycle-consent-escalated" in body["text"]


def test_workers_fetch_the_code_from_the_repository_their_environment_names() -> None:
    [step] = _raw()["pull"]
    assert step == {
        "prefect.deployments.steps.git_clone": {"repository": "{{ $LIFECYCLE_GIT_REPOSITORY }}"}
    }
    assert all("pull" not in deployment for deployment in _deployments())


def test_bootstrap_caps_each_processor(limit_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sim-{uuid.uuid4().hex[:8]}"
    processor = {"kind": "rest", "name": name, "base_url": "https://x.test", "token": "t"}
    monkeypatch.setenv("LIFECYCLE_CONSENT_DELETION__PROCESSORS", json.dumps([processor]))
    monkeypatch.setenv("LIFECYCLE_CONSENT_DELETION__TECHNICAL_CONTACTS", '["ops@example.com"]')
    bootstrap()
    bootstrap()
    with get_client(sync_client=True) as client:
        limit = client.read_concurrency_limit_by_tag(f"processor:{name}")
    assert limit.concurrency_limit == 1

"""Deletion processors against real local servers: the simulator, and Mixpanel- and
Segment-shaped fakes. What is retried, what is sent once, and what counts as a changed schema."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from lifecycle.clients.http import AuthenticationFailed, OutcomeUnknown, RetryPolicy
from lifecycle.clients.processors import (
    SIMULATOR_CONTRACT,
    OperationState,
    Pacer,
    RestProcessor,
    SchemaChanged,
    open_processor,
)
from lifecycle.clients.simulator import Fault, FaultKind, ProcessorSimulator
from lifecycle.errors import ConfigError, DependencyDown
from lifecycle.settings import ConsentDeletionSettings
from tests.support.http_server import Reply, ScriptedHttpServer
from tests.support.processors import PROJECT_TOKEN, TOKEN, MixpanelServer, SegmentServer


def processor_for(
    url: str, *, budget: float = 2.0, timeout: float = 0.5, **contract: Any
) -> RestProcessor:
    return RestProcessor(
        name="sim",
        base_url=url,
        token=SecretStr(TOKEN),
        contract=SIMULATOR_CONTRACT,
        timeout_seconds=timeout,
        retry=RetryPolicy(budget=budget, first_delay=0.01, max_delay=0.2),
    )


def configured(**processor: Any) -> Any:
    group = ConsentDeletionSettings.model_validate(
        {"processors": [processor], "technical_contacts": ["ops@example.com"]}
    )
    return group.processors[0]


# --- the generic contract, on the simulator ------------------------------------------------------


def test_start_then_status_until_complete(simulator: ProcessorSimulator) -> None:
    processor = processor_for(simulator.url)
    operation_id = processor.start(["u-1", "u-2"])
    assert simulator.operations[operation_id].user_ids == ["u-1", "u-2"]
    assert processor.status(operation_id).state is OperationState.PENDING
    simulator.settle(operation_id, "complete")
    status = processor.status(operation_id)
    assert (status.state, status.vendor_status) == (OperationState.COMPLETE, "complete")


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("not_json", "is not JSON"),
        ("missing_status", "has no 'status' string"),
        ("unknown_status", "unknown status value 'archived'"),
    ],
)
def test_a_changed_status_answer_is_a_schema_change_never_pending(
    simulator: ProcessorSimulator, fault: FaultKind, message: str
) -> None:
    processor = processor_for(simulator.url)
    operation_id = processor.start(["u-1"])
    simulator.fail_next("status", Fault(fault))
    with pytest.raises(SchemaChanged, match=message) as raised:
        processor.status(operation_id)
    assert "u-1" not in str(raised.value)
    assert simulator.calls["status"] == 1  # not retried: retrying cannot fix a contract


def test_a_start_answer_without_an_operation_id_is_a_schema_change(
    simulator: ProcessorSimulator,
) -> None:
    simulator.fail_next("start", Fault("missing_status"))
    with pytest.raises(SchemaChanged, match="no operation id at id"):
        processor_for(simulator.url).start(["u-1"])


def test_429_storm_is_waited_out_as_told(simulator: ProcessorSimulator) -> None:
    processor = processor_for(simulator.url, budget=5.0)
    operation_id = processor.start(["u-1"])
    simulator.fail_next("status", *[Fault("throttle", retry_after=0.05)] * 4)
    assert processor.status(operation_id).state is OperationState.PENDING
    assert simulator.calls["status"] == 5


def test_a_storm_past_the_budget_is_a_dependency_down(simulator: ProcessorSimulator) -> None:
    processor = processor_for(simulator.url, budget=0.3)
    operation_id = processor.start(["u-1"])
    simulator.fail_next("status", *[Fault("throttle", retry_after=0.2)] * 10)
    with pytest.raises(DependencyDown, match="HTTP 429") as raised:
        processor.status(operation_id)
    assert raised.value.exhausted


def test_5xx_on_a_status_call_is_retried(simulator: ProcessorSimulator) -> None:
    processor = processor_for(simulator.url)
    operation_id = processor.start(["u-1"])
    simulator.fail_next("status", Fault("error"), Fault("unavailable"))
    assert processor.status(operation_id).state is OperationState.PENDING
    assert simulator.calls["status"] == 3


def test_a_status_call_that_times_out_is_retried_then_given_up(
    simulator: ProcessorSimulator,
) -> None:
    processor = processor_for(simulator.url, timeout=0.2, budget=0.1)
    operation_id = processor.start(["u-1"])
    simulator.fail_next("status", *[Fault("hang")] * 5)
    with pytest.raises(DependencyDown, match="ReadTimeout"):
        processor.status(operation_id)
    assert simulator.calls["status"] >= 2


@pytest.mark.parametrize("fault", ["error", "hang", "drop_after_acting"])
def test_a_start_whose_outcome_is_unknown_is_sent_once(
    simulator: ProcessorSimulator, fault: FaultKind
) -> None:
    simulator.fail_next("start", Fault(fault))
    with pytest.raises(OutcomeUnknown, match="not sent again"):
        processor_for(simulator.url, timeout=0.3).start(["u-1"])
    assert simulator.calls["start"] == 1
    acted = 1 if fault == "drop_after_acting" else 0
    assert len(simulator.operations) == acted  # the simulator carried it out, or not


@pytest.mark.parametrize("fault", ["throttle", "unavailable"])
def test_a_start_refused_before_acting_is_sent_again(
    simulator: ProcessorSimulator, fault: FaultKind
) -> None:
    simulator.fail_next("start", Fault(fault, retry_after=0.01))
    operation_id = processor_for(simulator.url).start(["u-1"])
    assert list(simulator.operations) == [operation_id]
    assert simulator.calls["start"] == 2


def test_a_refused_token_is_an_authentication_error(simulator: ProcessorSimulator) -> None:
    processor = RestProcessor(
        name="sim", base_url=simulator.url, token=SecretStr("wrong"), contract=SIMULATOR_CONTRACT
    )
    with pytest.raises(AuthenticationFailed) as raised:
        processor.start(["u-1"])
    assert isinstance(raised.value, ConfigError) and "wrong" not in str(raised.value)
    assert simulator.operations == {}


def test_listing_finds_recent_operations(simulator: ProcessorSimulator) -> None:
    processor = processor_for(simulator.url)
    ids = [processor.start([f"u-{i}"]) for i in range(150)]  # two pages of 100
    listed = list(processor.recent(datetime.now(UTC) - timedelta(minutes=5)))
    assert sorted(op.operation_id for op in listed) == sorted(ids)
    assert {frozenset({"u-0"})} == {op.user_ids for op in listed if op.operation_id == ids[0]}


def test_pacer_hands_out_slots_one_interval_apart() -> None:
    clock = [0.0]
    waits: list[float] = []
    pacer = Pacer(4.0, clock=lambda: clock[0], sleep=waits.append)
    for _ in range(4):
        pacer.wait()
    assert waits == [0.25, 0.5, 0.75]  # the first goes at once


def test_pacer_holds_the_rate_across_threads() -> None:
    starts: list[float] = []
    pacer = Pacer(50.0)
    lock = threading.Lock()

    def call() -> None:
        pacer.wait()
        with lock:
            starts.append(datetime.now(UTC).timestamp())

    threads = [threading.Thread(target=call) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(starts) - min(starts) >= 9 / 50 - 0.01


# --- Mixpanel ------------------------------------------------------------------------------------


def mixpanel(server: MixpanelServer, **settings: Any) -> RestProcessor:
    return open_processor(
        configured(
            kind="mixpanel",
            token=TOKEN,
            project_token=PROJECT_TOKEN,
            base_url=server.url,
            retry_budget_seconds=1.0,
            **settings,
        )
    )


@pytest.mark.parametrize("list_answer", [False, True], ids=["openapi", "prose-reference"])
def test_mixpanel_create_and_check(list_answer: bool) -> None:
    with MixpanelServer(list_answer=list_answer, complete_after=None) as server:
        processor = mixpanel(server)
        operation_id = processor.start(["u-1", "u-2"])
        assert server.bodies == [{"distinct_ids": ["u-1", "u-2"], "compliance_type": "GDPR"}]
        assert all(query["token"] == PROJECT_TOKEN for query in server.queries)
        assert processor.status(operation_id).vendor_status == "STAGING"
        server.settle(operation_id, "complete")
        assert processor.status(operation_id).state is OperationState.COMPLETE
        server.settle(operation_id, "failed")
        assert processor.status(operation_id).state is OperationState.FAILED
        assert not processor.can_list  # Mixpanel documents no listing


def test_mixpanel_status_values_map_as_documented() -> None:
    contract = mixpanel(MixpanelServer()).contract
    assert {value: state.value for value, state in contract.states.items()} == {
        "PENDING": "pending",
        "STAGING": "pending",
        "STARTED": "pending",
        "UNKNOWN": "pending",
        "SUCCESS": "complete",
        "FAILURE": "failed",
        "REVOKED": "failed",
        "NOT_FOUND": "failed",
    }


@pytest.mark.parametrize(
    ("fault", "message"),
    [("unknown_status", "ARCHIVED"), ("missing_status", "no 'results.status'")],
)
def test_mixpanel_schema_change(fault: FaultKind, message: str) -> None:
    with MixpanelServer() as server:
        processor = mixpanel(server)
        operation_id = processor.start(["u-1"])
        server.fail_next("status", Fault(fault))
        with pytest.raises(SchemaChanged, match=message):
            processor.status(operation_id)


def test_mixpanel_settings_keep_to_the_documented_limits() -> None:
    settings = configured(kind="mixpanel", token=TOKEN, project_token=PROJECT_TOKEN)
    assert (settings.rate_per_second, settings.ids_per_request, settings.concurrency) == (
        1,
        1999,
        1,
    )
    with pytest.raises(ValueError, match="ids_per_request"):
        configured(kind="mixpanel", token=TOKEN, project_token=PROJECT_TOKEN, ids_per_request=2000)


# --- Segment -------------------------------------------------------------------------------------


def segment(server: SegmentServer) -> RestProcessor:
    return open_processor(
        configured(kind="segment", token=TOKEN, base_url=server.url, retry_budget_seconds=1.0)
    )


def test_segment_create_check_and_list() -> None:
    with SegmentServer(complete_after=None) as server:
        processor = segment(server)
        operation_id = processor.start(["u-1"])
        assert server.bodies == [
            {
                "regulationType": "SUPPRESS_WITH_DELETE",
                "subjectType": "USER_ID",
                "subjectIds": ["u-1"],
            }
        ]
        assert processor.status(operation_id).vendor_status == "RUNNING"
        server.settle(operation_id, "complete")
        assert processor.status(operation_id).state is OperationState.COMPLETE
        for i in range(120):
            processor.start([f"v-{i}"])
        listed = list(processor.recent(datetime.now(UTC) - timedelta(hours=1)))
        assert len(listed) == 121 and any(op.operation_id == operation_id for op in listed)


def test_segment_unknown_overall_status_is_a_schema_change() -> None:
    with SegmentServer() as server:
        processor = segment(server)
        operation_id = processor.start(["u-1"])
        server.fail_next("status", Fault("unknown_status"))
        with pytest.raises(SchemaChanged, match="PAUSED"):
            processor.status(operation_id)


# --- tokens ---------------------------------------------------------------------------------------


def test_token_from_a_secret_block(http_server: ScriptedHttpServer) -> None:
    http_server.reply("POST", "/deletions", Reply(202, {"id": "op-1"}))
    settings = configured(kind="rest", name="blocky", base_url=http_server.url, token_block="t")
    processor = open_processor(settings, resolve_secret=lambda name: SecretStr(f"from-{name}"))
    assert processor.start(["u-1"]) == "op-1"
    assert http_server.received()[0].headers["Authorization"] == "Bearer from-t"


def test_a_secret_block_needs_a_resolver() -> None:
    settings = configured(
        kind="rest", name="blocky", base_url="http://127.0.0.1:9", token_block="t"
    )
    with pytest.raises(ConfigError, match="Prefect Secret block 't'"):
        open_processor(settings)

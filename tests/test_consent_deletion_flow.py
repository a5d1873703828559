"""The consent-deletion flows end to end against the local processor simulator."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.events.worker import EventsWorker

from flows.consent_deletion import consent_deletion_poll, consent_deletion_start
from lifecycle.clients.simulator import Fault, ProcessorSimulator
from lifecycle.common.third_parties import legal_deadline
from lifecycle.db.schema import processor_alerts, processor_deletion_steps, processor_deletions
from lifecycle.privacy import pseudonym
from lifecycle.settings import Settings
from tasks.consent_deletion import emit_consent_revoked
from tests.support.clock import days_ago
from tests.support.commands import run_lifecycle
from tests.support.factories import insert_user
from tests.support.http_server import Reply, ScriptedHttpServer
from tests.support.outbox import outbox, text_of
from tests.support.prefect_runs import run_events, run_text
from tests.support.processors import (
    CONTACTS,
    TOKEN,
    configure,
    simulator_processor,
    unique_id,
)

#: Tests of behaviour that does not depend on the database run on SQLite only.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def revoke(engine: sa.Engine, count: int, *, minutes_ago: float = 5) -> list[str]:
    """Users who revoked analytics consent a few minutes ago."""
    revoked = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return [
        insert_user(engine, last_visit_at=days_ago(1), analytics_consent_revoked_at=revoked)
        for _ in range(count)
    ]


def operations(engine: sa.Engine) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(processor_deletions).order_by(processor_deletions.c.id)))


def steps_of(engine: sa.Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(conn.execute(sa.select(processor_deletion_steps.c.step)).scalars())


def started_at(engine: sa.Engine) -> datetime:
    return max(row.started_at for row in operations(engine))


# --- the happy path ------------------------------------------------------------------------------


def test_revocations_are_started_once_polled_and_completed(
    engine: sa.Engine, consent_env: Settings, simulator: ProcessorSimulator
) -> None:
    user_ids = revoke(engine, 3)
    insert_user(engine, last_visit_at=days_ago(1))  # consent kept: left alone

    first = consent_deletion_start()

    assert first.counts == {"requested": 3, "started": 3}
    rows = operations(engine)
    assert sorted(row.user_id for row in rows) == sorted(user_ids)
    assert {row.status for row in rows} == {"pending"}
    assert {row.operation_id for row in rows} == set(simulator.operations)
    assert sorted(u for op in simulator.operations.values() for u in op.user_ids) == sorted(
        user_ids
    )
    for row in rows:
        assert row.subject_hash == pseudonym(row.user_id)
        assert row.deadline_at == legal_deadline(row.requested_at)
        assert (row.start_attempts, row.unconfirmed_starts, row.claim_id) == (1, 0, None)

    assert consent_deletion_start().counts == {}  # nothing twice
    assert len(simulator.operations) == 3

    for operation_id in simulator.operations:
        simulator.settle(operation_id, "complete")
    summary = consent_deletion_poll()

    assert summary.counts == {"completed": 3}
    assert [r for r in summary.rows() if r["count"]] == [{"outcome": "completed", "count": 3}]
    assert [r["outcome"] for r in summary.rows()][:6] == [
        "started",
        "still_pending",
        "completed",
        "failed",
        "escalated",
        "anomalies",
    ]
    rows = operations(engine)
    assert {row.status for row in rows} == {"complete"}
    assert all(row.completed_at and row.checks == 1 and row.user_id for row in rows)
    assert steps_of(engine) == {"requested": 3, "start_called": 3, "started": 3, "complete": 3}
    assert consent_deletion_poll().counts == {}
    assert outbox(consent_env) == []


@sqlite_only
def test_a_new_revocation_after_consent_was_given_again_is_a_new_request(
    engine: sa.Engine, consent_env: Settings, simulator: ProcessorSimulator
) -> None:
    (user_id,) = revoke(engine, 1, minutes_ago=60)
    consent_deletion_start()
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE users SET analytics_consent_revoked_at = :at WHERE id = :id"),
            {"at": (datetime.now(UTC) - timedelta(minutes=1)).replace(tzinfo=None), "id": user_id},
        )
    assert consent_deletion_start().counts == {"requested": 1, "started": 1}
    assert len(simulator.operations) == 2


# --- escalation -----------------------------------------------------------------------------------


def test_slow_completion_is_escalated_exactly_once_after_three_days(
    engine: sa.Engine, consent_env: Settings, simulator: ProcessorSimulator
) -> None:
    (user_id,) = revoke(engine, 1)
    consent_deletion_start()
    started = started_at(engine)
    (operation_id,) = simulator.operations

    before = consent_deletion_poll(as_of=started + timedelta(days=3) - timedelta(seconds=1))
    assert before.counts == {"still_pending": 1} and outbox(consent_env) == []

    state = consent_deletion_poll(as_of=started + timedelta(days=3), return_state=True)
    assert state.is_completed()
    assert state.result().counts == {"still_pending": 1, "escalated": 1}
    mails = outbox(consent_env)
    assert sorted(m["To"] for m in mails) == sorted(CONTACTS)
    for mail in mails:
        body = text_of(mail)
        assert operation_id in body and user_id in body and "not complete after 3 days" in body
        assert "@" not in body.replace(mail["To"], "")  # names no user's address
    (event,) = [
        e
        for e in run_events(state.state_details.flow_run_id)
        if e.event == "lifecycle.consent.deletion.escalated"
    ]
    assert event.payload == {"operation_id": operation_id, "subject": pseudonym(user_id)}
    assert event.resource.id == f"lifecycle.deletion-operation.{operation_id}"

    later = consent_deletion_poll(as_of=started + timedelta(days=4))
    assert later.counts == {"still_pending": 1} and len(outbox(consent_env)) == 2
    row = operations(engine)[0]
    assert row.status == "pending" and row.escalated_at is not None and row.checks == 3

    simulator.settle(operation_id, "complete")
    assert consent_deletion_poll().counts == {"completed": 1}
    assert len(outbox(consent_env)) == 2


@sqlite_only
def test_escalate_after_parameter_overrides_the_setting(
    engine: sa.Engine, consent_env: Settings, simulator: ProcessorSimulator
) -> None:
    revoke(engine, 1)
    consent_deletion_start()
    as_of = started_at(engine) + timedelta(hours=2)
    assert consent_deletion_poll(as_of=as_of).counts == {"still_pending": 1}
    summary = consent_deletion_poll(as_of=as_of, escalate_after="PT2H")  # type: ignore[call-overload]
    assert summary.counts == {"still_pending": 1, "escalated": 1}
    assert "not complete after 2 hours" in text_of(outbox(consent_env)[0])


@sqlite_only
def test_failed_operation_is_reported_once_and_fails_the_run(
    engine: sa.Engine, consent_env: Settings, simulator: ProcessorSimulator
) -> None:
    revoke(engine, 2)
    consent_deletion_start()
    failing, completing = sorted(simulator.operations)
    simulator.settle(failing, "failed")
    simulator.settle(completing, "complete")

    state = consent_deletion_poll(return_state=True)

    assert state.is_failed() and "1 deletions failed" in str(state.message)
    mails = outbox(consent_env)
    assert len(mails) == 2 and all(failing in text_of(m) for m in mails)
    assert "failed (the vendor reports failed)" in text_of(mails[0])
    assert consent_deletion_poll(return_state=True).is_completed()  # reported once
    assert len(outbox(consent_env)) == 2

    # An operator checked it at the vendor and asks again: a new operation, the history kept.
    failed_row = next(r for r in operations(engine) if r.status == "failed")
    result = run_lifecycle(
        "consent-requeue",
        str(failed_row.id),
        str(failed_row.id + 100),
        LIFECYCLE_DATABASE_URL=str(consent_env.database_url),
        LIFECYCLE_DATA_DIR=str(consent_env.data_dir),
    )
    assert result.returncode == 0 and "requeued 1 failed deletions" in result.stdout
    assert consent_deletion_start().counts == {"started": 1}
    assert len(simulator.operations) == 3
    assert steps_of(engine)["requeued"] == 1


# --- trouble at the processor --------------------------------------------------------------------


@sqlite_only
def test_429_storm_is_waited_out_without_an_alert(
    engine: sa.Engine, consent_env: Settings, simulator: ProcessorSimulator
) -> None:
    revoke(engine, 2)
    simulator.fail_next("start", *[Fault("throttle", retry_after=0.05)] * 3)
    assert consent_deletion_start().counts == {"requested": 2, "started": 2}
    simulator.fail_next("status", *[Fault("throttle", retry_after=0.05)] * 6)
    assert consent_deletion_poll().counts == {"still_pending": 2}
    assert outbox(consent_env) == []


@sqlite_only
@pytest.mark.parametrize("fault", ["unavailable", "hang"], ids=["5xx", "timeouts"])
def test_a_processor_that_stops_answering_is_alerted_once_until_resolved(
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    consent_env: Settings,
    simulator: ProcessorSimulator,
    fault: str,
) -> None:
    configure(monkeypatch, simulator_processor(simulator.url, timeout_seconds=0.3))
    revoke(engine, 1)
    consent_deletion_start()
    simulator.fail_next("status", *[Fault(fault)] * 100)  # type: ignore[arg-type]

    state = consent_deletion_poll(return_state=True)

    assert state.is_failed() and "1 processor anomalies" in str(state.message)
    mails = outbox(consent_env)
    assert len(mails) == 2 and "processor sim: its API is not answering" in mails[0]["Subject"]
    row = operations(engine)[0]
    assert (row.status, row.checks, row.claim_id) == ("pending", 0, None)

    assert consent_deletion_poll(return_state=True).is_failed()
    assert len(outbox(consent_env)) == 2  # the same broken API is not mailed every hour
    with engine.connect() as conn:
        alert = conn.execute(sa.select(processor_alerts)).one()
    assert (alert.kind, alert.occurrences, alert.resolved_at) == ("not_answering", 2, None)

    simulator.clear_faults()
    assert consent_deletion_poll().counts == {"still_pending": 1}
    simulator.fail_next("status", *[Fault(fault)] * 100)  # type: ignore[arg-type]
    assert consent_deletion_poll(return_state=True).is_failed()
    assert len(outbox(consent_env)) == 4  # resolved, then back: mailed again


@sqlite_only
def test_a_changed_schema_is_alerted_never_read_as_pending(
    engine: sa.Engine, consent_env: Settings, simulator: ProcessorSimulator
) -> None:
    revoke(engine, 2)
    consent_deletion_start()
    simulator.fail_next("status", Fault("unknown_status"), Fault("not_json"))

    assert consent_deletion_poll(return_state=True).is_failed()

    row = operations(engine)[0]
    assert (row.status, row.checks, row.vendor_status) == ("pending", 0, None)
    mails = outbox(consent_env)
    assert len(mails) == 2 and "answers in a shape we do not know" in mails[0]["Subject"]
    assert "unknown status value 'archived'" in text_of(mails[0])
    with engine.connect() as conn:
        assert conn.execute(sa.select(processor_alerts.c.kind)).scalars().all() == [
            "schema_changed"
        ]

    # Starts still work, but say nothing of status answers: the alert stays open, not re-sent.
    revoke(engine, 1)
    assert consent_deletion_start().counts == {"requested": 1, "started": 1}
    simulator.fail_next("status", Fault("missing_status"))
    assert consent_deletion_poll(return_state=True).is_failed()
    assert len(outbox(consent_env)) == 2


@sqlite_only
def test_a_refused_token_is_alerted_and_nothing_is_lost(
    engine: sa.Engine, consent_env: Settings, simulator: ProcessorSimulator
) -> None:
    revoke(engine, 2)
    simulator.token = "rotated-by-the-vendor"

    state = consent_deletion_start(return_state=True)

    assert state.is_failed()
    rows = operations(engine)
    assert {(r.status, r.unconfirmed_starts, r.claim_id) for r in rows} == {("requested", 0, None)}
    assert "its API refuses our credentials" in outbox(consent_env)[0]["Subject"]
    simulator.token = TOKEN
    assert consent_deletion_start().counts == {"started": 2}


@sqlite_only
def test_a_rejected_id_fails_alone_when_ids_go_in_groups(
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    lifecycle_env: Settings,
    http_server: ScriptedHttpServer,
) -> None:
    settings = configure(
        monkeypatch, simulator_processor(http_server.url, ids_per_request=2, list_path=None)
    )
    revoke(engine, 2)
    http_server.reply(
        "POST",
        "/deletions",
        Reply(422, {"error": "one id is not a distinct id"}),
        Reply(202, {"id": "op-1"}),
        Reply(422, {"error": "not a distinct id"}),
    )

    state = consent_deletion_start(return_state=True)

    assert state.is_failed()
    assert [len(r.json()["user_ids"]) for r in http_server.received("POST")] == [2, 1, 1]
    assert sorted(r.status for r in operations(engine)) == ["failed", "pending"]
    assert sorted(steps_of(engine).elements()).count("start_rejected") == 1
    assert "rejects some of our calls" in outbox(settings)[0]["Subject"]


# --- the crash window --------------------------------------------------------------------------


@pytest.mark.parametrize("listing", [True, False], ids=["vendor-lists", "no-listing"])
def test_a_lost_start_answer_is_bounded_and_reconciled_where_the_vendor_lists(
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    lifecycle_env: Settings,
    simulator: ProcessorSimulator,
    listing: bool,
) -> None:
    extra = {} if listing else {"list_path": None}
    configure(monkeypatch, simulator_processor(simulator.url, **extra))
    (user_id,) = revoke(engine, 1)
    simulator.fail_next("start", Fault("drop_after_acting"))

    state = consent_deletion_start(return_state=True)

    assert state.is_failed()  # alerted: start_unknown
    (row,) = operations(engine)
    assert (row.status, row.start_attempts, row.unconfirmed_starts) == ("requested", 1, 1)
    assert row.lease_until > datetime.now(UTC)  # tried again only after the lease
    assert len(simulator.operations) == 1  # the vendor acted
    # Within the lease: no second call; the request waits.
    assert consent_deletion_start().counts == {"requests_waiting": 1}
    assert simulator.calls["start"] == 1

    with engine.begin() as conn:  # the lease runs out
        conn.execute(sa.update(processor_deletions).values(lease_until=datetime.now(UTC)))
    summary = consent_deletion_start()

    (row,) = operations(engine)
    assert row.status == "pending"
    if listing:
        assert summary.counts == {"reconciled": 1}
        assert (len(simulator.operations), row.unconfirmed_starts) == (1, 0)
        assert row.operation_id == next(iter(simulator.operations))
    else:  # started again: one extra operation at the vendor, counted on the record
        assert summary.counts == {"started": 1}
        assert (len(simulator.operations), row.unconfirmed_starts) == (2, 1)
    assert all(op.user_ids == [user_id] for op in simulator.operations.values())


# --- configuration and parameters ---------------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize(
    ("processor", "message"),
    [
        ({"token": None}, "has no token"),
        ({"token": ""}, "must not be empty"),
        ({"token": None, "token_block": "no-such-block"}, "'no-such-block'"),
        ({"kind": "mixpanel", "name": "mixpanel", "base_url": None}, "needs project_token"),
        ({"status_path": "/deletions"}, "must contain {operation_id}"),
        ({"concurrency": True}, "not true/false"),
        ({"escalate_after": 3}, "ISO 8601 duration"),
    ],
)
def test_bad_configuration_is_refused_before_anything_is_requested(
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    lifecycle_env: Settings,
    simulator: ProcessorSimulator,
    processor: dict[str, Any],
    message: str,
) -> None:
    settings = simulator_processor(simulator.url) | processor
    monkeypatch.setenv("LIFECYCLE_CONSENT_DELETION__PROCESSORS", json.dumps([settings]))
    monkeypatch.setenv("LIFECYCLE_CONSENT_DELETION__TECHNICAL_CONTACTS", json.dumps(CONTACTS))
    revoke(engine, 1)

    state = consent_deletion_start(return_state=True)

    assert state.is_failed() and message in str(state.message)
    assert operations(engine) == [] and dict(simulator.calls) == {}


@sqlite_only
def test_contacts_are_required_once_a_processor_is_enabled(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, consent_env: Settings
) -> None:
    monkeypatch.delenv("LIFECYCLE_CONSENT_DELETION__TECHNICAL_CONTACTS")
    state = consent_deletion_poll(return_state=True)
    assert state.is_failed() and "TECHNICAL_CONTACTS" in str(state.message)


@sqlite_only
@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": 257}, "max_concurrency"),
        ({"max_concurrency": True}, "max_concurrency"),
        ({"escalate_after": 72}, "ISO 8601 duration"),
        ({"escalate_after": "PT5M"}, "escalate_after"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"as_of": datetime(2026, 1, 1)}, "time zone"),
        ({"as_of": datetime.now(UTC) + timedelta(days=400)}, "days ahead"),
    ],
)
def test_invalid_parameters_are_refused(
    engine: sa.Engine, consent_env: Settings, parameters: dict[str, Any], message: str
) -> None:
    revoke(engine, 1)
    with pytest.raises(Exception, match=message):
        consent_deletion_poll(**parameters)
    assert operations(engine) == []


@sqlite_only
def test_dry_run_changes_nothing_and_calls_no_processor(
    engine: sa.Engine, consent_env: Settings, simulator: ProcessorSimulator
) -> None:
    revoke(engine, 2)
    consent_deletion_start()
    revoke(engine, 1)
    before = operations(engine)
    calls = dict(simulator.calls)

    start = consent_deletion_start(dry_run=True)
    poll = consent_deletion_poll(dry_run=True, as_of=started_at(engine) + timedelta(days=4))

    assert start.counts == {"would_request": 1}
    assert poll.counts == {"would_check": 2, "would_escalate": 2, "still_pending": 2}
    assert operations(engine) == before and dict(simulator.calls) == calls
    assert outbox(consent_env) == []


@sqlite_only
def test_kill_switch_pauses_every_start(
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    consent_env: Settings,
    simulator: ProcessorSimulator,
) -> None:
    monkeypatch.setenv("LIFECYCLE_DELETIONS_PAUSED", "true")
    revoke(engine, 2)
    assert consent_deletion_start().counts == {"requested": 2, "deletions_paused": 2}
    assert dict(simulator.calls) == {}
    monkeypatch.setenv("LIFECYCLE_DELETIONS_PAUSED", "false")
    assert consent_deletion_poll().counts == {"started": 2, "still_pending": 2}


# --- concurrency and privacy ---------------------------------------------------------------------


def test_two_concurrent_runs_start_check_and_escalate_each_operation_once(
    engine: sa.Engine, consent_env: Settings, simulator: ProcessorSimulator
) -> None:
    user_ids = revoke(engine, 24)
    consent_deletion_start(dry_run=True)  # warm up the client in this thread first

    with ThreadPoolExecutor(max_workers=2) as pool:
        starts = [pool.submit(consent_deletion_start, return_state=True) for _ in range(2)]
        assert all(run.result().is_completed() for run in starts)
    started = [u for op in simulator.operations.values() for u in op.user_ids]
    assert sorted(started) == sorted(user_ids)  # each user once, at one vendor operation each
    assert steps_of(engine)["started"] == 24

    as_of = started_at(engine) + timedelta(days=3)
    with ThreadPoolExecutor(max_workers=2) as pool:
        polls = [
            pool.submit(consent_deletion_poll, as_of=as_of, return_state=True) for _ in range(2)
        ]
        totals: Counter[str] = Counter()
        for run in polls:
            totals.update(run.result().result().counts)
    assert totals["escalated"] == 24
    mentioned = Counter(
        operation_id
        for mail in outbox(consent_env)
        if mail["To"] == CONTACTS[0]
        for operation_id in re.findall(r"operation (op-\w+)", text_of(mail))
    )
    assert set(mentioned) == set(simulator.operations) and set(mentioned.values()) == {1}


@sqlite_only
def test_no_raw_id_token_or_address_in_logs_artifacts_or_events(
    engine: sa.Engine, consent_env: Settings, simulator: ProcessorSimulator
) -> None:
    user_ids = revoke(engine, 2)
    consent_deletion_start()
    simulator.fail_next("status", Fault("unknown_status"))
    as_of = started_at(engine) + timedelta(days=3)

    state = consent_deletion_poll(as_of=as_of, return_state=True)

    assert state.is_failed()  # a schema change, and both escalated
    assert len(outbox(consent_env)) == 4
    text = run_text(state.state_details.flow_run_id)
    assert "lifecycle.consent.deletion.escalated" in text
    assert TOKEN not in text and "@example.com" not in text
    for user_id in user_ids:
        assert user_id not in text


@sqlite_only
def test_the_revocation_event_names_the_user_by_pseudonym_only(consent_env: Settings) -> None:
    user_id = unique_id()
    emit_consent_revoked(user_id)
    EventsWorker.drain_all(timeout=10)
    wanted = EventFilter(event=EventNameFilter(name=["lifecycle.consent.revoked"]))
    with get_client(sync_client=True) as client:
        for _ in range(50):  # the server stores events asynchronously
            events = client.read_events(filter=wanted, limit=50).events
            mine = [e for e in events if e.resource.id == f"lifecycle.user.{pseudonym(user_id)}"]
            if mine:
                break
            time.sleep(0.2)
    assert len(mine) == 1 and user_id not in mine[0].model_dump_json()

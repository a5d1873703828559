"""The ``inactive-accounts`` flow end to end, on SQLite and PostgreSQL, with local storage."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.inactive_accounts import inactive_accounts
from lifecycle.common.paging import key_ranges
from lifecycle.db.schema import deletion_receipts, features, scoreboard_entries, users
from lifecycle.privacy import pseudonym
from lifecycle.processes.inactive_accounts.steps import SweepSummary
from lifecycle.settings import Settings
from tests.support.clock import NOW, days_ago
from tests.support.factories import insert_user, storage_of, user_row
from tests.support.outbox import outbox
from tests.support.prefect_runs import run_events, run_text


def table_count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


@pytest.fixture
def population(engine: sa.Engine, lifecycle_env: Settings) -> dict[str, str]:
    """One user per case, with files, a feature and scores for the one due deletion."""
    ids = {
        "due_warning": insert_user(engine, last_visit_at=days_ago(61), name="<b>Eve</b> & Co"),
        "due_deletion": insert_user(
            engine, last_visit_at=days_ago(95), deletion_warning_sent_at=days_ago(31)
        ),
        "waiting": insert_user(
            engine, last_visit_at=days_ago(80), deletion_warning_sent_at=days_ago(10)
        ),
        "paying": insert_user(engine, last_visit_at=days_ago(300), subscription_status="active"),
        "trial": insert_user(
            engine, last_visit_at=days_ago(70), free_trial_ends_at=NOW + timedelta(days=3)
        ),
        "active": insert_user(engine, last_visit_at=days_ago(2)),
    }
    storage = storage_of(lifecycle_env)
    for name, user_id in ids.items():
        for file in ("avatar.png", "docs/a.txt", "docs/b.txt"):
            storage.put(f"users/{user_id}/{file}", name.encode())
    with engine.begin() as conn:
        conn.execute(
            sa.insert(features),
            [
                {"title": "dark mode", "proposed_by": ids["due_deletion"]},
                {"title": "export", "proposed_by": ids["active"]},
            ],
        )
        conn.execute(
            sa.insert(scoreboard_entries),
            [
                {"period": "week", "user_id": ids["due_deletion"], "score": 10},
                {"period": "month", "user_id": ids["due_deletion"], "score": 30},
                {"period": "week", "user_id": ids["active"], "score": 5},
            ],
        )
    return ids


def test_warns_and_deletes_then_is_idempotent(
    engine: sa.Engine, lifecycle_env: Settings, population: dict[str, str]
) -> None:
    summary = inactive_accounts()

    assert isinstance(summary, SweepSummary)
    assert summary.counts == {"warned": 1, "deleted": 1}
    assert summary.objects_deleted == 3

    mails = outbox(lifecycle_env)
    assert [m["To"] for m in mails] == [user_row(engine, population["due_warning"]).email]  # type: ignore[union-attr]
    html = next(p for p in mails[0].walk() if p.get_content_type() == "text/html")
    body = html.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "&lt;b&gt;Eve&lt;/b&gt; &amp; Co" in body and "<b>Eve</b>" not in body
    assert "30 days" in body

    warned = user_row(engine, population["due_warning"])
    assert warned is not None and warned.deletion_warning_sent_at is not None
    assert warned.warning_claim_id is None

    gone = population["due_deletion"]
    assert user_row(engine, gone) is None
    storage = storage_of(lifecycle_env)
    assert storage.count_prefix(f"users/{gone}/") == 0
    assert storage.count_prefix(f"users/{population['active']}/") == 3
    with engine.connect() as conn:
        assert conn.execute(
            sa.select(features.c.title, features.c.proposed_by).order_by(features.c.id)
        ).all() == [
            ("dark mode", None),
            ("export", population["active"]),
        ]
        assert conn.execute(sa.select(scoreboard_entries.c.user_id)).scalars().all() == [
            population["active"]
        ]
        receipt = conn.execute(sa.select(deletion_receipts)).one()
    assert receipt.subject_hash == pseudonym(gone)
    assert receipt.objects_deleted == 3
    assert receipt.rows_removed == {"features.proposed_by": 1, "scoreboard_entries.user_id": 2}
    for key in ("waiting", "paying", "trial", "active"):
        row = user_row(engine, population[key])
        assert row is not None and row.deletion_started_at is None

    again = inactive_accounts()
    assert again.counts == {}
    assert len(outbox(lifecycle_env)) == 1
    assert table_count(engine, users) == 5


def test_dry_run_changes_nothing(
    engine: sa.Engine, lifecycle_env: Settings, population: dict[str, str]
) -> None:
    with engine.connect() as conn:
        before = conn.execute(sa.select(users).order_by(users.c.id)).all()

    summary = inactive_accounts(dry_run=True)

    assert summary.counts == {"would_warn": 1, "would_delete": 1}
    with engine.connect() as conn:
        assert conn.execute(sa.select(users).order_by(users.c.id)).all() == before
    assert outbox(lifecycle_env) == []
    assert storage_of(lifecycle_env).count_prefix(f"users/{population['due_deletion']}/") == 3


def test_max_deletions_stops_before_changing_anything(
    engine: sa.Engine, lifecycle_env: Settings, population: dict[str, str]
) -> None:
    insert_user(engine, last_visit_at=days_ago(120), deletion_warning_sent_at=days_ago(40))

    state = inactive_accounts(max_deletions=1, return_state=True)

    assert state.is_failed()
    assert "2 accounts are due deletion, more than max_deletions=1" in str(state.message)
    assert table_count(engine, users) == 7
    assert outbox(lifecycle_env) == []

    assert inactive_accounts(max_deletions=2).counts == {"warned": 1, "deleted": 2}


def test_backfill_uses_as_of(
    engine: sa.Engine, lifecycle_env: Settings, population: dict[str, str]
) -> None:
    summary = inactive_accounts(as_of=NOW - timedelta(days=5), dry_run=True)
    # Five days earlier the due_warning user was 56 days inactive, the warning 26 days old.
    assert summary.counts == {}


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"warn_after_days": 0}, "warn_after_days"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 10_001}, "batch_size"),
        ({"max_deletions": -1}, "max_deletions"),
        ({"warn_after_days": 90, "delete_after_days": 90}, "must be greater than"),
        ({"as_of": NOW + timedelta(days=1)}, "in the future"),
        ({"as_of": datetime(2026, 1, 1)}, "time zone"),
    ],
)
def test_invalid_parameters_are_refused(
    engine: sa.Engine,
    lifecycle_env: Settings,
    population: dict[str, str],
    parameters: dict[str, object],
    message: str,
) -> None:
    with pytest.raises(Exception, match=message):
        inactive_accounts(**parameters)  # type: ignore[call-overload]
    assert table_count(engine, users) == 6
    assert outbox(lifecycle_env) == []


def test_small_batches_cover_everyone_with_one_task_per_batch(
    engine: sa.Engine, lifecycle_env: Settings
) -> None:
    for i in range(7):
        insert_user(engine, last_visit_at=days_ago(61 + i))
    for i in range(3):
        insert_user(engine, last_visit_at=days_ago(100), deletion_warning_sent_at=days_ago(31 + i))

    state = inactive_accounts(batch_size=3, return_state=True)

    summary = state.result()
    assert summary.counts == {"warned": 7, "deleted": 3}
    # resume: 1 page; due deletions: 3 + 1 empty page; warnings: 3 pages (7 = 3 + 3 + 1)
    assert summary.batches == 1 + 2 + 3
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    assert len(task_runs) == 1 + summary.batches  # plus the planning task
    assert Counter(m["To"] for m in outbox(lifecycle_env)).most_common(1)[0][1] == 1


def test_one_event_per_batch_lists_accounts_by_pseudonym(
    engine: sa.Engine, lifecycle_env: Settings, population: dict[str, str]
) -> None:
    state = inactive_accounts(return_state=True)
    assert state.is_completed()
    events = run_events(state.state_details.flow_run_id, minimum=2)

    by_name = {event.event: event for event in events}
    assert sorted(by_name) == ["lifecycle.account.deleted", "lifecycle.account.warned"]
    for name, user in (("warned", "due_warning"), ("deleted", "due_deletion")):
        event = by_name[f"lifecycle.account.{name}"]
        assert event.payload == {"count": 1, "accounts": [pseudonym(population[user])]}
        assert event.resource.id.startswith("lifecycle.batch.")


def test_no_email_address_in_logs_artifacts_or_events(
    engine: sa.Engine, lifecycle_env: Settings, population: dict[str, str]
) -> None:
    state = inactive_accounts(return_state=True)
    assert state.is_completed()
    text = run_text(state.state_details.flow_run_id, minimum_events=2)
    assert "@example.com" not in text
    for user_id in population.values():
        assert user_id not in text


def test_shards_split_the_users_and_walk_side_by_side(
    engine: sa.Engine, lifecycle_env: Settings
) -> None:
    warn = {insert_user(engine, last_visit_at=days_ago(61 + i)) for i in range(11)}
    doomed = {
        insert_user(engine, last_visit_at=days_ago(100), deletion_warning_sent_at=days_ago(31 + i))
        for i in range(5)
    }
    with engine.connect() as conn:
        ranges = key_ranges(conn, users.c.id, 3)
        in_each = [
            set(conn.execute(sa.select(users.c.id).where(r.condition(users.c.id))).scalars())
            for r in ranges
        ]
    assert len(ranges) == 3 and all(in_each)  # three non-empty shards ...
    assert set.union(*in_each) == warn | doomed and sum(map(len, in_each)) == 16  # ... a partition

    summary = inactive_accounts(shards=3, batch_size=2)

    assert summary.counts == {"warned": 11, "deleted": 5}
    assert Counter(m["To"] for m in outbox(lifecycle_env)).most_common(1)[0][1] == 1
    assert all(user_row(engine, user_id) is None for user_id in doomed)


def test_with_shards_max_deletions_is_shared_out(
    engine: sa.Engine, lifecycle_env: Settings
) -> None:
    for i in range(6):
        insert_user(engine, last_visit_at=days_ago(100), deletion_warning_sent_at=days_ago(31 + i))
    summary = inactive_accounts(shards=2, max_deletions=6, batch_size=10)
    assert summary.counts.get("deleted", 0) + summary.counts.get("over_budget", 0) == 6
    assert summary.counts["deleted"] <= 6

"""The SQL in queries.py selects exactly the users rules.decide picks."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from lifecycle.db.schema import users
from lifecycle.processes.inactive_accounts import queries
from lifecycle.processes.inactive_accounts.rules import Account, Decision, Policy, decide
from tests.support.factories import insert_user

AS_OF = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
OFFSETS = [0, 1, 29, 30, 31, 59, 60, 61, 89, 90, 91, 200]


def _maybe(rng: random.Random, value: datetime) -> datetime | None:
    return value if rng.random() < 0.5 else None


def test_sql_and_python_agree(engine: sa.Engine) -> None:
    rng = random.Random(42)
    policy = Policy()
    expected: dict[str, Decision] = {}
    for _ in range(400):
        jitter = timedelta(seconds=rng.choice([-1, 0, 1]))
        account = Account(
            last_visit_at=AS_OF - timedelta(days=rng.choice(OFFSETS)) + jitter,
            deletion_warning_sent_at=_maybe(
                rng, AS_OF - timedelta(days=rng.choice(OFFSETS)) + jitter
            ),
            warning_undeliverable_at=_maybe(
                rng, AS_OF - timedelta(days=rng.choice(OFFSETS)) + jitter
            ),
            free_trial_ends_at=_maybe(rng, AS_OF + timedelta(seconds=rng.choice([-1, 0, 1]))),
            lifetime_deal=rng.random() < 0.1,
            subscription_status=rng.choice(["none", "active", "past_due", "canceled", "expired"]),
            subscription_ends_at=_maybe(rng, AS_OF + timedelta(days=rng.choice([-1, 0, 1]))),
        )
        user_id = insert_user(engine, **vars(account))
        expected[user_id] = decide(account, AS_OF, policy)

    conditions = {
        Decision.WARN: queries.due_for_warning(AS_OF, policy),
        Decision.DELETE: queries.due_for_deletion(AS_OF, policy),
        Decision.UNDELIVERABLE: queries.undeliverable(AS_OF),
    }
    with engine.connect() as conn:
        for decision, condition in conditions.items():
            chosen = set(conn.execute(sa.select(users.c.id).where(condition)).scalars())
            assert chosen == {uid for uid, d in expected.items() if d is decision}, decision
            assert chosen, f"the sample covers {decision}"

"""The deletion plan (lifecycle.common.erasure): checked against the live schema (both DBs)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from lifecycle.common.erasure import DeletionPlanError, resolve_plan
from lifecycle.db.schema import features, scoreboard_entries, users
from lifecycle.settings import DeletionPlanSettings, ReferenceRule
from tests.support.factories import insert_user

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _plan(*rules: tuple[str, str, str]) -> DeletionPlanSettings:
    return DeletionPlanSettings.model_validate(
        {"references": [{"table": t, "column": c, "action": a} for t, c, a in rules]}
    )


def test_default_plan_resolves(engine: sa.Engine) -> None:
    plan = resolve_plan(engine, DeletionPlanSettings())
    assert plan.prefix_for("u1") == "users/u1/"
    assert {(r.table.name, r.column.name, r.action) for r in plan.references} == {
        ("features", "proposed_by", "set_null"),
        ("scoreboard_entries", "user_id", "delete"),
    }


FEATURES = ("features", "proposed_by", "set_null")
SCORES = ("scoreboard_entries", "user_id", "delete")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        pytest.param(
            [FEATURES, SCORES, ("comments", "author_id", "delete")],
            r"'comments'.*does not exist",
            id="unknown table",
        ),
        pytest.param(
            [("features", "proposed_by_id", "set_null"), SCORES],
            r"features\.proposed_by_id.*does not exist",
            id="unknown column",
        ),
        pytest.param(
            [FEATURES, ("scoreboard_entries", "user_id", "set_null")],
            r"scoreboard_entries\.user_id is NOT NULL.*delete",
            id="set_null on a NOT NULL column",
        ),
    ],
)
def test_plan_that_misnames_something(
    engine: sa.Engine, rules: list[tuple[str, str, str]], message: str
) -> None:
    with pytest.raises(DeletionPlanError, match=message):
        resolve_plan(engine, _plan(*rules))


def test_users_is_not_a_reference(engine: sa.Engine) -> None:
    with pytest.raises(DeletionPlanError, match="users table"):
        resolve_plan(engine, _plan(("users", "id", "delete")))


@pytest.mark.parametrize(
    "missing", [("features", "proposed_by"), ("scoreboard_entries", "user_id")]
)
def test_reference_left_out_of_plan(engine: sa.Engine, missing: tuple[str, str]) -> None:
    rules = [r for r in DeletionPlanSettings().references if (r.table, r.column) != missing]
    with pytest.raises(DeletionPlanError, match=rf"{missing[0]}\.{missing[1]} references users"):
        resolve_plan(engine, DeletionPlanSettings(references=rules))


@pytest.fixture
def comments(engine: sa.Engine) -> Iterator[sa.Table]:
    """An application table the default plan does not know, with a foreign key to users."""
    metadata = sa.MetaData()
    table = sa.Table(
        "comments",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("author_id", sa.String(36), sa.ForeignKey(users.c.id), nullable=False),
        sa.Column("body", sa.Text()),
    )
    metadata.create_all(engine)
    try:
        yield table
    finally:
        metadata.drop_all(engine)


def test_foreign_key_not_covered_by_plan(engine: sa.Engine, comments: sa.Table) -> None:
    with pytest.raises(DeletionPlanError, match=r"comments\.author_id references users") as info:
        resolve_plan(engine, DeletionPlanSettings())
    assert "LIFECYCLE_DELETION_PLAN" in str(info.value)

    covered = DeletionPlanSettings(
        references=[
            *DeletionPlanSettings().references,
            ReferenceRule(table="comments", column="author_id", action="delete"),
        ]
    )
    plan = resolve_plan(engine, covered)
    assert ("comments", "author_id", "delete") in {
        (r.table.name, r.column.name, r.action) for r in plan.references
    }


@pytest.fixture
def stamps(engine: sa.Engine) -> Iterator[sa.Table]:
    """An application table with an integer column and one pointing at another table."""
    metadata = sa.MetaData()
    sa.Table("teams", metadata, sa.Column("id", sa.String(36), primary_key=True))
    table = sa.Table(
        "stamps",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("number", sa.Integer()),
        sa.Column("team_id", sa.String(36), sa.ForeignKey("teams.id")),
    )
    metadata.create_all(engine)
    yield table
    metadata.drop_all(engine)


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ("number", r"stamps\.number is INTEGER, but user ids are strings"),
        ("team_id", r"stamps\.team_id points at teams\.id, not at users\.id"),
    ],
)
def test_reference_that_holds_no_user_ids(
    engine: sa.Engine, stamps: sa.Table, column: str, message: str
) -> None:
    rules = [
        *DeletionPlanSettings().references,
        ReferenceRule(table="stamps", column=column, action="delete"),
    ]
    with pytest.raises(DeletionPlanError, match=message):
        resolve_plan(engine, DeletionPlanSettings(references=rules))


@pytest.mark.parametrize(
    ("table", "column"),
    [
        ("features; DROP TABLE users", "proposed_by"),
        ("features", "proposed_by; DROP TABLE users"),
        ('features" --', "proposed_by"),
        ("users.features", "proposed_by"),
        ("", "proposed_by"),
    ],
)
def test_hostile_names_fail_validation(engine: sa.Engine, table: str, column: str) -> None:
    with pytest.raises(ValidationError, match="String should match pattern"):
        _plan(("features", "proposed_by", "set_null"), (table, column, "delete"))
    assert "users" in sa.inspect(engine).get_table_names()


def test_statements_change_only_the_given_users(engine: sa.Engine) -> None:
    gone = insert_user(engine, last_visit_at=NOW)
    kept = insert_user(engine, last_visit_at=NOW)
    also_gone = insert_user(engine, last_visit_at=NOW)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(features),
            [
                {"title": "dark mode", "proposed_by": gone},
                {"title": "export", "proposed_by": kept},
                {"title": "api", "proposed_by": also_gone},
                {"title": "orphan", "proposed_by": None},
            ],
        )
        conn.execute(
            sa.insert(scoreboard_entries),
            [
                {"period": "2026-10", "user_id": gone, "score": 3},
                {"period": "2026-11", "user_id": gone, "score": 5},
                {"period": "2026-11", "user_id": kept, "score": 7},
                {"period": "2026-11", "user_id": also_gone, "score": 1},
            ],
        )

    plan = resolve_plan(engine, DeletionPlanSettings())
    removed: dict[str, int] = {}
    with engine.begin() as conn:
        for ref in plan.references:
            removed[ref.table.name] = conn.execute(ref.statement([gone, also_gone])).rowcount
        # With every reference cleared, the users rows can go (foreign keys are enforced).
        conn.execute(sa.delete(users).where(users.c.id.in_([gone, also_gone])))

    assert removed == {"features": 2, "scoreboard_entries": 3}
    with engine.connect() as conn:
        rows = conn.execute(sa.select(features.c.title, features.c.proposed_by))
        proposed = {title: proposed_by for title, proposed_by in rows}
        scores = conn.execute(
            sa.select(scoreboard_entries.c.user_id, scoreboard_entries.c.score)
        ).all()
        remaining = set(conn.execute(sa.select(users.c.id)).scalars())
    assert proposed == {"dark mode": None, "export": kept, "api": None, "orphan": None}
    assert [tuple(row) for row in scores] == [(kept, 7)]
    assert remaining == {kept}


def test_statements_are_idempotent(engine: sa.Engine) -> None:
    user = insert_user(engine, last_visit_at=NOW)
    with engine.begin() as conn:
        conn.execute(sa.insert(scoreboard_entries), {"period": "p", "user_id": user, "score": 1})
    plan = resolve_plan(engine, DeletionPlanSettings())
    for expected in (1, 0):
        with engine.begin() as conn:
            counts = [conn.execute(ref.statement([user])).rowcount for ref in plan.references]
        assert sum(counts) == expected

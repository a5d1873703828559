"""Building users in the database for tests."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from lifecycle.clients.storage import LocalStorage, ObjectStorage
from lifecycle.common.batch import BatchReport, Breaker
from lifecycle.common.erasure import resolve_plan
from lifecycle.db.schema import users
from lifecycle.processes.inactive_accounts.queries import DeletionQueue
from lifecycle.processes.inactive_accounts.rules import Policy
from lifecycle.processes.inactive_accounts.steps import SweepContext, delete_batch
from lifecycle.settings import DeletionPlanSettings, Settings
from tests.support.clock import NOW


def insert_user(engine: sa.Engine, *, last_visit_at: datetime, **columns: Any) -> str:
    user_id = columns.pop("id", None) or str(uuid.uuid4())
    row = {
        "id": user_id,
        "email": columns.pop("email", None) or f"person-{user_id[:8]}@example.com",
        "name": columns.pop("name", "Test Person"),
        "created_at": columns.pop("created_at", last_visit_at),
        "last_visit_at": last_visit_at,
        **columns,
    }
    with engine.begin() as conn:
        conn.execute(sa.insert(users), row)
    return user_id


def user_row(engine: sa.Engine, user_id: str) -> sa.Row[Any] | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(users).where(users.c.id == user_id)).first()


def storage_of(settings: Settings) -> LocalStorage:
    """The local storage folder the flows use with ``settings``."""
    return LocalStorage(root=Path(settings.resolved_storage_url.removeprefix("file://")))


def delete_due_batch(engine: sa.Engine, storage: ObjectStorage, breaker_name: str) -> BatchReport:
    """One deletion batch (up to 100) over the users due deletion now, outside Prefect."""
    ctx = SweepContext(
        engine=engine, policy=Policy(), as_of=NOW, dry_run=False, lease=timedelta(minutes=15)
    )
    return delete_batch(
        ctx,
        queue=DeletionQueue.DUE,
        storage=storage,
        plan=resolve_plan(engine, DeletionPlanSettings()),
        breaker=Breaker(breaker_name),
        after=None,
        limit=100,
        budget=100,
    )


def insert_signup(engine: sa.Engine, *, created_at: datetime, **columns: Any) -> str:
    """A user who just signed up: a username, activation NONE, visited when created."""
    user_id = columns.pop("id", None) or str(uuid.uuid4())
    columns.setdefault("username", f"user-{user_id[:8]}")
    return insert_user(
        engine, id=user_id, created_at=created_at, last_visit_at=created_at, **columns
    )

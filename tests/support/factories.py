"""Building users in the database for tests."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from lifecycle.clients.storage import LocalStorage
from lifecycle.db.schema import users
from lifecycle.settings import Settings


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

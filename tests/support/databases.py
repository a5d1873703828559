"""Throwaway PostgreSQL databases for tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import sqlalchemy as sa

from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import upgrade


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, migrated database on the PostgreSQL server, dropped afterwards."""
    name = f"lifecycle_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    url = sa.engine.URL.create(
        "postgresql+psycopg",
        username=_text(info.get("user")),
        password=_text(info.get("password")),
        host=_text(info.get("host")),
        port=int(port) if (port := _text(info.get("port"))) else None,
        database=name,
    ).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        get_engine.cache_clear()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

"""Engines for the configured database, one per URL and process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from lifecycle.errors import DependencyDown

VARIABLE = "LIFECYCLE_DATABASE_URL"


@lru_cache(maxsize=8)
def get_engine(url: str) -> sa.Engine:
    """An engine with sane pooling; SQLite gets foreign keys, WAL and a busy timeout."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def describe(url: str) -> str:
    """The URL as it may appear in messages: the password masked."""
    return make_url(url).render_as_string(hide_password=True)


def check_reachable(engine: sa.Engine) -> None:
    """Connect once; a database that does not answer is named, with the password masked."""
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0][:200]
        raise DependencyDown(
            f"the database {describe(str(engine.url))} ({VARIABLE})", reason
        ) from None


@contextmanager
def relaxed_connection(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection for single-statement bookkeeping: each statement commits on its own (one
    round trip, no BEGIN or COMMIT), and the commit returns before its WAL record reaches the
    disk.

    For bookkeeping whose loss in a database crash (not a worker crash: a commit is visible at
    once) costs a repeated mail, never a wrong deletion. ``with conn.begin():`` blocks still
    read as transactions but send nothing, so put only one statement in each. The settings are
    reset before the connection goes back to the pool.
    """
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")  # reset by the pool on return
        if postgres:
            conn.exec_driver_sql("SET synchronous_commit TO OFF")
        try:
            yield conn
        finally:
            if postgres:
                conn.exec_driver_sql("RESET synchronous_commit")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()

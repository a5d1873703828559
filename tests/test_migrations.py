"""The migrations build exactly the schema the code queries through (no drift)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import SchemaOutOfDate, assert_current, upgrade
from lifecycle.db.migrations import online
from lifecycle.db.schema import metadata


def test_migrated_schema_matches_metadata(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_flows_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = get_engine(url)
    with pytest.raises(SchemaOutOfDate, match="run `lifecycle migrate`"):
        assert_current(engine)
    upgrade(url)
    assert_current(engine)
    engine.dispose()
    get_engine.cache_clear()


def test_online_ddl_changes_checks_and_builds_indexes(engine: sa.Engine) -> None:
    """lifecycle.db.migrations.online on both databases (CONCURRENTLY on PostgreSQL)."""
    with engine.connect() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE jobs (id INTEGER PRIMARY KEY, state VARCHAR(8) NOT NULL,"
                " CONSTRAINT ck_jobs_state CHECK (state IN ('NEW','DONE')))"
            )
        )
        conn.commit()
        context = MigrationContext.configure(conn)
        with Operations.context(context), context.begin_transaction():
            online.limit_lock_waits()
            online.replace_check("jobs", "ck_jobs_state", "state IN ('NEW','BUSY','DONE')")
            online.create_index("ix_jobs_busy", "jobs", ["id"], where="state = 'BUSY'")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO jobs (id, state) VALUES (1, 'BUSY')"))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO jobs (id, state) VALUES (2, 'LOST')"))
    assert "ix_jobs_busy" in {ix["name"] for ix in sa.inspect(engine).get_indexes("jobs")}

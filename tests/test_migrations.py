"""The migrations build exactly the schema the code queries through (no drift)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import SchemaOutOfDate, assert_current, upgrade
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

"""Run the alembic migrations programmatically (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from lifecycle.db.engine import (
    check_reachable,
    get_engine,
    sqlite_file,
)
from lifecycle.errors import ConfigError

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (idempotent)."""
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = get_engine(url)
    check_reachable(engine)
    with engine.connect() as connection:  # each migration file commits on its own
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


class SchemaOutOfDate(ConfigError):
    """The database is not at the latest migration."""


def assert_current(engine: Engine) -> None:
    """Fail early, with the fix, when the database is missing, unreachable or not at head."""
    path = sqlite_file(engine.url.render_as_string(hide_password=False))
    if path is not None and not path.is_file():  # connecting would create an empty file
        raise SchemaOutOfDate(f"no database at {path}: run `lifecycle migrate` to create it")
    check_reachable(engine)
    head = ScriptDirectory.from_config(alembic_config(str(engine.url))).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at {current or 'nothing'}, expected {head}: "
            "run `lifecycle migrate`"
        )

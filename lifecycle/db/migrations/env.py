"""Alembic environment: one transaction per migration file, on the caller's connection if given.

A file may leave its transaction for a statement that must run outside one (``CREATE INDEX
CONCURRENTLY``, see :mod:`lifecycle.db.migrations.online`), so each file commits on its own.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from lifecycle.db.schema import metadata

config = context.config


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    with create_engine(config.get_main_option("sqlalchemy.url") or "").connect() as connection:
        run_migrations(connection)

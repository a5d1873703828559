"""Schema changes that are safe while the application runs on PostgreSQL (plain DDL on SQLite).

For use inside migration scripts, after :func:`limit_lock_waits`:

- every statement waits at most ``LOCK_TIMEOUT`` for its lock, then fails (run the migration
  again) rather than queueing the application's queries behind it;
- CHECK constraints are added ``NOT VALID``, then validated: the validating scan does not
  block reads or writes;
- indexes are built ``CONCURRENTLY``, outside the migration's transaction.

New columns must be nullable or have a constant default (PostgreSQL 11+ adds those without a
table rewrite). Identifiers here are our own constants, never user input.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

LOCK_TIMEOUT = "5s"


def _postgres() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def limit_lock_waits() -> None:
    """Fail fast instead of waiting behind (and blocking) the application's locks."""
    if _postgres():
        op.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")


def add_check(table: str, name: str, condition: str) -> None:
    """Add ``CHECK (condition)`` without a long lock."""
    if _postgres():
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")
        op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")
    else:
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.create_check_constraint(name, sa.text(condition))


def replace_check(table: str, name: str, condition: str) -> None:
    """Give the CHECK constraint ``name`` a new condition, without a long lock."""
    if _postgres():
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
        add_check(table, name, condition)
    else:
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.drop_constraint(name, type_="check")
            batch.create_check_constraint(name, sa.text(condition))


def create_index(
    name: str,
    table: str,
    columns: Sequence[str],
    *,
    where: str | None = None,
    unique: bool = False,
) -> None:
    """``CREATE INDEX CONCURRENTLY`` on PostgreSQL (outside the transaction); plain elsewhere."""
    condition = sa.text(where) if where else None
    if _postgres():
        with op.get_context().autocommit_block():
            op.create_index(
                name,
                table,
                list(columns),
                unique=unique,
                postgresql_where=condition,
                postgresql_concurrently=True,
                if_not_exists=True,
            )
    else:
        op.create_index(name, table, list(columns), unique=unique, sqlite_where=condition)


def drop_index(name: str, table: str) -> None:
    """``DROP INDEX CONCURRENTLY`` on PostgreSQL; plain elsewhere."""
    if _postgres():
        with op.get_context().autocommit_block():
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
    else:
        op.drop_index(name, table_name=table)

"""The deletion plan from settings, checked against the live schema.

Table and column names from configuration are only ever used to look up reflected
``sqlalchemy.Table`` objects, never pasted into SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa

from lifecycle.settings import DeletionPlanSettings


class DeletionPlanError(ValueError):
    """The configured plan does not match the database."""


@dataclass(frozen=True)
class Reference:
    table: sa.Table
    column: sa.Column[str]
    action: Literal["set_null", "delete"]

    def statement(self, user_ids: list[str]) -> sa.Executable:
        """The statement that removes the given users from this reference."""
        if self.action == "delete":
            return sa.delete(self.table).where(self.column.in_(user_ids))
        return (
            sa.update(self.table).where(self.column.in_(user_ids)).values({self.column.name: None})
        )


@dataclass(frozen=True)
class DeletionPlan:
    storage_prefix: str
    references: tuple[Reference, ...]

    def prefix_for(self, user_id: str) -> str:
        return self.storage_prefix.format(user_id=user_id)


def resolve_plan(engine: sa.Engine, settings: DeletionPlanSettings) -> DeletionPlan:
    """Reflect every referencing table and refuse plans that miss or misname something."""
    inspector = sa.inspect(engine)
    known_tables = set(inspector.get_table_names())
    metadata = sa.MetaData()
    references: list[Reference] = []
    for rule in settings.references:
        if rule.table == "users":
            raise DeletionPlanError("the users table itself cannot be a reference")
        if rule.table not in known_tables:
            raise DeletionPlanError(
                f"deletion plan names table {rule.table!r}, which does not exist; "
                "fix LIFECYCLE_DELETION_PLAN__REFERENCES"
            )
        table = sa.Table(rule.table, metadata, autoload_with=engine)
        if rule.column not in table.c:
            raise DeletionPlanError(
                f"deletion plan names column {rule.table}.{rule.column}, which does not exist"
            )
        column = table.c[rule.column]
        if rule.action == "set_null" and not column.nullable:
            raise DeletionPlanError(
                f"{rule.table}.{rule.column} is NOT NULL: use action 'delete', not 'set_null'"
            )
        references.append(Reference(table=table, column=column, action=rule.action))

    planned = {(ref.table.name, ref.column.name) for ref in references}
    for table_name in sorted(known_tables):
        for fk in inspector.get_foreign_keys(table_name):
            if fk["referred_table"] != "users":
                continue
            for column_name in fk["constrained_columns"]:
                if (table_name, column_name) not in planned:
                    raise DeletionPlanError(
                        f"{table_name}.{column_name} references users but the deletion plan "
                        "does not say what to do with it; add it to LIFECYCLE_DELETION_PLAN"
                    )
    return DeletionPlan(storage_prefix=settings.storage_prefix, references=tuple(references))

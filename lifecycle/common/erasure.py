"""Ordered erasure of user accounts, with a receipt for each.

For each claimed user, in this order: their folder in object storage; then, in one
transaction, the rows that reference them (per the deletion plan), their user row (only while
our claim still holds it) and a receipt without personal data. A crash in between leaves the
user marked as started (``deletion_started_at``) and the next run finishes the erasure.

The deletion plan comes from settings and is checked against the live schema: table and column
names are only ever used to look up reflected ``sqlalchemy.Table`` objects, never pasted into SQL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from lifecycle.clients.storage import ObjectStorage
from lifecycle.common import claims
from lifecycle.common.batch import BatchReport
from lifecycle.common.claims import Lease
from lifecycle.db.schema import deletion_receipts, users
from lifecycle.errors import ConfigError
from lifecycle.settings import DeletionPlanSettings

#: An account being erased: claimed when erasure starts, gone with the row when it ends.
ACCOUNT_DELETION = Lease(
    key=users.c.id, claim_id=users.c.deletion_claim_id, until=users.c.deletion_lease_until
)


def unfinished_deletion(now: datetime) -> ColumnElement[bool]:
    """Erasures a crashed or failed run started: finished whatever the user did since."""
    return sa.and_(users.c.deletion_started_at.is_not(None), ACCOUNT_DELETION.free(now))


class DeletionPlanError(ConfigError):
    """The configured plan does not match the database."""


@dataclass(frozen=True)
class Reference:
    table: sa.Table
    column: sa.Column[str]
    action: Literal["set_null", "delete"]

    @property
    def label(self) -> str:
        return f"{self.table.name}.{self.column.name}"

    def statement(self, user_ids: list[str]) -> sa.Executable:
        """The statement that removes the given users from this reference."""
        if self.action == "delete":
            return sa.delete(self.table).where(self.column.in_(user_ids))
        return (
            sa.update(self.table).where(self.column.in_(user_ids)).values({self.column.name: None})
        )


@dataclass(frozen=True)
class DeletionPlan:
    settings: DeletionPlanSettings
    references: tuple[Reference, ...]

    def prefix_for(self, user_id: str) -> str:
        return self.settings.prefix_for(user_id)


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
    return DeletionPlan(settings=settings, references=tuple(references))


def remove_rows(
    conn: sa.Connection,
    plan: DeletionPlan,
    objects_deleted: dict[str, int],
    *,
    claim_id: str,
    subjects: dict[str, str],
    reason: str,
    flow_run_id: str | None,
    now: datetime,
) -> list[str]:
    """Referencing rows, then the users we still hold, then one receipt each; returns the ids
    of the users removed. Run it in one transaction."""
    ids = list(objects_deleted)
    per_user: dict[str, Counter[str]] = {user_id: Counter() for user_id in ids}
    for ref in plan.references:
        counts = conn.execute(
            sa.select(ref.column, sa.func.count()).where(ref.column.in_(ids)).group_by(ref.column)
        )
        for user_id, count in counts:
            per_user[user_id][ref.label] = count
        conn.execute(ref.statement(ids))
    removed = [
        row[0]
        for row in conn.execute(
            sa.delete(users)
            .where(users.c.id.in_(ids), ACCOUNT_DELETION.held_by(claim_id))
            .returning(users.c.id)
        )
    ]
    if removed:
        conn.execute(
            sa.insert(deletion_receipts),
            [
                {
                    "subject_hash": subjects[user_id],
                    "reason": reason,
                    "flow_run_id": flow_run_id,
                    "deleted_at": now,
                    "objects_deleted": objects_deleted[user_id],
                    "rows_removed": dict(per_user[user_id]),
                }
                for user_id in removed
            ],
        )
    return removed


@dataclass(frozen=True)
class Erasure:
    """Erases claimed accounts everywhere, recording each in ``report``."""

    engine: sa.Engine
    storage: ObjectStorage
    plan: DeletionPlan
    reason: str  # why, in the receipt: "inactive_account", ...
    subject: Callable[[str], str]  # user id -> pseudonym
    clock: Callable[[], datetime]
    flow_run_id: str | None = None

    def erase(self, user_ids: list[str], *, claim_id: str, report: BatchReport) -> None:
        """Files first, then rows; a user whose files could not go keeps their rows and is
        released, so the next run finishes them at once."""
        cleaned: dict[str, int] = {}
        failed: list[str] = []
        for user_id in user_ids:
            try:
                cleaned[user_id] = self.storage.delete_prefix(self.plan.prefix_for(user_id))
            except Exception as exc:
                failed.append(user_id)
                report.fail(self.subject(user_id), "storage", exc)
        self._remove(cleaned, claim_id, report)
        self._release(failed, claim_id)

    def _remove(self, cleaned: dict[str, int], claim_id: str, report: BatchReport) -> None:
        """Remove the rows of users whose files are gone: all at once, or one by one on error."""
        if not cleaned:
            return
        try:
            self._remove_group(cleaned, claim_id, report)
            return
        except Exception as exc:
            if len(cleaned) == 1:
                self._row_failure(next(iter(cleaned)), exc, claim_id, report)
                return
        for user_id, objects in cleaned.items():  # isolate the users that fail
            try:
                self._remove_group({user_id: objects}, claim_id, report)
            except Exception as exc:
                self._row_failure(user_id, exc, claim_id, report)

    def _remove_group(self, group: dict[str, int], claim_id: str, report: BatchReport) -> None:
        subjects = {user_id: self.subject(user_id) for user_id in group}
        with self.engine.begin() as conn:
            removed = remove_rows(
                conn,
                self.plan,
                group,
                claim_id=claim_id,
                subjects=subjects,
                reason=self.reason,
                flow_run_id=self.flow_run_id,
                now=self.clock(),
            )
        for user_id in removed:
            report.record("deleted", subjects[user_id])
            report.totals["objects_deleted"] += group[user_id]
        report.counts["skipped"] += len(group) - len(removed)

    def _row_failure(
        self, user_id: str, exc: Exception, claim_id: str, report: BatchReport
    ) -> None:
        report.fail(self.subject(user_id), "rows", exc)
        self._release([user_id], claim_id)

    def _release(self, user_ids: list[str], claim_id: str) -> None:
        """Let the next run finish these erasures at once (they stay marked as started)."""
        if user_ids:
            with self.engine.begin() as conn:
                claims.release(conn, ACCOUNT_DELETION, user_ids, claim_id=claim_id)

"""Ordered erasure of user accounts, with a receipt for each.

For each claimed user, in this order: what their folder in object storage holds is counted
and kept on their row (once: a resumed erasure keeps the first count); the folder is deleted,
every version of every object; then, in one transaction, the rows that reference them (per the
deletion plan), their user row (only while our claim still holds it), a receipt without
personal data that says what was removed, and one deletion request per third party that holds
their analytics data (the configured processors, :mod:`lifecycle.common.third_parties`). A
crash in between leaves the user marked as started (``deletion_started_at``) and the next run
finishes the erasure.

A receipt is complete (``completed_at``) at once when there is no third party, otherwise when
the consent-deletion poll has seen every one of its processor operations complete: only then
does it prove erasure everywhere.

The deletion plan comes from settings and is checked against the live schema: table and column
names are only ever used to look up reflected ``sqlalchemy.Table`` objects, never pasted into SQL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from lifecycle.clients.storage import Inventory, ObjectStorage
from lifecycle.common import claims
from lifecycle.common.batch import BatchReport, Breaker
from lifecycle.common.claims import Claim, Lease
from lifecycle.common.third_parties import DeletionRequest, request_deletions
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
        _check_points_at_users(inspector, rule.table, column)
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


def keep_inventory(
    conn: sa.Connection, inventories: dict[str, Inventory], *, claim_id: str
) -> None:
    """Record what each user's folder holds, unless an earlier attempt already did."""
    columns = users.c
    conn.execute(
        sa.update(users)
        .where(
            columns.id == sa.bindparam("user_id"),
            columns.deletion_objects.is_(None),
            ACCOUNT_DELETION.held_by(claim_id),
        )
        .values(
            deletion_objects=sa.bindparam("objects"), deletion_versions=sa.bindparam("versions")
        )
        .execution_options(synchronize_session=False),
        [
            {"user_id": user_id, "objects": item.objects, "versions": item.versions}
            for user_id, item in inventories.items()
        ],
    )


def _check_points_at_users(inspector: sa.Inspector, table: str, column: sa.Column[Any]) -> None:
    """A reference must hold user ids: a string column, and a foreign key (if any) to users.id."""
    if not isinstance(column.type, sa.String):
        raise DeletionPlanError(
            f"{table}.{column.name} is {column.type}, but user ids are strings "
            f"({users.c.id.type}); fix LIFECYCLE_DELETION_PLAN__REFERENCES"
        )
    for fk in inspector.get_foreign_keys(table):
        if column.name in fk["constrained_columns"] and (
            fk["referred_table"] != "users" or fk["referred_columns"] != ["id"]
        ):
            target = f"{fk['referred_table']}.{','.join(fk['referred_columns'])}"
            raise DeletionPlanError(
                f"{table}.{column.name} points at {target}, not at users.id; "
                "fix LIFECYCLE_DELETION_PLAN__REFERENCES"
            )


def remove_rows(
    conn: sa.Connection,
    plan: DeletionPlan,
    ids: list[str],
    *,
    claim_id: str,
    subjects: dict[str, str],
    reason: str,
    flow_run_id: str | None,
    now: datetime,
    third_parties: tuple[str, ...] = (),
) -> list[Receipt]:
    """Referencing rows, then the users we still hold, then one receipt each and a deletion
    request per third party; returns the receipts. Run it in one transaction."""
    per_user: dict[str, Counter[str]] = {user_id: Counter() for user_id in ids}
    for ref in plan.references:
        counts = conn.execute(
            sa.select(ref.column, sa.func.count()).where(ref.column.in_(ids)).group_by(ref.column)
        )
        for user_id, count in counts:
            per_user[user_id][ref.label] = count
        conn.execute(ref.statement(ids))
    columns = users.c
    removed = conn.execute(
        sa.delete(users)
        .where(columns.id.in_(ids), ACCOUNT_DELETION.held_by(claim_id))
        .returning(
            columns.id,
            columns.deletion_started_at,
            columns.deletion_objects,
            columns.deletion_versions,
        )
    ).all()
    receipts = [
        Receipt(
            user_id=user_id,
            subject_hash=subjects[user_id],
            reason=reason,
            flow_run_id=flow_run_id,
            started_at=started_at,
            deleted_at=now,
            objects_deleted=objects or 0,
            versions_deleted=versions or 0,
            rows_removed=dict(per_user[user_id]),
            third_parties=third_parties,
        )
        for user_id, started_at, objects, versions in removed
    ]
    if receipts:
        receipt_ids = conn.execute(
            sa.insert(deletion_receipts).returning(
                deletion_receipts.c.id, sort_by_parameter_order=True
            ),
            [receipt.row() for receipt in receipts],
        ).scalars()
        requests = [
            DeletionRequest(
                user_id=receipt.user_id,
                subject_hash=receipt.subject_hash,
                reason="account_deleted",
                requested_at=now,
                processor=processor,
                receipt_id=receipt_id,
            )
            for receipt, receipt_id in zip(receipts, receipt_ids, strict=True)
            for processor in third_parties
        ]
        request_deletions(conn, requests, now=now, flow_run_id=flow_run_id)
    return receipts


@dataclass(frozen=True)
class Receipt:
    """Proof of one deletion, without personal data (the user id stays with us)."""

    user_id: str
    subject_hash: str
    reason: str
    flow_run_id: str | None
    started_at: datetime
    deleted_at: datetime
    objects_deleted: int
    versions_deleted: int
    rows_removed: dict[str, int]
    third_parties: tuple[str, ...] = ()  # processors asked to erase the user too

    def row(self) -> dict[str, object]:
        """The receipt as stored: everything but the user id; complete at once unless a third
        party still has to erase the user (the processor deletions name the receipt)."""
        stored = {
            key: value
            for key, value in vars(self).items()
            if key not in ("user_id", "third_parties")
        }
        return {**stored, "completed_at": None if self.third_parties else self.deleted_at}


@dataclass(frozen=True)
class Erasure:
    """Erases claimed accounts everywhere, recording each in ``report``."""

    engine: sa.Engine
    storage: ObjectStorage
    plan: DeletionPlan
    reason: str  # why, in the receipt: "inactive_account", ...
    subject: Callable[[str], str]  # user id -> pseudonym
    clock: Callable[[], datetime]
    breaker: Breaker
    flow_run_id: str | None = None
    third_parties: tuple[str, ...] = ()  # processors that erase the user's analytics data

    def erase(self, user_ids: list[str], *, claim_id: str, report: BatchReport) -> None:
        """Count, then files, then rows; a user whose files could not go keeps their rows and
        is released, so the next run finishes them at once."""
        failed: list[str] = []
        inventories: dict[str, Inventory] = {}
        for user_id in user_ids:
            try:
                inventories[user_id] = self.storage.inventory(self.plan.prefix_for(user_id))
            except Exception as exc:
                failed.append(user_id)
                report.fail(self.subject(user_id), "storage", exc)
                self.breaker.failure(exc)
        if inventories:
            with self.engine.begin() as conn:
                keep_inventory(conn, inventories, claim_id=claim_id)
        cleaned: list[str] = []
        for user_id in inventories:
            try:
                self.storage.delete_prefix(self.plan.prefix_for(user_id))
                cleaned.append(user_id)
                self.breaker.success()
            except Exception as exc:
                failed.append(user_id)
                report.fail(self.subject(user_id), "storage", exc)
                self.breaker.failure(exc)
        self._remove(cleaned, claim_id, report)
        self._release(failed, claim_id)

    def give_back(self, user_ids: list[str], claim: Claim) -> None:
        """After an interrupted :meth:`erase`: users whose storage was not touched yet (no
        count kept) and whose erasure this claim started go back to how they were; the others
        stay started, for the next run to finish."""
        held = sa.and_(users.c.id.in_(user_ids), ACCOUNT_DELETION.held_by(claim.id))
        untouched = sa.and_(
            users.c.deletion_objects.is_(None),
            users.c.deletion_started_at == claims.at(users.c.deletion_started_at, claim.at),
        )
        with self.engine.begin() as conn:
            conn.execute(sa.update(users).where(held, untouched).values(deletion_started_at=None))
            claims.release(conn, ACCOUNT_DELETION, user_ids, claim_id=claim.id)

    def _remove(self, cleaned: list[str], claim_id: str, report: BatchReport) -> None:
        """Remove the rows of users whose files are gone: all at once, or one by one on error."""
        if not cleaned:
            return
        try:
            self._remove_group(cleaned, claim_id, report)
            return
        except Exception as exc:
            if len(cleaned) == 1:
                self._row_failure(cleaned[0], exc, claim_id, report)
                return
        for user_id in cleaned:  # isolate the users that fail
            try:
                self._remove_group([user_id], claim_id, report)
            except Exception as exc:
                self._row_failure(user_id, exc, claim_id, report)

    def _remove_group(self, group: list[str], claim_id: str, report: BatchReport) -> None:
        subjects = {user_id: self.subject(user_id) for user_id in group}
        with self.engine.begin() as conn:
            receipts = remove_rows(
                conn,
                self.plan,
                group,
                claim_id=claim_id,
                subjects=subjects,
                reason=self.reason,
                flow_run_id=self.flow_run_id,
                now=self.clock(),
                third_parties=self.third_parties,
            )
        for receipt in receipts:
            report.record("deleted", receipt.subject_hash)
            report.totals["objects_deleted"] += receipt.objects_deleted
            report.totals["object_versions_deleted"] += receipt.versions_deleted
        report.counts["skipped"] += len(group) - len(receipts)

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

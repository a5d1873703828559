"""Consent-revocation deletion at third parties: processor deletions, their append-only step
log, processor alerts, receipts complete only once every third party is, and an index on
revocations.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lifecycle.db.migrations import online
from lifecycle.db.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: The step log is append-only: these refuse to change or remove a step.
_APPEND_ONLY_SQLITE = (
    "CREATE TRIGGER processor_deletion_steps_{action}_refused BEFORE {action} "
    "ON processor_deletion_steps BEGIN "
    "SELECT RAISE(ABORT, 'processor_deletion_steps is append-only'); END"
)
_APPEND_ONLY_POSTGRES = (
    "CREATE FUNCTION processor_deletion_steps_append_only() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN "
    "RAISE EXCEPTION 'processor_deletion_steps is append-only'; END $$",
    "CREATE TRIGGER processor_deletion_steps_append_only "
    "BEFORE UPDATE OR DELETE ON processor_deletion_steps "
    "FOR EACH ROW EXECUTE FUNCTION processor_deletion_steps_append_only()",
)


def upgrade() -> None:
    online.limit_lock_waits()
    # Existing tables, on a live database: a nullable column (no rewrite), a short backfill of
    # receipts written before any third party was configured, and (at the end) an index built
    # concurrently.
    with op.batch_alter_table("deletion_receipts") as batch:
        batch.add_column(sa.Column("completed_at", UTCDateTime()))
    op.execute("UPDATE deletion_receipts SET completed_at = deleted_at WHERE completed_at IS NULL")
    op.create_table(
        "processor_deletions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(36)),
        sa.Column("subject_hash", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
        sa.Column("deadline_at", UTCDateTime(), nullable=False),
        sa.Column("processor", sa.String(40), nullable=False),
        sa.Column("receipt_id", sa.Integer(), sa.ForeignKey("deletion_receipts.id")),
        sa.Column("status", sa.String(16), nullable=False, server_default="requested"),
        sa.Column("operation_id", sa.String(200)),
        sa.Column("vendor_status", sa.String(64)),
        sa.Column("claim_id", sa.String(36)),
        sa.Column("lease_until", UTCDateTime()),
        sa.Column("start_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("unconfirmed_starts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("first_attempt_at", UTCDateTime()),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("last_checked_at", UTCDateTime()),
        sa.Column("checks", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("completed_at", UTCDateTime()),
        sa.Column("failed_at", UTCDateTime()),
        sa.Column("error", sa.String(300)),
        sa.Column("escalated_at", UTCDateTime()),
        sa.Column("failure_reported_at", UTCDateTime()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "reason IN ('consent_revoked','account_deleted')", name="ck_processor_deletions_reason"
        ),
        sa.CheckConstraint(
            "status IN ('requested','pending','complete','failed')",
            name="ck_processor_deletions_status",
        ),
        sa.UniqueConstraint(
            "user_id", "processor", "reason", "requested_at", name="uq_processor_deletions_request"
        ),
    )
    for status in ("requested", "pending"):
        position = "requested_at" if status == "requested" else "started_at"
        op.create_index(
            f"ix_processor_deletions_{status}",
            "processor_deletions",
            ["processor", position, "id"],
            postgresql_where=sa.text(f"status = '{status}'"),
            sqlite_where=sa.text(f"status = '{status}'"),
        )
    op.create_index("ix_processor_deletions_receipt", "processor_deletions", ["receipt_id"])
    op.create_table(
        "processor_deletion_steps",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "deletion_id", sa.Integer(), sa.ForeignKey("processor_deletions.id"), nullable=False
        ),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("step", sa.String(24), nullable=False),
        sa.Column("operation_id", sa.String(200)),
        sa.Column("vendor_status", sa.String(64)),
        sa.Column("detail", sa.String(300)),
        sa.Column("flow_run_id", sa.String(36)),
    )
    op.create_index(
        "ix_processor_deletion_steps_deletion", "processor_deletion_steps", ["deletion_id"]
    )
    if op.get_bind().dialect.name == "postgresql":
        for statement in _APPEND_ONLY_POSTGRES:
            op.execute(statement)
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(_APPEND_ONLY_SQLITE.format(action=action))
    op.create_table(
        "processor_alerts",
        sa.Column("processor", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(24), primary_key=True),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.Column("detail", sa.String(300), nullable=False),
        sa.Column("mailed_at", UTCDateTime()),
        sa.Column("resolved_at", UTCDateTime()),
    )
    online.create_index(
        "ix_users_consent_revoked",
        "users",
        ["analytics_consent_revoked_at", "id"],
        where="analytics_consent_revoked_at IS NOT NULL",
    )


def downgrade() -> None:
    online.drop_index("ix_users_consent_revoked", "users")
    with op.batch_alter_table("deletion_receipts") as batch:
        batch.drop_column("completed_at")
    op.drop_table("processor_alerts")
    op.drop_table("processor_deletion_steps")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS processor_deletion_steps_append_only()")
    op.drop_table("processor_deletions")

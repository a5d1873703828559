"""Reference application schema, deletion receipts and the sweep's indexes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lifecycle.db.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("name", sa.String(200)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_visit_at", UTCDateTime(), nullable=False),
        sa.Column("free_trial_ends_at", UTCDateTime()),
        sa.Column("lifetime_deal", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("subscription_status", sa.String(16), nullable=False, server_default="none"),
        sa.Column("subscription_ends_at", UTCDateTime()),
        sa.Column("deletion_warning_sent_at", UTCDateTime()),
        sa.Column("warning_claim_id", sa.String(36)),
        sa.Column("warning_lease_until", UTCDateTime()),
        sa.Column("deletion_started_at", UTCDateTime()),
        sa.Column("deletion_claim_id", sa.String(36)),
        sa.Column("deletion_lease_until", UTCDateTime()),
        sa.Column("activation_status", sa.String(16), nullable=False, server_default="NONE"),
        sa.Column("activation_token", sa.String(64)),
        sa.Column("analytics_consent", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("analytics_consent_revoked_at", UTCDateTime()),
        sa.CheckConstraint(
            "subscription_status IN ('none','trialing','active','past_due','canceled','expired')",
            name="ck_users_subscription_status",
        ),
        sa.CheckConstraint(
            "activation_status IN ('NONE','MAIL_SENT','DONE')", name="ck_users_activation_status"
        ),
    )
    op.create_index("ix_users_last_visit", "users", ["last_visit_at", "id"])
    op.create_index(
        "ix_users_warning_sent",
        "users",
        ["deletion_warning_sent_at", "id"],
        postgresql_where=sa.text("deletion_warning_sent_at IS NOT NULL"),
        sqlite_where=sa.text("deletion_warning_sent_at IS NOT NULL"),
    )
    op.create_index(
        "ix_users_deletion_started",
        "users",
        ["deletion_started_at", "id"],
        postgresql_where=sa.text("deletion_started_at IS NOT NULL"),
        sqlite_where=sa.text("deletion_started_at IS NOT NULL"),
    )
    op.create_table(
        "features",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("proposed_by", sa.String(36), sa.ForeignKey("users.id")),
    )
    op.create_index("ix_features_proposed_by", "features", ["proposed_by"])
    op.create_table(
        "scoreboard_entries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
    )
    op.create_index("ix_scoreboard_entries_user_id", "scoreboard_entries", ["user_id"])
    op.create_table(
        "deletion_receipts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("subject_hash", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("flow_run_id", sa.String(36)),
        sa.Column("deleted_at", UTCDateTime(), nullable=False),
        sa.Column("objects_deleted", sa.Integer(), nullable=False),
        sa.Column("rows_removed", sa.JSON(), nullable=False),
        sa.UniqueConstraint("subject_hash", "reason", name="uq_deletion_receipts_subject"),
    )


def downgrade() -> None:
    op.drop_table("deletion_receipts")
    op.drop_table("scoreboard_entries")
    op.drop_table("features")
    op.drop_table("users")

"""Receipts per deletion (not per user id), folder counts kept across resumed erasures,
undeliverable warnings.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lifecycle.db.migrations import online
from lifecycle.db.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    online.limit_lock_waits()
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("warning_undeliverable_at", UTCDateTime()))
        batch.add_column(sa.Column("deletion_objects", sa.Integer()))
        batch.add_column(sa.Column("deletion_versions", sa.Integer()))
    with op.batch_alter_table("deletion_receipts") as batch:
        batch.add_column(sa.Column("started_at", UTCDateTime()))
        batch.add_column(sa.Column("versions_deleted", sa.Integer()))
        batch.drop_constraint("uq_deletion_receipts_subject", type_="unique")
    # Receipts written before this revision: their deletion started no later than it ended.
    op.execute("UPDATE deletion_receipts SET started_at = deleted_at WHERE started_at IS NULL")
    online.create_index(
        "uq_deletion_receipts_deletion",
        "deletion_receipts",
        ["subject_hash", "started_at"],
        unique=True,
    )


def downgrade() -> None:
    online.drop_index("uq_deletion_receipts_deletion", "deletion_receipts")
    with op.batch_alter_table("deletion_receipts") as batch:
        batch.create_unique_constraint("uq_deletion_receipts_subject", ["subject_hash", "reason"])
        batch.drop_column("versions_deleted")
        batch.drop_column("started_at")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("deletion_versions")
        batch.drop_column("deletion_objects")
        batch.drop_column("warning_undeliverable_at")

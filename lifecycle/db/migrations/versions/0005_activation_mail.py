"""Activation mail: the username and claim columns, the SENDING and UNDELIVERABLE states, an
index on the users still due a mail, and (PostgreSQL) a NOTIFY on every new user.

Every change touches the live ``users`` table, so each is safe while the application runs:
nullable columns (no rewrite), the status CHECK replaced ``NOT VALID`` then validated,
indexes built concurrently, every lock waited for at most ``online.LOCK_TIMEOUT``.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lifecycle.db.migrations import online
from lifecycle.db.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: The channel ``lifecycle listen`` listens on; the payload is the new user's id, nothing else.
CHANNEL = "lifecycle_user_created"
_STATUSES = "activation_status IN ('NONE','SENDING','MAIL_SENT','UNDELIVERABLE','DONE')"
_OLD_STATUSES = "activation_status IN ('NONE','MAIL_SENT','DONE')"
_NOTIFY_POSTGRES = (
    "CREATE OR REPLACE FUNCTION lifecycle_user_created() RETURNS trigger "
    f"LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('{CHANNEL}', NEW.id); RETURN NULL; END $$",
    "CREATE TRIGGER lifecycle_user_created AFTER INSERT ON users "
    "FOR EACH ROW EXECUTE FUNCTION lifecycle_user_created()",
)


def _postgres() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def upgrade() -> None:
    online.limit_lock_waits()
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("username", sa.String(64)))
        batch.add_column(sa.Column("activation_claim_id", sa.String(36)))
        batch.add_column(sa.Column("activation_lease_until", UTCDateTime()))
    online.replace_check("users", "ck_users_activation_status", _STATUSES)
    if _postgres():
        for statement in _NOTIFY_POSTGRES:
            op.execute(statement)
    online.create_index(
        "ix_users_activation_due",
        "users",
        ["created_at", "id"],
        where="activation_status IN ('NONE','SENDING')",
    )
    online.create_index(
        "ix_users_username", "users", ["username"], where="username IS NOT NULL", unique=True
    )


def downgrade() -> None:
    online.limit_lock_waits()
    online.drop_index("ix_users_username", "users")
    online.drop_index("ix_users_activation_due", "users")
    if _postgres():
        op.execute("DROP TRIGGER IF EXISTS lifecycle_user_created ON users")
        op.execute("DROP FUNCTION IF EXISTS lifecycle_user_created()")
    op.execute(
        "UPDATE users SET activation_status = 'NONE' "
        "WHERE activation_status IN ('SENDING','UNDELIVERABLE')"
    )
    online.replace_check("users", "ck_users_activation_status", _OLD_STATUSES)
    with op.batch_alter_table("users") as batch:
        batch.drop_column("activation_lease_until")
        batch.drop_column("activation_claim_id")
        batch.drop_column("username")

"""TTL purge and abandoned carts: attributes, their index entries, cart activity, stream
checkpoints, and the ``ttl_backlog`` monitoring view.

Only new tables, so nothing here locks a table the application already uses. The view counts,
per reference table, the rows expired but not yet purged, the age of the oldest, and the table
size (PostgreSQL: ``pg_total_relation_size``; SQLite: NULL, since SQLite refuses ``dbstat`` in a
view: ``lifecycle ttl-status`` shows it).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lifecycle.db.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: (target, table, expiry column): the tables the view watches; expiries are Unix seconds.
WATCHED = (
    ("attributes", "attributes", "ttl_timestamp"),
    ("attribute-index", "attribute_index", "ttl_timestamp"),
    ("cart-activity", "cart_activity", "expires_at"),
)


def _view_sql(dialect: str) -> str:
    if dialect == "postgresql":
        now = "EXTRACT(EPOCH FROM now())::bigint"
        size = "pg_total_relation_size('{table}')"
    else:
        now = "CAST(strftime('%s', 'now') AS INTEGER)"
        size = "NULL"
    parts = [
        f"SELECT '{target}' AS target, COUNT(*) AS expired_rows, "
        f"MIN({column}) AS oldest_expiry, {now} - MIN({column}) AS oldest_age_seconds, "
        f"{size.format(table=table)} AS table_bytes "
        f"FROM {table} WHERE {column} < {now}"
        for target, table, column in WATCHED
    ]
    return "CREATE VIEW ttl_backlog AS " + " UNION ALL ".join(parts)


def upgrade() -> None:
    op.create_table(
        "attributes",
        sa.Column("actor_id", sa.String(64), primary_key=True),
        sa.Column("bucket", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("data", sa.Text()),
        sa.Column("timestamp", UTCDateTime()),
        sa.Column("ttl_timestamp", sa.BigInteger()),
    )
    op.create_table(
        "attribute_index",
        sa.Column("index_name", sa.String(64), primary_key=True),
        sa.Column("index_key", sa.String(255), primary_key=True),
        sa.Column("actor_id", sa.String(64), nullable=False),
        sa.Column("bucket", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("ttl_timestamp", sa.BigInteger()),
    )
    for table in ("attributes", "attribute_index"):
        op.create_index(
            f"ix_{table}_ttl_timestamp",
            table,
            ["ttl_timestamp"],
            postgresql_where=sa.text("ttl_timestamp IS NOT NULL"),
            sqlite_where=sa.text("ttl_timestamp IS NOT NULL"),
        )
    op.create_table(
        "cart_activity",
        sa.Column("cart_id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(64)),
        sa.Column("product_ids", sa.JSON()),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("claim_id", sa.String(36)),
        sa.Column("lease_until", UTCDateTime()),
        sa.Column("rejected_at", UTCDateTime()),
        sa.Column("rejected_expires_at", sa.BigInteger()),
        sa.Column("rejection", sa.String(300)),
    )
    op.create_index("ix_cart_activity_expires_at", "cart_activity", ["expires_at", "cart_id"])
    op.create_table(
        "stream_checkpoints",
        sa.Column("id", sa.String(400), primary_key=True),
        sa.Column("stream_arn", sa.String(300), nullable=False),
        sa.Column("shard_id", sa.String(80), nullable=False),
        sa.Column("sequence_number", sa.String(40)),
        sa.Column("finished_at", UTCDateTime()),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("claim_id", sa.String(36)),
        sa.Column("lease_until", UTCDateTime()),
    )
    op.execute(_view_sql(op.get_bind().dialect.name))


def downgrade() -> None:
    op.execute("DROP VIEW ttl_backlog")
    op.drop_table("stream_checkpoints")
    op.drop_table("cart_activity")
    op.drop_table("attribute_index")
    op.drop_table("attributes")

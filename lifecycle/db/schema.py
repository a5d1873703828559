"""The reference application schema and the project's own tables (SQLAlchemy Core).

Alembic migrations in ``lifecycle/db/migrations`` create and upgrade these tables; this module
is the typed handle the code queries through.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware datetimes stored as UTC on every backend (SQLite has no time zones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"expected a timezone-aware datetime, got {value!r}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

SUBSCRIPTION_STATUSES = ("none", "trialing", "active", "past_due", "canceled", "expired")
#: NONE: no mail yet; SENDING: claimed by a run that is mailing it; MAIL_SENT; UNDELIVERABLE:
#: the backend refused the address for good; DONE: the user activated.
ACTIVATION_STATUSES = ("NONE", "SENDING", "MAIL_SENT", "UNDELIVERABLE", "DONE")


def one_of(column: str, values: tuple[str, ...]) -> str:
    """A CHECK constraint's text: ``column IN ('a','b')`` (values are our own constants)."""
    return f"{column} IN ({','.join(repr(value) for value in values)})"


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("name", sa.String(200)),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("last_visit_at", UTCDateTime(), nullable=False),
    sa.Column("free_trial_ends_at", UTCDateTime()),
    sa.Column("lifetime_deal", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("subscription_status", sa.String(16), nullable=False, server_default="none"),
    sa.Column("subscription_ends_at", UTCDateTime()),
    # Inactive-accounts process: a warning, and leases that keep two runs from acting twice.
    sa.Column("deletion_warning_sent_at", UTCDateTime()),
    sa.Column("warning_claim_id", sa.String(36)),
    sa.Column("warning_lease_until", UTCDateTime()),
    sa.Column("deletion_started_at", UTCDateTime()),
    sa.Column("deletion_claim_id", sa.String(36)),
    sa.Column("deletion_lease_until", UTCDateTime()),
    # A warning the mail backend refused for good: not notice (see settings: undeliverable).
    sa.Column("warning_undeliverable_at", UTCDateTime()),
    # What the user's folder held when their erasure started: the receipt's counts.
    sa.Column("deletion_objects", sa.Integer()),
    sa.Column("deletion_versions", sa.Integer()),
    # Activation mail process.
    sa.Column("activation_status", sa.String(16), nullable=False, server_default="NONE"),
    sa.Column("activation_token", sa.String(64)),
    sa.Column("username", sa.String(64)),
    sa.Column("activation_claim_id", sa.String(36)),
    sa.Column("activation_lease_until", UTCDateTime()),
    # Consent revocation process.
    sa.Column("analytics_consent", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("analytics_consent_revoked_at", UTCDateTime()),
    sa.CheckConstraint(
        one_of("subscription_status", SUBSCRIPTION_STATUSES), name="ck_users_subscription_status"
    ),
    sa.CheckConstraint(
        one_of("activation_status", ACTIVATION_STATUSES), name="ck_users_activation_status"
    ),
)
# The warning sweep walks last_visit_at; the deletion sweep walks warnings; resumes walk starts.
sa.Index("ix_users_last_visit", users.c.last_visit_at, users.c.id)
sa.Index(
    "ix_users_warning_sent",
    users.c.deletion_warning_sent_at,
    users.c.id,
    postgresql_where=users.c.deletion_warning_sent_at.is_not(None),
    sqlite_where=users.c.deletion_warning_sent_at.is_not(None),
)
# Activation mail walks the users still due a mail, newest last.
sa.Index(
    "ix_users_activation_due",
    users.c.created_at,
    users.c.id,
    postgresql_where=users.c.activation_status.in_(("NONE", "SENDING")),
    sqlite_where=users.c.activation_status.in_(("NONE", "SENDING")),
)
sa.Index(
    "ix_users_username",
    users.c.username,
    unique=True,
    postgresql_where=users.c.username.is_not(None),
    sqlite_where=users.c.username.is_not(None),
)
sa.Index(
    "ix_users_deletion_started",
    users.c.deletion_started_at,
    users.c.id,
    postgresql_where=users.c.deletion_started_at.is_not(None),
    sqlite_where=users.c.deletion_started_at.is_not(None),
)

features = sa.Table(
    "features",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("proposed_by", sa.String(36), sa.ForeignKey("users.id"), index=True),
)

scoreboard_entries = sa.Table(
    "scoreboard_entries",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("period", sa.String(16), nullable=False),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("score", sa.Integer(), nullable=False),
)

deletion_receipts = sa.Table(
    "deletion_receipts",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("subject_hash", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("flow_run_id", sa.String(36)),
    sa.Column("deleted_at", UTCDateTime(), nullable=False),
    sa.Column("objects_deleted", sa.Integer(), nullable=False),
    sa.Column("rows_removed", sa.JSON(), nullable=False),
    sa.Column("started_at", UTCDateTime()),  # with subject_hash: which deletion this proves
    sa.Column("versions_deleted", sa.Integer()),
)
# One receipt per deletion: a user id used again after a deletion gets a receipt of its own.
sa.Index(
    "uq_deletion_receipts_deletion",
    deletion_receipts.c.subject_hash,
    deletion_receipts.c.started_at,
    unique=True,
)


# --- TTL purge and abandoned carts ------------------------------------------------------------
# The maintenance guide's attribute storage: temporary data (sessions, tokens, auth codes) with
# an expiry in Unix seconds (NULL: permanent), and the index entries that find it by token.
# An index entry outlives its attribute by a buffer, so it can be orphaned; no foreign key, as
# in the guide's stores, so the purge finds orphans itself.

attributes = sa.Table(
    "attributes",
    metadata,
    sa.Column("actor_id", sa.String(64), primary_key=True),
    sa.Column("bucket", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("data", sa.Text()),
    sa.Column("timestamp", UTCDateTime()),
    sa.Column("ttl_timestamp", sa.BigInteger()),
)
sa.Index(
    "ix_attributes_ttl_timestamp",
    attributes.c.ttl_timestamp,
    postgresql_where=attributes.c.ttl_timestamp.is_not(None),
    sqlite_where=attributes.c.ttl_timestamp.is_not(None),
)

attribute_index = sa.Table(
    "attribute_index",
    metadata,
    sa.Column("index_name", sa.String(64), primary_key=True),
    sa.Column("index_key", sa.String(255), primary_key=True),
    sa.Column("actor_id", sa.String(64), nullable=False),
    sa.Column("bucket", sa.String(64), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("ttl_timestamp", sa.BigInteger()),
)
sa.Index(
    "ix_attribute_index_ttl_timestamp",
    attribute_index.c.ttl_timestamp,
    postgresql_where=attribute_index.c.ttl_timestamp.is_not(None),
    sqlite_where=attribute_index.c.ttl_timestamp.is_not(None),
)

# Cart activity: written by the shop on every cart change (expiry pushed forward), deleted by
# it when an order is placed. A row that reaches its expiry is an abandoned cart.
cart_activity = sa.Table(
    "cart_activity",
    metadata,
    sa.Column("cart_id", sa.String(64), primary_key=True),
    sa.Column("customer_id", sa.String(64)),
    sa.Column("product_ids", sa.JSON()),
    sa.Column("expires_at", sa.BigInteger(), nullable=False),  # Unix seconds
    # Abandoned-carts process: a lease while the cart is reported, and the suite's refusal.
    sa.Column("claim_id", sa.String(36)),
    sa.Column("lease_until", UTCDateTime()),
    sa.Column("rejected_at", UTCDateTime()),
    sa.Column("rejected_expires_at", sa.BigInteger()),  # the expiry the suite refused
    sa.Column("rejection", sa.String(300)),
)
sa.Index("ix_cart_activity_expires_at", cart_activity.c.expires_at, cart_activity.c.cart_id)

# Where the abandoned-carts flow is in each DynamoDB stream shard, leased to one run at a time.
stream_checkpoints = sa.Table(
    "stream_checkpoints",
    metadata,
    sa.Column("id", sa.String(400), primary_key=True),  # "<stream arn>|<shard id>"
    sa.Column("stream_arn", sa.String(300), nullable=False),
    sa.Column("shard_id", sa.String(80), nullable=False),
    sa.Column("sequence_number", sa.String(40)),  # the last record acted on
    sa.Column("finished_at", UTCDateTime()),  # a closed shard read to its end
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("claim_id", sa.String(36)),
    sa.Column("lease_until", UTCDateTime()),
)

# --- Consent-revocation deletion at third parties (lifecycle.processes.consent_deletion) ---------

# The application sets analytics_consent_revoked_at; the sweep walks revocations by it.
sa.Index(
    "ix_users_consent_revoked",
    users.c.analytics_consent_revoked_at,
    users.c.id,
    postgresql_where=users.c.analytics_consent_revoked_at.is_not(None),
    sqlite_where=users.c.analytics_consent_revoked_at.is_not(None),
)

#: When the erasure was complete everywhere: at once when no third party holds the user's data,
#: otherwise when the last of its processor operations completed (NULL until then).
deletion_receipts.append_column(sa.Column("completed_at", UTCDateTime()))

DELETION_REASONS = ("consent_revoked", "account_deleted")
OPERATION_STATUSES = ("requested", "pending", "complete", "failed")

#: One deletion at one processor for one user: requested, started (operation id), checked until
#: complete or failed. The raw user id stays here, in our own database, to call the vendor; an
#: account deletion's is cleared once its operation completes (the subject hash remains).
processor_deletions = sa.Table(
    "processor_deletions",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.String(36)),
    sa.Column("subject_hash", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("requested_at", UTCDateTime(), nullable=False),  # revocation or account deletion
    sa.Column("deadline_at", UTCDateTime(), nullable=False),  # legal deadline: one month later
    sa.Column("processor", sa.String(40), nullable=False),
    sa.Column("receipt_id", sa.Integer(), sa.ForeignKey("deletion_receipts.id")),
    sa.Column("status", sa.String(16), nullable=False, server_default="requested"),
    sa.Column("operation_id", sa.String(200)),
    sa.Column("vendor_status", sa.String(64)),
    sa.Column("claim_id", sa.String(36)),
    sa.Column("lease_until", UTCDateTime()),
    sa.Column("start_attempts", sa.Integer(), nullable=False, server_default="0"),
    # Start calls whose answer never arrived (a crash, a timeout): each may have left one
    # operation at the vendor that no record names.
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
    sa.CheckConstraint(one_of("reason", DELETION_REASONS), name="ck_processor_deletions_reason"),
    sa.CheckConstraint(one_of("status", OPERATION_STATUSES), name="ck_processor_deletions_status"),
    sa.UniqueConstraint(
        "user_id", "processor", "reason", "requested_at", name="uq_processor_deletions_request"
    ),
)
# Starts walk what is requested, polls what is pending, each per processor in time order.
sa.Index(
    "ix_processor_deletions_requested",
    processor_deletions.c.processor,
    processor_deletions.c.requested_at,
    processor_deletions.c.id,
    postgresql_where=processor_deletions.c.status == "requested",
    sqlite_where=processor_deletions.c.status == "requested",
)
sa.Index(
    "ix_processor_deletions_pending",
    processor_deletions.c.processor,
    processor_deletions.c.started_at,
    processor_deletions.c.id,
    postgresql_where=processor_deletions.c.status == "pending",
    sqlite_where=processor_deletions.c.status == "pending",
)
sa.Index("ix_processor_deletions_receipt", processor_deletions.c.receipt_id)

#: Every step of every processor deletion, appended and never changed (triggers refuse UPDATE
#: and DELETE). No personal data: the deletion's id, the vendor's words, redacted errors.
processor_deletion_steps = sa.Table(
    "processor_deletion_steps",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("deletion_id", sa.Integer(), sa.ForeignKey("processor_deletions.id"), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("step", sa.String(24), nullable=False),
    sa.Column("operation_id", sa.String(200)),
    sa.Column("vendor_status", sa.String(64)),
    sa.Column("detail", sa.String(300)),
    sa.Column("flow_run_id", sa.String(36)),
)
sa.Index("ix_processor_deletion_steps_deletion", processor_deletion_steps.c.deletion_id)

#: Alerts about a processor (authentication, changed schema, not answering), mailed once per
#: kind until resolved, or again after LIFECYCLE_CONSENT_DELETION__ALERT_REPEAT_AFTER.
processor_alerts = sa.Table(
    "processor_alerts",
    metadata,
    sa.Column("processor", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(24), primary_key=True),
    sa.Column("first_seen_at", UTCDateTime(), nullable=False),
    sa.Column("last_seen_at", UTCDateTime(), nullable=False),
    sa.Column("occurrences", sa.Integer(), nullable=False),
    sa.Column("detail", sa.String(300), nullable=False),
    sa.Column("mailed_at", UTCDateTime()),
    sa.Column("resolved_at", UTCDateTime()),
)

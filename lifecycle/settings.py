"""Typed settings read from the environment (prefix ``LIFECYCLE_``).

Call :func:`get_settings` where settings are needed; tests build ``Settings(...)`` directly.
Every value is checked when settings are loaded, and an error names the variable to fix:
numbers refuse booleans and fractions, nested groups and JSON values refuse unknown keys, and
an unknown ``LIFECYCLE_*`` variable (a typo) is refused with the closest known name.

What every process shares (database, storage, mail, leases) is flat: ``LIFECYCLE_MAIL_BACKEND``.
What one process alone needs is a nested group named after it:
``LIFECYCLE_INACTIVE_ACCOUNTS__CLAIM_GROUP``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from lifecycle.errors import ConfigError

PREFIX = "LIFECYCLE_"
#: Variables with our prefix that are not settings: the workers' pull step (prefect.yaml), and
#: the test suite's and benchmarks' own.
FOREIGN_VARIABLES = re.compile(r"^LIFECYCLE_(GIT|TEST|BENCH)_")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


class SettingsError(ConfigError):
    """Raised when the environment holds invalid or missing settings."""


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


#: Numbers that refuse booleans (pydantic would take ``true`` as 1).
Count = Annotated[int, BeforeValidator(_not_a_bool)]
Real = Annotated[float, BeforeValidator(_not_a_bool)]


def _iso_duration(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str) or not value.strip().upper().startswith("P"):
        raise ValueError("must be an ISO 8601 duration such as P3D (3 days) or PT12H (12 hours)")
    return value.strip().upper()


#: A length of time, written as an ISO 8601 duration ("P3D"); never a bare number, whose unit
#: (seconds? days?) nobody could guess.
Duration = Annotated[timedelta, BeforeValidator(_iso_duration)]


def _one_line(value: str, what: str) -> str:
    if any(char in value for char in "\r\n\0"):
        raise ValueError(f"{what} must be one line, without control characters")
    return value


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(_one_line(value, "a URL"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL such as https://host:port")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    if parts.username or parts.password:
        raise ValueError("must not contain credentials; they come from their own settings")
    return value


#: An http(s) endpoint, checked when settings load.
HttpUrl = Annotated[str, BeforeValidator(_http_url)]


def _one_address(value: str) -> str:
    """``value`` if it is exactly one e-mail address (with or without a display name)."""
    _one_line(value, "the address")
    address = parseaddr(value)[1]
    local, at, domain = address.rpartition("@")
    if len(getaddresses([value])) != 1 or not at or not local or "." not in domain:
        raise ValueError("must be one address, e.g. 'Acme <no-reply@acme.com>'")
    return value


def _not_a_file(value: Path | None) -> Path | None:
    if value is not None and value.exists() and not value.is_dir():
        raise ValueError(f"{value} is a file, not a folder")
    return value


class Group(BaseModel):
    """A nested group of settings: unknown keys are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


#: A table or column name: checked against the live schema before use, never pasted into SQL.
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=63)]


class ReferenceRule(Group):
    """A column elsewhere that points at a user id, and what to do with it on deletion."""

    table: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    column: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    action: Literal["set_null", "delete"]


class DeletionPlanSettings(Group):
    """What belongs to a user outside the ``users`` row: storage prefix and referencing rows."""

    storage_prefix: str = Field(
        "users/{user_id}/",
        description="Object-storage prefix of a user's folder; must contain {user_id}.",
    )
    references: list[ReferenceRule] = Field(
        default_factory=lambda: [
            ReferenceRule(table="features", column="proposed_by", action="set_null"),
            ReferenceRule(table="scoreboard_entries", column="user_id", action="delete"),
        ]
    )

    @field_validator("storage_prefix")
    @classmethod
    def _prefix_names_user(cls, value: str) -> str:
        if value.count("{user_id}") != 1 or not value.endswith("/"):
            raise ValueError("must contain {user_id} exactly once and end with '/'")
        if value.replace("{user_id}", "x").count("{") or ".." in value or value.startswith("/"):
            raise ValueError(
                "only the {user_id} placeholder is allowed, with no '..' or leading '/'"
            )
        return value

    def prefix_for(self, user_id: str) -> str:
        """The folder of one user in object storage."""
        return self.storage_prefix.format(user_id=user_id)


class InactiveAccountsSettings(Group):
    """``LIFECYCLE_INACTIVE_ACCOUNTS__*``: tuning of the inactive-accounts process."""

    claim_group: Count = Field(
        20,
        ge=1,
        le=1000,
        description="Users claimed per commit; a user's files are deleted at most one group's "
        "storage work after the claim that re-checked their inactivity.",
    )
    undeliverable: Literal["keep", "delete"] = Field(
        "keep",
        description="A user whose warning the mail backend refused for good (bad address, hard "
        "bounce) got no notice. keep: never delete them on the strength of it; they are counted "
        "as undeliverable in every run until they visit or their address is fixed. delete: "
        "treat the attempt as the warning and delete them after the grace period.",
    )


class BackfillSettings(Group):
    """``LIFECYCLE_BACKFILL__*``: limits of the backfill flow."""

    max_runs: Count = Field(
        366, ge=1, le=10_000, description="The most dates one backfill may replay."
    )


# --- TTL purge (LIFECYCLE_TTL_PURGE__*) and abandoned carts (LIFECYCLE_ABANDONED_CARTS__*) ---


class OrphanRule(Group):
    """Rows of a purge target whose primary row (in ``table``, matched on ``columns``) is gone."""

    table: Identifier
    columns: dict[Identifier, Identifier] = Field(
        min_length=1, description="Column of the target -> column of the primary table."
    )


class PurgeTarget(Group):
    """One table the TTL purge keeps clean: rows whose expiry is in the past are deleted."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=40)
    table: Identifier
    expiry_column: Identifier
    expiry_kind: Literal["epoch", "timestamp"] = Field(
        description="epoch: integer Unix seconds; timestamp: a date-time column."
    )
    batch_size: Count = Field(10_000, ge=100, le=100_000, description="Rows per transaction.")
    strategy: Literal["auto", "blocks", "index"] = "auto"
    orphan_of: OrphanRule | None = None
    action: Literal["abandoned-cart"] | None = Field(
        None, description="Run this on expired rows before they go (abandoned-cart: report it)."
    )

    @model_validator(mode="after")
    def _action_fits(self) -> PurgeTarget:
        if self.action == "abandoned-cart" and (
            self.table,
            self.expiry_column,
            self.expiry_kind,
        ) != ("cart_activity", "expires_at", "epoch"):
            raise ValueError(
                "the abandoned-cart action runs on table cart_activity, expiry_column "
                "expires_at, expiry_kind epoch"
            )
        if self.action and self.orphan_of:
            raise ValueError("a target has either an action or orphan_of, not both")
        if self.orphan_of and self.strategy == "index":
            raise ValueError("orphans can be anywhere: a target with orphan_of walks its blocks")
        return self


def reference_targets() -> list[PurgeTarget]:
    """The maintenance guide's tables: attributes with ``ttl_timestamp``, and its index entries
    (which also go when their attribute is gone)."""
    return [
        PurgeTarget(
            name="attributes",
            table="attributes",
            expiry_column="ttl_timestamp",
            expiry_kind="epoch",
        ),
        PurgeTarget(
            name="attribute-index",
            table="attribute_index",
            expiry_column="ttl_timestamp",
            expiry_kind="epoch",
            orphan_of=OrphanRule(
                table="attributes",
                columns={"actor_id": "actor_id", "bucket": "bucket", "name": "name"},
            ),
        ),
    ]


class DynamoTtlTable(Group):
    """A DynamoDB table whose native TTL the purge enables, verifies and monitors."""

    table: str = Field(pattern=r"^[A-Za-z0-9_.-]{3,255}$")
    attribute: str = Field(min_length=1, max_length=255)


class TtlPurgeSettings(Group):
    """``LIFECYCLE_TTL_PURGE__*``: what the ``ttl-purge`` flow purges, and how."""

    targets: list[PurgeTarget] = Field(default_factory=reference_targets)
    dynamodb_tables: list[DynamoTtlTable] = Field(default_factory=list)
    block_walk_above: Real = Field(
        0.10,
        ge=0,
        le=1,
        description="Walk the table by block ranges when more than this share of its rows is "
        "expired; below it, walk the expiry index.",
    )
    lock_wait_ms: Count = Field(
        20,
        ge=1,
        le=1000,
        description="A block batch waits at most this long for a row the application holds, "
        "then redoes the range skipping locked rows (PostgreSQL).",
    )
    vacuum_after_rows: Count = Field(
        100_000, ge=0, description="VACUUM a PostgreSQL table after a run deleted this many rows."
    )
    backlog_alert_rows: Count = Field(
        100_000, ge=1, description="Emit an event when more expired rows remain after a run."
    )
    backlog_alert_age_seconds: Count = Field(
        86_400, ge=60, description="... or when the oldest expired row is older than this."
    )

    @field_validator("targets")
    @classmethod
    def _unique_names(cls, targets: list[PurgeTarget]) -> list[PurgeTarget]:
        names = [target.name for target in targets]
        if len(names) != len(set(names)):
            raise ValueError(f"target names must be unique, got {names}")
        return targets


class DynamoCartTable(Group):
    """A DynamoDB cart-activity table whose TTL deletions are abandoned carts."""

    table: str = Field(pattern=r"^[A-Za-z0-9_.-]{3,255}$")
    key_attribute: str = "cartid"
    ttl_attribute: str = "ttl"
    customer_attribute: str = "customerid"
    products_attribute: str = "productids"


class AbandonedCartsSettings(Group):
    """``LIFECYCLE_ABANDONED_CARTS__*``: where abandoned carts are reported, and from where."""

    marketing_url: HttpUrl | None = Field(
        None, description="Endpoint that receives abandoned carts (POST, JSON, signed)."
    )
    marketing_secret: SecretStr | None = Field(
        None, description="Shared secret of the HMAC-SHA256 signature; required with the URL."
    )
    request_timeout_seconds: Real = Field(10.0, gt=0, le=120)
    retry_budget_seconds: Real = Field(
        60.0, ge=0, le=900, description="Total waiting between retries of one cart."
    )
    keep_rejected_days: Count = Field(
        30, ge=1, le=3650, description="A cart the suite refused (4xx) is purged after this."
    )
    dynamodb_tables: list[DynamoCartTable] = Field(default_factory=list)
    stream_page_size: Count = Field(100, ge=1, le=1000)
    sweep_grace_seconds: Count = Field(
        3600,
        ge=0,
        le=7 * 86_400,
        description="The DynamoDB sweep reports carts expired at least this long ago that TTL "
        "has not removed yet (TTL may lag up to 48 hours).",
    )

    @model_validator(mode="after")
    def _secret_with_url(self) -> AbandonedCartsSettings:
        if self.marketing_secret is not None and len(self.marketing_secret.get_secret_value()) < 16:
            raise ValueError(
                "LIFECYCLE_ABANDONED_CARTS__MARKETING_SECRET must be at least 16 characters"
            )
        if self.marketing_url and self.marketing_secret is None:
            raise ValueError(
                "LIFECYCLE_ABANDONED_CARTS__MARKETING_SECRET is required when "
                "LIFECYCLE_ABANDONED_CARTS__MARKETING_URL is set"
            )
        return self


#: Names of processors: they appear in tags (processor:<name>), alerts and receipts.
_PROCESSOR_NAME = r"^[a-z0-9][a-z0-9-]{0,38}$"
#: A Prefect Secret block name (resolved by the tasks, above lifecycle/).
_BLOCK_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
#: A path below a base URL; "{operation_id}" is the only placeholder a status path may hold.
_API_PATH = r"^/[A-Za-z0-9._~!$&'()*+,;=:@/{}-]*$"


class ProcessorSettings(Group):
    """A third party that holds analytics data, and how hard to push it.

    Every processor is called with ``Authorization: Bearer <token>``: ``token`` comes from the
    environment, or ``token_block`` names a Prefect Secret block that holds it. One of them is
    required while the processor is enabled, and neither may be empty.
    """

    name: str = Field(pattern=_PROCESSOR_NAME, description="Our name for it (tags, receipts).")
    enabled: bool = True
    base_url: HttpUrl | None = Field(
        None, description="API root; vendors default to their region's."
    )
    token: SecretStr | None = None
    token_block: str | None = Field(None, pattern=_BLOCK_NAME)
    escalate_after: Annotated[Duration, Field(ge=timedelta(hours=1), le=timedelta(days=365))] = (
        Field(
            timedelta(days=3),
            description="Mail the technical contacts about an operation still not complete "
            "this long after it started (ISO 8601, e.g. P3D).",
        )
    )
    concurrency: Count = Field(8, ge=1, le=256, description="Calls in flight at once.")
    ids_per_request: Count = Field(1, ge=1, le=5000, description="User ids per start call.")
    rate_per_second: Real = Field(10.0, gt=0, le=10_000, description="Calls per second at most.")
    timeout_seconds: Real = Field(10.0, gt=0, le=300, description="Per call and per read.")
    retry_budget_seconds: Real = Field(
        120.0, ge=0, le=3600, description="Waiting between retries of one call, at most."
    )

    @model_validator(mode="after")
    def _require_token(self) -> ProcessorSettings:
        if self.token is not None and not self.token.get_secret_value().strip():
            raise ValueError(f"token of processor {self.name!r} must not be empty")
        if self.token is not None and self.token_block is not None:
            raise ValueError(f"processor {self.name!r}: set token or token_block, not both")
        if self.enabled and self.token is None and self.token_block is None:
            raise ValueError(
                f"processor {self.name!r} is enabled but has no token: set token (from a secret "
                "in the environment) or token_block (a Prefect Secret block)"
            )
        return self


class RestProcessorSettings(ProcessorSettings):
    """``kind: rest``: any API that takes a start call and answers status calls in JSON.

    The defaults are the contract of the local processor simulator (``lifecycle simulator``).
    """

    kind: Literal["rest"]
    base_url: HttpUrl = Field(description="API root, e.g. https://privacy.example.com/v1")
    start_path: str = Field("/deletions", pattern=_API_PATH)
    status_path: str = Field("/deletions/{operation_id}", pattern=_API_PATH)
    body: dict[str, Any] = Field(
        default_factory=lambda: {"user_ids": "{user_ids}"},
        description='JSON body of a start call; the string "{user_ids}" becomes the list of ids.',
    )
    operation_id_paths: list[str] = Field(
        default_factory=lambda: ["id"],
        min_length=1,
        description="Where the start answer holds the operation id (dotted; first match wins).",
    )
    status_field: str = Field("status", description="Where a status answer holds the status.")
    pending: list[str] = Field(default_factory=lambda: ["pending", "running"], min_length=1)
    complete: list[str] = Field(default_factory=lambda: ["complete"], min_length=1)
    failed: list[str] = Field(default_factory=lambda: ["failed"], min_length=1)
    list_path: str | None = Field(
        "/deletions",
        pattern=_API_PATH,
        description="Listing of recent operations, to reconcile a start whose answer was lost "
        "(null: the API has none).",
    )

    @model_validator(mode="after")
    def _check_contract(self) -> RestProcessorSettings:
        if "{operation_id}" not in self.status_path:
            raise ValueError(f"status_path of {self.name!r} must contain {{operation_id}}")
        values = [*self.pending, *self.complete, *self.failed]
        if len(set(values)) != len(values):
            raise ValueError(f"a status value of {self.name!r} is listed twice")
        if '"{user_ids}"' not in json.dumps(self.body):
            raise ValueError(f'body of {self.name!r} must hold the string "{{user_ids}}"')
        return self


class MixpanelSettings(ProcessorSettings):
    """``kind: mixpanel``: Mixpanel's GDPR API v3 data deletions (see lifecycle.clients.processors).

    ``token`` is a GDPR OAuth token (Profile & Preferences > Data & Privacy; it expires after a
    year); ``project_token`` is the project's token, sent as the ``token`` query parameter.
    """

    kind: Literal["mixpanel"]
    name: str = Field("mixpanel", pattern=_PROCESSOR_NAME)
    region: Literal["us", "eu", "in"] = "us"
    project_token: SecretStr | None = None
    compliance_type: Literal["GDPR", "CCPA"] = "GDPR"
    # "1 request per second for GDPR APIs"; "up to 1999 distinct IDs" per deletion.
    concurrency: Count = Field(1, ge=1, le=256)
    ids_per_request: Count = Field(1999, ge=1, le=1999)
    rate_per_second: Real = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _require_project_token(self) -> MixpanelSettings:
        value = self.project_token
        if self.enabled and (value is None or not value.get_secret_value().strip()):
            raise ValueError(f"processor {self.name!r} (mixpanel) needs project_token")
        return self


class SegmentSettings(ProcessorSettings):
    """``kind: segment``: Segment Public API workspace regulations (Deletion and Suppression).

    ``token`` is a Public API token with access to the workspace's regulations.
    """

    kind: Literal["segment"]
    name: str = Field("segment", pattern=_PROCESSOR_NAME)
    region: Literal["us", "eu"] = "us"
    regulation_type: Literal["SUPPRESS_WITH_DELETE", "DELETE_ONLY"] = "SUPPRESS_WITH_DELETE"
    # 600 create calls per minute; at most 5000 user ids per call.
    ids_per_request: Count = Field(100, ge=1, le=5000)
    rate_per_second: Real = Field(10.0, gt=0, le=10)


AnyProcessor = Annotated[
    RestProcessorSettings | MixpanelSettings | SegmentSettings, Field(discriminator="kind")
]


class ConsentDeletionSettings(Group):
    """``LIFECYCLE_CONSENT_DELETION__*``: third parties that erase a user's analytics data."""

    processors: list[AnyProcessor] = Field(
        default_factory=list,
        description="JSON list; each with kind rest, mixpanel or segment (see README).",
    )
    technical_contacts: list[str] = Field(
        default_factory=list,
        description="Who gets escalations and alerts (JSON list of addresses); required as "
        "soon as a processor is enabled.",
    )
    alert_repeat_after: Annotated[
        Duration, Field(ge=timedelta(minutes=10), le=timedelta(days=30))
    ] = Field(timedelta(hours=24), description="The same alert is mailed again after this long.")
    batch_size: Count = Field(500, ge=1, le=10_000, description="Operations per Prefect task.")

    @field_validator("technical_contacts")
    @classmethod
    def _check_contacts(cls, value: list[str]) -> list[str]:
        return [_one_address(address) for address in value]

    @model_validator(mode="after")
    def _check_processors(self) -> ConsentDeletionSettings:
        names = [processor.name for processor in self.processors]
        if len(set(names)) != len(names):
            raise ValueError(f"processor names must be unique, got {names}")
        if self.enabled and not self.technical_contacts:
            raise ValueError(
                "LIFECYCLE_CONSENT_DELETION__TECHNICAL_CONTACTS is required when a processor is "
                "enabled: escalations and alerts go there"
            )
        return self

    @property
    def enabled(self) -> list[RestProcessorSettings | MixpanelSettings | SegmentSettings]:
        return [processor for processor in self.processors if processor.enabled]


def _link_base(value: str) -> str:
    """An http(s) URL the activation link is built on; it may carry a query string of its own
    (the username and token are added to it), never a fragment or credentials."""
    parts = urlsplit(_one_line(value, "a URL"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL such as https://app.example.com/activate")
    if parts.fragment:
        raise ValueError("must not have a fragment (#...): the link's parameters follow it")
    if parts.username or parts.password:
        raise ValueError("must not contain credentials")
    return value


class ActivationMailSettings(Group):
    """``LIFECYCLE_ACTIVATION_MAIL__*``: the activation mail sent to every new user."""

    url_base: Annotated[str, BeforeValidator(_link_base)] = Field(
        "http://localhost:8000/activate",
        description="Where the activation link points; username and token are added as query "
        "parameters (an existing query string is kept).",
    )
    max_age: Annotated[Duration, Field(ge=timedelta(minutes=10), le=timedelta(days=365))] = Field(
        timedelta(days=7),
        description="Only users created at most this long ago get the mail (ISO 8601, e.g. "
        "P7D): accounts older than this are never mailed an activation link.",
    )
    lease_seconds: Count = Field(
        300,
        ge=30,
        le=86_400,
        description="A user claimed for sending (SENDING) by a run that crashed is taken over "
        "by another run this long after the claim.",
    )
    priority: bool = Field(
        True,
        description="Activation mail goes first on the shared mail rate: other senders step "
        "aside while an activation sender waits.",
    )
    listen_backoff_max_seconds: Real = Field(
        30.0,
        gt=0,
        le=600,
        description="`lifecycle listen` reconnects after a lost connection, waiting 0.5 s, "
        "then doubling up to this.",
    )


class Settings(BaseSettings):
    """Everything the flows need to reach the database, object storage and mail."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_nested_delimiter="__", extra="ignore")

    data_dir: Annotated[Path, BeforeValidator(str)] = Field(
        Path(".lifecycle"), description="Where the embedded defaults keep their files."
    )
    database_url: str | None = Field(
        None, description="postgresql://… or sqlite:///…; default: SQLite file in data_dir."
    )
    storage_url: str | None = Field(
        None, description="s3://bucket/prefix or file:///path; default: data_dir/storage."
    )
    s3_endpoint_url: HttpUrl | None = None
    storage_timeout_seconds: Real = Field(
        10.0, gt=0, le=300, description="How long an S3 request waits for an answer."
    )
    aws_region: str = "us-east-1"

    mail_backend: Literal["outbox", "smtp", "ses"] = "outbox"
    mail_from: str | None = Field(None, description="Sender, e.g. 'Acme <no-reply@acme.com>'.")
    outbox_dir: Path | None = None
    smtp_host: str | None = None
    smtp_port: Count = Field(587, ge=1, le=65535)
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_seconds: Real = Field(30.0, gt=0, le=300)
    ses_endpoint_url: HttpUrl | None = None
    ses_configuration_set: str | None = None
    mail_rate_per_second: Real = Field(
        14.0,
        ge=0,
        le=1000,
        description="Shared cap on mails per second (SES default: 14); 0 = unpaced, outbox only.",
    )
    mail_limit_name: str = Field("lifecycle-mail", pattern=r"^[a-z0-9][a-z0-9-]*$")

    app_url: str = "http://localhost:8000"
    product_name: str = Field("Lifecycle Demo", min_length=1, max_length=100)
    lease_seconds: Count = Field(
        900, ge=60, le=86_400, description="How long a claim on a user protects it."
    )
    pseudonym_key: SecretStr | None = Field(
        None, description="HMAC key for user-id hashes in receipts and events."
    )
    alert_webhook_url: SecretStr | None = Field(
        None,
        description="Where failed runs and alerts are posted (Slack incoming webhook or any "
        "URL taking JSON); used by deployments/bootstrap.py.",
    )
    deletions_paused: bool = Field(
        False,
        description="Kill switch: every run skips deletions (and says so); warnings go on.",
    )
    deletion_plan: DeletionPlanSettings = Field(default_factory=DeletionPlanSettings)

    dynamodb_endpoint_url: HttpUrl | None = Field(
        None, description="DynamoDB (and Streams) endpoint, for local emulators; default AWS."
    )

    inactive_accounts: InactiveAccountsSettings = Field(default_factory=InactiveAccountsSettings)
    backfill: BackfillSettings = Field(default_factory=BackfillSettings)
    ttl_purge: TtlPurgeSettings = Field(default_factory=TtlPurgeSettings)
    abandoned_carts: AbandonedCartsSettings = Field(default_factory=AbandonedCartsSettings)
    consent_deletion: ConsentDeletionSettings = Field(default_factory=ConsentDeletionSettings)
    activation_mail: ActivationMailSettings = Field(default_factory=ActivationMailSettings)

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        if not sep:
            raise ValueError("must look like postgresql://user@host/db or sqlite:///path")
        if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
            return f"postgresql+psycopg://{rest}"
        if scheme == "sqlite":
            return value
        raise ValueError(f"unsupported scheme {scheme!r}: use postgresql:// or sqlite:///")

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(_one_line(value, "a URL"))
        plain = not parts.query and not parts.fragment
        if plain and parts.scheme == "s3" and parts.netloc:
            return value
        if plain and parts.scheme == "file" and not parts.netloc and parts.path.startswith("/"):
            return value
        raise ValueError(
            "must be s3://bucket/optional/prefix or file:///absolute/path, "
            "without a query string or fragment"
        )

    @field_validator("app_url")
    @classmethod
    def _check_app_url(cls, value: str) -> str:
        parts = urlsplit(_one_line(value, "a URL"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL such as https://app.example.com")
        return value

    _check_folders = field_validator("data_dir", "outbox_dir")(_not_a_file)

    @field_validator("alert_webhook_url")
    @classmethod
    def _check_alert_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parts = urlsplit(_one_line(value.get_secret_value(), "a URL"))
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http(s) URL")  # never echo it: it holds a token
        return value

    @field_validator("aws_region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        if not _REGION.match(value):
            raise ValueError("must be an AWS region such as us-east-1 or eu-central-1")
        return value

    @field_validator("product_name", "smtp_host", "smtp_username", "ses_configuration_set")
    @classmethod
    def _check_one_line(cls, value: str | None) -> str | None:
        return None if value is None else _one_line(value, "the value")

    @field_validator("mail_from")
    @classmethod
    def _check_sender(cls, value: str | None) -> str | None:
        return None if value is None else _one_address(value)

    @model_validator(mode="after")
    def _require_backend_settings(self) -> Settings:
        if self.mail_backend in ("smtp", "ses") and not self.mail_from:
            raise ValueError(
                f"LIFECYCLE_MAIL_FROM is required with mail_backend={self.mail_backend}"
            )
        if self.mail_rate_per_second == 0 and self.mail_backend != "outbox":
            raise ValueError("LIFECYCLE_MAIL_RATE_PER_SECOND=0 (unpaced) is only for the outbox")
        if self.mail_backend == "smtp" and not self.smtp_host:
            raise ValueError("LIFECYCLE_SMTP_HOST is required with mail_backend=smtp")
        if self.smtp_username and self.smtp_password is None:
            raise ValueError(
                "LIFECYCLE_SMTP_PASSWORD is required when LIFECYCLE_SMTP_USERNAME is set"
            )
        if self.smtp_password is not None and not self.smtp_password.get_secret_value():
            raise ValueError("LIFECYCLE_SMTP_PASSWORD must not be empty")
        if self.pseudonym_key is not None and len(self.pseudonym_key.get_secret_value()) < 16:
            raise ValueError("LIFECYCLE_PSEUDONYM_KEY must be at least 16 characters")
        acting = [t.name for t in self.ttl_purge.targets if t.action == "abandoned-cart"]
        if acting and not self.abandoned_carts.marketing_url:
            raise ValueError(
                f"LIFECYCLE_ABANDONED_CARTS__MARKETING_URL is required: TTL purge target(s) "
                f"{acting} report abandoned carts"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'lifecycle.db'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.data_dir.resolve() / "storage").as_uri()

    @property
    def resolved_outbox_dir(self) -> Path:
        return (self.outbox_dir or self.data_dir / "outbox").resolve()

    @property
    def sender(self) -> str:
        return self.mail_from or f"{self.product_name} <lifecycle@localhost>"


def known_variables() -> set[str]:
    """Every ``LIFECYCLE_*`` name a setting is read from, nested ones included."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        variable = f"{PREFIX}{name.upper()}"
        names.add(variable)
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names.update(f"{variable}__{nested.upper()}" for nested in group.model_fields)
    return names


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``LIFECYCLE_*`` variables no setting reads, each with the closest known name."""
    known = known_variables()
    problems = []
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name in known or FOREIGN_VARIABLES.match(name):
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"{name}: not a lifecycle setting{hint}")
    return problems


def get_settings() -> Settings:
    """Load settings from the environment, or fail with a message naming what to set."""
    problems = unknown_variables(os.environ)
    try:
        settings = Settings()
    except ValidationError as exc:
        problems += [
            f"{PREFIX}{'__'.join(str(p) for p in err['loc']).upper() or 'SETTINGS'}: {err['msg']}"
            for err in exc.errors()
        ]
    except SourceError as exc:  # a value that is not valid JSON, e.g. LIFECYCLE_DELETION_PLAN
        field = re.search(r'field "(\w+)"', str(exc))
        variable = f"{PREFIX}{field.group(1).upper()}" if field else "a JSON setting"
        problems.append(
            f"{variable} (or one of its {variable}__* variables) is not valid JSON: {exc}"
        )
    if problems:
        raise SettingsError(f"Invalid lifecycle settings: {'; '.join(problems)}") from None
    return settings

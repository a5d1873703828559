"""Typed settings read from the environment (prefix ``LIFECYCLE_``).

Call :func:`get_settings` where settings are needed; tests build ``Settings(...)`` directly.
Every value is checked when settings are loaded, and an error names the variable to fix.

What every process shares (database, storage, mail, leases) is flat: ``LIFECYCLE_MAIL_BACKEND``.
What one process alone needs is a nested group named after it:
``LIFECYCLE_INACTIVE_ACCOUNTS__CLAIM_GROUP``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from lifecycle.errors import ConfigError


class SettingsError(ConfigError):
    """Raised when the environment holds invalid or missing settings."""


class ReferenceRule(BaseModel):
    """A column elsewhere that points at a user id, and what to do with it on deletion."""

    table: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    column: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    action: Literal["set_null", "delete"]


class DeletionPlanSettings(BaseModel):
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


class InactiveAccountsSettings(BaseModel):
    """``LIFECYCLE_INACTIVE_ACCOUNTS__*``: tuning of the inactive-accounts process."""

    claim_group: int = Field(
        20,
        ge=1,
        le=1000,
        description="Users claimed for deletion per commit; a user's files are deleted at most "
        "one group's storage work after the claim that re-checked their inactivity.",
    )


class Settings(BaseSettings):
    """Everything the flows need to reach the database, object storage and mail."""

    model_config = SettingsConfigDict(
        env_prefix="LIFECYCLE_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Field(
        Path(".lifecycle"), description="Where the embedded defaults keep their files."
    )
    database_url: str | None = Field(
        None, description="postgresql://… or sqlite:///…; default: SQLite file in data_dir."
    )
    storage_url: str | None = Field(
        None, description="s3://bucket/prefix or file:///path; default: data_dir/storage."
    )
    s3_endpoint_url: str | None = None
    aws_region: str = "us-east-1"

    mail_backend: Literal["outbox", "smtp", "ses"] = "outbox"
    mail_from: str | None = Field(None, description="Sender, e.g. 'Acme <no-reply@acme.com>'.")
    outbox_dir: Path | None = None
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_seconds: float = Field(30.0, gt=0)
    ses_endpoint_url: str | None = None
    ses_configuration_set: str | None = None
    mail_rate_per_second: float = Field(
        14.0,
        ge=0,
        le=1000,
        description="Shared cap on mails per second (SES default: 14); 0 = unpaced, outbox only.",
    )
    mail_limit_name: str = Field("lifecycle-mail", pattern=r"^[a-z0-9][a-z0-9-]*$")

    app_url: str = "http://localhost:8000"
    product_name: str = Field("Lifecycle Demo", min_length=1, max_length=100)
    lease_seconds: int = Field(
        900, ge=60, le=86_400, description="How long a claim on a user protects it."
    )
    pseudonym_key: SecretStr | None = Field(
        None, description="HMAC key for user-id hashes in receipts and events."
    )
    deletion_plan: DeletionPlanSettings = Field(default_factory=DeletionPlanSettings)

    inactive_accounts: InactiveAccountsSettings = Field(default_factory=InactiveAccountsSettings)

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
        parts = urlsplit(value)
        if parts.scheme == "s3" and parts.netloc:
            return value
        if parts.scheme == "file" and not parts.netloc and parts.path.startswith("/"):
            return value
        raise ValueError("must be s3://bucket/optional/prefix or file:///absolute/path")

    @field_validator("app_url")
    @classmethod
    def _check_app_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL such as https://app.example.com")
        return value

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


def get_settings() -> Settings:
    """Load settings from the environment, or fail with a message naming what to set."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"LIFECYCLE_{'__'.join(str(p) for p in err['loc']).upper() or 'SETTINGS'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"Invalid lifecycle settings: {problems}") from None
    except SourceError as exc:  # a value that is not valid JSON, e.g. LIFECYCLE_DELETION_PLAN
        raise SettingsError(
            f"Invalid lifecycle settings: {exc}; JSON values such as LIFECYCLE_DELETION_PLAN "
            "must be valid JSON"
        ) from None

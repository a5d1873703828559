"""The one composition root: every client the processes use, built from settings.

Clients are built on first use, so a task only opens what it needs, and closed together.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from lifecycle.clients.dynamodb import open_dynamodb
from lifecycle.clients.http import RetryPolicy
from lifecycle.clients.mail.backends import (
    Mailer,
    OutboxMailer,
    SesMailer,
    SmtpMailer,
    ses_client,
)
from lifecycle.clients.marketing import MarketingSuite
from lifecycle.clients.storage import ObjectStorage, open_storage
from lifecycle.errors import ConfigError
from lifecycle.settings import Settings


def open_mailer(settings: Settings) -> Mailer:
    """The backend chosen by ``settings.mail_backend``."""
    if settings.mail_backend == "smtp":
        if not settings.smtp_host:
            raise ConfigError("LIFECYCLE_SMTP_HOST is required with mail_backend=smtp")
        return SmtpMailer(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.sender,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            timeout=settings.smtp_timeout_seconds,
        )
    if settings.mail_backend == "ses":
        client = ses_client(region=settings.aws_region, endpoint_url=settings.ses_endpoint_url)
        return SesMailer(
            client=client,
            sender=settings.sender,
            configuration_set=settings.ses_configuration_set,
        )
    return OutboxMailer(directory=settings.resolved_outbox_dir, sender=settings.sender)


def open_marketing(settings: Settings) -> MarketingSuite:
    """The marketing suite's client; refused when its URL or secret is not configured."""
    carts = settings.abandoned_carts
    if not carts.marketing_url or carts.marketing_secret is None:
        raise ConfigError(
            "LIFECYCLE_ABANDONED_CARTS__MARKETING_URL and LIFECYCLE_ABANDONED_CARTS__"
            "MARKETING_SECRET are required to report abandoned carts"
        )
    return MarketingSuite(
        url=carts.marketing_url,
        secret=carts.marketing_secret.get_secret_value().encode(),
        timeout_seconds=carts.request_timeout_seconds,
        retry=RetryPolicy(budget=carts.retry_budget_seconds),
    )


class Clients:
    """Storage, mail and the other external systems, as configured."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def storage(self) -> ObjectStorage:
        if self.settings.storage_url is None:  # the embedded default: ours to create
            (self.settings.data_dir / "storage").mkdir(parents=True, exist_ok=True)
        return open_storage(
            self.settings.resolved_storage_url,
            endpoint_url=self.settings.s3_endpoint_url,
            region=self.settings.aws_region,
            timeout_seconds=self.settings.storage_timeout_seconds,
        )

    def check_storage(self) -> None:
        """Refuse, before any work, a store that is missing or out of reach."""
        try:
            self.storage.check()
        except ConfigError as exc:
            raise ConfigError(
                f"LIFECYCLE_STORAGE_URL={self.settings.resolved_storage_url}: {exc}"
            ) from None

    @cached_property
    def mailer(self) -> Mailer:
        return open_mailer(self.settings)

    @cached_property
    def marketing(self) -> MarketingSuite:
        return open_marketing(self.settings)

    @cached_property
    def dynamodb(self) -> tuple[Any, Any]:
        """The DynamoDB and DynamoDB Streams clients."""
        return open_dynamodb(
            region=self.settings.aws_region, endpoint_url=self.settings.dynamodb_endpoint_url
        )

    def close(self) -> None:
        """Release connections of the clients that were opened."""
        if "mailer" in self.__dict__:
            self.mailer.close()
        if "marketing" in self.__dict__:
            self.marketing.close()

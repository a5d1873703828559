"""Abandoned carts to the marketing suite: one signed, idempotent JSON POST per cart.

The request (over :class:`~lifecycle.clients.http.HttpClient`, so 429 with ``Retry-After``, 5xx
and timeouts are retried with backoff within a budget, and other 4xx are not)::

    POST <LIFECYCLE_ABANDONED_CARTS__MARKETING_URL>
    Content-Type: application/json
    Idempotency-Key: <sha256 of cart id and expiry>
    X-Lifecycle-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

    {"cart_id": "...", "customer_id": "...", "expired_at": 1767225600,
     "expired_at_iso": "2026-01-01T00:00:00Z", "idempotency_key": "...",
     "product_ids": ["...", ...], "type": "cart.abandoned"}

Delivery is at least once: a retry after a timeout, or a rerun after a crash, sends the same
body with the same key, and the receiver drops what it has seen (:func:`verify` shows how a
receiver checks the signature). Any 2xx means accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from lifecycle.clients.http import HttpClient, RequestRejected, RetryPolicy
from lifecycle.errors import ConfigError

SIGNATURE_HEADER = "X-Lifecycle-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: A receiver should refuse signatures older than this (replays).
SIGNATURE_TOLERANCE_SECONDS = 300


@dataclass(frozen=True)
class AbandonedCart:
    """A cart that expired with a customer and products in it."""

    cart_id: str
    customer_id: str
    product_ids: tuple[str, ...]
    expired_at: int  # Unix seconds: the expiry that made it abandoned

    @property
    def idempotency_key(self) -> str:
        """The same for every delivery of this cart at this expiry, different once the
        customer comes back and the cart expires again."""
        data = f"abandoned-cart\0{self.cart_id}\0{self.expired_at}".encode()
        return hashlib.sha256(data).hexdigest()

    def body(self) -> bytes:
        return json.dumps(
            {
                "type": "cart.abandoned",
                "cart_id": self.cart_id,
                "customer_id": self.customer_id,
                "product_ids": list(self.product_ids),
                "expired_at": self.expired_at,
                "expired_at_iso": datetime.fromtimestamp(self.expired_at, UTC)
                .isoformat()
                .replace("+00:00", "Z"),
                "idempotency_key": self.idempotency_key,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    secret: bytes,
    header: str,
    body: bytes,
    *,
    now: float,
    tolerance: float = SIGNATURE_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver checks: the HMAC matches and the timestamp is recent."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(secret, timestamp, body)
    return hmac.compare_digest(expected, header) and abs(now - timestamp) <= tolerance


class CartChanged(Exception):
    """The cart was ordered, refreshed or taken by another run before it could be sent."""


class MarketingSuite:
    """Reports abandoned carts to the marketing suite's endpoint."""

    def __init__(
        self,
        *,
        url: str,
        secret: bytes,
        timeout_seconds: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError("LIFECYCLE_ABANDONED_CARTS__MARKETING_URL must be an http(s) URL")
        self._path = parts.path or "/"
        self._secret = secret
        self._clock = clock
        self._http = HttpClient(
            name="marketing suite",
            base_url=f"{parts.scheme}://{parts.netloc}",
            timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 5.0)),
            retry=retry or RetryPolicy(),
            transport=transport,
            sleep=sleep,
        )

    def report(
        self, cart: AbandonedCart, *, still_wanted: Callable[[], bool] | None = None
    ) -> None:
        """Deliver ``cart``; returns once the suite accepted it (2xx).

        ``still_wanted`` is asked before every attempt (retries included); when it says no,
        nothing more is sent and :class:`CartChanged` is raised. Errors are those of
        :class:`~lifecycle.clients.http.HttpClient`.
        """

        def check(_attempt: int) -> None:
            if still_wanted is not None and not still_wanted():
                raise CartChanged(cart.idempotency_key)

        body = cart.body()
        try:
            response = self._http.request(
                "POST",
                self._path,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    IDEMPOTENCY_HEADER: cart.idempotency_key,
                    SIGNATURE_HEADER: sign(self._secret, int(self._clock()), body),
                },
                before_attempt=check,
            )
        except RequestRejected as exc:  # its message quotes the answer, which may echo ids
            raise RequestRejected(_without_ids(str(exc), cart), status=exc.status) from None
        if not response.is_success:  # a redirect: the URL is not the endpoint itself
            raise ConfigError(
                f"marketing suite answered {response.status_code} (a redirect) to POST "
                f"{self._path}; point LIFECYCLE_ABANDONED_CARTS__MARKETING_URL at the endpoint"
            )

    def close(self) -> None:
        self._http.close()


def _without_ids(text: str, cart: AbandonedCart) -> str:
    """``text`` with the cart's customer id and cart id masked, for logs and the database."""
    return text.replace(cart.customer_id, "<customer>").replace(cart.cart_id, "<cart>")

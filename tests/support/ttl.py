"""Rows for the TTL purge and abandoned-carts tests: attributes, index entries, carts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from lifecycle.clients.http import RetryPolicy
from lifecycle.clients.marketing import MarketingSuite
from lifecycle.db.schema import attribute_index, attributes, cart_activity
from lifecycle.processes.abandoned_carts.steps import CartContext, CartParams
from tests.support.clock import NOW
from tests.support.http_server import ScriptedHttpServer

EPOCH = int(NOW.timestamp())
SECRET = "marketing-shared-secret-0123456789"


def insert_attributes(
    engine: sa.Engine, expiries: Iterable[int | None], *, bucket: str = "b"
) -> None:
    """One attribute per expiry (Unix seconds, None: permanent), named ``n<position>``."""
    rows = [
        {
            "actor_id": f"actor-{position % 7}",
            "bucket": bucket,
            "name": f"n{position}",
            "data": "x",
            "timestamp": NOW,
            "ttl_timestamp": expiry,
        }
        for position, expiry in enumerate(expiries)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(attributes), rows)


def insert_index(engine: sa.Engine, entries: Iterable[tuple[str, str, int | None]]) -> None:
    """Index entries ``(index key, attribute name, expiry)`` in bucket ``b``."""
    rows = [
        {
            "index_name": "token",
            "index_key": key,
            "actor_id": f"actor-{int(name[1:]) % 7}" if name[1:].isdigit() else "actor-x",
            "bucket": "b",
            "name": name,
            "ttl_timestamp": expiry,
        }
        for key, name, expiry in entries
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(attribute_index), rows)


def names(engine: sa.Engine, table: sa.Table = attributes) -> set[str]:
    column = table.c.name if table is attributes else table.c.index_key
    with engine.connect() as conn:
        return set(conn.execute(sa.select(column)).scalars())


def insert_cart(
    engine: sa.Engine,
    cart_id: str,
    *,
    expires_in: int = -60,
    customer: str | None = "cust-1",
    products: list[str] | None = None,
) -> int:
    """A cart expiring ``expires_in`` seconds from the test's NOW; returns its expiry."""
    expires_at = EPOCH + expires_in
    with engine.begin() as conn:
        conn.execute(
            sa.insert(cart_activity),
            {
                "cart_id": cart_id,
                "customer_id": customer,
                "product_ids": ["SKU-1", "SKU-2"] if products is None else products,
                "expires_at": expires_at,
            },
        )
    return expires_at


def cart(engine: sa.Engine, cart_id: str) -> sa.Row[Any] | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(cart_activity).where(cart_activity.c.cart_id == cart_id)
        ).first()


def place_order(engine: sa.Engine, cart_id: str) -> None:
    """What the shop does when an order is placed: the cart row goes."""
    with engine.begin() as conn:
        conn.execute(sa.delete(cart_activity).where(cart_activity.c.cart_id == cart_id))


def configure_marketing(
    monkeypatch: pytest.MonkeyPatch, url: str, *, budget: float = 5.0, timeout: float = 2.0
) -> None:
    monkeypatch.setenv("LIFECYCLE_ABANDONED_CARTS__MARKETING_URL", f"{url}/carts")
    monkeypatch.setenv("LIFECYCLE_ABANDONED_CARTS__MARKETING_SECRET", SECRET)
    monkeypatch.setenv("LIFECYCLE_ABANDONED_CARTS__RETRY_BUDGET_SECONDS", str(budget))
    monkeypatch.setenv("LIFECYCLE_ABANDONED_CARTS__REQUEST_TIMEOUT_SECONDS", str(timeout))


def configure_targets(monkeypatch: pytest.MonkeyPatch, targets: list[dict[str, Any]]) -> None:
    monkeypatch.setenv("LIFECYCLE_TTL_PURGE__TARGETS", json.dumps(targets))


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def cart_context(engine: sa.Engine, **changes: Any) -> CartContext:
    """A run's context for the abandoned-cart steps: now, 5 minutes to go, 15-minute leases."""
    now = datetime.now(UTC)
    params = CartParams(
        as_of=now, dry_run=False, batch_size=50, deadline=now + timedelta(minutes=5)
    )
    return CartContext(engine=engine, params=params, lease=timedelta(minutes=15), **changes)


def marketing_suite(server: ScriptedHttpServer, *, attempts: int = 3) -> MarketingSuite:
    """The real client, pointed at the scripted server's ``/carts``, with short retries."""
    return MarketingSuite(
        url=f"{server.url}/carts",
        secret=SECRET.encode(),
        timeout_seconds=2,
        retry=RetryPolicy(attempts=attempts, first_delay=0.01, budget=0.5),
    )

"""TTL purge and abandoned carts: the pure rules, and settings that refuse what is wrong."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lifecycle.clients.marketing import AbandonedCart
from lifecycle.errors import ConfigError
from lifecycle.processes.abandoned_carts import rules as cart_rules
from lifecycle.processes.ttl_purge.rules import (
    Backlog,
    Strategy,
    blocks_per_batch,
    choose_strategy,
    cutoff,
    expiry_instant,
)
from lifecycle.processes.ttl_purge.steps import select_targets
from lifecycle.settings import DynamoCartTable, SettingsError, TtlPurgeSettings, get_settings

AS_OF = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("configured", "expired", "rows", "index", "orphans", "blocks_ok", "expected"),
    [
        ("auto", 500_000, 1_000_000, True, False, True, Strategy.BLOCKS),
        ("auto", 10_000, 1_000_000, True, False, True, Strategy.INDEX),
        ("auto", 100_001, 1_000_000, True, False, True, Strategy.BLOCKS),
        ("auto", 100_000, 1_000_000, True, False, True, Strategy.INDEX),  # not above 10%
        ("auto", 0, 0, True, False, True, Strategy.INDEX),
        ("auto", 10, 1_000_000, False, False, True, Strategy.BLOCKS),  # no index on the expiry
        ("auto", 10, 1_000_000, True, True, True, Strategy.BLOCKS),  # orphans: anywhere
        ("auto", 900_000, 1_000_000, True, False, False, Strategy.INDEX),  # PostgreSQL < 14
        ("index", 900_000, 1_000_000, True, False, True, Strategy.INDEX),
        ("blocks", 1, 1_000_000, True, False, True, Strategy.BLOCKS),
    ],
)
def test_strategy_follows_the_backlog(
    configured: Any,
    expired: int,
    rows: int,
    index: bool,
    orphans: bool,
    blocks_ok: bool,
    expected: Strategy,
) -> None:
    chosen = choose_strategy(
        configured,
        expired=expired,
        rows=rows,
        block_walk_above=0.10,
        can_walk_blocks=blocks_ok,
        has_expiry_index=index,
        finds_orphans=orphans,
    )
    assert chosen is expected


def test_blocks_per_batch() -> None:
    assert blocks_per_batch(10_000, 61.0) == 164
    assert blocks_per_batch(100, 500.0) == 1
    assert blocks_per_batch(1000, 0.0) == 1000  # unknown density: one row a block


def test_cutoff_and_expiry_instants() -> None:
    assert cutoff("epoch", AS_OF) == int(AS_OF.timestamp())
    assert cutoff("timestamp", AS_OF.astimezone()) == AS_OF
    with pytest.raises(ValueError, match="timezone"):
        cutoff("epoch", datetime(2026, 1, 1))
    assert expiry_instant(int(AS_OF.timestamp())) == AS_OF
    assert expiry_instant(AS_OF.replace(tzinfo=None)) == AS_OF
    assert expiry_instant(None) is None


def test_backlog_age_and_alert_thresholds() -> None:
    backlog = Backlog(
        expired=50,
        oldest_expiry=AS_OF - timedelta(hours=2),
        rows=1000,
        table_bytes=None,
        measured_at=AS_OF,
    )
    assert backlog.oldest_age_seconds == 7200
    assert backlog.over(rows=49, age_seconds=10_000)
    assert backlog.over(rows=50, age_seconds=7199)
    assert not backlog.over(rows=50, age_seconds=7200)
    empty = Backlog(0, None, 0, None, AS_OF)
    assert empty.oldest_age_seconds is None and not empty.over(rows=0, age_seconds=0)


def test_unknown_target_names_are_refused() -> None:
    settings = TtlPurgeSettings()
    assert [t.name for t in select_targets(settings, None)] == ["attributes", "attribute-index"]
    assert [t.name for t in select_targets(settings, ["attribute-index"])] == ["attribute-index"]
    with pytest.raises(ConfigError, match=r"\['sessions'\] are not configured"):
        select_targets(settings, ["attributes", "sessions"])


# --- abandoned carts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("customer", "products", "reported"),
    [
        ("c-1", ["SKU-1"], True),
        ("c-1", {"SKU-2", "SKU-1"}, True),  # a DynamoDB string set
        (None, ["SKU-1"], False),
        ("  ", ["SKU-1"], False),
        ("c-1", [], False),
        ("c-1", None, False),
        ("c-1", [""], False),
        ("c-1", "SKU-1", False),  # not a list
    ],
)
def test_only_carts_with_customer_and_products_are_reported(
    customer: str | None, products: Any, reported: bool
) -> None:
    cart = cart_rules.abandoned_cart("cart-1", customer, products, 1_700_000_000)
    assert (cart is not None) is reported
    if isinstance(products, set) and cart is not None:
        assert cart.product_ids == ("SKU-1", "SKU-2")


def test_idempotency_key_per_cart_and_expiry() -> None:
    first = AbandonedCart("cart-1", "c-1", ("SKU-1",), 1_700_000_000)
    assert (
        first.idempotency_key
        == AbandonedCart("cart-1", "c-2", ("X",), 1_700_000_000).idempotency_key
    )
    assert (
        first.idempotency_key
        != AbandonedCart("cart-1", "c-1", ("SKU-1",), 1_700_000_001).idempotency_key
    )
    assert (
        first.idempotency_key
        != AbandonedCart("cart-2", "c-1", ("SKU-1",), 1_700_000_000).idempotency_key
    )


def _record(event: str, identity: dict[str, str] | None, image: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"eventName": event, "dynamodb": {"OldImage": image}}
    if identity is not None:
        record["userIdentity"] = identity
    return record


IMAGE = {
    "cartid": {"S": "cart-9"},
    "customerid": {"S": "c-9"},
    "productids": {"SS": ["SKU-2", "SKU-1"]},
    "ttl": {"N": "1700000000"},
}
TTL_SERVICE = {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}


@pytest.mark.parametrize(
    ("record", "reported"),
    [
        (_record("REMOVE", TTL_SERVICE, IMAGE), True),
        (
            _record("REMOVE", {"type": "Service", "principalId": "dynamodb.amazonaws.com"}, IMAGE),
            True,
        ),
        (_record("REMOVE", None, IMAGE), False),  # a user's delete: an order placed
        (
            _record("REMOVE", {"Type": "Service", "PrincipalId": "other.amazonaws.com"}, IMAGE),
            False,
        ),
        (_record("MODIFY", TTL_SERVICE, IMAGE), False),
        (
            _record("REMOVE", TTL_SERVICE, {k: v for k, v in IMAGE.items() if k != "customerid"}),
            False,
        ),
        (
            _record("REMOVE", TTL_SERVICE, {k: v for k, v in IMAGE.items() if k != "productids"}),
            False,
        ),
    ],
)
def test_stream_records_that_are_abandoned_carts(record: dict[str, Any], reported: bool) -> None:
    cart = cart_rules.from_stream_record(record, DynamoCartTable(table="carts"))
    assert (cart is not None) is reported
    if cart is not None:
        assert cart == AbandonedCart("cart-9", "c-9", ("SKU-1", "SKU-2"), 1_700_000_000)


# --- settings ----------------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("LIFECYCLE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def _error(env: pytest.MonkeyPatch, **variables: str) -> str:
    for key, value in variables.items():
        env.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        get_settings()
    return str(info.value)


TARGET = {
    "name": "sessions",
    "table": "sessions",
    "expiry_column": "expires",
    "expiry_kind": "epoch",
}


def test_targets_from_json(env: pytest.MonkeyPatch) -> None:
    env.setenv("LIFECYCLE_TTL_PURGE__TARGETS", json.dumps([TARGET | {"batch_size": 500}]))
    (target,) = get_settings().ttl_purge.targets
    assert (target.name, target.batch_size, target.strategy) == ("sessions", 500, "auto")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": True}, "BATCH_SIZE: Value error, must be a number"),
        ({"batch_size": 50}, "BATCH_SIZE"),
        ({"batchsize": 500}, "BATCHSIZE: Extra inputs are not permitted"),
        ({"expiry_kind": "seconds"}, "EXPIRY_KIND"),
        ({"table": "sessions; drop table users"}, "TABLE"),
        ({"action": "abandoned-cart"}, "the abandoned-cart action runs on table cart_activity"),
        (
            {"strategy": "index", "orphan_of": {"table": "t", "columns": {"a": "a"}}},
            "walks its blocks",
        ),
    ],
)
def test_bad_targets_name_the_variable(
    env: pytest.MonkeyPatch, change: dict[str, Any], message: str
) -> None:
    text = _error(env, LIFECYCLE_TTL_PURGE__TARGETS=json.dumps([TARGET | change]))
    assert "LIFECYCLE_TTL_PURGE__TARGETS" in text and message in text


def test_duplicate_target_names(env: pytest.MonkeyPatch) -> None:
    text = _error(env, LIFECYCLE_TTL_PURGE__TARGETS=json.dumps([TARGET, TARGET]))
    assert "must be unique" in text


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"LIFECYCLE_TTL_PURGE__LOCK_WAIT_MS": "true"}, "LIFECYCLE_TTL_PURGE__LOCK_WAIT_MS"),
        ({"LIFECYCLE_TTL_PURGE__BLOCK_WALK_ABOVE": "1.5"}, "BLOCK_WALK_ABOVE"),
        ({"LIFECYCLE_TTL_PURGE__VACUUM_AFTER": "5"}, "VACUUM_AFTER: Extra inputs"),
        (
            {"LIFECYCLE_ABANDONED_CARTS__MARKETING_URL": "https://m.example.com/carts"},
            "MARKETING_SECRET is required",
        ),
        (
            {
                "LIFECYCLE_ABANDONED_CARTS__MARKETING_URL": "https://m.example.com/carts",
                "LIFECYCLE_ABANDONED_CARTS__MARKETING_SECRET": "",
            },
            "MARKETING_SECRET must be at least 16",
        ),
        ({"LIFECYCLE_ABANDONED_CARTS__MARKETING_URL": "ftp://m.example.com"}, "MARKETING_URL"),
        ({"LIFECYCLE_ABANDONED_CARTS__MARKETING_URL": "https://m.example.com/c?k=v"}, "query"),
        ({"LIFECYCLE_DYNAMODB_ENDPOINT_URL": "localhost:4566"}, "LIFECYCLE_DYNAMODB_ENDPOINT_URL"),
        (
            {"LIFECYCLE_ABANDONED_CARTS__DYNAMODB_TABLES": '[{"table": "carts", "ttl": "x"}]'},
            "Extra",
        ),
        (
            {
                "LIFECYCLE_TTL_PURGE__TARGETS": json.dumps(
                    [
                        {
                            "name": "carts",
                            "table": "cart_activity",
                            "expiry_column": "expires_at",
                            "expiry_kind": "epoch",
                            "action": "abandoned-cart",
                        }
                    ]
                )
            },
            "MARKETING_URL is required",
        ),
    ],
)
def test_bad_settings_name_the_variable(
    env: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    assert message in _error(env, **variables)


def test_secret_never_in_errors_or_repr(env: pytest.MonkeyPatch) -> None:
    secret = "sixteen-chars-secret-value"
    env.setenv("LIFECYCLE_ABANDONED_CARTS__MARKETING_URL", "https://m.example.com/carts")
    env.setenv("LIFECYCLE_ABANDONED_CARTS__MARKETING_SECRET", secret)
    settings = get_settings()
    assert secret not in repr(settings) and secret not in str(settings.model_dump())
    text = _error(env, LIFECYCLE_ABANDONED_CARTS__REQUEST_TIMEOUT_SECONDS="-1")
    assert secret not in text and "REQUEST_TIMEOUT_SECONDS" in text

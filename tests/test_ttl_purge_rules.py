"""TTL purge and abandoned carts: the pure rules (expiry, walks, alerts, reportable carts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lifecycle.clients.marketing import AbandonedCart
from lifecycle.errors import ConfigError
from lifecycle.processes.abandoned_carts import rules as cart_rules
from lifecycle.processes.ttl_purge.queries import Extent
from lifecycle.processes.ttl_purge.rules import (
    Backlog,
    Strategy,
    blocks_per_batch,
    choose_strategy,
    cutoff,
    expiry_instant,
)
from lifecycle.processes.ttl_purge.steps import PurgePlan, TargetResult, select_targets, split
from lifecycle.settings import DynamoCartTable, TtlPurgeSettings

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


@pytest.mark.parametrize(
    ("after", "age_before", "alert"),
    [
        (0, 60, False),
        (11, 60, True),  # the run left too many
        (3, 4000, True),  # a row was already too old when the run began
        (3, None, False),
    ],
)
def test_alert_when_the_purge_is_not_keeping_up(
    after: int, age_before: int | None, alert: bool
) -> None:
    result = TargetResult(
        target="t",
        strategy="index",
        expired_before=20,
        oldest_age_before_seconds=age_before,
        expired_after=after,
        oldest_age_seconds=10**6,  # rows a writer moved behind the walk: next run's work
    )
    assert result.over(rows=10, age_seconds=3600) is alert


@pytest.mark.parametrize(
    ("first", "end", "step", "shards"), [(0, 100, 7, 3), (5, 9, 2, 4), (0, 3, 5, 2)]
)
def test_split_cuts_a_block_walk_into_whole_batches_covering_it_once(
    first: int, end: int, step: int, shards: int
) -> None:
    plan = PurgePlan("t", Strategy.BLOCKS, 100, Extent(first, end, 10.0), batch_blocks=step)

    parts = split(plan, shards)

    assert 1 <= len(parts) <= shards
    covered = [
        block
        for part in parts
        if part.extent
        for block in range(part.extent.first, part.extent.end)
    ]
    assert covered == list(range(first, end))  # every block once, in order
    assert all(part.extent and (part.extent.first - first) % step == 0 for part in parts)
    assert {(part.strategy, part.batch_blocks) for part in parts} == {(Strategy.BLOCKS, step)}


def test_an_index_walk_is_not_split() -> None:
    plan = PurgePlan("t", Strategy.INDEX, 100)
    assert split(plan, 4) == [plan]

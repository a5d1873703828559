"""Which expired carts are abandoned carts, as pure functions.

A cart is abandoned when its expiry passed (``expires_at < as_of``, Unix seconds) while it still
existed: placing an order deletes the cart, so an ordered cart never expires. It is reported
only if it names a customer and at least one product; otherwise there is nobody to remind, or
nothing to remind them of, and it is purged without a word.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from lifecycle.clients.dynamodb import is_ttl_removal, old_image
from lifecycle.clients.marketing import AbandonedCart
from lifecycle.settings import DynamoCartTable


def epoch(instant: datetime) -> int:
    if instant.tzinfo is None:
        raise ValueError("instant must be timezone-aware")
    return int(instant.timestamp())


def product_list(products: Any) -> tuple[str, ...]:
    """Product ids as given (a JSON list) or sorted (a DynamoDB string set); blanks dropped."""
    if products is None or isinstance(products, str | bytes):
        return ()
    if isinstance(products, set | frozenset):
        products = sorted(products)
    if not isinstance(products, Iterable):
        return ()
    return tuple(str(product) for product in products if str(product).strip())


def abandoned_cart(
    cart_id: Any, customer_id: Any, products: Any, expires_at: Any
) -> AbandonedCart | None:
    """The cart to report, or None when it has no customer or no products."""
    customer = str(customer_id).strip() if customer_id is not None else ""
    product_ids = product_list(products)
    if not customer or not product_ids:
        return None
    return AbandonedCart(
        cart_id=str(cart_id),
        customer_id=customer,
        product_ids=product_ids,
        expired_at=int(expires_at),
    )


def from_item(item: Mapping[str, Any], table: DynamoCartTable) -> AbandonedCart | None:
    """A DynamoDB cart item (as Python values) as an abandoned cart, if it is reportable."""
    if table.key_attribute not in item or table.ttl_attribute not in item:
        return None
    return abandoned_cart(
        item[table.key_attribute],
        item.get(table.customer_attribute),
        item.get(table.products_attribute),
        item[table.ttl_attribute],
    )


def from_stream_record(record: Mapping[str, Any], table: DynamoCartTable) -> AbandonedCart | None:
    """The cart a stream record reports: only TTL removals with a customer and products.

    A user's REMOVE (an order placed, or our own sweep's delete) and every INSERT or MODIFY is
    ignored.
    """
    if not is_ttl_removal(record):
        return None
    return from_item(old_image(record), table)

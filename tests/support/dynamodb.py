"""DynamoDB cart tables on the session's moto server, and TTL deletions as AWS records them.

moto never runs TTL and its stream records carry no ``userIdentity``. :func:`ttl_delete`
deletes an item for real in moto's in-process backend (the moto server runs in a thread of the
test process) and gives its REMOVE record the shape AWS gives a TTL deletion: ``userIdentity``
``{"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}`` (GetRecords casing).
"""

from __future__ import annotations

import uuid
from typing import Any

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.dynamo_type import DynamoType

REGION = "us-east-1"


def dynamodb(endpoint: str) -> Any:
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)


def create_cart_table(endpoint: str, *, stream: bool = True) -> str:
    """A new cart-activity table (key ``cartid``) as in the source; its name."""
    name = f"carts-{uuid.uuid4().hex[:10]}"
    spec: dict[str, Any] = (
        {"StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}}
        if stream
        else {}
    )
    dynamodb(endpoint).create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "cartid", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "cartid", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        **spec,
    )
    return name


def put_cart(
    endpoint: str,
    table: str,
    cart_id: str,
    ttl: int,
    *,
    customer: str | None = "cust-1",
    products: list[str] | None = None,
) -> None:
    item: dict[str, Any] = {"cartid": {"S": cart_id}, "ttl": {"N": str(ttl)}}
    if customer is not None:
        item["customerid"] = {"S": customer}
    if products != []:
        item["productids"] = {"SS": products or ["SKU-1", "SKU-2"]}
    dynamodb(endpoint).put_item(TableName=table, Item=item)


def ttl_delete(table: str, cart_id: str) -> None:
    """What DynamoDB's TTL does to an expired cart: remove it, recorded as a system delete."""
    backend_table = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION].get_table(table)
    backend_table.delete_item(DynamoType({"S": cart_id}), None)
    shard = backend_table.stream_shard
    assert shard is not None, f"{table} has no stream"
    record = shard.items[-1].record
    record["userIdentity"] = {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"}
    record["eventVersion"] = "1.1"


def cart_ids(endpoint: str, table: str) -> set[str]:
    items = dynamodb(endpoint).scan(TableName=table)["Items"]
    return {item["cartid"]["S"] for item in items}

"""DynamoDB: native TTL (enable, verify, what it has not removed yet) and stream reading.

Facts this relies on (AWS documentation):

- TTL attributes hold Unix seconds; an item is expired when the value is in the past, but not
  five years or more (older values are ignored). Deletion is background work that typically
  happens within 48 hours; until then expired items still appear in reads and scans.
- ``UpdateTimeToLive`` is not idempotent: enabling TTL that is on, or changing it twice within
  an hour, is a ValidationException. So :meth:`DynamoTtl.ensure` describes first.
- A TTL deletion enters the table's stream as a REMOVE with ``userIdentity`` ``{"type":
  "Service", "principalId": "dynamodb.amazonaws.com"}`` (``Type``/``PrincipalId`` in
  ``GetRecords``); a user's delete has no ``userIdentity``.
- Stream records are kept 24 hours (older ones are trimmed) and shard iterators expire after
  15 minutes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import ClientError

from lifecycle.errors import ConfigError, PermanentError

#: TTL ignores expiry values this old (AWS: "not five years or more" in the past).
TTL_HORIZON = timedelta(days=5 * 365)
#: Expired items DynamoDB may keep this long before its TTL removes them.
TTL_LAG = timedelta(hours=48)
TTL_PRINCIPAL = "dynamodb.amazonaws.com"
OLD_IMAGE_VIEWS = frozenset({"OLD_IMAGE", "NEW_AND_OLD_IMAGES"})

_deserializer = TypeDeserializer()
_serializer = TypeSerializer()


def open_dynamodb(*, region: str, endpoint_url: str | None) -> tuple[Any, Any]:
    """A DynamoDB client and a DynamoDB Streams client, with timeouts and standard retries.

    With ``endpoint_url`` (a local emulator) both clients use it; botocore would otherwise
    send Streams calls to an account-based endpoint that emulators do not serve.
    """
    config = Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=5,
        read_timeout=30,
    )
    dynamodb = boto3.client(
        "dynamodb", region_name=region, endpoint_url=endpoint_url, config=config
    )
    streams = boto3.client(
        "dynamodbstreams", region_name=region, endpoint_url=endpoint_url, config=config
    )
    return dynamodb, streams


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _not_found(exc: ClientError) -> bool:
    """ResourceNotFoundException (AWS; some emulators say ResourceNotFound)."""
    return _code(exc).startswith("ResourceNotFound")


def _missing_table(table: str, variable: str) -> ConfigError:
    return ConfigError(
        f"DynamoDB table {table!r} does not exist or is not accessible; fix {variable}"
    )


@dataclass(frozen=True)
class TtlState:
    table: str
    status: str  # ENABLED | ENABLING | DISABLED | DISABLING
    attribute: str | None
    changed: bool = False  # this run enabled it


@dataclass(frozen=True)
class ExpiredItems:
    """Items TTL has not removed yet: expired, of which overdue (past the 48 h lag)."""

    expired: int
    overdue: int
    oldest_expiry: datetime | None
    scanned: int


class DynamoTtl:
    """Native TTL of tables: switched on where it is off, verified, and watched."""

    def __init__(self, client: Any, *, variable: str = "LIFECYCLE_TTL_PURGE__DYNAMODB_TABLES"):
        self._client = client
        self._variable = variable

    def describe(self, table: str) -> TtlState:
        try:
            answer = self._client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        except ClientError as exc:
            if _not_found(exc):
                raise _missing_table(table, self._variable) from None
            raise
        return TtlState(table, answer["TimeToLiveStatus"], answer.get("AttributeName"))

    def ensure(self, table: str, attribute: str, *, enable: bool) -> TtlState:
        """TTL on ``attribute``: enabled when off (if ``enable``), then verified.

        TTL on another attribute is a :class:`ConfigError` (switching would need it off for an
        hour); DISABLING, or TTL still off after enabling, is a :class:`PermanentError`.
        """
        state = self.describe(table)
        if state.status in ("ENABLED", "ENABLING") and state.attribute != attribute:
            raise ConfigError(
                f"DynamoDB table {table!r} has TTL on {state.attribute!r}, not {attribute!r}; "
                f"fix {self._variable} or the table"
            )
        if state.status == "DISABLING":
            raise PermanentError(f"TTL of DynamoDB table {table!r} is being disabled right now")
        if state.status != "DISABLED" or not enable:
            return state
        try:
            self._client.update_time_to_live(
                TableName=table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute},
            )
        except ClientError as exc:
            if _code(exc) == "ValidationException":
                raise PermanentError(f"enabling TTL on {table!r} was refused: {exc}") from None
            raise
        verified = self.describe(table)
        if verified.status not in ("ENABLED", "ENABLING") or verified.attribute != attribute:
            raise PermanentError(
                f"TTL on {table!r} is {verified.status} after enabling it on {attribute!r}"
            )
        return TtlState(table, verified.status, verified.attribute, changed=True)

    def expired_items(self, table: str, attribute: str, now: datetime) -> ExpiredItems:
        """Scan for items whose TTL is past but which are still there.

        A filtered scan reads (and is billed for) the whole table: run it on a schedule that
        suits the table's size.
        """
        seconds = int(now.timestamp())
        floor = int((now - TTL_HORIZON).timestamp())
        overdue_before = int((now - TTL_LAG).timestamp())
        expired = overdue = scanned = 0
        oldest: int | None = None
        pages = self._client.get_paginator("scan").paginate(
            TableName=table,
            ProjectionExpression="#ttl",
            FilterExpression="#ttl < :now AND #ttl >= :floor",
            ExpressionAttributeNames={"#ttl": attribute},
            ExpressionAttributeValues={":now": {"N": str(seconds)}, ":floor": {"N": str(floor)}},
        )
        try:
            for page in pages:
                scanned += page["ScannedCount"]
                for item in page["Items"]:
                    value = int(float(item[attribute]["N"]))
                    expired += 1
                    overdue += value < overdue_before
                    oldest = value if oldest is None else min(oldest, value)
        except ClientError as exc:
            if _not_found(exc):
                raise _missing_table(table, self._variable) from None
            raise
        return ExpiredItems(
            expired=expired,
            overdue=overdue,
            oldest_expiry=None if oldest is None else datetime.fromtimestamp(oldest, UTC),
            scanned=scanned,
        )


# --- streams ----------------------------------------------------------------------------------


def is_ttl_removal(record: Mapping[str, Any]) -> bool:
    """A REMOVE made by DynamoDB's TTL (GetRecords or Lambda casing alike)."""
    identity = record.get("userIdentity") or {}
    kind = identity.get("type") or identity.get("Type")
    principal = identity.get("principalId") or identity.get("PrincipalId")
    return record.get("eventName") == "REMOVE" and kind == "Service" and principal == TTL_PRINCIPAL


def plain(image: Mapping[str, Any]) -> dict[str, Any]:
    """A DynamoDB image (``{"S": ...}`` values) as Python values."""
    return {name: _deserializer.deserialize(value) for name, value in image.items()}


def key_of(attribute: str, value: Any) -> dict[str, Any]:
    """A one-attribute primary key in DynamoDB's wire format."""
    return {attribute: _serializer.serialize(value)}


def old_image(record: Mapping[str, Any]) -> dict[str, Any]:
    return plain(record.get("dynamodb", {}).get("OldImage") or {})


def sequence_number(record: Mapping[str, Any]) -> str:
    return str(record["dynamodb"]["SequenceNumber"])


@dataclass(frozen=True)
class Shard:
    id: str
    parent_id: str | None
    closed: bool  # no new records will come


@dataclass(frozen=True)
class StreamPage:
    records: list[dict[str, Any]]
    closed: bool  # the shard is closed and this was its last page


class StreamTrimmed(PermanentError):
    """Records after our checkpoint are older than the stream keeps (24 hours): lost."""


class CartStream:
    """Reads a table's stream, shard by shard, from a checkpoint."""

    def __init__(self, dynamodb: Any, streams: Any) -> None:
        self._dynamodb = dynamodb
        self._streams = streams

    def stream_arn(self, table: str, variable: str) -> str:
        """The table's current stream, which must carry old images (the cart's contents)."""
        try:
            description = self._dynamodb.describe_table(TableName=table)["Table"]
        except ClientError as exc:
            if _not_found(exc):
                raise _missing_table(table, variable) from None
            raise
        spec = description.get("StreamSpecification") or {}
        arn = description.get("LatestStreamArn")
        if not spec.get("StreamEnabled") or not arn:
            raise ConfigError(f"DynamoDB table {table!r} has no stream; enable one ({variable})")
        if spec.get("StreamViewType") not in OLD_IMAGE_VIEWS:
            raise ConfigError(
                f"the stream of {table!r} is {spec.get('StreamViewType')}: it needs OLD_IMAGE "
                "or NEW_AND_OLD_IMAGES to see what was in a removed cart"
            )
        return str(arn)

    def shards(self, stream_arn: str) -> list[Shard]:
        """Every shard, parents before their children."""
        found: list[Shard] = []
        start: dict[str, str] = {}
        while True:
            answer = self._streams.describe_stream(StreamArn=stream_arn, **start)
            description = answer["StreamDescription"]
            for shard in description.get("Shards", []):
                closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
                found.append(Shard(shard["ShardId"], shard.get("ParentShardId"), closed))
            last = description.get("LastEvaluatedShardId")
            if not last:
                break
            start = {"ExclusiveStartShardId": last}
        return _parents_first(found)

    def pages(
        self, stream_arn: str, shard_id: str, after: str | None, *, limit: int
    ) -> Iterator[StreamPage]:
        """Pages of records after sequence number ``after`` (None: the oldest kept)."""
        iterator: str | None = self._iterator(stream_arn, shard_id, after)
        while iterator:
            try:
                answer = self._streams.get_records(ShardIterator=iterator, Limit=limit)
            except ClientError as exc:
                if _code(exc) != "ExpiredIteratorException":
                    raise
                iterator = self._iterator(stream_arn, shard_id, after)
                continue
            records = list(answer.get("Records", []))
            if records:
                after = sequence_number(records[-1])
            iterator = answer.get("NextShardIterator")
            yield StreamPage(records=records, closed=iterator is None)

    def _iterator(self, stream_arn: str, shard_id: str, after: str | None) -> str | None:
        position: dict[str, str] = (
            {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": after}
            if after
            else {"ShardIteratorType": "TRIM_HORIZON"}
        )
        try:
            answer = self._streams.get_shard_iterator(
                StreamArn=stream_arn, ShardId=shard_id, **position
            )
        except ClientError as exc:
            if _code(exc) == "TrimmedDataAccessException":
                raise StreamTrimmed(
                    f"stream records of shard {shard_id} after our checkpoint were trimmed "
                    "(older than 24 hours): those carts cannot be reported"
                ) from None
            if _not_found(exc):  # the shard itself aged out
                return None
            raise
        return answer.get("ShardIterator")


def _parents_first(shards: list[Shard]) -> list[Shard]:
    by_id = {shard.id: shard for shard in shards}
    ordered: list[Shard] = []
    seen: set[str] = set()

    def visit(shard: Shard) -> None:
        if shard.id in seen:
            return
        seen.add(shard.id)
        parent = by_id.get(shard.parent_id or "")
        if parent is not None:
            visit(parent)
        ordered.append(shard)

    for shard in shards:
        visit(shard)
    return ordered


# --- the sweep for carts TTL has not removed yet ----------------------------------------------


class DynamoItems:
    """Scan, read and conditionally delete the items of one table."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self.table = table

    def expired(
        self, ttl_attribute: str, *, before: int, not_before: int, page_size: int
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of items (as Python values) whose TTL lies in ``[not_before, before)``."""
        pages = self._client.get_paginator("scan").paginate(
            TableName=self.table,
            FilterExpression="#ttl < :before AND #ttl >= :floor",
            ExpressionAttributeNames={"#ttl": ttl_attribute},
            ExpressionAttributeValues={
                ":before": {"N": str(before)},
                ":floor": {"N": str(not_before)},
            },
            PaginationConfig={"PageSize": page_size},
        )
        for page in pages:
            yield [plain(item) for item in page["Items"]]

    def current(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
        """The item as it is now (strongly consistent), or None when it is gone."""
        answer = self._client.get_item(TableName=self.table, Key=key, ConsistentRead=True)
        item = answer.get("Item")
        return None if item is None else plain(item)

    def delete_unchanged(self, key: Mapping[str, Any], ttl_attribute: str, ttl: int) -> bool:
        """Delete the item only while its TTL is still ``ttl``; False when it changed or went."""
        try:
            self._client.delete_item(
                TableName=self.table,
                Key=key,
                ConditionExpression="#ttl = :ttl",
                ExpressionAttributeNames={"#ttl": ttl_attribute},
                ExpressionAttributeValues={":ttl": {"N": str(ttl)}},
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

"""DynamoDB through moto's server: native TTL switched on and watched by ``ttl-purge``; carts
that TTL removed, read from the table's stream by ``abandoned-carts``; and the sweep for carts
TTL has not removed yet."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from threading import Thread

import pytest
import sqlalchemy as sa

from flows.abandoned_carts import abandoned_carts
from flows.ttl_purge import ttl_purge
from lifecycle.clients.dynamodb import CartStream, DynamoItems, DynamoTtl, open_dynamodb
from lifecycle.db.schema import stream_checkpoints
from lifecycle.errors import ConfigError, DependencyDown
from lifecycle.processes.abandoned_carts import steps
from lifecycle.processes.abandoned_carts.steps import StreamSource
from lifecycle.settings import DynamoCartTable, Settings
from tests.support.dynamodb import (
    REGION,
    cart_ids,
    create_cart_table,
    dynamodb,
    put_cart,
    ttl_delete,
)
from tests.support.http_server import Reply, ScriptedHttpServer
from tests.support.prefect_runs import run_events
from tests.support.ttl import (
    EPOCH,
    cart_context,
    configure_marketing,
    marketing_suite,
)

PATH = "/carts"
DAY = 86_400


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """DynamoDB is the subject here: one database (SQLite) is enough."""
    return sqlite_url


@pytest.fixture
def aws_env(lifecycle_env: Settings, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LIFECYCLE_DYNAMODB_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("LIFECYCLE_AWS_REGION", REGION)
    return moto_endpoint


def ttl_client(endpoint: str) -> DynamoTtl:
    return DynamoTtl(open_dynamodb(region=REGION, endpoint_url=endpoint)[0])


# --- ttl-purge: native TTL ----------------------------------------------------------------------


def test_ttl_is_switched_on_verified_and_its_lag_watched(
    aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = create_cart_table(aws_env, stream=False)
    put_cart(aws_env, table, "fresh", EPOCH + DAY)
    put_cart(aws_env, table, "expired-an-hour", EPOCH - 3600)
    put_cart(aws_env, table, "expired-3-days", EPOCH - 3 * DAY)  # TTL is late: overdue
    put_cart(aws_env, table, "six-years-old", EPOCH - 6 * 365 * DAY)  # TTL ignores it
    monkeypatch.setenv(
        "LIFECYCLE_TTL_PURGE__DYNAMODB_TABLES", json.dumps([{"table": table, "attribute": "ttl"}])
    )
    assert ttl_client(aws_env).describe(table).status == "DISABLED"

    dry = ttl_purge(dry_run=True, targets=[])
    assert ttl_client(aws_env).describe(table).status == "DISABLED"  # a dry run changes nothing
    assert dry.dynamodb[0].ttl_status == "DISABLED"

    state = ttl_purge(targets=[], return_state=True)
    (row,) = state.result().dynamodb
    assert (row.ttl_status, row.enabled_now) == ("ENABLED", True)
    assert (row.expired_items, row.overdue_items, row.scanned_items) == (2, 1, 4)
    assert ttl_client(aws_env).describe(table).attribute == "ttl"
    (event,) = run_events(state.state_details.flow_run_id, prefix="lifecycle.ttl.backlog")
    assert event.resource.id == f"lifecycle.dynamodb-table.{table}"

    (again,) = ttl_purge(targets=[]).dynamodb
    assert (again.ttl_status, again.enabled_now) == ("ENABLED", False)


def test_ttl_on_another_attribute_or_a_missing_table_is_refused(aws_env: str) -> None:
    table = create_cart_table(aws_env, stream=False)
    ttl = ttl_client(aws_env)
    ttl.ensure(table, "expires", enable=True)
    with pytest.raises(ConfigError, match="has TTL on 'expires', not 'ttl'"):
        ttl.ensure(table, "ttl", enable=True)
    with pytest.raises(ConfigError, match="LIFECYCLE_TTL_PURGE__DYNAMODB_TABLES"):
        ttl.ensure("no-such-table", "ttl", enable=True)


# --- abandoned carts: the stream ----------------------------------------------------------------


def read(engine: sa.Engine, endpoint: str, table: str, server: ScriptedHttpServer) -> Counter[str]:
    """Read the stream once; how many carts of each outcome."""
    source = StreamSource(
        stream=CartStream(*open_dynamodb(region=REGION, endpoint_url=endpoint)),
        table=DynamoCartTable(table=table),
        page_size=2,  # several pages
    )
    return steps.read_stream(
        cart_context(engine), marketing_suite(server, attempts=2), source
    ).counts


def sent(server: ScriptedHttpServer) -> Counter[str]:
    return Counter(r.json()["cart_id"] for r in server.received("POST", PATH))


def test_only_ttl_removals_of_real_carts_are_reported_once(
    engine: sa.Engine, moto_endpoint: str, http_server: ScriptedHttpServer
) -> None:
    http_server.default = Reply(202)
    table = create_cart_table(moto_endpoint)
    put_cart(moto_endpoint, table, "abandoned", EPOCH - 60, customer="cust-ada")
    put_cart(moto_endpoint, table, "anonymous", EPOCH - 60, customer=None)
    put_cart(moto_endpoint, table, "ordered", EPOCH + DAY)
    put_cart(moto_endpoint, table, "ordered", EPOCH + 2 * DAY)  # a MODIFY
    ttl_delete(table, "abandoned")
    ttl_delete(table, "anonymous")
    dynamodb(moto_endpoint).delete_item(TableName=table, Key={"cartid": {"S": "ordered"}})

    counts = read(engine, moto_endpoint, table, http_server)
    assert counts["reported"] == 1 and counts["stream_ignored"] == 6
    assert sent(http_server) == Counter({"abandoned": 1})
    (body,) = [r.json() for r in http_server.received()]
    assert (body["customer_id"], body["expired_at"]) == ("cust-ada", EPOCH - 60)
    with engine.connect() as conn:
        (position,) = conn.execute(sa.select(stream_checkpoints.c.sequence_number)).scalars()
    assert position is not None

    assert read(engine, moto_endpoint, table, http_server)["reported"] == 0  # from the checkpoint
    put_cart(moto_endpoint, table, "later", EPOCH - 10, customer="cust-bob")
    ttl_delete(table, "later")
    assert read(engine, moto_endpoint, table, http_server)["reported"] == 1
    assert sent(http_server) == Counter({"abandoned": 1, "later": 1})


def test_a_restart_resends_at_most_the_cart_in_flight(
    engine: sa.Engine, moto_endpoint: str, http_server: ScriptedHttpServer
) -> None:
    table = create_cart_table(moto_endpoint)
    for cart_id in ("one", "two", "three"):
        put_cart(moto_endpoint, table, cart_id, EPOCH - 60)
        ttl_delete(table, cart_id)
    http_server.reply("POST", PATH, Reply(202), Reply(503), Reply(503))  # down at "two"
    with pytest.raises(DependencyDown):
        read(engine, moto_endpoint, table, http_server)
    http_server.default = Reply(202)
    assert read(engine, moto_endpoint, table, http_server)["reported"] == 2
    # "one" was checkpointed: never again. "two" was in flight: its two failed tries, then once.
    assert sent(http_server) == Counter({"one": 1, "two": 3, "three": 1})


def test_a_shard_being_read_by_another_run_is_left_alone(
    engine: sa.Engine, moto_endpoint: str, http_server: ScriptedHttpServer
) -> None:
    http_server.default = Reply(202)
    table = create_cart_table(moto_endpoint)
    put_cart(moto_endpoint, table, "one", EPOCH - 60)
    ttl_delete(table, "one")
    assert read(engine, moto_endpoint, table, http_server)["reported"] == 1
    with engine.begin() as conn:  # another run holds the shard right now
        conn.execute(
            sa.update(stream_checkpoints).values(
                claim_id="other-run", lease_until=datetime.now(UTC) + timedelta(minutes=5)
            )
        )
    put_cart(moto_endpoint, table, "two", EPOCH - 60)
    ttl_delete(table, "two")
    counts = read(engine, moto_endpoint, table, http_server)
    assert counts["shards_busy"] == 1 and counts["reported"] == 0


# --- abandoned carts: the flow, stream and sweep together -------------------------------------


def test_flow_reads_the_stream_and_sweeps_what_ttl_left(
    engine: sa.Engine,
    aws_env: str,
    http_server: ScriptedHttpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    http_server.default = Reply(202)
    configure_marketing(monkeypatch, http_server.url)
    table = create_cart_table(aws_env)
    monkeypatch.setenv("LIFECYCLE_ABANDONED_CARTS__DYNAMODB_TABLES", json.dumps([{"table": table}]))
    put_cart(aws_env, table, "removed-by-ttl", EPOCH - 100, customer="cust-ada")
    ttl_delete(table, "removed-by-ttl")
    put_cart(aws_env, table, "ttl-is-late", EPOCH - 2 * 3600, customer="cust-bob")
    put_cart(aws_env, table, "just-expired", EPOCH - 60, customer="cust-cy")  # within the grace
    put_cart(aws_env, table, "late-but-anonymous", EPOCH - 2 * 3600, customer=None)
    put_cart(aws_env, table, "active", EPOCH + DAY)

    summary = abandoned_carts()

    assert summary.counts["reported"] == 2 and summary.failed == 0
    assert sent(http_server) == Counter({"removed-by-ttl": 1, "ttl-is-late": 1})
    assert cart_ids(aws_env, table) == {"just-expired", "late-but-anonymous", "active"}
    assert ttl_client(aws_env).describe(table).status == "ENABLED"  # preflight switched it on

    assert abandoned_carts().counts.get("reported", 0) == 0
    assert len(http_server.received()) == 2


def test_a_table_without_a_stream_is_refused_by_name(
    aws_env: str, http_server: ScriptedHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_marketing(monkeypatch, http_server.url)
    table = create_cart_table(aws_env, stream=False)
    monkeypatch.setenv("LIFECYCLE_ABANDONED_CARTS__DYNAMODB_TABLES", json.dumps([{"table": table}]))
    with pytest.raises(ConfigError, match="has no stream"):
        abandoned_carts()
    assert http_server.received() == []


def test_sweep_deletes_only_an_unchanged_cart(
    engine: sa.Engine, moto_endpoint: str, http_server: ScriptedHttpServer
) -> None:
    table = create_cart_table(moto_endpoint, stream=False)
    put_cart(moto_endpoint, table, "late", EPOCH - 7200)
    http_server.reply("POST", PATH, Reply(202, delay=0.3))
    items = DynamoItems(open_dynamodb(region=REGION, endpoint_url=moto_endpoint)[0], table)

    def customer_returns() -> None:  # while the request is in flight
        if http_server.wait_for_requests(1):
            put_cart(moto_endpoint, table, "late", EPOCH + DAY)

    thread = Thread(target=customer_returns)
    thread.start()
    report = steps.sweep_table(
        cart_context(engine),
        marketing_suite(http_server),
        items,
        DynamoCartTable(table=table),
        grace_seconds=3600,
        page_size=10,
    )
    thread.join()
    assert report.counts["reported"] == 1 and report.counts["changed_while_sending"] == 1
    assert cart_ids(moto_endpoint, table) == {"late"}  # the refreshed cart stays

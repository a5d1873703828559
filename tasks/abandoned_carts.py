"""Thin Prefect tasks over :mod:`lifecycle.processes.abandoned_carts`: one batch each (a page
of carts, a table's stream, a table's sweep)."""

from __future__ import annotations

from contextlib import closing
from datetime import timedelta

from lifecycle.clients.build import Clients, open_marketing
from lifecycle.clients.dynamodb import CartStream, DynamoItems, DynamoTtl
from lifecycle.common.batch import BatchReport
from lifecycle.common.paging import Cursor
from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import assert_current
from lifecycle.errors import ConfigError
from lifecycle.processes.abandoned_carts import queries, steps
from lifecycle.processes.abandoned_carts.steps import (
    CartContext,
    CartParams,
    CartPlan,
    StreamSource,
)
from lifecycle.settings import DynamoCartTable, Settings, get_settings
from tasks._prefect import batch_task, report_batch

EVENTS = {"reported": "lifecycle.cart.reported"}
TABLES_VARIABLE = "LIFECYCLE_ABANDONED_CARTS__DYNAMODB_TABLES"


def _context(settings: Settings, params: CartParams) -> CartContext:
    key = settings.pseudonym_key
    return CartContext(
        engine=get_engine(settings.resolved_database_url),
        params=params,
        lease=timedelta(seconds=settings.lease_seconds),
        pseudonym_key=key.get_secret_value().encode() if key else None,
    )


def _table(settings: Settings, name: str) -> DynamoCartTable:
    for table in settings.abandoned_carts.dynamodb_tables:
        if table.table == name:
            return table
    raise ConfigError(f"DynamoDB cart table {name!r} is not in {TABLES_VARIABLE}")


def _report(report: BatchReport) -> BatchReport:
    return report_batch(report, EVENTS, subject_label="customers")


@batch_task("preflight-abandoned-carts")
def preflight_carts(params: CartParams) -> CartPlan:
    """Check the schema, the marketing suite's settings and every DynamoDB cart table (TTL on
    its attribute, a stream with old images); count the expired carts. Changes nothing but
    switching TTL on where it is off."""
    settings = get_settings()
    engine = get_engine(settings.resolved_database_url)
    assert_current(engine)
    with closing(Clients(settings)) as clients:
        if not params.dry_run:
            open_marketing(settings).close()
        if settings.abandoned_carts.dynamodb_tables:
            dynamodb, streams = clients.dynamodb
            ttl = DynamoTtl(dynamodb, variable=TABLES_VARIABLE)
            for table in settings.abandoned_carts.dynamodb_tables:
                ttl.ensure(table.table, table.ttl_attribute, enable=not params.dry_run)
                CartStream(dynamodb, streams).stream_arn(table.table, TABLES_VARIABLE)
    with engine.connect() as conn:
        due = queries.count_due(conn, cutoff=params.cutoff)
    tables = tuple(table.table for table in settings.abandoned_carts.dynamodb_tables)
    return CartPlan(due=due, dynamodb_tables=tables)


@batch_task("report-expired-carts")
def expire_carts_batch(params: CartParams, after: Cursor | None) -> BatchReport:
    """One page of expired carts in the database: report, then delete (or purge silently)."""
    settings = get_settings()
    with closing(Clients(settings)) as clients:
        suite = None if params.dry_run else clients.marketing
        report = steps.expire_batch(
            _context(settings, params), suite, after=after, limit=params.batch_size
        )
    return _report(report)


@batch_task("purge-refused-carts")
def purge_refused_carts(params: CartParams) -> int:
    """Carts the marketing suite refused, kept for inspection, go after the configured days."""
    settings = get_settings()
    return steps.purge_refused(
        _context(settings, params), settings.abandoned_carts.keep_rejected_days
    )


@batch_task("read-cart-stream")
def read_cart_stream(params: CartParams, table_name: str) -> BatchReport:
    """Carts DynamoDB's TTL removed from one table, read from its stream's checkpoints."""
    settings = get_settings()
    table = _table(settings, table_name)
    with closing(Clients(settings)) as clients:
        source = StreamSource(
            stream=CartStream(*clients.dynamodb),
            table=table,
            page_size=settings.abandoned_carts.stream_page_size,
            variable=TABLES_VARIABLE,
        )
        suite = None if params.dry_run else clients.marketing
        report = steps.read_stream(_context(settings, params), suite, source)
    return _report(report)


@batch_task("sweep-dynamodb-carts")
def sweep_dynamodb_carts(params: CartParams, table_name: str) -> BatchReport:
    """Carts long expired in one table that TTL has not removed yet."""
    settings = get_settings()
    table = _table(settings, table_name)
    with closing(Clients(settings)) as clients:
        suite = None if params.dry_run else clients.marketing
        report = steps.sweep_table(
            _context(settings, params),
            suite,
            DynamoItems(clients.dynamodb[0], table.table),
            table,
            grace_seconds=settings.abandoned_carts.sweep_grace_seconds,
            page_size=settings.abandoned_carts.stream_page_size,
        )
    return _report(report)

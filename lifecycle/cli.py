"""Command line: ``lifecycle demo`` (the README's first command), ``migrate``, ``seed``,
``listen`` (new users on PostgreSQL -> the activation-mail event), ``ttl-status``,
``consent-requeue`` (failed third-party deletions, after a look at the vendor) and
``simulator`` (the local processor simulator, for trying consent deletion without a vendor)."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from typing import Annotated, Any

import click
import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from lifecycle.clients.build import Clients
from lifecycle.clients.dynamodb import DynamoTtl
from lifecycle.clients.notify import UserCreatedListener, listen_conninfo
from lifecycle.clients.simulator import ProcessorSimulator
from lifecycle.common.batch import RunSummary
from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import assert_current, upgrade
from lifecycle.db.schema import attributes, users
from lifecycle.demo_marketing import local_suite
from lifecycle.errors import LifecycleError
from lifecycle.processes.consent_deletion.queries import requeue_failed
from lifecycle.processes.inactive_accounts.steps import SweepSummary
from lifecycle.processes.ttl_purge.steps import backlogs
from lifecycle.sample_data import seed as seed_users
from lifecycle.sample_data import seed_ttl
from lifecycle.settings import Settings, get_settings

app = typer.Typer(help="Data-lifecycle flows (Prefect).", no_args_is_help=True)
console = Console()


def main() -> None:
    """The ``lifecycle`` command: our errors end it with one line saying what to fix."""
    try:
        code = app(standalone_mode=False)
    except LifecycleError as exc:
        console.print(f"[red]{type(exc).__name__}: {exc}[/red]", soft_wrap=True)
        raise SystemExit(2) from None
    except click.exceptions.Abort:
        raise SystemExit(1) from None
    except click.exceptions.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (alembic)."""
    settings = get_settings()
    upgrade(settings.resolved_database_url)
    console.print("schema is up to date")


@app.command()
def seed() -> None:
    """Insert the sample users if the users table is empty."""
    settings = get_settings()
    upgrade(settings.resolved_database_url)
    console.print(_seed_if_empty(settings))


def _seed_if_empty(settings: Settings) -> str:
    engine = get_engine(settings.resolved_database_url)
    with engine.connect() as conn:
        existing = conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one()
    if existing:
        return f"{existing} users already present: nothing seeded"
    count = seed_users(engine, Clients(settings).storage, now=datetime.now(UTC))
    return f"seeded {count} sample users (with files, features and scores)"


#: The demo's stand-in for a third party, when no processor is configured.
DEMO_TOKEN = "demo-simulator-token"
DEMO_CONTACTS = ["privacy-team@example.com"]


@app.command()
def demo() -> None:
    """Migrate, seed sample users on first run, then run activation-mail, inactive-accounts
    and the consent deletion (start, then poll) once; with no processor configured, against
    the simulator."""
    from flows.activation_mail import activation_mail
    from flows.consent_deletion import consent_deletion_poll, consent_deletion_start
    from flows.inactive_accounts import inactive_accounts  # keeps --help fast

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    console.print(_seed_if_empty(settings))
    with ProcessorSimulator(token=DEMO_TOKEN, complete_after=0.0) as simulator:
        if not settings.consent_deletion.processors:
            _use_simulator(simulator)
        runs: list[tuple[str, Any, tuple[str, ...]]] = [  # (name, flow, outcomes shown)
            ("activation-mail", activation_mail, _ACTIVATION_OUTCOMES),
            ("inactive-accounts", inactive_accounts, ("warned", "deleted", "skipped", "failed")),
            ("consent-deletion-start", consent_deletion_start, ("requested", "started")),
            ("consent-deletion-poll", consent_deletion_poll, _CONSENT_OUTCOMES),
        ]
        for name, flow, outcomes in runs:
            state = flow(return_state=True)
            result = state.result(raise_on_failure=False)
            if not isinstance(result, RunSummary):
                console.print(f"[red]{name} ended {state.type.value}: {result}[/red]")
                raise typer.Exit(1)
            _print_summary(name, result, outcomes)
    console.print(f"database: {settings.resolved_database_url}")
    console.print(f"storage:  {settings.resolved_storage_url}")
    console.print(
        f"outbox:   {settings.resolved_outbox_dir} (activation and warning mails as .eml)"
    )
    _demo_ttl_and_carts(settings)


_ACTIVATION_OUTCOMES = ("sent", "skipped_already_sent", "skipped_being_sent", "failed")
_CONSENT_OUTCOMES = ("started", "still_pending", "completed", "failed", "escalated", "anomalies")


def _use_simulator(simulator: ProcessorSimulator) -> None:
    """Point this process's consent deletion at the simulator (settings are read per task)."""
    processor = {
        "kind": "rest",
        "name": "simulator",
        "base_url": simulator.url,
        "token": DEMO_TOKEN,
    }
    os.environ["LIFECYCLE_CONSENT_DELETION__PROCESSORS"] = json.dumps([processor])
    os.environ["LIFECYCLE_CONSENT_DELETION__TECHNICAL_CONTACTS"] = json.dumps(DEMO_CONTACTS)
    console.print(
        f"consent deletion: no processor configured, using the simulator at {simulator.url}"
    )


def _print_summary(name: str, summary: RunSummary, outcomes: tuple[str, ...]) -> None:
    table = Table(title=name, min_width=32)
    table.add_column("outcome")
    table.add_column("count", justify="right")
    for outcome in outcomes:
        table.add_row(outcome.replace("_", " "), str(summary.counts.get(outcome, 0)))
    if isinstance(summary, SweepSummary):
        table.add_row("objects deleted", str(summary.objects_deleted))
    console.print(table)


@app.command()
def listen() -> None:
    """Turn every user inserted into PostgreSQL into a lifecycle.user.created event (which
    starts activation-mail), until interrupted; reconnects after the database restarts."""
    from tasks.activation_mail import emit_catch_up, emit_user_created

    settings = get_settings()
    conninfo = listen_conninfo(settings.resolved_database_url)  # PostgreSQL only
    assert_current(get_engine(settings.resolved_database_url))
    listener = UserCreatedListener(
        conninfo=conninfo,
        on_user=lambda user_id: emit_user_created(user_id, settings),
        on_reconnect=emit_catch_up,
        log=lambda message: console.print(f"{datetime.now(UTC):%H:%M:%S} {message}"),
        backoff_max_seconds=settings.activation_mail.listen_backoff_max_seconds,
    )
    stop = threading.Event()
    try:
        listener.run(stop)
    except KeyboardInterrupt:
        stop.set()
        console.print("stopped")


@app.command("consent-requeue")
def consent_requeue(
    ids: Annotated[list[int], typer.Argument(help="Ids of failed rows of processor_deletions.")],
) -> None:
    """Make failed third-party deletions requests again, after checking them at the vendor;
    the next consent-deletion run starts a new operation for each."""
    settings = get_settings()
    engine = get_engine(settings.resolved_database_url)
    assert_current(engine)
    with engine.begin() as conn:
        requeued = requeue_failed(conn, ids, now=datetime.now(UTC))
    skipped = sorted(set(ids) - set(requeued))
    console.print(
        f"requeued {len(requeued)} failed deletions"
        + (f"; not failed (left alone): {skipped}" if skipped else "")
    )


@app.command()
def simulator(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8700, help="Port to listen on (0: any free port)."),
    token: str = typer.Option("simulator-token", help="Bearer token callers must send."),
    latency: float = typer.Option(0.0, help="Seconds before every answer."),
    complete_after: float = typer.Option(
        60.0, help="Seconds after which an operation reports complete."
    ),
) -> None:
    """Run the local processor simulator (the generic REST contract) until interrupted.

    Point a processor at it: {"kind": "rest", "name": "simulator", "base_url": <printed URL>,
    "token": <token>} in LIFECYCLE_CONSENT_DELETION__PROCESSORS.
    """
    with ProcessorSimulator(
        host=host, port=port, token=token, latency=latency, complete_after=complete_after
    ) as server:
        console.print(f"processor simulator listening on {server.url} (Ctrl-C to stop)")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            console.print("stopped")


# --- TTL purge and abandoned carts ----------------------------------------------------------


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


@app.command("ttl-status")
def ttl_status(
    dynamodb: bool = typer.Option(
        False, "--dynamodb", help="Also scan the configured DynamoDB tables (reads them all)."
    ),
) -> None:
    """Show each TTL purge target's backlog: rows expired but not purged yet, and how old."""
    settings = get_settings()
    now = datetime.now(UTC)
    engine = get_engine(settings.resolved_database_url)
    assert_current(engine)
    found = backlogs(engine, settings.ttl_purge.targets, as_of=now, now=now)
    table = Table(title=f"TTL backlog at {now:%Y-%m-%d %H:%M:%S} UTC")
    for column in ("target", "table", "expired rows", "oldest expired", "rows", "size"):
        table.add_column(column, justify="left" if column in ("target", "table") else "right")
    for target in settings.ttl_purge.targets:
        backlog = found[target.name]
        age = backlog.oldest_age_seconds
        table.add_row(
            target.name,
            target.table,
            f"{backlog.expired:,}",
            "-" if age is None else f"{age:,} s ago",
            f"{backlog.rows:,}",
            _size(backlog.table_bytes),
        )
    console.print(table)
    if dynamodb and settings.ttl_purge.dynamodb_tables:
        _dynamodb_status(settings, now)


def _dynamodb_status(settings: Settings, now: datetime) -> None:
    ttl = DynamoTtl(Clients(settings).dynamodb[0])
    table = Table(title="DynamoDB native TTL")
    for column in ("table", "TTL", "attribute", "expired, still there", "over 48 h"):
        table.add_column(column)
    for config in settings.ttl_purge.dynamodb_tables:
        state = ttl.describe(config.table)
        items = ttl.expired_items(config.table, config.attribute, now)
        table.add_row(
            config.table,
            state.status,
            str(state.attribute),
            f"{items.expired:,}",
            f"{items.overdue:,}",
        )
    console.print(table)


def _demo_ttl_and_carts(settings: Settings) -> None:
    """Seed attributes and carts on first run, then run ttl-purge and abandoned-carts against
    a local marketing receiver (unless a real one is configured)."""
    from flows.abandoned_carts import abandoned_carts
    from flows.ttl_purge import ttl_purge

    engine = get_engine(settings.resolved_database_url)
    with engine.connect() as conn:
        seeded = conn.execute(sa.select(sa.func.count()).select_from(attributes)).scalar_one()
    if not seeded:
        counts = seed_ttl(engine, now=datetime.now(UTC))
        console.print(
            f"seeded {counts['attributes']} attributes, {counts['index']} index entries and "
            f"{counts['carts']} carts"
        )
    purge = ttl_purge(return_state=True).result(raise_on_failure=False)
    _print_counts("ttl-purge", purge)
    if settings.abandoned_carts.marketing_url:
        _print_counts(
            "abandoned-carts", abandoned_carts(return_state=True).result(raise_on_failure=False)
        )
        return
    with local_suite(settings.data_dir) as suite:
        os.environ["LIFECYCLE_ABANDONED_CARTS__MARKETING_URL"] = suite.url
        os.environ["LIFECYCLE_ABANDONED_CARTS__MARKETING_SECRET"] = suite.secret
        try:
            carts = abandoned_carts(return_state=True).result(raise_on_failure=False)
        finally:
            del os.environ["LIFECYCLE_ABANDONED_CARTS__MARKETING_URL"]
            del os.environ["LIFECYCLE_ABANDONED_CARTS__MARKETING_SECRET"]
    _print_counts("abandoned-carts", carts)
    console.print(f"marketing: {suite.inbox} (carts the local receiver accepted)")


def _print_counts(flow_name: str, result: object) -> None:
    counts = getattr(result, "counts", None)
    if counts is None:
        console.print(f"[red]{flow_name} failed: {result}[/red]")
        raise typer.Exit(1)
    table = Table(title=flow_name)
    table.add_column("outcome")
    table.add_column("count", justify="right")
    for outcome, count in sorted(counts.items()):
        table.add_row(outcome, str(count))
    if not counts:
        table.add_row("nothing to do", "0")
    console.print(table)

"""Command line: ``lifecycle demo`` (the README's first command), ``migrate``, ``seed`` and
``simulator`` (the local processor simulator, for trying consent deletion without a vendor)."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from lifecycle.clients.build import Clients
from lifecycle.clients.simulator import ProcessorSimulator
from lifecycle.common.batch import RunSummary
from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import upgrade
from lifecycle.db.schema import users
from lifecycle.processes.inactive_accounts.steps import SweepSummary
from lifecycle.sample_data import seed as seed_users
from lifecycle.settings import Settings, SettingsError, get_settings

app = typer.Typer(help="Data-lifecycle flows (Prefect).", no_args_is_help=True)
console = Console()


def _settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (alembic)."""
    settings = _settings()
    upgrade(settings.resolved_database_url)
    console.print("schema is up to date")


@app.command()
def seed() -> None:
    """Insert the sample users if the users table is empty."""
    settings = _settings()
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
    """Migrate, seed sample users on first run, then run inactive-accounts and the consent
    deletion (start, then poll) once; with no processor configured, against the simulator."""
    from flows.consent_deletion import consent_deletion_poll, consent_deletion_start
    from flows.inactive_accounts import inactive_accounts  # keeps --help fast

    settings = _settings()
    upgrade(settings.resolved_database_url)
    console.print(_seed_if_empty(settings))
    with ProcessorSimulator(token=DEMO_TOKEN, complete_after=0.0) as simulator:
        if not settings.consent_deletion.processors:
            _use_simulator(simulator)
        runs: list[tuple[str, Any, tuple[str, ...]]] = [  # (name, flow, outcomes shown)
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
    console.print(f"outbox:   {settings.resolved_outbox_dir} (warning mails as .eml)")


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

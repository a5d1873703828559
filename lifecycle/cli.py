"""Command line: ``lifecycle demo`` (the README's first command), ``migrate`` and ``seed``."""

from __future__ import annotations

from datetime import UTC, datetime

import click
import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from lifecycle.clients.build import Clients
from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import upgrade
from lifecycle.db.schema import users
from lifecycle.errors import LifecycleError
from lifecycle.processes.inactive_accounts.steps import SweepSummary
from lifecycle.sample_data import seed as seed_users
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


@app.command()
def demo() -> None:
    """Migrate, seed sample users on first run, then run the inactive-accounts flow once."""
    from flows.inactive_accounts import inactive_accounts  # keeps --help fast

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    console.print(_seed_if_empty(settings))
    state = inactive_accounts(return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, SweepSummary):
        table = Table(title="inactive-accounts")
        table.add_column("outcome")
        table.add_column("count", justify="right")
        for outcome in ("warned", "deleted", "skipped", "failed"):
            table.add_row(outcome, str(result.counts.get(outcome, 0)))
        table.add_row("objects deleted", str(result.objects_deleted))
        console.print(table)
        console.print(f"database: {settings.resolved_database_url}")
        console.print(f"storage:  {settings.resolved_storage_url}")
        console.print(f"outbox:   {settings.resolved_outbox_dir} (warning mails as .eml)")
        return
    console.print(f"[red]run ended {state.type.value}: {result}[/red]")
    raise typer.Exit(1)

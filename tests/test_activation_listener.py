"""The NOTIFY path against real PostgreSQL: a new user becomes a ``lifecycle.user.created``
event (by pseudonym); the listener survives its backend being terminated; the migration
installs the trigger and the priority lane keeps activation mail first."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import psycopg
import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.worker import EventsWorker

from lifecycle.clients.notify import CHANNEL, UserCreatedListener, listen_conninfo
from lifecycle.db.engine import get_engine
from lifecycle.errors import ConfigError
from lifecycle.privacy import pseudonym
from lifecycle.settings import Settings
from tasks.activation_mail import USER_CREATED_EVENT, emit_user_created
from tests.support.factories import insert_signup

pytestmark = pytest.mark.postgres


def _events_for(resource_id: str, *, timeout: float = 20.0) -> list[object]:
    EventsWorker.drain_all(timeout=10)
    event_filter = EventFilter(
        event=EventNameFilter(name=[USER_CREATED_EVENT]),
        resource=EventResourceFilter(id=[resource_id]),
    )
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(filter=event_filter, limit=10).events
            if events or time.monotonic() > deadline:
                return list(events)
            time.sleep(0.3)


def _wait_for(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextmanager
def running(listener: UserCreatedListener) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()


def _listener_pids(admin_url: str, database: str) -> list[int]:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
            (database, f"LISTEN {CHANNEL}%"),
        ).fetchall()
    return [row[0] for row in rows]


def test_insert_emits_the_event_and_a_terminated_backend_recovers(
    postgres_url: str, postgres_admin_url: str
) -> None:
    engine = get_engine(postgres_url)
    emitted: list[str] = []
    reconnects: list[float] = []
    settings = Settings(database_url=postgres_url)

    def on_user(user_id: str) -> None:
        emit_user_created(user_id, settings)
        emitted.append(user_id)  # after: the test then drains the events worker safely

    listener = UserCreatedListener(
        conninfo=listen_conninfo(postgres_url),
        on_user=on_user,
        on_reconnect=lambda: reconnects.append(time.monotonic()),
        backoff_first_seconds=0.1,
        backoff_max_seconds=1.0,
        poll_seconds=0.2,
    )
    database = sa.engine.make_url(postgres_url).database
    assert database
    with running(listener):
        _wait_for(lambda: _listener_pids(postgres_admin_url, database), "the LISTEN")
        first = insert_signup(engine, created_at=datetime.now(UTC))
        _wait_for(lambda: emitted == [first], "the first notification")
        assert _events_for(f"lifecycle.user.{pseudonym(first)}")

        # The database drops the listener's connection (as on a restart).
        [pid] = _listener_pids(postgres_admin_url, database)
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        _wait_for(lambda: reconnects, "the reconnect")
        _wait_for(
            lambda: (pids := _listener_pids(postgres_admin_url, database)) and pids != [pid],
            "a new LISTEN",
        )

        second = insert_signup(engine, created_at=datetime.now(UTC))
        _wait_for(lambda: emitted == [first, second], "the notification after the reconnect")
        assert _events_for(f"lifecycle.user.{pseudonym(second)}")
    assert listener.connections == 2


def test_the_notification_carries_the_id_only(postgres_url: str) -> None:
    engine = get_engine(postgres_url)
    with psycopg.connect(listen_conninfo(postgres_url), autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        user_id = insert_signup(engine, created_at=datetime.now(UTC), email="x@example.com")
        [notify] = list(conn.notifies(timeout=10, stop_after=1))
    assert notify.payload == user_id


def test_listen_refuses_sqlite() -> None:
    with pytest.raises(ConfigError, match="PostgreSQL"):
        listen_conninfo("sqlite:///x.db")

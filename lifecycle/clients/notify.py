"""PostgreSQL LISTEN for new users: the analogue of the seed's DynamoDB stream trigger.

Migration 0005 installs a trigger that runs ``pg_notify('lifecycle_user_created', id)`` for
every row inserted into ``users``. :class:`UserCreatedListener` listens on that channel and
hands each id to a callback (``lifecycle listen`` emits ``lifecycle.user.created`` with the
user's pseudonym). When the connection drops (the database restarted, a network blip, the
backend was terminated) it reconnects with exponential backoff; notifications sent while it
was away are lost, so after every reconnect it calls ``on_reconnect`` (the command emits one
catch-up event: the run it starts mails every user still due).

Nothing here logs an id: messages name the channel and the error kind only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from sqlalchemy.engine import make_url

from lifecycle.errors import ConfigError

CHANNEL = "lifecycle_user_created"


def listen_conninfo(database_url: str) -> str:
    """A libpq connection string for a ``postgresql+psycopg://`` SQLAlchemy URL."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ConfigError(
            "lifecycle listen needs PostgreSQL (LIFECYCLE_DATABASE_URL=postgresql://...); "
            "on SQLite, rely on the lifecycle.user.created event and the sweep"
        )
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(kw_only=True)
class UserCreatedListener:
    """Calls ``on_user(id)`` for every new user, until ``stop`` is set."""

    conninfo: str
    on_user: Callable[[str], None]
    on_reconnect: Callable[[], None] = lambda: None
    log: Callable[[str], None] = lambda message: None
    backoff_first_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    poll_seconds: float = 1.0  # how often a quiet connection looks at ``stop``
    sleep: Callable[[float], None] = time.sleep
    connections: int = field(default=0, init=False)  # how many times it (re)connected

    def run(self, stop: threading.Event) -> None:
        delay = self.backoff_first_seconds
        while not stop.is_set():
            try:
                with self._connect() as conn:
                    delay = self.backoff_first_seconds
                    self._listen(conn, stop)
            except psycopg.OperationalError as exc:
                if stop.is_set():
                    return
                self.log(
                    f"connection lost or refused ({type(exc).__name__}); "
                    f"reconnecting in {delay:.1f} s"
                )
                stop.wait(delay)
                delay = min(delay * 2, self.backoff_max_seconds)

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        conn = psycopg.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=10,
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        self.connections += 1
        self.log(f"listening on {CHANNEL}")
        if self.connections > 1:
            self.on_reconnect()  # what was inserted while we were away
        return conn

    def _listen(self, conn: psycopg.Connection[tuple[object, ...]], stop: threading.Event) -> None:
        while not stop.is_set():
            for notify in conn.notifies(timeout=self.poll_seconds):
                if notify.channel == CHANNEL and notify.payload:
                    self.on_user(notify.payload)
                if stop.is_set():
                    return

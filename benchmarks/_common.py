"""What the benchmarks share: throwaway PostgreSQL databases, a Prefect server, verdicts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url


class Postgres:
    """Creates and drops throwaway databases through an admin connection."""

    def __init__(self, admin_url: str) -> None:
        self._admin = make_url(admin_url).set(drivername="postgresql")
        self.created: list[str] = []

    def conninfo(self, name: str) -> str:
        return self._admin.set(database=name).render_as_string(hide_password=False)

    def sqlalchemy_url(self, name: str) -> str:
        url = self._admin.set(drivername="postgresql+psycopg", database=name)
        return url.render_as_string(hide_password=False)

    def _execute(self, statement: sql.Composed) -> None:
        with psycopg.connect(
            self.conninfo(self._admin.database or "postgres"), autocommit=True
        ) as c:
            c.execute(statement)

    def create(self, name: str, *, template: str | None = None, tracked: bool = True) -> str:
        """Create ``name`` (a copy of ``template``); ``drop_all`` drops it unless untracked."""
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        self._execute(statement)
        if tracked:
            self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        try:
            self._execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        except psycopg.Error as exc:
            print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in reversed(list(self.created)):
            self.drop(name)


class Verdicts:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, name: str, ok: bool, detail: str) -> None:
        print(f"{'PASS' if ok else 'FAIL'}: {name}: {detail}")
        if not ok:
            self.failed.append(name)


@contextmanager
def prefect_server(pg: Postgres, home: Path) -> Iterator[str]:
    """``prefect server start`` on a free port, backed by a throwaway PostgreSQL database
    (SQLite stalls under concurrent runs), with ``PREFECT_API_URL`` set for this process and
    its children; its API URL. An existing ``PREFECT_API_URL`` is used as it is instead.
    Call before importing Prefect."""
    if url := os.environ.get("PREFECT_API_URL"):
        yield url
        return
    name = pg.create(f"bench_prefect_{os.getpid()}", tracked=False)
    with psycopg.connect(pg.conninfo(name), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": pg.sqlalchemy_url(name).replace(
            "+psycopg", "+asyncpg"
        ),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    url = f"http://127.0.0.1:{port}/api"
    with (home / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "prefect"), "server", "start"],
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            _wait_healthy(url, server)
            os.environ.update(PREFECT_API_URL=url, PREFECT_HOME=str(home))
            yield url
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            pg.drop(name)


def _wait_healthy(url: str, server: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("prefect server exited; see its log")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"prefect server did not answer in {seconds:.0f} s")

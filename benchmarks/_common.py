"""What the benchmarks share: throwaway PostgreSQL databases, a Prefect server, verdicts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

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


SERVER_START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(home: Path) -> dict[str, str]:
    return {**os.environ, "PREFECT_HOME": str(home)}


class PrefectServer:
    """``prefect server start`` in its own session, stopped (with its children) on exit;
    on SQLite in ``home``, or on ``database_url`` (``postgresql+asyncpg://…``)."""

    def __init__(
        self,
        home: Path,
        log: IO[bytes],
        *,
        env: Callable[[Path], dict[str, str]] = lambda home: {
            **os.environ,
            "PREFECT_HOME": str(home),
        },
        database_url: str | None = None,
    ) -> None:
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self._home = home
        self._log = log
        self._env = env if env is not None else _environment
        self._database_url = database_url
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrefectServer:
        env = self._env(self._home)
        env.pop("PREFECT_API_URL", None)
        env.update(PREFECT_UI_ENABLED="false", PREFECT_SERVER_ANALYTICS_ENABLED="false")
        if self._database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self._database_url
        self._process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("prefect")),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self._process.returncode}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"prefect server not healthy after {SERVER_START_TIMEOUT:.0f} s")

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)  # the session we started: server and children
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextmanager
def postgres_prefect_server(pg: Postgres, home: Path) -> Iterator[str]:
    """A Prefect server on a throwaway PostgreSQL database (SQLite stalls under concurrent
    runs), with ``PREFECT_API_URL`` set for this process and its children; its API URL. An
    existing ``PREFECT_API_URL`` is used as it is instead. Call before importing Prefect."""
    if url := os.environ.get("PREFECT_API_URL"):
        yield url
        return
    name = pg.create(f"bench_prefect_{os.getpid()}", tracked=False)
    with psycopg.connect(pg.conninfo(name), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    home.mkdir(parents=True, exist_ok=True)
    database_url = pg.sqlalchemy_url(name).replace("+psycopg", "+asyncpg")
    try:
        with (
            (home / "server.log").open("wb") as log,
            PrefectServer(home, log, database_url=database_url) as server,
        ):
            os.environ.update(PREFECT_API_URL=server.api_url, PREFECT_HOME=str(home))
            yield server.api_url
    finally:
        pg.drop(name)

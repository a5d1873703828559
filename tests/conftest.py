"""Shared fixtures: one Prefect test server, real databases, settings pointing at them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from prefect.testing.utilities import prefect_test_harness

from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import upgrade
from lifecycle.settings import Settings

pytest_plugins = [
    "tests.support.http_server",
    "tests.support.moto_server",
    "tests.support.processors",
    "tests.support.smtp_server",
]

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session", autouse=True)
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server: $LIFECYCLE_TEST_POSTGRES_URL, the local one, or a throwaway one."""
    explicit = os.environ.get("LIFECYCLE_TEST_POSTGRES_URL")
    if explicit:
        yield explicit
        return
    if _reachable(LOCAL_POSTGRES):
        yield LOCAL_POSTGRES
        return
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def pytest_report_header(config: pytest.Config) -> str:
    source = (
        "LIFECYCLE_TEST_POSTGRES_URL"
        if os.environ.get("LIFECYCLE_TEST_POSTGRES_URL")
        else (
            "local server on 127.0.0.1:5432" if _reachable(LOCAL_POSTGRES) else "throwaway pgserver"
        )
    )
    return f"postgresql: {source}"


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, migrated database on the PostgreSQL server, dropped afterwards."""
    name = f"lifecycle_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    url = sa.engine.URL.create(
        "postgresql+psycopg",
        username=_text(info.get("user")),
        password=_text(info.get("password")),
        host=_text(info.get("host")),
        port=int(port) if (port := _text(info.get("port"))) else None,
        database=name,
    ).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        get_engine.cache_clear()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, migrated database on the PostgreSQL server, dropped afterwards."""
    with fresh_database(postgres_admin_url) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'lifecycle.db'}"
    upgrade(url)
    yield url
    get_engine(url).dispose()
    get_engine.cache_clear()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on SQLite and on PostgreSQL."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def engine(database_url: str) -> sa.Engine:
    return get_engine(database_url)


@pytest.fixture
def lifecycle_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Settings:
    """Point the flows (which read the environment) at this test's database and folders."""
    for key in list(os.environ):
        if key.startswith("LIFECYCLE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("LIFECYCLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LIFECYCLE_DATABASE_URL", database_url)
    monkeypatch.setenv("LIFECYCLE_MAIL_RATE_PER_SECOND", "200")
    monkeypatch.setenv("LIFECYCLE_MAIL_LIMIT_NAME", f"test-mail-{uuid.uuid4().hex[:8]}")
    return Settings()

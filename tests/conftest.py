"""Shared fixtures: one Prefect test server, real databases, settings pointing at them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from prefect.testing.utilities import prefect_test_harness

from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import upgrade
from lifecycle.settings import Settings
from tests.support.databases import fresh_database

pytest_plugins = [
    "tests.support.http_server",
    "tests.support.moto_server",
    "tests.support.processors",
    "tests.support.smtp_server",
    # Last: it imports the plugins above (registered first, so their asserts are rewritten).
    "tests.support.e2e",
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

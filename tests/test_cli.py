"""The `lifecycle` command ends our errors with one line that says what to fix."""

from __future__ import annotations

from pathlib import Path

from tests.support.commands import run_lifecycle
from tests.support.http_server import closed_port


def test_migrate_names_an_unreachable_database_without_its_password() -> None:
    url = f"postgresql://app:hunter2-secret@127.0.0.1:{closed_port()}/app"
    result = run_lifecycle("migrate", LIFECYCLE_DATABASE_URL=url)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "LIFECYCLE_DATABASE_URL" in output and "app:***@127.0.0.1" in output
    assert "hunter2" not in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1


def test_a_misspelt_variable_is_named(tmp_path: Path) -> None:
    result = run_lifecycle(
        "migrate", LIFECYCLE_DATA_DIR=str(tmp_path), LIFECYCLE_MAIL_BACKNED="ses"
    )
    assert result.returncode == 2
    assert "did you mean LIFECYCLE_MAIL_BACKEND?" in result.stdout
    assert not (tmp_path / "lifecycle.db").exists()  # refused before touching anything


def test_listen_needs_postgresql(tmp_path: Path) -> None:
    result = run_lifecycle("listen", LIFECYCLE_DATA_DIR=str(tmp_path))
    assert result.returncode == 2
    assert "needs PostgreSQL" in result.stdout and "Traceback" not in result.stdout

"""A real Prefect stack for end-to-end tests: `prefect server start`, the bootstrap, the
deployments of prefect.yaml, and a process worker started from another folder.

Everything runs as separate processes, as in production; the worker fetches the code with the
`pull:` step (a git clone of this repository: committed code only).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SERVER_START_SECONDS = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without Prefect or lifecycle settings, plus ``extra``."""
    kept = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "LIFECYCLE_"))
    }
    return {**kept, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


@dataclass(frozen=True)
class PrefectServer:
    url: str  # the UI; the API is under /api
    home: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


@contextmanager
def prefect_server(home: Path, log: Path) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free port (SQLite in ``home``), stopped with SIGINT."""
    port = free_port()
    env = clean_environment(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),  # the UI reads these, not --port
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2",
        # The UI 3.8.8 serves by default (the React "v2" UI under /v2, where / redirects),
        # pinned so that an upgrade changing the default cannot switch the UI the browser
        # test drives without a failing test.
        PREFECT_SERVER_UI_V2_ENABLED="true",
        # No scheduled runs: every run is one a test started, and none is cancelled or
        # delayed by a scheduled run of the same deployment (their concurrency limits).
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start"], env=env, stdout=out, stderr=out
        )
        server = PrefectServer(url=f"http://127.0.0.1:{port}", home=home)
        try:
            _wait_healthy(server, process, log)
            yield server
        finally:
            _stop(process)


def _wait_healthy(server: PrefectServer, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"prefect server did not start in {SERVER_START_SECONDS} s")


def run_command(args: list[str], env: Mapping[str, str], cwd: Path = ROOT) -> str:
    """Run a command to completion; its output, or an error that shows it."""
    result = subprocess.run(
        args, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


@contextmanager
def process_worker(pool: str, env: Mapping[str, str], folder: Path, log: Path) -> Iterator[None]:
    """``prefect worker start`` in ``folder`` (not the project), polling every second."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool],
            env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
            cwd=folder,
            stdout=out,
            stderr=out,
            start_new_session=True,  # its own process group: stopped with its flow runs
        )
        try:
            yield
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT, then SIGKILL to the whole group if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL) if _own_group(process) else process.kill()
            process.wait()


def _own_group(process: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(process.pid) == process.pid
    except ProcessLookupError:
        return False

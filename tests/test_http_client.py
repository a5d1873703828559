"""The shared HTTP client against a real local server: what is retried, what is not, how long."""

from __future__ import annotations

import random

import httpx
import pytest

from lifecycle.clients.http import AuthenticationFailed, HttpClient, RequestRejected, RetryPolicy
from lifecycle.errors import ConfigError, DependencyDown, PermanentError, is_retryable
from tests.support.http_server import Reply, ScriptedHttpServer, closed_port

SECRET = "tok-5ecr3t-value"


class Waits(list[float]):
    """Records the client's waits instead of sleeping (the server side is real)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client_for(url: str, waits: Waits, **retry: float) -> HttpClient:
    return HttpClient(
        name="Acme API",
        base_url=url,
        headers={"Authorization": f"Bearer {SECRET}"},
        timeout=httpx.Timeout(0.5),
        retry=RetryPolicy(**retry),  # type: ignore[arg-type]
        sleep=waits,
        rng=random.Random(1),
    )


def test_success_is_returned(http_server: ScriptedHttpServer) -> None:
    http_server.reply("POST", "/jobs", Reply(202, {"id": "op-1"}))
    response = client_for(http_server.url, Waits()).request("POST", "/jobs", json={"a": 1})
    assert response.json() == {"id": "op-1"}
    sent = http_server.received("POST", "/jobs")
    assert [r.json() for r in sent] == [{"a": 1}]
    assert sent[0].headers["Authorization"] == f"Bearer {SECRET}"


def test_429_waits_as_told_then_succeeds(http_server: ScriptedHttpServer) -> None:
    http_server.reply(
        "GET",
        "/status",
        Reply(429, {"error": "slow down"}, headers={"Retry-After": "3"}),
        Reply(503),
        Reply(200, {"status": "done"}),
    )
    waits = Waits()
    response = client_for(http_server.url, waits, first_delay=0.5, jitter=0.0).request(
        "GET", "/status"
    )
    assert response.json() == {"status": "done"}
    assert waits == [3.0, 1.0]  # Retry-After, then the second backoff step (0.5 * 2)
    assert len(http_server.received("GET", "/status")) == 3


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_other_4xx_is_permanent_and_not_retried(
    http_server: ScriptedHttpServer, status: int
) -> None:
    http_server.reply("POST", "/jobs", Reply(status, {"error": "bad id jane@example.com"}))
    with pytest.raises(RequestRejected) as raised:
        client_for(http_server.url, Waits()).request("POST", "/jobs")
    assert raised.value.status == status and isinstance(raised.value, PermanentError)
    assert "jane@example.com" not in str(raised.value) and "Acme API" in str(raised.value)
    assert len(http_server.received()) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_authentication_errors_are_configuration(
    http_server: ScriptedHttpServer, status: int
) -> None:
    http_server.reply("GET", "/status", Reply(status, {"error": "invalid token"}))
    with pytest.raises(AuthenticationFailed, match="credentials") as raised:
        client_for(http_server.url, Waits()).request("GET", "/status", params={"token": SECRET})
    assert isinstance(raised.value, ConfigError) and not is_retryable(raised.value)
    assert SECRET not in str(raised.value)
    assert len(http_server.received()) == 1


def test_server_that_never_answers_exhausts_the_retries(http_server: ScriptedHttpServer) -> None:
    http_server.default = Reply(hang=True)
    waits = Waits()
    with pytest.raises(DependencyDown, match="Acme API is not answering: ReadTimeout") as raised:
        client_for(http_server.url, waits, attempts=3).request("GET", "/status")
    assert raised.value.exhausted and not is_retryable(raised.value)
    assert len(waits) == 2 and len(http_server.received()) == 3


def test_a_wait_past_the_budget_gives_up_at_once(http_server: ScriptedHttpServer) -> None:
    http_server.reply("GET", "/status", Reply(503, headers={"Retry-After": "600"}))
    waits = Waits()
    with pytest.raises(DependencyDown, match="past the 60 s budget"):
        client_for(http_server.url, waits, budget=60, max_delay=600).request("GET", "/status")
    assert waits == []


def test_unreachable_api_is_down_without_leaking_the_query() -> None:
    client = client_for(f"http://127.0.0.1:{closed_port()}", Waits(), attempts=2)
    with pytest.raises(DependencyDown, match="ConnectError on GET /status") as raised:
        client.request("GET", "/status", params={"token": SECRET})
    assert SECRET not in str(raised.value)

"""The marketing-suite client against a real local HTTP server: signature, key, retries."""

from __future__ import annotations

import json

import httpx
import pytest

from lifecycle.clients.http import RequestRejected, RetryPolicy
from lifecycle.clients.marketing import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    AbandonedCart,
    CartChanged,
    MarketingSuite,
    sign,
    verify,
)
from lifecycle.errors import DependencyDown
from tests.support.http_server import Reply, ScriptedHttpServer

SECRET = b"shared-secret-for-tests"
CART = AbandonedCart("cart-1", "customer-1", ("SKU-1", "SKU-2"), 1_767_225_600)
NOW = 1_767_300_000.0


class Waits(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def suite_for(server: ScriptedHttpServer, waits: Waits, timeout: float = 0.5) -> MarketingSuite:
    return MarketingSuite(
        url=f"{server.url}/hooks/carts",
        secret=SECRET,
        timeout_seconds=timeout,
        retry=RetryPolicy(attempts=4, first_delay=0.5, jitter=0.0, budget=30),
        sleep=waits,
        clock=lambda: NOW,
    )


def test_request_is_json_signed_and_keyed(http_server: ScriptedHttpServer) -> None:
    http_server.reply("POST", "/hooks/carts", Reply(202, {"ok": True}))
    suite_for(http_server, Waits()).report(CART)
    (request,) = http_server.received("POST", "/hooks/carts")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers[IDEMPOTENCY_HEADER] == CART.idempotency_key
    assert verify(SECRET, request.headers[SIGNATURE_HEADER], request.body, now=NOW + 10)
    assert request.json() == {
        "type": "cart.abandoned",
        "cart_id": "cart-1",
        "customer_id": "customer-1",
        "product_ids": ["SKU-1", "SKU-2"],
        "expired_at": 1_767_225_600,
        "expired_at_iso": "2026-01-01T00:00:00Z",
        "idempotency_key": CART.idempotency_key,
    }


def test_receiver_side_check_refuses_tampering_and_replays() -> None:
    body = CART.body()
    header = sign(SECRET, int(NOW), body)
    assert verify(SECRET, header, body, now=NOW)
    assert not verify(b"another-secret", header, body, now=NOW)
    assert not verify(SECRET, header, body.replace(b"SKU-1", b"SKU-9"), now=NOW)
    assert not verify(SECRET, header, body, now=NOW + 301)  # too old: a replay
    assert not verify(SECRET, "v1=abc", body, now=NOW)
    assert json.loads(body)["idempotency_key"] == CART.idempotency_key


def test_429_is_retried_after_the_time_it_asks(http_server: ScriptedHttpServer) -> None:
    http_server.reply(
        "POST",
        "/hooks/carts",
        Reply(429, {"error": "slow down"}, headers={"Retry-After": "7"}),
        Reply(500),
        Reply(200),
    )
    waits = Waits()
    suite_for(http_server, waits).report(CART)
    assert waits == [7.0, 1.0]
    keys = {r.headers[IDEMPOTENCY_HEADER] for r in http_server.received()}
    assert keys == {CART.idempotency_key} and len(http_server.received()) == 3


def test_a_slow_suite_times_out_and_is_asked_again(http_server: ScriptedHttpServer) -> None:
    http_server.reply("POST", "/hooks/carts", Reply(200, delay=1.0), Reply(201))
    waits = Waits()
    suite_for(http_server, waits, timeout=0.2).report(CART)
    assert len(http_server.received()) == 2 and waits == [0.5]


def test_400_is_not_retried(http_server: ScriptedHttpServer) -> None:
    http_server.reply("POST", "/hooks/carts", Reply(400, {"error": "unknown customer"}))
    with pytest.raises(RequestRejected, match="marketing suite answered 400"):
        suite_for(http_server, Waits()).report(CART)
    assert len(http_server.received()) == 1


def test_a_suite_that_stays_down_is_named(http_server: ScriptedHttpServer) -> None:
    http_server.default = Reply(503)
    with pytest.raises(DependencyDown, match="marketing suite is not answering: HTTP 503") as down:
        suite_for(http_server, Waits()).report(CART)
    assert down.value.exhausted and len(http_server.received()) == 4


def test_a_cart_that_changed_between_attempts_is_not_sent_again(
    http_server: ScriptedHttpServer,
) -> None:
    http_server.reply("POST", "/hooks/carts", Reply(500), Reply(200))
    answers = iter([True, False])  # ordered while the first attempt was in flight
    with pytest.raises(CartChanged):
        suite_for(http_server, Waits()).report(CART, still_wanted=lambda: next(answers))
    assert len(http_server.received()) == 1


def test_a_redirect_means_the_url_is_wrong(http_server: ScriptedHttpServer) -> None:
    http_server.reply("POST", "/hooks/carts", Reply(301, headers={"Location": "/elsewhere"}))
    with pytest.raises(Exception, match="MARKETING_URL"):
        suite_for(http_server, Waits()).report(CART)


def test_transport_is_injectable() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    MarketingSuite(
        url="https://marketing.example.com/v1/carts",
        secret=SECRET,
        transport=httpx.MockTransport(handler),
        clock=lambda: NOW,
    ).report(CART)
    assert [str(r.url) for r in seen] == ["https://marketing.example.com/v1/carts"]

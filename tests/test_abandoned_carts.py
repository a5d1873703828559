"""Abandoned carts in the database, reported to a real local HTTP server standing in for the
marketing suite: what is sent, what is deleted, refusals, outages, orders placed meanwhile."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from threading import Thread

import pytest
import sqlalchemy as sa

from flows.abandoned_carts import abandoned_carts
from flows.ttl_purge import ttl_purge
from lifecycle.clients.marketing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify
from lifecycle.common.claims import Claim
from lifecycle.common.paging import Cursor
from lifecycle.db.schema import cart_activity
from lifecycle.errors import ConfigError, DependencyDown, RunFailed
from lifecycle.privacy import pseudonym
from lifecycle.processes.abandoned_carts import queries, rules, steps
from lifecycle.settings import Settings
from tests.support.http_server import Reply, ScriptedHttpServer
from tests.support.prefect_runs import run_events, run_text
from tests.support.ttl import (
    EPOCH,
    SECRET,
    cart,
    cart_context,
    configure_marketing,
    configure_targets,
    insert_cart,
    marketing_suite,
    place_order,
)

PATH = "/carts"


def carts_sent(server: ScriptedHttpServer) -> list[str]:
    return [request.json()["cart_id"] for request in server.received("POST", PATH)]


def remaining(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(cart_activity.c.cart_id)).scalars())


@pytest.fixture
def marketing(
    lifecycle_env: Settings, http_server: ScriptedHttpServer, monkeypatch: pytest.MonkeyPatch
) -> ScriptedHttpServer:
    configure_marketing(monkeypatch, http_server.url)
    http_server.default = Reply(202, {"accepted": True})
    return http_server


@pytest.fixture
def shop(engine: sa.Engine) -> dict[str, int]:
    """Two abandoned carts, one anonymous, one empty, one still active."""
    return {
        "abandoned": insert_cart(engine, "abandoned", expires_in=-7200, customer="cust-ada"),
        "anonymous": insert_cart(engine, "anonymous", expires_in=-600, customer=None),
        "empty": insert_cart(engine, "empty", expires_in=-500, products=[]),
        "abandoned-too": insert_cart(engine, "abandoned-too", expires_in=-60, customer="cust-bob"),
        "active": insert_cart(engine, "active", expires_in=86_400, customer="cust-eve"),
    }


def test_reports_then_deletes_and_purges_the_rest_silently(
    engine: sa.Engine, marketing: ScriptedHttpServer, shop: dict[str, int]
) -> None:
    state = abandoned_carts(return_state=True)
    summary = state.result()
    assert summary.counts == {"reported": 2, "purged_unreported": 2}
    assert carts_sent(marketing) == ["abandoned", "abandoned-too"]
    assert remaining(engine) == {"active"}
    for request in marketing.received("POST", PATH):
        assert verify(
            SECRET.encode(), request.headers[SIGNATURE_HEADER], request.body, now=time.time()
        )
    first = marketing.received()[0].json()
    assert (first["customer_id"], first["expired_at"]) == ("cust-ada", shop["abandoned"])

    (event,) = run_events(state.state_details.flow_run_id, prefix="lifecycle.cart.")
    assert event.payload == {
        "count": 2,
        "customers": [pseudonym("cust-ada"), pseudonym("cust-bob")],
    }
    text = run_text(state.state_details.flow_run_id)
    assert "cust-ada" not in text and "cust-bob" not in text

    assert abandoned_carts().counts == {}
    assert len(marketing.received()) == 2


def test_dry_run_counts_and_sends_nothing(
    engine: sa.Engine,
    lifecycle_env: Settings,
    http_server: ScriptedHttpServer,
    shop: dict[str, int],
) -> None:
    summary = abandoned_carts(dry_run=True)  # no marketing suite configured: not needed
    assert summary.counts == {"would_report": 2, "would_purge": 2}
    assert http_server.received() == [] and len(remaining(engine)) == 5


def test_not_configured_is_refused_before_anything(
    engine: sa.Engine, lifecycle_env: Settings, shop: dict[str, int]
) -> None:
    with pytest.raises(ConfigError, match="LIFECYCLE_ABANDONED_CARTS__MARKETING_URL"):
        abandoned_carts()
    assert len(remaining(engine)) == 5


def test_a_refused_cart_is_kept_not_retried_and_offered_again_once_it_changes(
    engine: sa.Engine, marketing: ScriptedHttpServer, shop: dict[str, int]
) -> None:
    marketing.reply("POST", PATH, Reply(400, {"error": "unknown customer cust-ada"}))
    state = abandoned_carts(return_state=True)
    assert state.is_failed()
    with pytest.raises(RunFailed, match="1 carts failed"):
        state.result()
    refused = cart(engine, "abandoned")
    assert refused is not None and refused.rejected_at is not None and refused.claim_id is None
    assert "400" in refused.rejection and "cust-ada" not in refused.rejection
    assert remaining(engine) == {"abandoned", "active"}

    assert abandoned_carts().counts == {}  # not offered again as it is
    assert len(marketing.received()) == 2

    with engine.begin() as conn:  # the customer came back, then left again
        conn.execute(
            sa.update(cart_activity)
            .where(cart_activity.c.cart_id == "abandoned")
            .values(expires_at=EPOCH - 30)
        )
    assert abandoned_carts().counts == {"reported": 1}
    assert remaining(engine) == {"active"}


def test_refused_carts_are_purged_after_the_configured_days(engine: sa.Engine) -> None:
    insert_cart(engine, "refused")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        claim = Claim.new(now, timedelta(minutes=5))
        queries.claim_carts(conn, ["refused"], cutoff=EPOCH, claim=claim)
        queries.reject(conn, "refused", claim_id=claim.id, now=now, reason="HTTP 400")
    later = cart_context(engine, clock=lambda: now + timedelta(days=31))
    assert steps.purge_refused(cart_context(engine), 30) == 0
    assert steps.purge_refused(later, 30) == 1
    assert cart(engine, "refused") is None


def test_a_suite_that_is_down_fails_the_run_and_keeps_every_cart(
    engine: sa.Engine,
    marketing: ScriptedHttpServer,
    shop: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure_marketing(monkeypatch, marketing.url, budget=0.1)
    marketing.default = Reply(503)
    state = abandoned_carts(return_state=True)
    assert state.is_failed()
    with pytest.raises(DependencyDown, match="marketing suite is not answering"):
        state.result()
    assert remaining(engine) == {"abandoned", "abandoned-too", "active"}
    with engine.connect() as conn:
        assert conn.execute(sa.select(cart_activity.c.claim_id)).scalars().all() == [None] * 3
    assert set(carts_sent(marketing)) == {"abandoned"}  # the batch stopped at the first


def when_first_request_arrives(server: ScriptedHttpServer, action: Callable[[], None]) -> Thread:
    """Run ``action`` in another thread as soon as the server has its first request."""

    def wait_then_act() -> None:
        if server.wait_for_requests(1):
            action()

    thread = Thread(target=wait_then_act)
    thread.start()
    return thread


def test_orders_placed_after_the_claim_are_not_reported(
    engine: sa.Engine, http_server: ScriptedHttpServer
) -> None:
    """While the first cart's request is in flight, the shop places orders for it and for the
    second cart, and the third cart's customer comes back. Only the first is reported (it was
    in flight: the documented window), and it is not deleted twice; the others are not sent."""
    for number, cart_id in enumerate(("first", "second", "third")):
        insert_cart(engine, cart_id, expires_in=-300 + number)
    http_server.reply("POST", PATH, Reply(202, delay=0.5))

    def shop_moves() -> None:
        place_order(engine, "first")
        place_order(engine, "second")
        with engine.begin() as conn:
            conn.execute(
                sa.update(cart_activity)
                .where(cart_activity.c.cart_id == "third")
                .values(expires_at=EPOCH + 3600)
            )

    thread = when_first_request_arrives(http_server, shop_moves)
    report = steps.expire_batch(
        cart_context(engine), marketing_suite(http_server), after=None, limit=10
    )
    thread.join()

    assert carts_sent(http_server) == ["first"]
    assert report.counts == Counter(reported=1, changed_while_sending=1, changed=2)
    third = cart(engine, "third")
    assert remaining(engine) == {"third"} and third is not None
    assert third.claim_id is None and third.expires_at == EPOCH + 3600


def test_a_crash_after_sending_resends_with_the_same_key(
    engine: sa.Engine, http_server: ScriptedHttpServer
) -> None:
    """A run that sent a cart and died before deleting it: the lease ends, the next run sends
    it again, with the same idempotency key for the receiver to drop."""
    insert_cart(engine, "in-flight")
    http_server.default = Reply(202)
    crashed = Claim.new(datetime.now(UTC) - timedelta(hours=1), timedelta(minutes=15))
    with engine.begin() as conn:
        (row,) = queries.claim_carts(conn, ["in-flight"], cutoff=EPOCH, claim=crashed)
    rules_cart = rules.abandoned_cart(row.cart_id, row.customer_id, row.product_ids, row.expires_at)
    assert rules_cart is not None
    marketing_suite(http_server).report(rules_cart)  # what the crashed run got out

    report = steps.expire_batch(
        cart_context(engine), marketing_suite(http_server), after=None, limit=10
    )

    assert report.counts == Counter(reported=1)
    first, second = http_server.received("POST", PATH)
    assert first.headers[IDEMPOTENCY_HEADER] == second.headers[IDEMPOTENCY_HEADER]
    assert first.body == second.body and remaining(engine) == set()


@pytest.mark.postgres
def test_two_runs_at_once_report_each_cart_once(
    postgres_url: str, http_server: ScriptedHttpServer
) -> None:
    from lifecycle.db.engine import get_engine

    engine = get_engine(postgres_url)
    for number in range(30):
        insert_cart(engine, f"cart-{number:02}", expires_in=-1000 + number, customer=f"c{number}")
    http_server.default = Reply(202, delay=0.02)

    def run() -> int:
        reported = 0
        after: Cursor | None = None
        while True:
            report = steps.expire_batch(
                cart_context(engine), marketing_suite(http_server), after=after, limit=7
            )
            reported += report.counts["reported"]
            if report.last is None:
                return reported
            after = report.last

    with ThreadPoolExecutor(max_workers=2) as pool:
        totals = list(pool.map(lambda _: run(), range(2)))
    assert sum(totals) == 30
    sent = Counter(carts_sent(http_server))
    assert len(sent) == 30 and set(sent.values()) == {1}
    assert remaining(engine) == set()


def test_ttl_purge_can_report_carts_as_its_expiry_action(
    engine: sa.Engine,
    marketing: ScriptedHttpServer,
    shop: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure_targets(
        monkeypatch,
        [
            {
                "name": "carts",
                "table": "cart_activity",
                "expiry_column": "expires_at",
                "expiry_kind": "epoch",
                "action": "abandoned-cart",
            }
        ],
    )
    summary = ttl_purge(check_dynamodb=False)
    assert summary.counts == {"reported": 2, "purged_unreported": 2}
    (result,) = summary.targets
    assert (result.strategy, result.purged, result.expired_after) == ("action:abandoned-cart", 4, 0)
    assert carts_sent(marketing) == ["abandoned", "abandoned-too"]
    assert remaining(engine) == {"active"}


def test_parameters_are_strict(engine: sa.Engine, marketing: ScriptedHttpServer) -> None:
    for bad in ({"batch_size": True}, {"batch_size": 0}, {"dry_run": "yes"}, {"max_runtime": 9}):
        with pytest.raises(Exception, match=next(iter(bad))):
            abandoned_carts(**bad)  # type: ignore[arg-type]
    assert marketing.received() == []

"""Activation mail against real databases (SQLite and PostgreSQL), the outbox and SMTP."""

from __future__ import annotations

import email
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from flows.activation_mail import activation_mail
from lifecycle.common.batch import Breaker
from lifecycle.db.schema import users
from lifecycle.processes.activation_mail import steps
from lifecycle.processes.activation_mail.steps import ActivationContext, ClaimedBatch
from lifecycle.settings import Settings
from tests.support.factories import insert_signup, user_row
from tests.support.outbox import outbox, text_of
from tests.support.prefect_runs import run_artifacts, run_text
from tests.support.smtp_server import LocalSmtpServer

HTML_NAME = '<img src=x onerror="alert(1)">Jane'


def _now() -> datetime:
    return datetime.now(UTC)


def _context(engine: sa.Engine, **overrides: Any) -> ActivationContext:
    now = _now()
    values: dict[str, Any] = {
        "engine": engine,
        "url_base": "https://app.example.com/activate",
        "product": "Acme",
        "dry_run": False,
        "lease": timedelta(minutes=5),
        "created_after": now - timedelta(days=7),
        "sleep": lambda seconds: None,
    }
    values.update(overrides)
    return ActivationContext(**values)


def _status(engine: sa.Engine, user_id: str) -> str:
    row = user_row(engine, user_id)
    assert row is not None
    return str(row.activation_status)


def _summary_artifact(state: Any) -> Any:
    [artifact] = [
        a
        for a in run_artifacts(state.state_details.flow_run_id)
        if (a.key or "").startswith("activation-mail-")
    ]
    return artifact


def _links(settings: Settings) -> list[str]:
    return [
        line.strip()
        for message in outbox(settings)
        for line in text_of(message).splitlines()
        if "token=" in line
    ]


def test_new_users_are_mailed_once_and_others_skipped(
    lifecycle_env: Settings, engine: sa.Engine
) -> None:
    now = _now()
    due = insert_signup(engine, created_at=now - timedelta(minutes=1), name=HTML_NAME)
    stale = insert_signup(
        engine,
        created_at=now - timedelta(minutes=2),
        activation_status="SENDING",
        activation_claim_id="crashed-run",
        activation_lease_until=now - timedelta(minutes=1),
        activation_token="kept-token",
    )
    untouched = {
        "sent": insert_signup(engine, created_at=now, activation_status="MAIL_SENT"),
        "done": insert_signup(engine, created_at=now, activation_status="DONE"),
        "bounced": insert_signup(engine, created_at=now, activation_status="UNDELIVERABLE"),
        "in flight": insert_signup(
            engine,
            created_at=now,
            activation_status="SENDING",
            activation_claim_id="live-run",
            activation_lease_until=now + timedelta(minutes=4),
        ),
        "too old": insert_signup(engine, created_at=now - timedelta(days=30)),
        "no username": insert_signup(engine, created_at=now, username=None),
    }

    state = activation_mail(return_state=True)
    summary = state.result()

    assert state.is_completed()
    assert summary.counts == {"claimed": 2, "sent": 2, "taken_over": 1}
    assert [_status(engine, u) for u in (due, stale)] == ["MAIL_SENT", "MAIL_SENT"]
    assert {k: _status(engine, u) for k, u in untouched.items()} == {
        "sent": "MAIL_SENT",
        "done": "DONE",
        "bounced": "UNDELIVERABLE",
        "in flight": "SENDING",
        "too old": "NONE",
        "no username": "NONE",
    }
    links = sorted(_links(lifecycle_env))
    assert len(links) == 2
    assert any(parse_qs(urlsplit(link).query)["token"] == ["kept-token"] for link in links)
    fresh = user_row(engine, due)
    assert fresh is not None and len(fresh.activation_token) >= 43
    assert {parse_qs(urlsplit(link).query)["token"][0] for link in links} == {
        "kept-token",
        fresh.activation_token,
    }
    # The HTML part shows the name as text; no markup of it survives.
    html = [
        bytes(part.get_payload(decode=True)).decode()  # type: ignore[arg-type]
        for message in outbox(lifecycle_env)
        for part in message.walk()
        if part.get_content_type() == "text/html"
    ]
    assert not any("<img" in body for body in html)
    assert any("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;Jane" in body for body in html)

    # A second run finds nobody: the mail is never sent twice.
    assert activation_mail(return_state=True).result().counts == {}
    assert len(outbox(lifecycle_env)) == 2


def test_each_branch_of_the_status_check_is_counted(engine: sa.Engine) -> None:
    """Users whose status changed between the page and the claim are skipped, by reason."""
    now = _now()
    ctx = _context(engine)
    ids = {
        "send": insert_signup(engine, created_at=now),
        "take_over": insert_signup(
            engine,
            created_at=now,
            activation_status="SENDING",
            activation_claim_id="gone",
            activation_lease_until=now - timedelta(seconds=1),
        ),
        "being_sent": insert_signup(
            engine,
            created_at=now,
            activation_status="SENDING",
            activation_claim_id="other",
            activation_lease_until=now + timedelta(minutes=3),
        ),
        "already_sent": insert_signup(engine, created_at=now, activation_status="MAIL_SENT"),
        "undeliverable": insert_signup(engine, created_at=now, activation_status="UNDELIVERABLE"),
        "already_active": insert_signup(engine, created_at=now, activation_status="DONE"),
    }
    report = ClaimedBatch()
    steps.claim_users(ctx, [*ids.values(), str(uuid.uuid4())], report)
    assert report.claim is not None
    assert report.counts == {
        "claimed": 2,
        "taken_over": 1,
        "skipped_being_sent": 1,
        "skipped_already_sent": 1,
        "skipped_undeliverable": 1,
        "skipped_already_active": 1,
        "skipped_no_user": 1,
    }
    assert _status(engine, ids["send"]) == _status(engine, ids["take_over"]) == "SENDING"


@pytest.mark.postgres
def test_event_sweep_and_a_concurrent_run_race_for_the_same_users(
    postgres_url: str, lifecycle_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three runs at once (as the event, the sweep and an overlapping run would start them):
    every user gets exactly one mail."""
    from lifecycle.db.engine import get_engine

    engine = get_engine(postgres_url)
    monkeypatch.setenv("LIFECYCLE_DATABASE_URL", postgres_url)
    created = _now() - timedelta(minutes=5)
    ids = [insert_signup(engine, created_at=created) for _ in range(60)]
    start = threading.Barrier(3)

    def run(min_age_seconds: int) -> dict[str, int]:
        start.wait()
        return activation_mail(min_age_seconds=min_age_seconds, batch_size=7).counts

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, [0, 0, 180]))

    recipients = Counter(str(message["To"]) for message in outbox(lifecycle_env))
    assert len(recipients) == 60 and set(recipients.values()) == {1}
    assert sum(result.get("sent", 0) for result in results) == 60
    assert {_status(engine, user_id) for user_id in ids} == {"MAIL_SENT"}


@pytest.mark.postgres
def test_concurrent_claims_never_share_a_user(postgres_url: str) -> None:
    """The claim itself, many at once on PostgreSQL (SKIP LOCKED): disjoint sets."""
    from lifecycle.db.engine import get_engine

    engine = get_engine(postgres_url)
    ids = [insert_signup(engine, created_at=_now()) for _ in range(40)]
    start = threading.Barrier(4)

    def claim() -> set[str]:
        report = ClaimedBatch()
        start.wait()
        steps.claim_users(_context(engine), ids, report)
        if report.claim is None:
            return set()
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(users.c.id).where(users.c.activation_claim_id == report.claim.id)
            )
            return {row[0] for row in rows}

    with ThreadPoolExecutor(max_workers=4) as pool:
        claimed = list(pool.map(lambda _: claim(), range(4)))
    assert sum(len(c) for c in claimed) == 40
    assert set().union(*claimed) == set(ids)


@pytest.fixture
def smtp_mail(
    lifecycle_env: Settings, smtp_server: LocalSmtpServer, monkeypatch: pytest.MonkeyPatch
) -> LocalSmtpServer:
    """Mail goes to the local SMTP server."""
    monkeypatch.setenv("LIFECYCLE_MAIL_BACKEND", "smtp")
    monkeypatch.setenv("LIFECYCLE_MAIL_FROM", "Acme <no-reply@acme.example>")
    monkeypatch.setenv("LIFECYCLE_SMTP_HOST", smtp_server.host)
    monkeypatch.setenv("LIFECYCLE_SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("LIFECYCLE_SMTP_SECURITY", "none")
    return smtp_server


def test_send_failure_then_success(engine: sa.Engine, smtp_mail: LocalSmtpServer) -> None:
    smtp_server = smtp_mail
    user_id = insert_signup(engine, created_at=_now(), email="flaky@example.com")
    smtp_server.fail("flaky@example.com", "451 4.3.0 Try again later")

    first = activation_mail(return_state=True)

    assert first.is_failed()
    assert _status(engine, user_id) == "NONE"  # given back for the next run
    row = user_row(engine, user_id)
    assert row is not None and row.activation_claim_id is None
    assert smtp_server.messages == []
    assert "failed=1" in str(_summary_artifact(first).description)

    smtp_server.recover("flaky@example.com")
    second = activation_mail(return_state=True)

    assert second.is_completed()
    assert second.result().counts == {"claimed": 1, "sent": 1}
    assert _status(engine, user_id) == "MAIL_SENT"
    [delivered] = smtp_server.messages
    assert delivered.rcpt_tos == ("flaky@example.com",)
    body = email.message_from_bytes(delivered.content)
    assert "Activate your" in str(body["Subject"])


def test_undeliverable_address_is_not_tried_again(
    engine: sa.Engine, smtp_mail: LocalSmtpServer
) -> None:
    smtp_server = smtp_mail
    user_id = insert_signup(engine, created_at=_now(), email="gone@example.com")
    smtp_server.fail("gone@example.com", "550 5.1.1 no such user")
    assert activation_mail().counts == {"claimed": 1, "undeliverable": 1}
    assert _status(engine, user_id) == "UNDELIVERABLE"
    assert activation_mail().counts == {}


def test_crash_left_in_sending_is_taken_over_after_the_lease(engine: sa.Engine) -> None:
    """A run claims users and dies before mailing them: they stay SENDING (nobody mails
    them while its lease lasts), then another run takes them over and mails each once."""
    sent: list[str] = []
    created = _now() - timedelta(minutes=1)
    ids = [insert_signup(engine, created_at=created) for _ in range(3)]
    crashed = steps.read_status(_context(engine), after=None, limit=10)
    assert crashed.claim is not None and crashed.counts == {"claimed": 3}
    # ... the run dies here: no send, no mark.

    during = steps.read_status(_context(engine), after=None, limit=10)
    assert during.claim is None and during.counts == {}  # not due while the lease lasts
    assert {_status(engine, u) for u in ids} == {"SENDING"}

    later = _now() + timedelta(minutes=6)
    ctx = _context(engine, clock=lambda: later)
    taken = steps.read_status(ctx, after=None, limit=10)
    assert taken.claim is not None and taken.counts == {"claimed": 3, "taken_over": 3}
    report = steps.send_mails(
        ctx,
        claim=taken.claim,
        send=lambda mail: sent.append(mail.to) or "id",  # type: ignore[func-returns-value]
        breaker=Breaker("test"),
    )
    assert report.counts == {"sent": 3}
    assert steps.mark_sent(ctx, claim_id=taken.claim.id).counts == {}
    # The crashed run's claim no longer holds anyone: closing it late changes nothing.
    assert steps.mark_sent(ctx, claim_id=crashed.claim.id).counts == {}
    assert {_status(engine, u) for u in ids} == {"MAIL_SENT"}
    assert len(sent) == 3 == len(set(sent))


def test_dry_run_changes_nothing_and_still_writes_a_summary(
    lifecycle_env: Settings, engine: sa.Engine
) -> None:
    user_id = insert_signup(engine, created_at=_now())
    state = activation_mail(dry_run=True, return_state=True)
    assert state.result().counts == {"would_send": 1}
    assert _status(engine, user_id) == "NONE" and outbox(lifecycle_env) == []
    assert "dry_run=True" in str(_summary_artifact(state).description)


def test_nothing_personal_reaches_prefect(lifecycle_env: Settings, engine: sa.Engine) -> None:
    user_id = insert_signup(engine, created_at=_now(), email="private.person@example.com")
    state = activation_mail(return_state=True)
    assert state.is_completed()
    row = user_row(engine, user_id)
    assert row is not None
    text = run_text(state.state_details.flow_run_id)
    for secret in (user_id, "private.person@example.com", row.activation_token, row.username):
        assert secret not in text


def test_parameters_are_strict(lifecycle_env: Settings) -> None:
    for bad in ({"batch_size": 0}, {"batch_size": "10"}, {"min_age_seconds": -1}):
        state = activation_mail(**bad, return_state=True)  # type: ignore[arg-type]
        assert state.is_failed(), bad


def test_migration_0005_goes_down_and_up_with_users_in_place(
    database_url: str, engine: sa.Engine
) -> None:
    from alembic import command

    from lifecycle.db.migrate import alembic_config, upgrade

    user_id = insert_signup(engine, created_at=_now(), activation_status="SENDING")
    with engine.connect() as conn:
        config = alembic_config(database_url)
        config.attributes["connection"] = conn
        command.downgrade(config, "0004")
    with engine.connect() as conn:
        status = conn.execute(
            sa.text("SELECT activation_status FROM users WHERE id = :id"), {"id": user_id}
        ).scalar_one()
    assert status == "NONE"  # no SENDING before 0005
    upgrade(database_url)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            triggers = conn.execute(
                sa.text("SELECT tgname FROM pg_trigger WHERE tgrelid = 'users'::regclass")
            ).scalars()
            assert "lifecycle_user_created" in set(triggers)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.update(users).where(users.c.id == user_id).values(activation_status="LOST"))


def test_the_configured_url_base_keeps_its_query_string(
    lifecycle_env: Settings, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "LIFECYCLE_ACTIVATION_MAIL__URL_BASE", "https://app.example.com/activate?lang=de&src=mail"
    )
    insert_signup(engine, created_at=_now(), username="jane doe&co", activation_token="t/k+n")
    assert activation_mail().counts == {"claimed": 1, "sent": 1}
    [link] = _links(lifecycle_env)
    parts = urlsplit(link)
    assert (parts.netloc, parts.path) == ("app.example.com", "/activate")
    assert parse_qs(parts.query) == {
        "lang": ["de"],
        "src": ["mail"],
        "username": ["jane doe&co"],
        "token": ["t/k+n"],
    }

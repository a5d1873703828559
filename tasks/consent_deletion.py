"""Thin Prefect tasks over :mod:`lifecycle.processes.consent_deletion`: one batch each.

Calls to a processor run in tasks tagged ``processor:<name>``, so a Prefect tag concurrency
limit (``prefect concurrency-limit create processor:mixpanel 1``) caps them across every run
and worker; within a task the processor's own ``rate_per_second`` and ``concurrency`` hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import timedelta

from prefect.blocks.system import Secret
from prefect.events import emit_event
from prefect.runtime import flow_run
from pydantic import SecretStr

from lifecycle.clients.processors import open_processor
from lifecycle.common.batch import Breaker
from lifecycle.common.paging import Cursor
from lifecycle.db.engine import get_engine
from lifecycle.db.migrate import assert_current
from lifecycle.errors import ConfigError
from lifecycle.privacy import pseudonym
from lifecycle.processes.consent_deletion import queries, steps
from lifecycle.processes.consent_deletion.rules import AlertKind
from lifecycle.processes.consent_deletion.steps import (
    Alert,
    ConsentContext,
    ConsentParams,
    ConsentPlan,
    ConsentReport,
    ProcessorRun,
)
from lifecycle.settings import ProcessorSettings, Settings, get_settings
from tasks._prefect import batch_task, deletions_paused, mail_sender, report_batch

#: One event per batch and outcome, listing pseudonyms (as inactive-accounts does).
BATCH_EVENTS = {
    "started": "lifecycle.consent.deletion.started",
    "completed": "lifecycle.consent.deletion.completed",
    "failed": "lifecycle.consent.deletion.failed",
}
REVOKED_EVENT = "lifecycle.consent.revoked"
ESCALATED_EVENT = "lifecycle.consent.deletion.escalated"


def emit_consent_revoked(user_id: str, settings: Settings | None = None) -> None:
    """For the application, after it records a revocation: start the deployment now.

    The event names the user by pseudonym only (resource ``lifecycle.user.<pseudonym>``); the
    triggered run works on every revocation still to request, as the sweep does.
    """
    settings = settings or get_settings()
    emit_event(
        event=REVOKED_EVENT,
        resource={"prefect.resource.id": f"lifecycle.user.{pseudonym(user_id, _key(settings))}"},
    )


def _key(settings: Settings) -> bytes | None:
    key = settings.pseudonym_key
    return key.get_secret_value().encode() if key else None


def _context(settings: Settings, params: ConsentParams) -> ConsentContext:
    return ConsentContext(
        engine=get_engine(settings.resolved_database_url),
        as_of=params.as_of,
        dry_run=params.dry_run,
        lease=timedelta(seconds=settings.lease_seconds),
        pseudonym_key=_key(settings),
        flow_run_id=flow_run.get_id(),
    )


def resolve_secret(block: str) -> SecretStr:
    """A processor token kept in a Prefect Secret block."""
    try:
        secret = Secret.load(block)
        assert isinstance(secret, Secret)  # load() is sync in a sync task
        value = secret.get()
    except ValueError as exc:  # no such block
        raise ConfigError(
            f"Prefect Secret block {block!r} (token_block in "
            f"LIFECYCLE_CONSENT_DELETION__PROCESSORS) cannot be read: {exc}"
        ) from None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"Prefect Secret block {block!r} holds no token")
    return SecretStr(value)


def _settings_of(settings: Settings, name: str) -> ProcessorSettings:
    for processor in settings.consent_deletion.enabled:
        if processor.name == name:
            return processor
    raise ConfigError(f"processor {name!r} is not configured (LIFECYCLE_CONSENT_DELETION__...)")


@contextmanager
def _processor_run(settings: Settings, name: str, params: ConsentParams) -> Iterator[ProcessorRun]:
    """The processor as this run uses it, with its connections closed afterwards."""
    configured = _settings_of(settings, name)
    with closing(open_processor(configured, resolve_secret=resolve_secret)) as processor:
        yield ProcessorRun(
            processor=processor,
            ids_per_request=configured.ids_per_request,
            concurrency=min(params.max_concurrency, configured.concurrency),
            escalate_after=params.escalate_after or configured.escalate_after,
        )


@batch_task("preflight-consent-deletion")
def preflight(params: ConsentParams) -> ConsentPlan:
    """Settings, schema, and every enabled processor's token (Secret blocks included), before
    anything is requested or called: a misconfiguration fails the run here."""
    settings = get_settings()
    assert_current(get_engine(settings.resolved_database_url))
    names = [processor.name for processor in settings.consent_deletion.enabled]
    for name in names:
        with _processor_run(settings, name, params):
            pass
    return ConsentPlan(processors=names, deletions_paused=deletions_paused(settings))


@batch_task("request-revocations")
def request_revocations(
    params: ConsentParams, processors: list[str], after: Cursor | None
) -> ConsentReport:
    """Record one request per processor for a page of revocations."""
    settings = get_settings()
    report = steps.request_revocations(
        _context(settings, params),
        processors,
        after=after,
        limit=settings.consent_deletion.batch_size,
    )
    return report_batch(report, {})


@batch_task("start-deletions")
def start_deletions(params: ConsentParams, processor: str, after: Cursor | None) -> ConsentReport:
    """Start one page of requested deletions at one processor."""
    settings = get_settings()
    with _processor_run(settings, processor, params) as run:
        report = steps.start_batch(
            _context(settings, params),
            run,
            breaker=Breaker(f"processor {processor}"),
            after=after,
            limit=settings.consent_deletion.batch_size,
        )
    return report_batch(report, BATCH_EVENTS)


@batch_task("poll-deletions")
def poll_deletions(params: ConsentParams, processor: str, after: Cursor | None) -> ConsentReport:
    """Check one page of pending operations at one processor."""
    settings = get_settings()
    with _processor_run(settings, processor, params) as run:
        report = steps.poll_batch(
            _context(settings, params), run, after=after, limit=settings.consent_deletion.batch_size
        )
    return report_batch(report, BATCH_EVENTS)


@batch_task("notify-operators")
def notify_operators(params: ConsentParams, processor: str) -> ConsentReport:
    """Escalate operations pending too long and report failed ones, once each; one event per
    escalated operation (operation id and pseudonym only) for automations to route."""
    settings = get_settings()
    ctx = _context(settings, params)
    with (
        _processor_run(settings, processor, params) as run,
        mail_sender(settings, dry_run=params.dry_run) as send,
    ):
        report = steps.notify(
            ctx, run, send=send, contacts=settings.consent_deletion.technical_contacts
        )
    for escalation in report.escalations:
        emit_event(
            event=ESCALATED_EVENT,
            resource={
                "prefect.resource.id": f"lifecycle.deletion-operation.{escalation.operation_id}",
                "prefect.resource.name": f"{escalation.processor} deletion",
                "lifecycle.processor": escalation.processor,
            },
            payload={"operation_id": escalation.operation_id, "subject": escalation.subject},
        )
    return report_batch(report, {})


@batch_task("alert-operators")
def alert_operators(
    params: ConsentParams, alerts: list[Alert], resolved: list[tuple[str, AlertKind]]
) -> int:
    """Mail each alert unless the same one was mailed lately; close the alerts this run proved
    over (and did not raise again). Returns how many mails went out."""
    settings = get_settings()
    ctx = _context(settings, params)
    group = settings.consent_deletion
    steps.resolve_alerts(ctx, set(resolved) - {(a.processor, a.kind) for a in alerts})
    if params.dry_run or not alerts:
        return 0
    mailed = 0
    with mail_sender(settings) as send:
        for alert in _distinct(alerts):
            mailed += steps.raise_alert(
                ctx,
                alert,
                send=send,
                contacts=group.technical_contacts,
                repeat_after=group.alert_repeat_after,
            )
    return mailed


def _distinct(alerts: list[Alert]) -> list[Alert]:
    """One alert per processor and kind (the last detail wins)."""
    return list({(alert.processor, alert.kind): alert for alert in alerts}.values())


@batch_task("count-backlog")
def count_backlog(params: ConsentParams, processors: list[str]) -> queries.Backlog:
    """Open deletions at the end of the run, and how many are past their legal deadline."""
    settings = get_settings()
    with get_engine(settings.resolved_database_url).connect() as conn:
        return queries.backlog(conn, processors=processors, as_of=params.as_of)

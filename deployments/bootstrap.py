"""Create what the deployments expect on the Prefect server, idempotently.

Run once per Prefect server, before ``prefect deploy --all``, and again after changing
settings (every step finds what exists by name and updates it)::

    python -m deployments.bootstrap

It creates:

- the ``lifecycle`` process work pool (with the process worker's job template);
- the global concurrency limit every run and worker shares to pace mail
  (``lifecycle.clients.mail.pacing``);
- with ``LIFECYCLE_ALERT_WEBHOOK_URL`` set: the notification block ``lifecycle-alerts`` (a
  custom webhook that posts ``{"subject", "text", "source"}`` JSON, which Slack incoming
  webhooks accept as is) and the automation ``lifecycle-run-failed``: any flow run tagged
  ``lifecycle`` that ends Failed or Crashed sends a notification through it; and one automation
  per event that needs a person (``EVENT_ALERTS``: the TTL purge falling behind, consent
  deletions escalated or given up by a vendor), each routed to the same block;
- for each enabled deletion processor, a tag concurrency limit ``processor:<name>`` of 1: one
  task at a time calls that vendor, across every run and worker, so its ``rate_per_second`` is
  the vendor-wide rate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import cast
from uuid import UUID

from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.workers.process import ProcessWorker

from lifecycle.settings import Settings, get_settings
from tasks._prefect import ensure_mail_limit, ensure_priority_lane, priority_lane_name

WORK_POOL = "lifecycle"
ALERT_BLOCK = "lifecycle-alerts"
RUN_FAILED = "lifecycle-run-failed"
#: Tasks calling one processor at once, across every run and worker.
PROCESSOR_TASKS = 1

logger = logging.getLogger("lifecycle.bootstrap")


@dataclass(frozen=True)
class EventAlert:
    """An automation that notifies the alert block each time ``event`` happens."""

    name: str
    event: str
    description: str
    body: str  # Jinja, with ``event`` in scope; names and pseudonyms only, no personal data


EVENT_ALERTS = (
    EventAlert(
        "lifecycle-ttl-backlog",
        "lifecycle.ttl.backlog",
        "The TTL purge is not keeping up with a target.",
        "{{ event.resource['prefect.resource.name'] }}: {{ event.payload.expired }} expired "
        "rows left, the oldest {{ event.payload.oldest_age_seconds }} s past its expiry "
        "(alert above {{ event.payload.alert_rows }} rows or "
        "{{ event.payload.alert_age_seconds }} s).",
    ),
    EventAlert(
        "lifecycle-consent-escalated",
        "lifecycle.consent.deletion.escalated",
        "A third-party deletion is still pending past escalate_after.",
        "{{ event.resource['prefect.resource.name'] }}: operation "
        "{{ event.payload.operation_id }} is still pending (the technical contacts were "
        "mailed the details).",
    ),
    EventAlert(
        "lifecycle-consent-failed",
        "lifecycle.consent.deletion.failed",
        "A vendor reported third-party deletions as failed.",
        "{{ event.payload.count }} third-party deletions failed in batch "
        "{{ event.resource['prefect.resource.name'] }}; they are not retried on their own.",
    ),
)


def bootstrap() -> None:
    settings = get_settings()
    with get_client(sync_client=True) as client:
        ensure_work_pool(client)
        ensure_mail_limit(client, settings.mail_limit_name)
        ensure_priority_lane(client, priority_lane_name(settings))
        logger.info("global concurrency limit %s is ready", settings.mail_limit_name)
        ensure_processor_limits(client, settings)
        ensure_alerts(client, settings)


def ensure_processor_limits(client: SyncPrefectClient, settings: Settings) -> None:
    """A tag concurrency limit ``processor:<name>`` for each enabled deletion processor."""
    for processor in settings.consent_deletion.enabled:
        tag = f"processor:{processor.name}"
        client.create_concurrency_limit(tag=tag, concurrency_limit=PROCESSOR_TASKS)
        logger.info("tag concurrency limit %s (%d) is ready", tag, PROCESSOR_TASKS)


def ensure_work_pool(client: SyncPrefectClient) -> None:
    """The process pool, with the job template a worker would give it (so deployments' job
    variables are validated from the start)."""
    template = ProcessWorker.get_default_base_job_template()
    pool = WorkPoolCreate(name=WORK_POOL, type="process", base_job_template=template)
    client.create_work_pool(pool, overwrite=True)
    logger.info("work pool %s is ready", WORK_POOL)


def ensure_alerts(client: SyncPrefectClient, settings: Settings) -> None:
    """The alert webhook block and the failed-run automation, if an alert URL is set."""
    if settings.alert_webhook_url is None:
        logger.warning(
            "LIFECYCLE_ALERT_WEBHOOK_URL is not set: failed runs alert nobody "
            "(set it and run the bootstrap again)"
        )
        return
    saved = CustomWebhookNotificationBlock(
        name="lifecycle",
        url=settings.alert_webhook_url.get_secret_value(),
        json_data={"subject": "{{subject}}", "text": "{{body}}", "source": "{{name}}"},
    ).save(ALERT_BLOCK, overwrite=True)
    block_id = cast(UUID, saved)  # save() is sync here; its type also covers async callers
    ensure_automation(
        client,
        AutomationCore(
            name=RUN_FAILED,
            description="A lifecycle flow run ended Failed or Crashed.",
            trigger=reactive(
                {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={  # the run's, its flow's or its deployment's tags
                    "prefect.resource.role": "tag",
                    "prefect.resource.id": "prefect.tag.lifecycle",
                },
            ),
            actions=[
                SendNotification(
                    block_document_id=block_id,
                    subject="[lifecycle] {{ flow.name }} run {{ flow_run.name }} "
                    "{{ flow_run.state.name }}",
                    body="{{ flow.name }} run {{ flow_run.name }} ended "
                    "{{ flow_run.state.name }}: {{ flow_run.state.message }}\n"
                    "{{ flow_run|ui_url }}\n"
                    "See deployments/RUNBOOK.md for what to check and how to rerun safely.",
                )
            ],
        ),
    )
    for alert in EVENT_ALERTS:
        ensure_automation(
            client,
            AutomationCore(
                name=alert.name,
                description=alert.description,
                trigger=reactive({alert.event}, match={"prefect.resource.id": "lifecycle.*"}),
                actions=[
                    SendNotification(
                        block_document_id=block_id,
                        subject=f"[lifecycle] {alert.description}",
                        body=f"{alert.body}\nSee deployments/RUNBOOK.md ({alert.name}).",
                    )
                ],
            ),
        )


def reactive(
    events: set[str], *, match: dict[str, str], match_related: dict[str, str] | None = None
) -> EventTrigger:
    """Fires on each matching event, at once."""
    return EventTrigger(
        expect=events,
        match=match,
        match_related=match_related or {},
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
    )


def ensure_automation(client: SyncPrefectClient, automation: AutomationCore) -> None:
    """Create the automation, or replace the one of the same name (its id is kept)."""
    existing = client.read_automations_by_name(automation.name)
    if not existing:
        client.create_automation(automation)
        logger.info("created automation %s", automation.name)
        return
    client.update_automation(existing[0].id, automation)
    logger.info("updated automation %s", automation.name)


if __name__ == "__main__":
    logger.addHandler(logging.StreamHandler())
    logger.setLevel(logging.INFO)
    bootstrap()

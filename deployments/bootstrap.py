"""Create what the deployments expect on the Prefect server, idempotently.

Run once per Prefect server, before ``prefect deploy --all``::

    python -m deployments.bootstrap

It creates the ``lifecycle`` process work pool, the global concurrency limit that every run
and worker shares to pace mail (see ``lifecycle.clients.mail.pacing``), and for each enabled
deletion processor a tag concurrency limit ``processor:<name>`` of 1: one task at a time calls
that vendor, across every run and worker, so its ``rate_per_second`` is the vendor-wide rate.
"""

from __future__ import annotations

import logging

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists

from lifecycle.settings import get_settings
from tasks._prefect import ensure_mail_limit

WORK_POOL = "lifecycle"
#: Tasks calling one processor at once, across every run and worker.
PROCESSOR_TASKS = 1

logger = logging.getLogger("lifecycle.bootstrap")


def bootstrap() -> None:
    settings = get_settings()
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"))
            logger.info("created work pool %s", WORK_POOL)
        except ObjectAlreadyExists:
            logger.info("work pool %s exists", WORK_POOL)
        ensure_mail_limit(client, settings.mail_limit_name)
        logger.info("global concurrency limit %s is ready", settings.mail_limit_name)
        for processor in settings.consent_deletion.enabled:
            tag = f"processor:{processor.name}"
            client.create_concurrency_limit(tag=tag, concurrency_limit=PROCESSOR_TASKS)
            logger.info("tag concurrency limit %s (%d) is ready", tag, PROCESSOR_TASKS)


if __name__ == "__main__":
    logger.addHandler(logging.StreamHandler())
    logger.setLevel(logging.INFO)
    bootstrap()

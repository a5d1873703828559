"""Create what the deployments expect on the Prefect server, idempotently.

Run once per Prefect server, before ``prefect deploy --all``::

    python -m deployments.bootstrap

It creates the ``lifecycle`` process work pool and the global concurrency limit that every run
and worker shares to pace mail (see ``lifecycle.clients.mail.pacing``).
"""

from __future__ import annotations

import logging

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists

from lifecycle.settings import get_settings
from tasks._prefect import ensure_mail_limit

WORK_POOL = "lifecycle"

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


if __name__ == "__main__":
    logger.addHandler(logging.StreamHandler())
    logger.setLevel(logging.INFO)
    bootstrap()

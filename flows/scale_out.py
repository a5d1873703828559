"""One big run spread over processes: the sharded flows on a Dask task runner.

By default a flow's batches run in threads of one process (its shards side by side). For a
large backlog, deploy one of these entrypoints instead (``flows/scale_out.py:
inactive_accounts_on_dask`` or ``flows/scale_out.py:ttl_purge_on_dask``) with ``shards`` set to
the number of processes: each shard's batches then run in a worker process of a local Dask
cluster started for the run. The leased claims (inactive accounts) and disjoint block ranges
(TTL purge) keep the shards, and any other run, from acting twice on one row. Needs
``pip install .[dask]`` and a real Prefect server (Dask's processes report to it).
"""

from __future__ import annotations

from typing import Any, cast

from prefect_dask import DaskTaskRunner

from flows.inactive_accounts import inactive_accounts
from flows.ttl_purge import ttl_purge

#: One single-threaded worker process per core of this machine kind.
DASK_WORKERS = 2


def dask_runner(workers: int = DASK_WORKERS) -> Any:
    """A local Dask cluster of ``workers`` single-threaded processes, started per run.

    (prefect-dask's runner is generic over its own future type, which mypy cannot match to a
    flow's task runner type: hence ``Any``.)
    """
    return cast(
        Any,
        DaskTaskRunner(
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": ":0",
            }
        ),
    )


inactive_accounts_on_dask = inactive_accounts.with_options(task_runner=dask_runner())
ttl_purge_on_dask = ttl_purge.with_options(task_runner=dask_runner())

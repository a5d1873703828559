"""One big run spread over processes: the inactive-accounts flow on a Dask task runner.

By default a flow's batches run in threads of one process (its shards side by side). For a
large backlog, deploy this entrypoint instead (``flows/scale_out.py:inactive_accounts_on_dask``)
with ``shards`` set to the number of processes: each shard's batches then run in a worker
process of a local Dask cluster started for the run. The leased claims keep the shards (and any
other run) from acting twice on one user. Needs ``pip install .[dask]`` and a real Prefect
server (Dask's processes report to it).
"""

from __future__ import annotations

from typing import Any, cast

from prefect_dask import DaskTaskRunner

from flows.inactive_accounts import inactive_accounts

#: One single-threaded worker process per core of this machine kind.
DASK_WORKERS = 2

dask_runner = DaskTaskRunner(
    cluster_kwargs={
        "n_workers": DASK_WORKERS,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": ":0",
    }
)

# prefect-dask's runner is generic over its own future type, which mypy cannot match here.
inactive_accounts_on_dask = inactive_accounts.with_options(task_runner=cast(Any, dask_runner))

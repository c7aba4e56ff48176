"""Tasks that tests hand to workers (local processes or a Dask cluster)."""

import os
import time


def wait_for_file(path: str) -> str:
    """``overlapped`` once ``path`` exists (made by the caller's ``meanwhile``); gives up after two minutes."""
    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return "the caller's work never ran"
        time.sleep(0.01)
    return "overlapped"


def fewest_alive_workers_seen(n_reads: int) -> int:
    """The fewest workers that ``n_reads`` reads of the alive list found, from a task on a Dask worker."""
    from distributed import get_client

    from flare_eval.harness.cluster import _alive_workers

    client = get_client()
    return min(len(_alive_workers(client)) for _ in range(n_reads))


def end_worker_if(end: bool, value):
    """``value``, or the end of the worker process running it (as a reader crashing on a file would end it)."""
    if end:
        os._exit(1)
    return value

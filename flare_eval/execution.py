"""Where tasks run: in this process, in a local process pool, or on a Dask cluster.

Dask (``pip install flare-eval[dask]``) is optional: it is imported only when a
scheduler is given. On a cluster, tasks are submitted a bounded number at a
time (so the client never holds every payload at once) and their results are
yielded as they arrive, so callers can write them incrementally.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import as_completed as local_as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

__all__ = ["run_tasks", "connect", "workers_see_files", "prepare_workers", "SHIP_MODES"]

#: How task inputs reach Dask workers: as file paths (shared file system) or as bytes.
SHIP_MODES = ("auto", "paths", "bytes")


def connect(scheduler: Any):
    """A ``distributed.Client`` for a scheduler address (or the client itself).

    Raises
    ------
    ValueError
        If dask.distributed is not installed or the scheduler does not answer.
    """
    try:
        from distributed import Client
    except ImportError as exc:
        raise ValueError("a scheduler needs dask.distributed: pip install 'flare-eval[dask]'") from exc
    if isinstance(scheduler, Client):
        return scheduler
    try:
        return Client(scheduler, timeout=30)
    except (OSError, TimeoutError) as exc:
        raise ValueError(f"cannot connect to the Dask scheduler at {scheduler!r}: {exc}") from exc


# glibc mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _keep_large_allocations() -> bool:
    """Let this process reuse freed memory for the next case's arrays (glibc only).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which
    also freezes glibc's mmap threshold at 128 KiB: every array of a case is
    then mapped and unmapped afresh, page fault by page fault, and scoring runs
    about twice as slow (measured). Raising both thresholds restores the speed
    of a plain process, at the cost of keeping up to a few hundred MiB mapped.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, 256 * 2**20) and libc.mallopt(_M_MMAP_THRESHOLD, 64 * 2**20))
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False


def prepare_workers(client) -> None:
    """Tune every worker of the cluster for scoring (see `_keep_large_allocations`)."""
    client.run(_keep_large_allocations)


def _files_exist(paths: Sequence[str]) -> bool:
    return all(os.path.isfile(p) for p in paths)


def workers_see_files(client, paths: Iterable[Path]) -> bool:
    """Whether every worker of the cluster can read all ``paths`` (a shared file system)."""
    checks = client.run(_files_exist, [str(Path(p).resolve()) for p in paths])
    return bool(checks) and all(checks.values())


def run_tasks(
    function: Callable[..., Any],
    argument_tuples: Sequence[tuple],
    *,
    workers: int = 1,
    client=None,
    in_flight: int | None = None,
    retries: int = 0,
    resources: dict[str, float] | None = None,
    prepare: Callable[[tuple], tuple] | None = None,
    on_failure: Callable[[tuple, str], Any] | None = None,
) -> Iterator[Any]:
    """Run ``function(*arguments)`` for each tuple and yield the results as they complete.

    Parameters
    ----------
    function : callable
        A module-level function (it is pickled).
    argument_tuples : sequence of tuple
    workers : int
        Local processes when ``client`` is None (1: run here, in order).
    client : distributed.Client, optional
        Run on this Dask cluster instead.
    in_flight : int, optional
        On a cluster, how many tasks may be submitted and unfinished at once
        (default: twice the cluster's threads).
    retries : int
        On a cluster, how often a task that raised is retried.
    resources : dict, optional
        On a cluster, resources each task holds (e.g. ``{"GPU": 1}``).
    prepare : callable, optional
        Turns an argument tuple into the one submitted, just before submission
        (e.g. reading files into bytes), so that only ``in_flight`` payloads are
        held at once.
    on_failure : callable, optional
        In local processes, the result of a task whose worker process died:
        ``on_failure(arguments, message)``; the other tasks go on. Without it,
        a dead worker raises ``BrokenProcessPool``.
    """
    prepare = prepare or (lambda arguments: arguments)
    if client is not None:
        yield from _run_on_cluster(function, argument_tuples, client, in_flight, retries, resources, prepare)
    elif workers <= 1:
        for arguments in argument_tuples:
            yield function(*prepare(arguments))
    else:
        yield from _run_in_pool(function, argument_tuples, workers, prepare, on_failure)


def _run_in_pool(function, argument_tuples, workers, prepare, on_failure) -> Iterator[Any]:
    """Local processes; a worker that dies (killed for memory, a crash in a library) breaks the pool.

    The tasks the broken pool left unfinished then run again one at a time, each in
    a fresh process, so that the one that kills its worker is found: its result is
    ``on_failure(arguments, message)``, and every other task still completes.
    """
    tasks = list(argument_tuples)
    finished: set[int] = set()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(function, *prepare(arguments)): i for i, arguments in enumerate(tasks)}
        try:
            for future in local_as_completed(futures):
                try:
                    result = future.result()
                except BrokenProcessPool:
                    break
                finished.add(futures[future])
                yield result
            else:
                return
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    unfinished = [arguments for i, arguments in enumerate(tasks) if i not in finished]
    if on_failure is None:
        raise BrokenProcessPool("a worker process died while running tasks (killed for memory?)")
    for arguments in unfinished:
        with ProcessPoolExecutor(max_workers=1) as alone:
            try:
                yield alone.submit(function, *prepare(arguments)).result()
            except BrokenProcessPool:
                yield on_failure(arguments, "its worker process died (killed for memory, or a crash in a library)")


def _run_on_cluster(function, argument_tuples, client, in_flight, retries, resources, prepare) -> Iterator[Any]:
    from distributed import as_completed

    if in_flight is None:
        threads = sum(client.nthreads().values()) or 1
        in_flight = 2 * threads
    pending = iter(argument_tuples)

    def submit_next():
        arguments = next(pending, None)
        if arguments is None:
            return None
        return client.submit(function, *prepare(arguments), pure=False, retries=retries, resources=resources)

    first = [f for f in (submit_next() for _ in range(max(1, in_flight))) if f is not None]
    if not first:
        return
    completed = as_completed(first)
    try:
        for future in completed:
            result = future.result()
            future.release()
            following = submit_next()
            if following is not None:
                completed.add(following)
            yield result
    except BaseException:
        for future in list(completed.futures):
            future.cancel()
        raise

"""Where tasks run: in bounded worker processes here, or on a Dask cluster.

Tasks that parse or score untrusted files run in disposable worker processes
with a wall-time limit and an address-space limit (`TaskLimits`): a task that
exceeds either, or whose process dies, becomes that task's failure
(``on_failure``) and the run goes on; its process is killed and replaced. A
worker never takes SIGINT itself: when the command is interrupted, the caller
kills every worker, including one stuck inside a library's C code.

Dask (``pip install flare-eval[dask]``) is optional: it is imported only when a
scheduler is given. On a cluster, tasks are submitted a bounded number at a
time (so the client never holds every payload at once) and their results are
yielded as they arrive, so callers can write them incrementally.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FlareEvalError

__all__ = ["run_tasks", "run_bounded", "TaskLimits", "TaskFailure", "TaskFailed", "connect", "workers_see_files",
           "prepare_workers", "SHIP_MODES"]

#: How task inputs reach Dask workers: as file paths (shared file system) or as bytes.
SHIP_MODES = ("auto", "paths", "bytes")


#: How long `connect` waits for a scheduler to answer (one that is still starting may take a while).
CONNECT_TIMEOUT_S = 30


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
        return Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise ValueError(f"cannot connect to the Dask scheduler at {scheduler!r}: {exc}") from exc


@dataclass(frozen=True)
class TaskLimits:
    """Bounds of one task on untrusted input (scoring a case, checking a file).

    Attributes
    ----------
    time_s : float
        Wall-clock seconds one task may take.
    memory_mib : float
        Address space in MiB that one task may add to its worker process
        (enforced with ``RLIMIT_AS``): a task that asks for more gets a
        ``MemoryError`` or dies, and fails alone.
    """

    time_s: float = 600.0
    memory_mib: float = 8192.0

    def __post_init__(self) -> None:
        for name in ("time_s", "memory_mib"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"task limit {name} must be a positive finite number, got {value!r}")


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
    limits: TaskLimits | None = None,
    meanwhile: Callable[[], Any] | None = None,
) -> Iterator[Any]:
    """Run ``function(*arguments)`` for each tuple and yield the results as they complete.

    Parameters
    ----------
    function : callable
        A module-level function (it is pickled).
    argument_tuples : sequence of tuple
    workers : int
        Bounded local worker processes when ``client`` is None.
    client : distributed.Client, optional
        Run on this Dask cluster instead. There the workers' nanny bounds
        memory (``memory_limit``) and restarts a worker that dies; a task's
        time is not bounded.
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
        The result of a task that exceeded a limit or whose process died:
        ``on_failure(arguments, failure)`` with a `TaskFailure`; the other
        tasks go on. On a cluster, a task on which the scheduler gave up
        because the workers running it died (``KilledWorker``) fails so.
        Without it, such a task raises `TaskFailed`. Exceptions a task raises
        itself are raised here.
    limits : TaskLimits, optional
        Time and memory of one local task (default `TaskLimits()`).
    meanwhile : callable, optional
        Called once here, with no arguments, as soon as the first tasks are
        handed out (not at all when there are none): work of the caller's that
        can overlap with theirs (``score`` loads its table code there, a third
        of a command's start-up).
    """
    prepare = prepare or (lambda arguments: arguments)
    limits = limits or TaskLimits()
    if client is not None:
        yield from _run_on_cluster(function, argument_tuples, client, in_flight, retries, resources, prepare,
                                   on_failure, meanwhile)
    else:
        yield from run_bounded(function, argument_tuples, workers=workers, limits=limits, prepare=prepare,
                               on_failure=on_failure, meanwhile=meanwhile)


@dataclass(frozen=True)
class TaskFailure:
    """Why a task has no result: ``kind`` is ``time`` or ``memory`` (a limit of `TaskLimits`) or ``died``."""

    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


class TaskFailed(FlareEvalError, RuntimeError):
    """A task exceeded its limits or its process died, and no ``on_failure`` was given."""


def _worker_main(connection, memory_bytes: int) -> None:
    """Loop of a bounded worker: run each ``(function, arguments)`` received, send back its outcome."""
    import resource

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interruption stops
    # The bound is on what a task adds to the worker as it started (a forked worker shares its caller's imports).
    limit = _address_space_bytes() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _keep_large_allocations()
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        function, arguments = message
        try:
            outcome = ("ok", function(*arguments))
        except MemoryError:
            outcome = ("memory", None)
        except Exception as exc:  # sent to the parent, which raises it there
            outcome = ("error", exc)
        try:
            connection.send(outcome)
        except Exception as exc:  # an unpicklable result or exception
            connection.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
        if outcome[0] == "memory":
            return  # memory may be fragmented or half-freed: a fresh worker takes the next task


#: How many tasks a busy worker may be sent ahead, and the largest message (a pickled task) sent so: together
#: they fit the socket's buffer, so sending never waits for the worker (nor delays noticing that it overran
#: its time). A scoring task's message is about 5 KiB.
_QUEUED_TASKS = 4
_QUEUED_MESSAGE_BYTES = 16 * 1024


@dataclass
class _Worker:
    process: Any
    connection: Any
    #: Indices of the tasks sent to it, in the order it runs them; the first is running, its deadline ``deadline``.
    tasks: deque = field(default_factory=deque)
    deadline: float = 0.0

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.connection.close()

    def retire(self) -> None:
        """Tell an idle worker to end, without waiting for it: the kernel frees its memory (10 ms for a scoring
        worker) while the caller goes on; multiprocessing reaps it. (A forked worker holds this end of the
        pipe too, so closing it alone would never reach it as an end-of-file.)"""
        try:
            self.connection.send(None)
        except OSError:  # it has died since its last result: nothing to tell
            pass
        self.connection.close()


def _context():
    """How workers start: forked from a caller that runs one thread, else from a fork server.

    Forking copies what the caller has imported (no start-up cost) and needs no
    ``if __name__ == "__main__"`` guard in a user's script; but a thread of the
    caller's could hold a lock at the moment of the fork, so a caller with
    threads (a notebook kernel, a Dask worker) gets workers from a fork server,
    which imports the scoring modules once.
    """
    import multiprocessing
    import threading

    # tqdm's monitor thread only wakes to check progress bars; it holds no lock a worker takes.
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and t.name != "tqdm_monitor"]
    if not others and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["flare_eval.scoring", "flare_eval.io"])
    return context


def _address_space_bytes() -> int:
    """This process's current address space (VmSize), 0 where /proc does not tell."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _start_worker(context, limits: TaskLimits) -> _Worker:
    parent, child = context.Pipe()
    process = context.Process(target=_worker_main, args=(child, int(limits.memory_mib * 2**20)), daemon=True)
    process.start()
    child.close()
    return _Worker(process, parent)


def run_bounded(
    function: Callable[..., Any],
    argument_tuples: Iterable[tuple],
    *,
    workers: int = 1,
    limits: TaskLimits | None = None,
    prepare: Callable[[tuple], tuple] | None = None,
    on_failure: Callable[[tuple, str], Any] | None = None,
    meanwhile: Callable[[], Any] | None = None,
) -> Iterator[Any]:
    """Run each task in a bounded, disposable worker process; yield results as they complete.

    See `run_tasks` for the parameters. A worker that exceeds ``limits`` or
    dies is killed and replaced; its task's result is
    ``on_failure(arguments, failure)``, the `TaskFailure` naming the bound.
    While more tasks wait than workers are busy, each busy worker is also sent
    a few tasks ahead, started as soon as it has sent a result; a worker that
    fails hands the tasks it had not started to another worker.
    """
    from functools import lru_cache
    from multiprocessing.connection import wait
    from multiprocessing.reduction import ForkingPickler

    limits = limits or TaskLimits()
    prepare = prepare or (lambda arguments: arguments)
    tasks = list(argument_tuples)
    pending = deque(range(len(tasks)))
    context = _context()
    idle: list[_Worker] = []
    busy: list[_Worker] = []

    def send(worker: _Worker, message: bytes) -> None:
        if not worker.tasks:
            worker.deadline = time.monotonic() + limits.time_s
        worker.tasks.append(pending.popleft())
        try:
            worker.connection.send_bytes(message)
        except OSError:  # it died after its last result: the loop finds it dead and hands its tasks on
            pass

    @lru_cache(maxsize=1)  # the next task's message, kept while it waits for a free worker
    def message_of(task: int) -> bytes:
        return bytes(ForkingPickler.dumps((function, prepare(tasks[task]))))

    def queue_ahead(worker: _Worker) -> None:
        """Send a busy worker its next tasks now, so that it starts each the moment it has sent a result, not
        once this process has come round to read that result (it may be importing pandas, or writing)."""
        # The last tasks go to whichever worker is free first.
        while len(worker.tasks) <= _QUEUED_TASKS and len(pending) >= len(busy):
            message = message_of(pending[0])
            if len(message) > _QUEUED_MESSAGE_BYTES:
                return
            send(worker, message)

    def fail(worker: _Worker, kind: str, message: str):
        arguments = tasks[worker.tasks.popleft()]
        pending.extendleft(reversed(worker.tasks))  # sent but not started: the next worker takes them
        worker.tasks.clear()
        worker.stop()
        busy.remove(worker)
        if on_failure is None:
            raise TaskFailed(message)
        return on_failure(arguments, TaskFailure(kind, message))

    try:
        while pending or busy:
            while pending and len(busy) < max(1, workers):
                worker = idle.pop() if idle else _start_worker(context, limits)
                send(worker, message_of(pending[0]))
                busy.append(worker)
            for worker in busy:
                queue_ahead(worker)
            if meanwhile is not None:
                meanwhile()
                meanwhile = None
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            wait([w.connection for w in busy] + [w.process.sentinel for w in busy], timeout=timeout)
            for worker in list(busy):
                if worker.connection.poll():
                    try:
                        kind, value = worker.connection.recv()
                    except (EOFError, OSError):
                        yield fail(worker, "died", _death(worker))
                        continue
                    if kind == "ok":
                        worker.tasks.popleft()
                        if worker.tasks:  # it has started the next one already
                            worker.deadline = time.monotonic() + limits.time_s
                        else:
                            busy.remove(worker)
                            if pending:
                                idle.append(worker)
                            else:
                                worker.retire()
                        yield value
                    elif kind == "memory":
                        yield fail(worker, "memory",
                                   f"it needed more than the memory limit of {limits.memory_mib:g} MiB")
                    else:
                        worker.stop()  # a task it was sent may be running: this worker is not reused
                        busy.remove(worker)
                        raise value
                elif not worker.process.is_alive():
                    yield fail(worker, "died", _death(worker))
                elif time.monotonic() >= worker.deadline:
                    yield fail(worker, "time",
                               f"it took longer than the time limit of {limits.time_s:g} s and was stopped")
    finally:
        for worker in idle + busy:
            worker.stop()


def _death(worker: _Worker) -> str:
    worker.process.join(timeout=5)
    code = worker.process.exitcode
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return (f"its worker process was killed by {name} (out of memory, or a crash in a library)"
                if name in ("SIGKILL", "SIGSEGV", "SIGABRT", "SIGBUS") else f"its worker process ended by {name}")
    return f"its worker process died (exit code {code})"


def _run_on_cluster(function, argument_tuples, client, in_flight, retries, resources, prepare, on_failure,
                    meanwhile) -> Iterator[Any]:
    from distributed import KilledWorker, as_completed

    if in_flight is None:
        threads = sum(client.nthreads().values()) or 1
        in_flight = 2 * threads
    pending = iter(argument_tuples)
    arguments_of: dict[str, tuple] = {}

    def submit_next():
        arguments = next(pending, None)
        if arguments is None:
            return None
        future = client.submit(function, *prepare(arguments), pure=False, retries=retries, resources=resources)
        arguments_of[future.key] = arguments
        return future

    first = [f for f in (submit_next() for _ in range(max(1, in_flight))) if f is not None]
    if not first:
        return
    if meanwhile is not None:
        meanwhile()
    completed = as_completed(first)
    try:
        for future in completed:
            arguments = arguments_of.pop(future.key)
            try:
                result = future.result()
            except KilledWorker as exc:
                # The scheduler gave up on a task after it ended as many workers as it allows (a file that
                # crashes the reader, or past the nanny's memory bound): that task's failure, not the run's.
                message = f"its Dask workers died running it ({exc})"
                if on_failure is None:
                    raise TaskFailed(message) from exc
                result = on_failure(arguments, TaskFailure("died", message))
            future.release()
            following = submit_next()
            if following is not None:
                completed.add(following)
            yield result
    except BaseException:
        for future in list(completed.futures):
            future.cancel()
        raise

"""Bounded task execution: a task that hangs, eats memory or kills its worker fails alone; the batch goes on."""

import os
import time

import numpy as np
import pytest
from tasks import wait_for_file

from flare_eval.execution import TaskFailed, TaskLimits, run_bounded, run_tasks


def square_or_die(x, flag=None):
    if x == 3:
        if flag is not None:  # says that the worker is about to die
            open(flag, "w").close()
        os._exit(9)  # as the kernel's OOM killer would end it: no exception, no cleanup
    return x * x


def hang_or_square(x):
    if x == 1:
        while True:  # no sleep: a loop inside a library that never returns would look the same
            pass
    return x * x


def allocate_or_square(x):
    if x == 2:
        return int(np.ones(2 * 2**30, np.uint8).sum())  # 2 GiB, beyond the limit below
    return x * x


def raise_value_error(x):
    raise ValueError(f"bad input {x}")


def own_pid(_):
    return os.getpid()


def touch(path):
    open(path, "w").close()
    return path


def noted(arguments, failure):
    return ("failed", arguments[0], failure.kind, str(failure))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_dying_worker_fails_only_its_own_task(workers):
    # Tasks sent ahead to the worker that dies (4, and with one worker 5 too) are run by its successor.
    results = list(run_tasks(square_or_die, [(i,) for i in range(6)], workers=workers, on_failure=noted))
    squares = sorted(r for r in results if isinstance(r, int))
    failed = [r for r in results if isinstance(r, tuple)]
    assert squares == [0, 1, 4, 16, 25]
    assert len(failed) == 1 and failed[0][:3] == ("failed", 3, "died") and "worker process died" in failed[0][3]


def test_without_a_failure_handler_a_dying_worker_raises():
    with pytest.raises(TaskFailed, match="worker process died"):
        list(run_tasks(square_or_die, [(i,) for i in range(5)], workers=2))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_task_past_its_time_limit_is_stopped_and_named(workers):
    # The limit is far above what the other tasks need, whatever the machine's load.
    results = list(run_bounded(hang_or_square, [(i,) for i in range(4)], workers=workers,
                               limits=TaskLimits(time_s=5), on_failure=noted))
    assert sorted(r for r in results if isinstance(r, int)) == [0, 4, 9]
    assert [r[:3] for r in results if isinstance(r, tuple)] == [("failed", 1, "time")]
    assert "time limit of 5 s" in next(r for r in results if isinstance(r, tuple))[3]


def test_a_task_past_its_memory_limit_fails_alone():
    results = list(run_bounded(allocate_or_square, [(i,) for i in range(4)], workers=1,
                               limits=TaskLimits(memory_mib=1024), on_failure=noted))
    assert sorted(r for r in results if isinstance(r, int)) == [0, 1, 9]
    failed = [r for r in results if isinstance(r, tuple)]
    assert [r[:3] for r in failed] == [("failed", 2, "memory")] and "1024 MiB" in failed[0][3]


def test_exceptions_of_a_task_are_raised_in_the_caller():
    with pytest.raises(ValueError, match="bad input 7"):
        list(run_bounded(raise_value_error, [(7,)]))


def test_workers_are_reused_and_all_stopped_when_the_caller_stops():
    pids = list(run_bounded(own_pid, [(i,) for i in range(6)], workers=1))
    assert len(set(pids)) == 1 and pids[0] != os.getpid()
    # A caller that stops early (Ctrl-C, an error) closes the generator: no worker outlives it.
    batch = run_bounded(hang_or_square, [(0,), (1,), (2,)], workers=2, limits=TaskLimits(time_s=600))
    assert next(batch) == 0
    children = _children()
    assert children
    batch.close()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)


def _children():
    import multiprocessing

    return [p.pid for p in multiprocessing.active_children()] or _forkserver_grandchildren()


def _forkserver_grandchildren():
    # forkserver workers are children of the fork server, not of this process
    import psutil

    return [child.pid for child in psutil.Process().children(recursive=True)
            if "forkserver" not in " ".join(child.cmdline())]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return False


def test_limits_must_be_positive_and_finite():
    with pytest.raises(ValueError, match="time_s"):
        TaskLimits(time_s=float("inf"))
    with pytest.raises(ValueError, match="memory_mib"):
        TaskLimits(memory_mib=0)




@pytest.mark.parametrize("workers", [1, 2])
def test_the_callers_meanwhile_work_runs_once_while_the_first_tasks_run(tmp_path, workers):
    """Each task waits for a file that only the caller's ``meanwhile`` creates: run after a result, it never would."""
    flag = tmp_path / "flag"
    calls = []

    def meanwhile():
        calls.append(1)
        flag.touch()

    results = list(run_bounded(wait_for_file, [(str(flag),)] * 3, workers=workers, meanwhile=meanwhile))
    assert results == ["overlapped"] * 3 and calls == [1]
    assert list(run_bounded(wait_for_file, [], meanwhile=meanwhile)) == [] and calls == [1]


def test_a_busy_worker_is_sent_its_next_tasks_ahead(tmp_path):
    """While the caller is busy (``meanwhile``: score imports pandas there) its worker goes on with the next tasks."""
    paths = [str(tmp_path / f"task_{i}") for i in range(4)]
    seen = []

    def meanwhile():  # waits for every task's file: a worker sent one task at a time would have made only one
        deadline = time.monotonic() + 60
        while not all(os.path.exists(p) for p in paths) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(sum(os.path.exists(p) for p in paths))

    assert list(run_bounded(touch, [(p,) for p in paths], workers=1, meanwhile=meanwhile)) == paths
    assert seen == [4]


def test_tasks_sent_to_a_worker_that_has_just_died_go_to_its_successor(tmp_path):
    """Tasks sent ahead to a worker that has just died (its pipe is broken) go to its successor; the batch goes on."""
    flag = str(tmp_path / "dying")

    def meanwhile():  # returns once the worker has died on task 3, with the results before it still unread
        deadline = time.monotonic() + 60
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(2)

    results = list(run_bounded(square_or_die, [(i, flag) for i in range(8)], workers=1, on_failure=noted,
                               meanwhile=meanwhile))
    assert sorted(r for r in results if isinstance(r, int)) == [0, 1, 4, 16, 25, 36, 49]
    assert [r[:3] for r in results if isinstance(r, tuple)] == [("failed", 3, "died")]

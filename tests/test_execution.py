"""Local task execution: a worker process that dies fails its own task, never the batch."""

import os
from concurrent.futures.process import BrokenProcessPool

import pytest

from flare_eval.execution import run_tasks


def square_or_die(x):
    if x == 3:
        os._exit(9)  # as the kernel's OOM killer would end it: no exception, no cleanup
    return x * x


def test_a_dying_worker_fails_only_its_own_task():
    results = list(run_tasks(square_or_die, [(i,) for i in range(6)], workers=2,
                             on_failure=lambda arguments, reason: ("failed", arguments[0], reason)))
    squares = sorted(r for r in results if isinstance(r, int))
    failed = [r for r in results if isinstance(r, tuple)]
    assert squares == [0, 1, 4, 16, 25]
    assert len(failed) == 1 and failed[0][:2] == ("failed", 3) and "worker process died" in failed[0][2]


def test_without_a_failure_handler_a_dying_worker_raises():
    with pytest.raises(BrokenProcessPool):
        list(run_tasks(square_or_die, [(i,) for i in range(5)], workers=2))

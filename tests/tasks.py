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

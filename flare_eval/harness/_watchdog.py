"""Remove one container at its deadline: ``python _watchdog.py NAME DEADLINE_S``.

Started by the harness for every container, in a session of its own, and
killed by the harness when the case ends. If the harness dies first (kill -9,
a lost terminal), this process still removes the container, so no stuck
submission runs on unattended. It imports the Docker SDK only when the
deadline passes.
"""

import os
import sys
import time


def main(name: str, deadline_s: float) -> None:
    time.sleep(deadline_s)
    here = os.path.dirname(os.path.abspath(__file__))
    inherited = os.environ.get("FLARE_EVAL_WATCHDOG_PATH", "").split(os.pathsep)
    sys.path[:0] = [p for p in inherited if p and os.path.abspath(p) != here]
    import docker

    try:
        docker.from_env(timeout=60).containers.get(name).remove(force=True, v=True)
    except docker.errors.DockerException:
        pass  # already removed, or no engine: nothing left to stop


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))

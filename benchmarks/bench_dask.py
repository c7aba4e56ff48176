"""Scoring throughput: 1 and 2 local worker processes against Dask with 2 workers, same cases, one run.

Builds ``--cases`` cases of 512x512x100 voxels (as ``bench_scoring.py``), then
scores them with ``score_folder(workers=1)``, ``score_folder(workers=2)`` and
``score_folder(scheduler=...)`` on a scheduler and two single-threaded worker
processes started here (shipping paths; ``--ship bytes`` to ship the files),
checks that all three give identical tables and prints cases per second.
The Dask workers import the scoring code before the clock starts (a running
cluster has); the local pool's process start-up is inside its time.

Usage: ``python benchmarks/bench_dask.py [--cases N] [--ship paths|bytes]``.
"""

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_scoring import build_set, example_volumes  # noqa: E402

import flare_eval as fe  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def local_cluster(n_workers: int):
    """A Dask scheduler and ``n_workers`` single-threaded worker processes on this machine; yields a Client."""
    from distributed import Client

    dask = str(Path(sys.executable).parent / "dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                   "--no-dashboard"], stderr=subprocess.DEVNULL)]
    processes += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard"],
                                   stderr=subprocess.DEVNULL) for _ in range(n_workers)]
    try:
        client = Client(address, timeout=60)
        client.wait_for_workers(n_workers, timeout=60)
        yield client
        client.close()
    finally:
        for process in processes:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--ship", choices=("paths", "bytes"), default="paths")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, pred_dir = build_set("hard", Path(tmp), args.cases, *example_volumes())
        timings, tables = {}, {}
        for workers in (1, 2):
            start = time.perf_counter()
            tables[f"local {workers}"] = fe.score_folder(pred_dir, gt_dir, workers=workers, progress=False)
            timings[f"local, {workers} worker process(es)"] = time.perf_counter() - start
        with local_cluster(2) as client:
            # Workers import the scoring code once, as a long-running cluster would have.
            client.run(__import__, "flare_eval.scoring")
            start = time.perf_counter()
            tables["dask"] = fe.score_folder(pred_dir, gt_dir, scheduler=client, ship=args.ship, progress=False)
            timings[f"Dask, 2 workers ({args.ship})"] = time.perf_counter() - start
    reference = tables["local 1"]
    for name, table in tables.items():
        pd.testing.assert_frame_equal(table, reference, obj=name)
    print(f"{args.cases} cases of 512x512x100 voxels, 13 organs; identical tables from all three")
    for name, seconds in timings.items():
        print(f"{name:34s} {args.cases / seconds:6.2f} cases/s ({seconds:.1f} s)")


if __name__ == "__main__":
    main()

"""Scoring at scale: 2,000 cases through the local pool and through Dask, throughput and peak memory per worker.

Builds ``--distinct`` realistic synthetic abdomens with hostile predictions
(``bench_realistic.py``'s cases, on a ``--grid`` of 256x256x80 at 1.5x1.5x5 mm
by default) and hard-links them under ``--cases`` case names, so that 2,000
cases cost the disk of 20 while every case is read, checked and scored as its
own file (the readers refuse symbolic links, not hard links). Then, in one run:

* ``flare-eval score --workers 2`` (the local pool of bounded worker processes),
  the whole command, timed from outside;
* ``flare-eval score --scheduler ...`` on a Dask scheduler with two
  single-threaded worker processes started here (paths shipped).

For each it prints cases per second, the peak resident memory of a worker (the
local pool's largest worker process, sampled every 0.2 s; each Dask worker's own
peak from ``getrusage``) and of the command's own process, checks that both
give the same ``scores.csv`` and that every copy of a case scored as its
original.

Usage: ``python benchmarks/bench_scale.py [--cases 2000] [--distinct 20] [--grid 256x256x80]``.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_dask import local_cluster  # noqa: E402
from bench_realistic import GRIDS, build  # noqa: E402

FLARE_EVAL = str(Path(sys.executable).parent / "flare-eval")


def many_cases(folder: Path, shape, n_cases: int, n_distinct: int) -> tuple[Path, Path]:
    """``n_cases`` case files, hard links to ``n_distinct`` built ones."""
    gt_built, pred_built = build(folder / "built", shape, GRIDS[shape], n_distinct)
    gt_dir, pred_dir = folder / "gt", folder / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for i in range(n_cases):
        source = f"case_{i % n_distinct:04d}.nii.gz"
        os.link(gt_built / source, gt_dir / f"case_{i:05d}.nii.gz")
        os.link(pred_built / source, pred_dir / f"case_{i:05d}.nii.gz")
    return gt_dir, pred_dir


def timed(command: list[str]) -> tuple[float, float, float]:
    """Wall seconds of a command, the peak resident MiB of the command's own process and of its largest worker.

    The process tree is sampled every 0.2 s (psutil): a worker process that lives shorter than that may be missed.
    """
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    own, workers = 0, 0
    watched = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            own = max(own, watched.memory_info().rss)
            for child in watched.children(recursive=True):
                workers = max(workers, child.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{command[:2]} exited {process.returncode}")
    return seconds, own / 2**20, workers / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--distinct", type=int, default=20)
    parser.add_argument("--grid", default="256x256x80")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.grid.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gt_dir, pred_dir = many_cases(tmp, shape, args.cases, args.distinct)
        rows = []
        seconds, own_mib, worker_mib = timed([FLARE_EVAL, "score", str(pred_dir), str(gt_dir), "--out",
                                              str(tmp / "local"), "--workers", "2", "--no-progress"])
        rows.append(("local pool, 2 worker processes", seconds, f"{worker_mib:.0f}", f"{own_mib:.0f}"))

        with local_cluster(2) as client:
            seconds, own_mib, _ = timed([FLARE_EVAL, "score", str(pred_dir), str(gt_dir), "--out", str(tmp / "dask"),
                                         "--scheduler", client.scheduler_info()["address"], "--ship", "paths",
                                         "--no-progress"])
            peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            rows.append(("Dask, 2 single-threaded workers", seconds, "/".join(f"{v:.0f}" for v in peaks.values()),
                         f"{own_mib:.0f}"))

        local = pd.read_csv(tmp / "local" / "scores.csv")
        remote = pd.read_csv(tmp / "dask" / "scores.csv")
        pd.testing.assert_frame_equal(local, remote)
        local["original"] = local["case"].str[-5:].astype(int) % args.distinct
        per_original = local.groupby(["original", "label"])[["DSC", "NSD"]].nunique()
        assert (per_original == 1).all().all(), "a copy of a case scored differently from its original"
    print(f"{args.cases} cases ({args.distinct} distinct, hard-linked) of {args.grid} voxels, 13 organs; "
          "identical scores.csv from both")
    print(f"{'':34s} {'cases/s':>8s} {'seconds':>8s} {'worker peak MiB':>16s} {'command peak MiB':>17s}")
    for name, seconds, worker, own in rows:
        print(f"{name:34s} {args.cases / seconds:8.2f} {seconds:8.1f} {worker:>16s} {own:>17s}")


if __name__ == "__main__":
    main()

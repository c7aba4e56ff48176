"""The whole `rank` step at growing size: time and peak memory, the chunked ranking code against itself unchunked.

For each size (teams x cases, 5 metrics, 1000 bootstrap samples, every ordered pair tested for every metric),
``flare_eval.rank_results`` runs in a fresh process, once with the default chunk bound and once with no bound
(``CHUNK_ELEMENTS`` huge, every array whole, as before the chunking), and the peak resident memory
(``VmHWM``) and the wall time of each are printed with their ratio; the tables must be identical. Sizes
where the unbounded run would not fit in memory are run bounded only. Usage:
``python benchmarks/bench_rank_scale.py [--sizes 48x200,96x400,200x1000] [--samples 1000]``.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = """
import sys, time
sys.path.insert(0, {bench!r})
from bench_ranking import synthetic_results
import flare_eval.ranking.arrays as ranking
from flare_eval import rank_results
if {unbounded}:
    ranking.CHUNK_ELEMENTS = 2**62
folder = {folder!r}
synthetic_results({teams}, {cases}).to_csv(folder + "/results.csv", index=False)
start = time.perf_counter()
rank_results(folder + "/results.csv", folder + "/ranking", n_samples={samples}, seed=2022)
elapsed = time.perf_counter() - start
peak = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
print(elapsed, peak)
"""


def run(teams: int, cases: int, samples: int, unbounded: bool, folder: str) -> tuple[float, float]:
    code = SCRIPT.format(bench=str(Path(__file__).parent), unbounded=unbounded, folder=folder, teams=teams,
                         cases=cases, samples=samples)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[-2]), int(out[-1]) / 1024


def same_tables(a: Path, b: Path) -> bool:
    names = ["ranking.csv", "bootstrap.csv", "rank_distribution.csv", "significance.csv", "ranking_methods.csv"]
    return all((a / "ranking" / n).read_bytes() == (b / "ranking" / n).read_bytes() for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="48x200,96x400,200x1000")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--unbounded-up-to", type=int, default=96 * 400,
                        help="run the unbounded version only up to this many team-cases")
    args = parser.parse_args()
    print(f"{'teams x cases':>14} {'bounded s':>10} {'peak MiB':>9} {'unbounded s':>12} {'peak MiB':>9} {'memory':>8}")
    for size in args.sizes.split(","):
        teams, cases = (int(n) for n in size.split("x"))
        with tempfile.TemporaryDirectory() as bounded, tempfile.TemporaryDirectory() as unbounded:
            time_s, peak = run(teams, cases, args.samples, False, bounded)
            line = f"{size:>14} {time_s:>10.1f} {peak:>9.0f}"
            if teams * cases <= args.unbounded_up_to:
                time_u, peak_u = run(teams, cases, args.samples, True, unbounded)
                if not same_tables(Path(bounded), Path(unbounded)):
                    raise SystemExit(f"{size}: bounded and unbounded tables differ")
                line += f" {time_u:>12.1f} {peak_u:>9.0f} {peak_u / peak:>7.1f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()

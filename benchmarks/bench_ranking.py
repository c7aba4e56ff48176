"""Bootstrap speed at the paper's scale: 48 teams x 200 cases x 5 metrics, 1000 samples.

Side by side in one run:

* ours: ``flare_eval.ranking.bootstrap_stability`` (all samples at once);
* a straightforward reference in the style of challengeR's loop: for each
  sample, build the resampled table (each draw its own pseudo-case), rank every
  pseudo-case and metric with ``scipy.stats.rankdata(method="min")``, aggregate
  with the weights, rank the scores and compute ``scipy.stats.kendalltau``.

The reference runs on the first ``--reference-samples`` samples of the same
draws; both must give identical rankings and tau. Prints per-sample times and
the ratio. Usage: ``python benchmarks/bench_ranking.py``.
"""

import argparse
import time

import numpy as np
import pandas as pd
from scipy import stats

from flare_eval import load_protocol
from flare_eval.ranking import bootstrap_stability, prepare_results


def synthetic_results(n_teams: int, n_cases: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_teams):
        quality, speed = 0.92 - 0.004 * t, rng.uniform(10, 90)
        for c in range(n_cases):
            dsc = np.clip(quality + rng.normal(0, 0.04), 0, 1)
            time_s = speed * rng.lognormal(0, 0.15)
            nsd = max(dsc - 0.02, 0.0)
            rows.append((f"team{t:02d}", f"case{c:03d}", round(dsc, 4), round(nsd, 4), round(time_s, 2),
                         round(rng.uniform(0, 5000) * time_s, 1), round(rng.uniform(20, 90) * time_s, 1)))
    return pd.DataFrame(rows, columns=["team", "case", "DSC", "NSD", "Time", "AUC_GPU", "AUC_CPU"])


def reference_sample(matrix, draws, full_rank):
    metrics = matrix.metrics
    weights = np.array([m.weight for m in metrics])
    total = np.zeros(len(matrix.teams))
    for case in draws:
        for m, metric in enumerate(metrics):
            values = matrix.values[m, case]
            total += weights[m] * stats.rankdata(-values if metric.higher_is_better else values, method="min")
    ranks = stats.rankdata(total, method="min")
    return ranks, stats.kendalltau(full_rank, ranks).statistic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teams", type=int, default=48)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--reference-samples", type=int, default=20)
    args = parser.parse_args()
    matrix = prepare_results(synthetic_results(args.teams, args.cases), load_protocol("flare22"))

    start = time.perf_counter()
    ours = bootstrap_stability(matrix, n_samples=args.samples, seed=2022)
    ours_s = time.perf_counter() - start

    full = bootstrap_stability(matrix, draws=np.arange(args.cases)[None]).ranks[0]
    start = time.perf_counter()
    for s in range(args.reference_samples):
        ranks, tau = reference_sample(matrix, ours.draws[s], full)
        if not (np.array_equal(ranks, ours.ranks[s]) and np.isclose(tau, ours.samples.kendall_tau[s], atol=1e-12)):
            raise SystemExit(f"sample {s}: reference and flare-eval disagree")
    reference_per_sample_s = (time.perf_counter() - start) / args.reference_samples

    print(f"{args.teams} teams x {args.cases} cases x {len(matrix.metrics)} metrics")
    print(f"flare-eval: {args.samples} samples (overall and per-metric tau) in {ours_s:.2f} s "
          f"= {1000 * ours_s / args.samples:.2f} ms per sample")
    print(f"reference loop: {1000 * reference_per_sample_s:.1f} ms per sample (overall tau only, "
          f"{args.reference_samples} samples, identical ranks and tau)")
    print(f"speed-up per sample: {reference_per_sample_s * args.samples / ours_s:.0f}x; "
          f"reference for {args.samples} samples would take {reference_per_sample_s * args.samples:.0f} s")


if __name__ == "__main__":
    main()

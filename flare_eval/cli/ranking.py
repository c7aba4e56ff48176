"""The ``rank`` command: the ranking, its stability and significance, from results.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..defaults import DEFAULT_SEED
from ._common import (
    EXIT_OK,
    _add_protocol_argument,
    _non_negative_int,
    _note_replacing,
    _output_folder,
    _positive_int,
    _resolved_protocol,
)


def _add_rank_parser(commands) -> None:
    """The ``rank`` subcommand."""
    ranking = commands.add_parser(
        "rank",
        help="the protocol's ranking (FLARE: rank-then-aggregate), bootstrap stability, Wilcoxon tests",
        description="Rank the teams of RESULTS (columns team, case and the protocol's metrics: "
        "DSC, NSD, Time, AUC_GPU, AUC_CPU for FLARE22) by the protocol's scheme. Writes OUT/ranking.csv, "
        "bootstrap.csv, rank_distribution.csv, bootstrap_ranks.csv, significance.csv, best_vs_rest.csv, "
        "ranking_methods.csv, ranking_methods_tau.csv and settings.json, and prints the ranking, the stability "
        "summary and the agreement with challengeR's other ranking methods. Missing cases or values get the "
        "protocol's worst value, with a warning; values outside a metric's range are an error.",
    )
    ranking.add_argument("results", type=Path, help="results.csv: one row per team and case")
    ranking.add_argument("--out", type=_output_folder, required=True, help="output folder")
    _add_protocol_argument(ranking)
    ranking.add_argument("--samples", type=_positive_int, default=1000, help="bootstrap samples (default: 1000)")
    ranking.add_argument("--seed", type=_non_negative_int, default=DEFAULT_SEED,
                         help=f"random seed of the bootstrap (default: {DEFAULT_SEED}, recorded in settings.json)")
    ranking.add_argument("--bootstrap-copies", choices=("separate", "joint"), default="separate",
                         help="how a case drawn k times by the bootstrap is ranked: separate (each draw its own "
                         "pseudo-case; default) or joint (the k copies ranked together, ties at the minimum, as "
                         "challengeR's bootstrap does)")
    ranking.add_argument("--adjust", choices=("holm", "none"), default="holm",
                         help="multiple-testing adjustment over the pairs of one metric (default: holm)")
    ranking.add_argument("--alpha", type=float, default=0.05, help="significance level (default: 0.05)")
    ranking.set_defaults(handler=_rank)


def _rank(args: argparse.Namespace) -> int:
    from ..pipeline import rank_results

    _note_replacing(args.out, "ranking.csv")
    if not 0 < args.alpha < 1:
        raise ValueError(f"--alpha must be between 0 and 1, got {args.alpha}")
    _resolved_protocol(args, args.results.parent if args.results.suffix else args.results)
    outputs = rank_results(args.results, args.out, args.protocol, n_samples=args.samples, seed=args.seed,
                           adjust=args.adjust, alpha=args.alpha, bootstrap_copies=args.bootstrap_copies)
    print(outputs.ranking.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nKendall's tau over {outputs.bootstrap.n_samples} bootstrap samples (seed {outputs.bootstrap.seed}):")
    print(outputs.bootstrap.summary().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    counts = outputs.significance.groupby("metric", sort=False)["significant"].agg(["sum", "count"])
    print(f"\nsignificantly better ordered pairs (one-sided Wilcoxon, {args.adjust}, alpha {args.alpha}):")
    for metric, row in counts.iterrows():
        print(f"  {metric}: {int(row['sum'])} of {int(row['count'])}")
    best = outputs.best_versus_rest
    if len(best):
        print(f"best {best.metric.iloc[0]} ({best.team_a.iloc[0]}) significantly better than "
              f"{int(best.significant.sum())} of {len(best)} other teams")
    print("\nthe ranking under other methods (Kendall's tau to the protocol's official ranking):")
    print(outputs.methods_agreement.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {outputs.folder}/ranking.csv, bootstrap.csv, rank_distribution.csv, bootstrap_ranks.csv, "
          "significance.csv, best_vs_rest.csv, ranking_methods.csv, ranking_methods_tau.csv, settings.json")
    return EXIT_OK

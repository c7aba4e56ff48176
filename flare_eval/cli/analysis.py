"""The ``cohorts``, ``compare`` and ``review`` commands: subgroups, two teams, cases to look at."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..defaults import DEFAULT_SEED
from ._common import (
    EXIT_OK,
    _add_protocol_argument,
    _non_negative_int,
    _note_replacing,
    _output_file,
    _output_folder,
    _positive_int,
    _resolved_protocol,
)


def _add_cohorts_parser(commands) -> None:
    """The ``cohorts`` subcommand."""
    cohort = commands.add_parser(
        "cohorts",
        help="accuracy per cohort and subgroup (sex, age, manufacturer, ...) with tests across groups",
        description="Join case metadata to the per-case mean DSC and NSD of every team and summarise each "
        "metadata column's groups (n, median, IQR; Mann-Whitney or Kruskal-Wallis across groups), overall and "
        "per organ. Writes OUT/case_metrics.csv, subgroups.csv and organ_subgroups.csv. Mismatches between "
        "metadata and scores and small subgroups are reported.",
    )
    cohort.add_argument("scores", type=Path, help="scores.csv with a team column (score --teams), or a runs folder")
    cohort.add_argument("--metadata", type=Path, required=True, help="CSV: case plus metadata columns")
    cohort.add_argument("--out", type=_output_folder, required=True, help="output folder")
    cohort.add_argument("--columns", default=None, help="comma-separated metadata columns (default: all)")
    cohort.add_argument("--bins", action="append", default=[], metavar="COLUMN=EDGES",
                        help="bin a numeric column at these inner edges, e.g. age=50,70 (the default for age)")
    _add_protocol_argument(cohort)
    cohort.set_defaults(handler=_cohorts)


def _cohorts(args: argparse.Namespace) -> int:
    from ..pipeline import cohorts

    _note_replacing(args.out, "subgroups.csv")
    bins = {}
    for item in args.bins:
        column, sep, edges = item.partition("=")
        try:
            bins[column] = [float(e) for e in edges.split(",")]
        except ValueError:
            sep = ""
        if not sep or not column:
            raise ValueError(f"--bins must be COLUMN=EDGE,EDGE,..., got {item!r}")
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    from ..pipeline import accuracy_metrics

    protocol = _resolved_protocol(args, args.scores)
    outputs = cohorts(args.scores, args.metadata, args.out, columns=columns, bins=bins, protocol=protocol)
    first = accuracy_metrics(protocol)[0]
    shown = ["column", "team", "group", "n", *(f"{first}_{part}" for part in ("median", "q1", "q3", "test", "p"))]
    print(outputs.subgroups[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {outputs.folder}/case_metrics.csv, subgroups.csv, organ_subgroups.csv")
    return EXIT_OK


def _add_compare_parser(commands) -> None:
    """The ``compare`` subcommand."""
    comparison = commands.add_parser(
        "compare",
        help="two teams or versions case by case: differences, paired t-test, Wilcoxon, bootstrap CI",
        description="Compare TEAM_A with TEAM_B on the cases both have, per organ and on the per-case mean: mean "
        "difference (A - B) with a bootstrap confidence interval, paired t-test and Wilcoxon signed-rank "
        "p-values. Writes OUT/comparison.csv and OUT/differences.csv.",
    )
    comparison.add_argument("scores", type=Path, help="scores.csv with a team column, or a runs folder")
    comparison.add_argument("team_a")
    comparison.add_argument("team_b")
    comparison.add_argument("--out", type=_output_folder, required=True, help="output folder")
    comparison.add_argument("--metric", default=None,
                            help="a metric column of the scores (default: the protocol's first accuracy metric: "
                            "DSC for FLARE, Dice for KiTS23, LesionWise_Dice for BraTS)")
    comparison.add_argument("--samples", type=_positive_int, default=2000, help="bootstrap samples (default: 2000)")
    comparison.add_argument("--seed", type=_non_negative_int, default=DEFAULT_SEED,
                            help=f"random seed of the bootstrap (default: {DEFAULT_SEED}, as rank; recorded in "
                            "comparison.csv)")
    _add_protocol_argument(comparison)
    comparison.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> int:
    from ..pipeline import compare

    _note_replacing(args.out, "comparison.csv")
    protocol = _resolved_protocol(args, args.scores)
    comparison = compare(args.scores, args.team_a, args.team_b, args.out, metric=args.metric,
                         n_samples=args.samples, seed=args.seed, protocol=protocol)
    print(comparison.summary.drop(columns=["metric", "team_a", "team_b"])
          .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"{comparison.summary['metric'].iloc[0]}: {args.team_a} - {args.team_b}, {comparison.n_samples} "
          f"bootstrap samples, seed {comparison.seed}; wrote {args.out}/comparison.csv, differences.csv")
    return EXIT_OK


def _add_review_parser(commands) -> None:
    """The ``review`` subcommand."""
    review = commands.add_parser(
        "review",
        help="cases with an organ at or below a DSC threshold, worst first, for annotation review",
        description="List the cases whose DSC for some organ is at or below THRESHOLD (default 0.75, the paper's) "
        "for a reference team, or for the median over all teams, sorted worst first, as a CSV with an empty "
        "'reviewed' column for the annotator.",
    )
    review.add_argument("scores", type=Path, help="scores.csv with a team column, or a runs folder")
    review.add_argument("--out", type=_output_file, required=True, help="CSV file to write")
    review.add_argument("--threshold", type=float, default=0.75, help="DSC at or below which a case is listed")
    review.add_argument("--team", default=None, help="reference team (default: the median of all teams)")
    review.add_argument("--metric", default=None,
                        help="overlap metric compared with the threshold (default: the protocol's first accuracy "
                        "metric: DSC for FLARE, Dice for KiTS23)")
    _add_protocol_argument(review)
    review.set_defaults(handler=_review)


def _review(args: argparse.Namespace) -> int:
    from ..pipeline import review

    if not 0 <= args.threshold <= 1:
        raise ValueError(f"--threshold must be between 0 and 1, got {args.threshold}")
    from ..pipeline import accuracy_metrics

    protocol = _resolved_protocol(args, args.scores)
    metric = args.metric or accuracy_metrics(protocol)[0]
    table = review(args.scores, args.out, threshold=args.threshold, reference=args.team, protocol=protocol,
                   metric=metric)
    print(f"{table['case'].nunique()} case(s), {len(table)} organ(s) or region(s) at or below {metric} "
          f"{args.threshold}; wrote {args.out}")
    return EXIT_OK

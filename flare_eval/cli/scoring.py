"""The ``score`` and ``collect`` commands: predictions scored, results assembled."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    _add_protocol_argument,
    _add_scheduler_arguments,
    _note_replacing,
    _output_file,
    _output_folder,
    _positive_int,
    _print_failed_cases,
    _resolved_protocol,
)


def _add_score_parser(commands) -> None:
    """The ``score`` subcommand."""
    score = commands.add_parser(
        "score",
        help="DSC and NSD of every organ of every case",
        description="Score a folder of predictions against a folder of ground-truth label maps. "
        "Writes OUT/scores.csv (long, full precision), OUT/scores_official.csv (the challenge's wide layout: "
        "4 decimals for the FLARE 2021-2023 presets and FLARE24, which rounds every value; full precision for "
        "KiTS23, BraTS 2023 and autoPET, whose official code does not round), OUT/summary.csv and "
        "OUT/settings.json, and prints the per-organ summary (per region and metric for the region presets). "
        "An interrupted run resumes.",
    )
    score.add_argument("pred", type=Path,
                       help="folder of predictions (<case>.nii.gz or <case>_0000.nii.gz; also .nii, .mha, .mhd, .nrrd)")
    score.add_argument("gt", type=Path, help="folder of ground-truth label maps (<case>.nii.gz, .nii, .mha, ...)")
    score.add_argument("--out", type=_output_folder, required=True, help="output folder")
    _add_protocol_argument(score)
    score.add_argument(
        "--slice-range",
        choices=("half_open", "inclusive"),
        default=None,
        help="slice-range rule for aorta, IVC and esophagus: 'half_open' as the official FLARE22 script "
        "(drops the last ground-truth slice), 'inclusive' to keep it (default: the protocol's)",
    )
    score.add_argument("--teams", action="store_true",
                       help="PRED holds one folder of predictions per team; all are scored as one batch")
    score.add_argument("--workers", type=_positive_int, default=None, help="parallel processes (default: all cores)")
    _add_scheduler_arguments(score)
    score.add_argument(
        "--strict", action="store_true", help="stop at an unreadable or mismatched prediction instead of scoring 0"
    )
    score.add_argument(
        "--resample", action="store_true",
        help="resample predictions on another physical grid to the ground truth's (nearest neighbour) instead of "
        "scoring them 0; predictions of the same grid in another orientation are always reoriented exactly",
    )
    score.add_argument("--force", action="store_true", help="rescore cases finished by an interrupted run")
    score.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    score.set_defaults(handler=_score)


def _score(args: argparse.Namespace) -> int:
    from ..io import read_table
    from ..scoring import SCORED_STATUSES, STATUS_OK, score

    _note_replacing(args.out, "scores.csv")
    protocol = _resolved_protocol(args, args.out)
    if args.slice_range:
        protocol = protocol.with_slice_range_mode(args.slice_range)
    scores, files = score(
        args.pred,
        args.gt,
        args.out,
        protocol,
        workers=args.workers,
        strict=args.strict,
        progress=False if args.no_progress else None,
        force=args.force,
        teams=args.teams,
        scheduler=args.scheduler,
        ship=args.ship,
        resample=args.resample,
    )
    import pandas as pd  # loaded by score while its first cases ran

    summary = read_table(files.summary, role="summary")  # what was written, and cheaper than computing it again
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    keys = ["team", "case"] if args.teams else ["case"]
    unusual = scores[scores["status"] != STATUS_OK].drop_duplicates(keys)
    for row in unusual.itertuples():
        where = f"{row.team} {row.case}" if args.teams else row.case
        kind = "note" if row.status in SCORED_STATUSES else "problem"
        print(f"{kind}: {where}: {row.status}: {row.message}", file=sys.stderr)
    problems = unusual[~unusual["status"].isin(SCORED_STATUSES)]
    print(f"wrote {files.scores}, {files.official}, {files.summary}")
    return EXIT_PROBLEMS if len(problems) else EXIT_OK


def _add_collect_parser(commands) -> None:
    """The ``collect`` subcommand."""
    collect = commands.add_parser(
        "collect",
        help="score every team's predictions and gather results.csv for ranking",
        description="Score RUNS/<team>/predictions against LABELS for each team (writing the team's "
        "scores.csv), join RUNS/<team>/resources.csv and apply the penalties: timed-out, crashed, output-less "
        "and invalid cases and invalid submissions get the protocol's worst value of every metric. Prints one "
        "line per team.",
    )
    collect.add_argument("runs", type=Path, help="runs folder written by run-containers")
    collect.add_argument("--labels", type=Path, required=True, help="folder of ground-truth label maps")
    collect.add_argument("--out", type=_output_file, default=None, help="results file (default: RUNS/results.csv)")
    _add_protocol_argument(collect)
    collect.add_argument("--workers", type=_positive_int, default=None, help="parallel scoring processes")
    _add_scheduler_arguments(collect)
    collect.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    collect.add_argument("--quiet", action="store_true", help="print nothing on stdout")
    collect.set_defaults(handler=_collect)


def _collect(args: argparse.Namespace) -> int:
    from ..pipeline import collect_results
    from ..results import penalized

    results_csv = args.out or args.runs / "results.csv"
    _note_replacing(results_csv.parent, results_csv.name)
    _resolved_protocol(args, args.runs, results_csv.parent)
    results = collect_results(args.runs, args.labels, args.out, args.protocol, workers=args.workers,
                              progress=False if args.no_progress else None, scheduler=args.scheduler,
                              ship=args.ship)
    failed = results[penalized(results["status"])]
    _print_failed_cases(failed, args.runs)
    if not args.quiet:
        metrics = [c for c in results.columns if c not in ("team", "case", "status")]
        per_team = results.groupby("team")[metrics].mean().add_prefix("mean_")
        per_team.insert(0, "cases", results.groupby("team").size())
        per_team.insert(1, "not_ok", results[results["status"] != "ok"].groupby("team").size())
        per_team["not_ok"] = per_team["not_ok"].fillna(0).astype(int)
        print(per_team.reset_index().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"wrote {args.out or args.runs / 'results.csv'}")
    return EXIT_PROBLEMS if len(failed) else EXIT_OK

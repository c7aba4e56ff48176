"""The ``flare-eval`` command: parses arguments, calls the Python API, prints, exits.

Exit codes: 0 success, 1 finished with problems worth attention (e.g. missing
predictions, invalid submissions), 2 bad input (unreadable ground truth, bad
arguments, bad tables) or a full disk, 130 interrupted (Ctrl-C); the last two
keep every finished case, and the same command resumes.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__
from .defaults import DEFAULT_SEED
from .layout import log_path

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_BAD_INPUT = 2
#: An unexpected error inside flare-eval (a bug): one line on stderr, the traceback in a file.
EXIT_INTERNAL = 3
#: As a shell reports a command ended by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


def _non_negative_int(text: str) -> int:
    """An argparse type; argparse names the option in the message."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_int(text: str) -> int:
    """An argparse type; argparse names the option in the message."""
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _note_replacing(folder: Path | None, *names: str) -> None:
    """Say in one line when a command is about to replace outputs of an earlier run."""
    if folder is not None and any((Path(folder) / name).exists() for name in names):
        print(f"note: replacing the earlier outputs in {folder}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``flare-eval`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="flare-eval",
        description="Evaluate and rank segmentation algorithms the way the FLARE challenges did.",
        epilog="exit codes: 0 success; 1 finished, but some cases had problems (missing or invalid "
        "predictions, failed containers, invalid submissions; listed on stderr); 2 bad input or arguments, or a "
        "full disk; 3 an internal error (one line on stderr, the traceback in a file it names); 130 interrupted "
        "(finished cases are kept: rerun to resume). A closed stdout (| head) ends the output quietly.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_score_parser(commands)
    _add_rank_parser(commands)
    _add_run_containers_parser(commands)
    _add_collect_parser(commands)
    _add_evaluate_parser(commands)
    _add_gpu_check_parser(commands)
    _add_report_parser(commands)
    _add_quantify_parser(commands)
    _add_cohorts_parser(commands)
    _add_compare_parser(commands)
    _add_review_parser(commands)
    commands.add_parser("protocols", help="list the protocol presets").set_defaults(handler=_protocols)
    return parser


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
    score.add_argument("--out", type=Path, required=True, help="output folder")
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
    ranking.add_argument("--out", type=Path, required=True, help="output folder")
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


def _add_run_containers_parser(commands) -> None:
    """The ``run-containers`` subcommand."""
    run = commands.add_parser(
        "run-containers",
        help="run each team's Docker image on each case and measure time, GPU memory and CPU",
        description="Run every submission on every case, one container at a time (no network, read-only "
        "inputs, memory/shm/pids limits), sampling GPU memory and CPU utilization every 0.1 s. Writes "
        "RUNS/<team>/resources.csv (a row per case, the moment it ends), samples/, logs/ and predictions/. "
        "Finished cases are skipped on a rerun.",
    )
    run.add_argument("submissions", type=Path, nargs="?",
                     help="folder of image archives <team>.tar.gz or <team>.tar (as docker save writes them)")
    _add_container_arguments(run)
    run.add_argument("--out", type=Path, required=True, help="runs folder")
    run.set_defaults(handler=_run_containers)


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
    collect.add_argument("--out", type=Path, default=None, help="results file (default: RUNS/results.csv)")
    _add_protocol_argument(collect)
    collect.add_argument("--workers", type=_positive_int, default=None, help="parallel scoring processes")
    _add_scheduler_arguments(collect)
    collect.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    collect.add_argument("--quiet", action="store_true", help="print nothing on stdout")
    collect.set_defaults(handler=_collect)


def _add_evaluate_parser(commands) -> None:
    """The ``evaluate`` subcommand."""
    evaluate = commands.add_parser(
        "evaluate",
        help="the whole chain: run-containers, score, collect, rank (and --report)",
        description="Run the containers into OUT/runs, score and collect OUT/results.csv, rank into "
        "OUT/ranking (with two teams or more) and, with --report, write OUT/report. Every step resumes.",
    )
    evaluate.add_argument("submissions", type=Path, nargs="?", help="folder of image archives")
    _add_container_arguments(evaluate)
    evaluate.add_argument("--labels", type=Path, required=True, help="folder of ground-truth label maps")
    evaluate.add_argument("--out", type=Path, required=True, help="output folder")
    evaluate.add_argument("--samples", type=_positive_int, default=1000, help="bootstrap samples (default: 1000)")
    evaluate.add_argument("--seed", type=_non_negative_int, default=DEFAULT_SEED,
                          help=f"random seed of the bootstrap (default: {DEFAULT_SEED})")
    evaluate.add_argument("--report", action="store_true", help="also write the report to OUT/report")
    evaluate.add_argument("--pdf", action="store_true", help="with --report, also print it to OUT/report/report.pdf")
    evaluate.set_defaults(handler=_evaluate)


def _add_gpu_check_parser(commands) -> None:
    """The ``gpu-check`` subcommand."""
    gpu_check = commands.add_parser(
        "gpu-check",
        help="check GPU memory measurement on this machine with a CUDA workload of known use",
        description="Check the NVIDIA driver (NVML), compile a CUDA workload that allocates known amounts of GPU "
        "memory at known times (needs nvcc), run it on the host and in a container (needs the engine's NVIDIA "
        "runtime), and print the measured max GPU MiB and AUC_GPU against the expected ones. Exit 0 when all "
        "agree within 5%%, 1 when a check fails or there is no GPU.",
    )
    gpu_check.add_argument("--gpu", type=int, default=0, help="GPU index (default: 0)")
    gpu_check.add_argument("--allowance", type=float, default=2048.0,
                           help="GPU memory allowance in MiB for AUC_GPU (default: 2048, FLARE's)")
    gpu_check.set_defaults(handler=_gpu_check)


def _add_report_parser(commands) -> None:
    """The ``report`` subcommand."""
    report = commands.add_parser(
        "report",
        help="an HTML page with the ranking, stability, significance, per-organ and resource figures",
        description="Build DIR/index.html (figures in DIR/figures as PNG and SVG) from a results.csv or from a "
        "folder written by evaluate (results.csv, ranking/, runs/, quantify/). Sections whose inputs are "
        "absent are left out with a note.",
    )
    report.add_argument("source", type=Path, help="results.csv, or a folder written by evaluate")
    report.add_argument("--out", type=Path, required=True, help="report folder")
    report.add_argument("--ranking", type=Path, default=None, help="ranking folder (default: SOURCE/ranking)")
    report.add_argument("--runs", type=Path, default=None, help="runs folder (default: SOURCE/runs)")
    report.add_argument("--quantify", type=Path, default=None, help="quantify folder (default: SOURCE/quantify)")
    report.add_argument("--cohorts", type=Path, default=None, help="cohorts folder (default: SOURCE/cohorts)")
    report.add_argument("--compare", type=Path, default=None, help="compare folder (default: SOURCE/compare)")
    report.add_argument("--team", default=None, help="team whose resources over time are shown (default: the best)")
    report.add_argument("--case", default=None, help="case whose resources over time are shown (default: the first)")
    report.add_argument("--pdf", action="store_true",
                        help="also write OUT/report.pdf, the page printed by headless Chromium (no LaTeX)")
    report.add_argument("--paper", choices=("letter", "a4"), default="letter",
                        help="paper size of the PDF (default: letter)")
    report.add_argument("--title", default="Evaluation report", help="the page's title and heading")
    report.add_argument("--display-names", type=Path, default=None, metavar="CSV",
                        help="CSV with columns team, name: the name shown for each team everywhere on the page "
                        "(to anonymise, or to spell teams properly)")
    report.add_argument("--include-logs", action="store_true",
                        help="copy the failed cases' logs into OUT/logs and link them (default: the failure table "
                        "names each log's path and links nothing outside OUT)")
    report.add_argument("--single-file", action="store_true",
                        help="embed the figures in index.html (one file to mail or upload)")
    _add_protocol_argument(report)
    report.set_defaults(handler=_report)


def _add_quantify_parser(commands) -> None:
    """The ``quantify`` subcommand."""
    quantify = commands.add_parser(
        "quantify",
        help="organ volumes (and tubular organ diameters), against ground truth when given",
        description="Measure every protocol organ of every label map in PRED: volume in mL (voxel count x voxel "
        "volume) and, for aorta, IVC and esophagus, the median equal-area-circle diameter of the axial "
        "cross-sections in mm. With GT: Pearson r, mean difference and Bland-Altman limits per organ. Writes "
        "OUT/volumes.csv, OUT/volume_summary.csv and OUT/agreement.csv.",
    )
    quantify.add_argument("pred", type=Path, help="folder of predicted label maps")
    quantify.add_argument("gt", type=Path, nargs="?", default=None, help="folder of ground-truth label maps")
    quantify.add_argument("--out", type=Path, required=True, help="output folder")
    quantify.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_protocol_argument(quantify)
    quantify.set_defaults(handler=_quantify)


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
    cohort.add_argument("--out", type=Path, required=True, help="output folder")
    cohort.add_argument("--columns", default=None, help="comma-separated metadata columns (default: all)")
    cohort.add_argument("--bins", action="append", default=[], metavar="COLUMN=EDGES",
                        help="bin a numeric column at these inner edges, e.g. age=50,70 (the default for age)")
    _add_protocol_argument(cohort)
    cohort.set_defaults(handler=_cohorts)


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
    comparison.add_argument("--out", type=Path, required=True, help="output folder")
    comparison.add_argument("--metric", default=None,
                            help="a metric column of the scores (default: the protocol's first accuracy metric: "
                            "DSC for FLARE, Dice for KiTS23, LesionWise_Dice for BraTS)")
    comparison.add_argument("--samples", type=_positive_int, default=2000, help="bootstrap samples (default: 2000)")
    comparison.add_argument("--seed", type=_non_negative_int, default=DEFAULT_SEED,
                            help=f"random seed of the bootstrap (default: {DEFAULT_SEED}, as rank; recorded in "
                            "comparison.csv)")
    _add_protocol_argument(comparison)
    comparison.set_defaults(handler=_compare)


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
    review.add_argument("--out", type=Path, required=True, help="CSV file to write")
    review.add_argument("--threshold", type=float, default=0.75, help="DSC at or below which a case is listed")
    review.add_argument("--team", default=None, help="reference team (default: the median of all teams)")
    review.add_argument("--metric", default=None,
                        help="overlap metric compared with the threshold (default: the protocol's first accuracy "
                        "metric: DSC for FLARE, Dice for KiTS23)")
    _add_protocol_argument(review)
    review.set_defaults(handler=_review)


def _add_protocol_argument(parser: argparse.ArgumentParser) -> None:
    from .protocol import available_protocols

    parser.add_argument(
        "--protocol",
        default=None,
        help=f"preset ({', '.join(available_protocols())}) or path of a protocol JSON file (default: the one "
        "recorded in the settings.json of the folders this command reads or writes, else flare22; one that "
        "differs from a recorded one is refused)",
    )


def _resolved_protocol(args: argparse.Namespace, *places):
    """The command's protocol (given, else recorded in the settings.json of ``places``); kept in ``args``."""
    from .pipeline import resolve_protocol

    args.protocol = resolve_protocol(args.protocol, *places)
    return args.protocol


def _add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run on this Dask scheduler (e.g. tcp://host:8786) instead of local processes")
    parser.add_argument("--ship", choices=("auto", "paths", "bytes"), default="auto",
                        help="how files reach Dask workers: paths (shared file system), bytes, or auto: paths "
                        "when every worker can read them (default)")


def _add_container_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inputs", type=Path, required=True,
                        help="folder of case images <case>_0000.nii.gz (or .mha, ...; converted to the format the "
                        "container expects)")
    parser.add_argument("--image", action="append", default=[], metavar="TEAM=IMAGE",
                        help="a team whose image is already loaded on the engine (repeatable)")
    parser.add_argument("--gpus", default="auto",
                        help="GPU index for the containers, or 'none' (default: the first GPU NVML finds; on Dask "
                        "workers FLARE_EVAL_GPU in the worker's environment decides)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before a case is killed (default: the protocol's time limit, 3600 for FLARE)")
    parser.add_argument("--memory", default=None,
                        help="memory limit of a container, with a unit (e.g. 28g, 512m; default: 28g, or this "
                        "machine's memory where it has less; more than it has is refused)")
    parser.add_argument("--shm-size", default="8g", help="size of /dev/shm in a container (default: 8g)")
    parser.add_argument("--pids-limit", type=_positive_int, default=4096,
                        help="most processes in a container (default: 4096)")
    parser.add_argument("--cpus", type=float, default=None,
                        help="CPU share of a container, e.g. 8 (default: no cap; see also --cpuset-cpus)")
    parser.add_argument("--cpuset-cpus", default=None, help="CPUs a container may use, e.g. 0-7 (default: all)")
    parser.add_argument("--user", default=None,
                        help="uid[:gid] the containers run as (default: the image's own user)")
    parser.add_argument("--max-consecutive-failures", type=_positive_int, default=None, metavar="N",
                        help="fail fast: stop running a team whose first N cases all timed out or crashed; its "
                        "other cases get status stopped_after_failures, penalised (default: the protocol's; FLARE: "
                        "never, every case runs)")
    parser.add_argument("--keep-images", action="store_true",
                        help="keep the images loaded from archives on the engine (default: removed after each team)")
    parser.add_argument("--command", dest="container_command", default=None,
                        help="command run in the container (default: the protocol's; FLARE: "
                        "/bin/bash -c \"sh predict.sh\")")
    parser.add_argument("--force", action="store_true", help="run cases again that already have results")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--quiet", action="store_true",
                        help="print nothing on stdout (problems still go to stderr, one line each)")
    _add_protocol_argument(parser)
    _add_scheduler_arguments(parser)


def _container_settings(args: argparse.Namespace):
    import shlex
    from dataclasses import replace

    from .harness.docker import ContainerLimits
    from .harness.runner import Submission, find_submissions

    limits = ContainerLimits(memory=args.memory, shm_size=args.shm_size, pids_limit=args.pids_limit,
                             timeout_s=args.timeout, cpus=args.cpus, cpuset_cpus=args.cpuset_cpus,
                             user=args.user, max_consecutive_failures=args.max_consecutive_failures).checked()
    submissions = find_submissions(args.submissions) if args.submissions else []
    for item in args.image:
        team, sep, image = item.partition("=")
        if not sep or not team or not image:
            raise ValueError(f"--image must be TEAM=IMAGE, got {item!r}")
        submissions.append(Submission(team=team, image=image))
    if not submissions:
        raise ValueError("give a submissions folder or at least one --image TEAM=IMAGE")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout}")
    places = (args.out,) if args.command == "run-containers" else (args.out / "runs", args.out)
    interface = _resolved_protocol(args, *places).container
    if args.container_command:
        interface = replace(interface, command=tuple(shlex.split(args.container_command)))
    if args.gpus in ("auto", "none"):
        gpus = None if args.gpus == "none" else "auto"
    elif args.gpus.isdigit():
        gpus = int(args.gpus)
    else:
        raise ValueError(f"--gpus must be 'auto', 'none' or a GPU index, got {args.gpus!r}")
    return submissions, interface, limits, gpus


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flare-eval`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            return args.handler(args)
        except (ValueError, FileNotFoundError, _container_error()) as exc:
            print(f"flare-eval {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print(f"flare-eval {args.command}: interrupted; every finished case is kept: run the same command "
                  "again to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader of stdout has gone (| head): say nothing more, and let no flush at exit complain.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                return _internal_error(args.command, exc)
            where = os.path.dirname(exc.filename) if exc.filename else "the output folder"
            print(f"flare-eval {args.command}: error: no space left on the disk of {where}; every finished case "
                  "is kept: free some space and run the same command again to resume", file=sys.stderr)
            return EXIT_BAD_INPUT
        except Exception as exc:  # a bug: one line, never a traceback on the terminal
            return _internal_error(args.command, exc)


def _internal_error(command: str, exc: BaseException) -> int:
    """Write the traceback to a file, say in one line what went wrong and where the traceback is."""
    import tempfile
    import time
    import traceback

    handle, path = tempfile.mkstemp(prefix=f"flare-eval-{command}-{time.strftime('%Y%m%d-%H%M%S')}-",
                                    suffix=".traceback.txt")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(f"flare-eval {__version__}, command {command}, argv {sys.argv!r}\n")
        out.write("".join(traceback.format_exception(exc)))
    print(f"flare-eval {command}: internal error: {type(exc).__name__}: {exc} (a bug in flare-eval; the "
          f"traceback is in {path}: please report it)", file=sys.stderr)
    return EXIT_INTERNAL


def _container_error() -> type[Exception]:
    from .harness.docker import ContainerError

    return ContainerError


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _protocols(args: argparse.Namespace) -> int:
    from .protocol import available_protocols, load_protocol

    for name in available_protocols():
        protocol = load_protocol(name)
        print(f"{name}: {protocol.description}")
    return EXIT_OK


def _score(args: argparse.Namespace) -> int:
    import pandas as pd

    from .scoring import SCORED_STATUSES, STATUS_OK, score, summarize_scores

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
    summary = summarize_scores(scores, protocol)
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


def _rank(args: argparse.Namespace) -> int:
    from .pipeline import rank_results

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


def _print_resources(resources, runs_dir: Path, quiet: bool = False) -> int:
    """A line per team on stdout; a line per case of this run that did not end ok on stderr, with its log.

    Cases an earlier run finished are skipped, and their failures summarised in one line, not listed again.
    """
    import pandas as pd

    from .harness.runner import team_summary

    skipped = resources.attrs.get("skipped_cases", 0)
    ran = resources.attrs.get("ran_now")
    if skipped:
        to_run = len(ran) if ran is not None else 0
        print(f"note: {skipped} case(s) already finished in {runs_dir}, skipped (--force runs them again); "
              + (f"{to_run} run now" if to_run else "nothing left to run"), file=sys.stderr)
    if not quiet:
        print(team_summary(resources).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    failed = resources[resources["status"] != "ok"].drop_duplicates(["team", "case"], keep="last")
    earlier = failed
    if ran is not None:
        now = failed.apply(lambda row: (row["team"], row["case"]) in ran, axis=1) if len(failed) else failed.index
        earlier = failed[~now] if len(failed) else failed
        failed = failed[now] if len(failed) else failed
    if len(earlier) and ran is not None:
        print(f"note: {len(earlier)} case(s) of earlier runs did not end ok ({', '.join(sorted(set(earlier.status)))}"
              f"); their logs are in {runs_dir}/<team>/logs", file=sys.stderr)
    for row in failed.itertuples():
        exit_code = "" if pd.isna(row.exit_code) else f", exit code {int(row.exit_code)}"
        log = log_path(runs_dir / row.team, row.case)
        print(f"{row.team} {row.case}: {row.status}{exit_code}; log: {log}", file=sys.stderr)
    failed = pd.concat([failed, earlier]) if ran is not None else failed
    rejected = resources.attrs.get("rejected_submissions", [])
    for message in rejected:
        print(f"not run: {message}", file=sys.stderr)
    return EXIT_PROBLEMS if len(failed) or rejected else EXIT_OK


def _run_containers(args: argparse.Namespace) -> int:
    from .harness.runner import run_containers

    submissions, interface, limits, gpus = _container_settings(args)
    resources = run_containers(submissions, args.inputs, args.out, args.protocol, gpus=gpus, limits=limits,
                               interface=interface, force=args.force,
                               progress=False if args.no_progress else None, scheduler=args.scheduler,
                               ship=args.ship, keep_images=args.keep_images)
    code = _print_resources(resources, args.out, args.quiet)
    if not args.quiet:
        print(f"wrote {args.out}/<team>/resources.csv, samples/, logs/, predictions/")
    return code


def _collect(args: argparse.Namespace) -> int:
    from .pipeline import collect_results
    from .results import penalized

    results_csv = args.out or args.runs / "results.csv"
    _note_replacing(results_csv.parent, results_csv.name)
    _resolved_protocol(args, args.runs, results_csv.parent)
    results = collect_results(args.runs, args.labels, args.out, args.protocol, workers=args.workers,
                              progress=False if args.no_progress else None, scheduler=args.scheduler,
                              ship=args.ship)
    failed = results[penalized(results["status"])]
    for row in failed.itertuples():
        print(f"{row.team} {row.case}: {row.status}; log: {log_path(args.runs / row.team, row.case)}",
              file=sys.stderr)
    if not args.quiet:
        metrics = [c for c in results.columns if c not in ("team", "case", "status")]
        per_team = results.groupby("team")[metrics].mean().add_prefix("mean_")
        per_team.insert(0, "cases", results.groupby("team").size())
        per_team.insert(1, "not_ok", results[results["status"] != "ok"].groupby("team").size())
        per_team["not_ok"] = per_team["not_ok"].fillna(0).astype(int)
        print(per_team.reset_index().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"wrote {args.out or args.runs / 'results.csv'}")
    return EXIT_PROBLEMS if len(failed) else EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from .pipeline import evaluate

    _note_replacing(args.out, "results.csv")
    submissions, interface, limits, gpus = _container_settings(args)
    outputs = evaluate(submissions, args.inputs, args.labels, args.out, args.protocol, gpus=gpus, limits=limits,
                       interface=interface, force=args.force, progress=False if args.no_progress else None,
                       n_samples=args.samples, seed=args.seed, scheduler=args.scheduler, ship=args.ship,
                       keep_images=args.keep_images)
    code = _print_resources(outputs.resources, args.out / "runs", args.quiet)
    if outputs.cases_without_input:
        code = EXIT_PROBLEMS
    index = None
    if args.report:
        from .pipeline import report

        index = report(args.out, args.out / "report", args.protocol, pdf=args.pdf)
    if args.quiet:
        return code
    if outputs.ranking is not None:
        print(outputs.ranking.ranking.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    else:
        print("one team only: no ranking")
    print(f"wrote {outputs.folder}/runs, {outputs.folder}/results.csv" +
          (f", {outputs.folder}/ranking" if outputs.ranking is not None else "") +
          (f", {index}" + (f" and {index.parent / 'report.pdf'}" if args.pdf else "") if index else ""))
    if index is None:
        print(f"next: flare-eval report {args.out} --out {args.out / 'report'} (the protocol is recorded; or "
              "evaluate --report)")
    return code


def _gpu_check(args: argparse.Namespace) -> int:
    from .harness.gpu_check import GpuCheckError, run_gpu_check

    try:
        passed = run_gpu_check(args.gpu, allowance_mib=args.allowance)
    except GpuCheckError as exc:
        print(f"flare-eval gpu-check: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    print("all GPU checks passed" if passed else "some GPU checks FAILED", file=sys.stdout)
    return EXIT_OK if passed else EXIT_PROBLEMS


def _report(args: argparse.Namespace) -> int:
    from .pipeline import report

    _note_replacing(args.out, "index.html")
    source_folder = args.source if args.source.is_dir() else args.source.parent
    _resolved_protocol(args, source_folder, args.ranking or source_folder / "ranking",
                       args.runs or source_folder / "runs")
    display_names = None
    if args.display_names is not None:
        from .io import read_table

        table = read_table(args.display_names, role="display names table")
        if not {"team", "name"} <= set(table.columns):
            raise ValueError(f"display names table {args.display_names} needs columns team and name, has "
                             f"{list(table.columns)}")
        display_names = dict(zip(table["team"].astype(str), table["name"].astype(str)))
    index = report(args.source, args.out, args.protocol, ranking_dir=args.ranking, runs_dir=args.runs,
                   quantify_dir=args.quantify, cohorts_dir=args.cohorts, compare_dir=args.compare,
                   team=args.team, case=args.case, pdf=args.pdf, title=args.title, display_names=display_names,
                   include_logs=args.include_logs, single_file=args.single_file, paper=args.paper)
    print(f"wrote {index}" + (f" and {index.parent / 'report.pdf'}" if args.pdf else ""))
    return EXIT_OK


def _quantify(args: argparse.Namespace) -> int:
    from .pipeline import quantify

    _note_replacing(args.out, "volumes.csv")
    outputs = quantify(args.pred, args.gt, args.out, _resolved_protocol(args),
                       progress=False if args.no_progress else None)
    if outputs.agreement is not None:
        print(outputs.agreement.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    else:
        from .protocol import layout_of_table

        unit = layout_of_table(outputs.summary.columns).name_column
        table = outputs.summary[[unit, "n", "text"]].rename(columns={"text": "volume_ml median (Q1, Q3)"})
        print(table.to_string(index=False))
    print(f"wrote {outputs.folder}/volumes.csv, volume_summary.csv" +
          (", agreement.csv" if outputs.agreement is not None else ""))
    return EXIT_OK


def _cohorts(args: argparse.Namespace) -> int:
    from .pipeline import cohorts

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
    from .pipeline import accuracy_metrics

    protocol = _resolved_protocol(args, args.scores)
    outputs = cohorts(args.scores, args.metadata, args.out, columns=columns, bins=bins, protocol=protocol)
    first = accuracy_metrics(protocol)[0]
    shown = ["column", "team", "group", "n", *(f"{first}_{part}" for part in ("median", "q1", "q3", "test", "p"))]
    print(outputs.subgroups[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {outputs.folder}/case_metrics.csv, subgroups.csv, organ_subgroups.csv")
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from .pipeline import compare

    _note_replacing(args.out, "comparison.csv")
    protocol = _resolved_protocol(args, args.scores)
    comparison = compare(args.scores, args.team_a, args.team_b, args.out, metric=args.metric,
                         n_samples=args.samples, seed=args.seed, protocol=protocol)
    print(comparison.summary.drop(columns=["metric", "team_a", "team_b"])
          .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"{comparison.summary['metric'].iloc[0]}: {args.team_a} - {args.team_b}, {comparison.n_samples} "
          f"bootstrap samples, seed {comparison.seed}; wrote {args.out}/comparison.csv, differences.csv")
    return EXIT_OK


def _review(args: argparse.Namespace) -> int:
    from .pipeline import review

    if not 0 <= args.threshold <= 1:
        raise ValueError(f"--threshold must be between 0 and 1, got {args.threshold}")
    from .pipeline import accuracy_metrics

    protocol = _resolved_protocol(args, args.scores)
    metric = args.metric or accuracy_metrics(protocol)[0]
    table = review(args.scores, args.out, threshold=args.threshold, reference=args.team, protocol=protocol,
                   metric=metric)
    print(f"{table['case'].nunique()} case(s), {len(table)} organ(s) or region(s) at or below {metric} "
          f"{args.threshold}; wrote {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""The ``run-containers``, ``evaluate`` and ``gpu-check`` commands: submitted containers run and measured."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..defaults import DEFAULT_SEED
from ._common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    _add_protocol_argument,
    _add_scheduler_arguments,
    _non_negative_int,
    _note_replacing,
    _output_folder,
    _positive_int,
    _print_failed_cases,
    _resolved_protocol,
)


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
    run.add_argument("--out", type=_output_folder, required=True, help="runs folder")
    run.set_defaults(handler=_run_containers)


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
    evaluate.add_argument("--out", type=_output_folder, required=True, help="output folder")
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

    from ..harness.docker import ContainerLimits
    from ..harness.runner import Submission, find_submissions

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


def _print_resources(resources, runs_dir: Path, quiet: bool = False) -> int:
    """A line per team on stdout; a line per case of this run that did not end ok on stderr, with its log.

    Cases an earlier run finished are skipped, and their failures summarised in one line, not listed again.
    """
    import pandas as pd

    from ..harness.runner import team_summary

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
    _print_failed_cases(failed, runs_dir)
    failed = pd.concat([failed, earlier]) if ran is not None else failed
    rejected = resources.attrs.get("rejected_submissions", [])
    for message in rejected:
        print(f"not run: {message}", file=sys.stderr)
    return EXIT_PROBLEMS if len(failed) or rejected else EXIT_OK


def _run_containers(args: argparse.Namespace) -> int:
    from ..harness.runner import run_containers

    submissions, interface, limits, gpus = _container_settings(args)
    resources = run_containers(submissions, args.inputs, args.out, args.protocol, gpus=gpus, limits=limits,
                               interface=interface, force=args.force,
                               progress=False if args.no_progress else None, scheduler=args.scheduler,
                               ship=args.ship, keep_images=args.keep_images)
    code = _print_resources(resources, args.out, args.quiet)
    if not args.quiet:
        print(f"wrote {args.out}/<team>/resources.csv, samples/, logs/, predictions/")
    return code


def _evaluate(args: argparse.Namespace) -> int:
    from ..pipeline import evaluate

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
        from ..pipeline import report

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
    from ..harness.gpu_check import GpuCheckError, run_gpu_check

    try:
        passed = run_gpu_check(args.gpu, allowance_mib=args.allowance)
    except GpuCheckError as exc:
        print(f"flare-eval gpu-check: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    print("all GPU checks passed" if passed else "some GPU checks FAILED", file=sys.stdout)
    return EXIT_OK if passed else EXIT_PROBLEMS

"""Run every team's container on every case, one at a time, and record what it used.

Layout of the runs folder (one sub-folder per team)::

    RUNS/<team>/resources.csv        one row per case, appended the moment the case ends
    RUNS/<team>/samples/<case>.csv   the 0.1 s samples: time_s, cpu_time_s, cpu_pct, gpu_mib
    RUNS/<team>/logs/<case>.log      the container's output, then what the harness dropped
    RUNS/<team>/predictions/<case>.nii.gz   (or the format of the protocol's container interface)

    RUNS/.scratch/                   each case's staged input and the container's output folder while it
                                     runs; emptied after each case and at the next start

A case is finished when its row is in ``resources.csv``; a rerun skips finished
cases (unless ``force``), so a killed harness loses at most the case in flight.
A case the engine failed (``engine_error``) is not finished: the team's
container was never measured, so a rerun runs it again, and its latest row
counts.
Each row records the ID (sha256) of the image that was measured; a team whose
archive now holds another image is run again, its old rows kept aside.

Every submission is checked before any runs (team name, archive, manifest);
one that fails gets status ``invalid_submission`` on every case and the run
goes on with the others.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ..errors import (
    STATUS_CRASHED,
    STATUS_ENGINE_ERROR,
    STATUS_INVALID_PREDICTION,
    STATUS_INVALID_SUBMISSION,
    STATUS_NO_OUTPUT,
    STATUS_OK,
    STATUS_STOPPED,
    STATUS_TIMEOUT,
    HarnessWarning,
)
from ..io import (
    TEAM_NAME_PATTERN,
    check_team_name,
    drop_torn_tail,
    hold_folder,
    read_resources,
    read_table,
    write_settings,
)
from ..layout import RESOURCE_COLUMNS, SCRATCH, resources_path
from ..protocol import ContainerInterface, Protocol, load_protocol
from .case import (
    CaseOutcome,
    _CaseSettings,
    _empty_scratch,
    _engine_failed,
    _invalid_submission,
    _not_run,
    _select_gpu,
    case_status,
    execute_case,
    record_case,
)
from .cluster import _run_on_cluster
from .docker import (
    ArchiveInfo,
    ContainerLimits,
    EngineUnreachable,
    InvalidSubmissionError,
    docker_client,
    image_exists,
    remove_image,
    remove_stale_containers,
)
from .outputs import DEFAULT_MAX_OUTPUT_BYTES, keep_outputs, normalise_prediction
from .sampler import NvmlGpu, remove_idle_cgroups
from .submissions import (
    Submission,
    _identify,
    _Identity,
    _load_submission,
    _named_submissions,
    find_cases,
    find_submissions,
)

__all__ = [
    "Submission",
    "HarnessWarning",
    "find_submissions",
    "find_cases",
    "keep_outputs",
    "case_status",
    "run_containers",
    "execute_case",
    "normalise_prediction",
    "record_case",
    "CaseOutcome",
    "RESOURCE_COLUMNS",
    "STATUS_OK",
    "STATUS_TIMEOUT",
    "STATUS_CRASHED",
    "STATUS_NO_OUTPUT",
    "STATUS_INVALID_PREDICTION",
    "STATUS_INVALID_SUBMISSION",
    "STATUS_ENGINE_ERROR",
    "STATUS_STOPPED",
    "TEAM_NAME_PATTERN",
    "check_team_name",
    "team_summary",
]

def _previous_rows(resources_csv: Path) -> pd.DataFrame | None:
    """The rows of an earlier run (a torn last line dropped first), or None when there are none."""
    drop_torn_tail(resources_csv)
    if not resources_csv.exists() or resources_csv.stat().st_size == 0:
        return None
    return read_table(resources_csv, role="resources table")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so that containers are removed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_containers(
    submissions: str | Path | list[Submission],
    inputs_dir: str | Path,
    runs_dir: str | Path,
    protocol: str | Protocol = "flare22",
    *,
    gpus: str | int | None = "auto",
    limits: ContainerLimits | None = None,
    interface: ContainerInterface | None = None,
    force: bool = False,
    progress: bool | None = None,
    interval_s: float = 0.1,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    scheduler=None,
    ship: str = "auto",
    keep_images: bool = False,
) -> pd.DataFrame:
    """Run each submission on each case, one container at a time, sampling resources every ``interval_s``.

    Parameters
    ----------
    submissions : path or list of Submission
        A folder of image archives (see `find_submissions`), or explicit
        submissions (archives or images the engine already has).
    inputs_dir : path
        The cases' images, ``<case>_0000.nii.gz`` (or another format); each is
        staged as ``interface.input_name``, converted where the formats differ.
    runs_dir : path
        Output folder; see the module docstring for its layout.
    protocol : str or Protocol
        Gives the GPU memory allowance (FLARE22: 2048 MiB).
    gpus : "auto", int, "none" or None
        GPU index for the containers; ``auto`` takes the first GPU NVML finds and
        warns when there is none.
    limits, interface : optional
        Container limits (a ``timeout_s`` of None means the protocol's time
        limit, 3600 s for FLARE), and the calling convention (default: the protocol's
        ``container`` block, FLARE22's for the FLARE presets).
    force : bool
        Run cases again even when ``resources.csv`` already has them.
    progress : bool, optional
        Show a progress bar (default: when stderr is a terminal).
    interval_s : float
        Sampling period.
    max_output_bytes : int
        Largest prediction file kept; each case's limit is also at most 8
        bytes per voxel of its image plus 1 MiB.
    scheduler : str or distributed.Client, optional
        Run the (team, case) tasks on this Dask cluster. Each task holds one
        ``GPU`` resource, so start each worker with ``--resources GPU=1`` and
        one worker per GPU (``FLARE_EVAL_GPU=<index>`` in its environment picks
        the GPU, ``none`` for none; default: the first GPU NVML finds). Each
        worker needs a Docker engine. Predictions, samples and logs come back to
        ``runs_dir`` whether or not the file system is shared; a task whose
        worker is lost runs again on another worker.
    ship : {"auto", "paths", "bytes"}
        How inputs and image archives reach the workers (see
        :func:`flare_eval.score_folder`).
    keep_images : bool
        Keep the images loaded from archives on the engine after each team
        (default: remove them, unless the engine had them before).

    Returns
    -------
    pandas.DataFrame
        All rows of every team's ``resources.csv`` (earlier runs included);
        ``attrs["skipped_cases"]`` counts the cases an earlier run finished
        and ``attrs["ran_now"]`` holds the (team, case) pairs of this run.
        A submission that cannot run (a bad archive, an image the engine does
        not have) has status ``invalid_submission`` on every case; a team
        name that cannot name a folder is left out with a `HarnessWarning`.

    Raises
    ------
    ContainerError
        If no engine answers.
    FolderInUseError
        If another command is writing ``runs_dir`` (see `flare_eval.io.hold_folder`).
    ValueError
        If the limits do not fit this machine (e.g. more memory than it has).
    """
    from tqdm import tqdm

    protocol = load_protocol(protocol)
    limits = (limits or ContainerLimits()).checked()
    if limits.timeout_s is None:
        # A stuck container must not stall the evaluation: the protocol's time limit (FLARE: 3600 s) applies.
        limits = replace(limits, timeout_s=protocol.time_limit_s)
    if limits.max_consecutive_failures is None:
        limits = replace(limits, max_consecutive_failures=protocol.max_consecutive_failures)
    interface = interface or protocol.container
    if isinstance(submissions, (str, Path)):
        submissions = find_submissions(submissions)
    submissions, rejected = _named_submissions(submissions)
    cases = find_cases(inputs_dir)
    runs_dir = Path(runs_dir).resolve()
    with hold_folder(runs_dir, "run-containers"):
        _write_run_settings(runs_dir / "settings.json", protocol, limits, interface, gpus, keep_images,
                            max_output_bytes)
        settings = _CaseSettings(interface, limits, str(runs_dir), protocol.gpu_allowance_mib, interval_s,
                                 max_output_bytes, protocol.gpu_memory)
        engine = docker_client()
        stale = remove_stale_containers(engine, settings.runs_label)
        remove_idle_cgroups()
        if stale:
            warnings.warn(f"removed {len(stale)} container(s) left by an interrupted run: {', '.join(stale)}",
                          HarnessWarning, stacklevel=2)
        _empty_scratch(runs_dir / SCRATCH)
        if gpus is None or gpus == "none":
            warnings.warn("GPU memory is not measured (no GPU asked for): AUC_GPU is 0 for every case",
                          HarnessWarning, stacklevel=2)
        todo = []
        manifests: dict[str, ArchiveInfo] = {}  # read once here, and trusted at load time only if still the same
        history: dict[str, list[str]] = {}  # each team's statuses in the order its cases ran, earlier runs first
        skipped = 0  # cases an earlier run finished
        invalid_now: set[tuple[str, str]] = set()
        for submission in submissions:
            identity = _identify(engine, submission)
            team_dir = runs_dir / submission.team
            previous = None if force else _previous_rows(resources_path(team_dir))
            if previous is not None and not _measured_with(previous, identity):
                _set_aside(resources_path(team_dir), previous, identity)
                previous = None
            # A case the engine failed was not measured: it runs again (its new row is the one that counts).
            done = set() if previous is None else set(previous["case"][previous["status"] != STATUS_ENGINE_ERROR])
            history[submission.team] = [] if previous is None else previous["status"].astype(str).tolist()
            remaining = [case for case in cases if case not in done]
            skipped += len(cases) - len(remaining)
            if isinstance(identity, InvalidSubmissionError):
                invalid_now.update((submission.team, case) for case in remaining)
                for case in remaining:
                    record_case(_invalid_submission(submission, case, str(identity)), team_dir,
                                interface.prediction_name(case))
                warnings.warn(f"team {submission.team}: invalid submission, not run: {identity}", HarnessWarning,
                              stacklevel=2)
                continue
            if identity.archive is not None:
                manifests[submission.team] = identity.archive
            todo.extend((replace(submission, image_id=identity.image_id), case) for case in remaining)
        # Chosen before the progress bar starts, so that a warning about the GPU is not drawn into the bar's line.
        gpu = _select_gpu(gpus) if scheduler is None else None
        # A terminal gets a bar naming the case running now; a log file gets a line per finished case.
        interactive = progress if progress is not None else sys.stderr.isatty()
        lines = progress is None and not sys.stderr.isatty()
        bar = tqdm(total=len(todo), unit="case", disable=not interactive)

        def starting(team: str, case: str) -> None:
            bar.set_description(f"running {team} {case} since {time.strftime('%H:%M:%S')}")

        finished = 0  # counted here: a disabled bar counts nothing

        def record(outcome: CaseOutcome) -> None:
            nonlocal finished
            team, case = outcome.row["team"], outcome.row["case"]
            record_case(outcome, runs_dir / team, interface.prediction_name(case))
            history.setdefault(team, []).append(outcome.row["status"])
            finished += 1
            bar.set_postfix(last=f"{team} {case} {outcome.row['status']} {outcome.row['time_s']:.1f}s")
            bar.update(1)
            if lines:
                print(f"[{finished}/{len(todo)}] {team} {case}: {outcome.row['status']}, "
                      f"{outcome.row['time_s']:.1f} s", file=sys.stderr, flush=True)

        try:
            with _sigterm_as_interrupt():
                if scheduler is None:
                    _run_here(engine, todo, cases, settings, gpu, record, keep_images, starting, manifests,
                              stopped=lambda team: _dead_from_start(history.get(team, []),
                                                                    limits.max_consecutive_failures))
                else:
                    _run_on_cluster(scheduler, ship, todo, cases, settings, gpus, record, keep_images)
        finally:
            if gpu is not None:
                gpu.close()
            if bar.n == bar.total:
                bar.set_description("finished")
                bar.set_postfix_str("")
            bar.close()
            if scheduler is not None:
                # Containers of workers lost mid-case, where they share this engine.
                remove_stale_containers(engine, settings.runs_label)
            _empty_scratch(runs_dir / SCRATCH)
        resources = read_resources(runs_dir)
        if resources.empty:
            resources = pd.DataFrame(columns=RESOURCE_COLUMNS)
        resources.attrs["rejected_submissions"] = rejected
        resources.attrs["skipped_cases"] = skipped
        resources.attrs["ran_now"] = {(submission.team, case) for submission, case in todo} | invalid_now
        _warn_if_machines_differ(resources)
        return resources


def team_summary(resources: pd.DataFrame) -> pd.DataFrame:
    """One line per team: ``team, cases, ok``, a count per other status, median ``time_s`` and AUC_CPU.

    What a person reads after a run of 48 teams x 200 cases, instead of 9,600 rows.
    """
    if resources.empty:
        return pd.DataFrame(columns=["team", "cases", "ok", "median_time_s", "median_auc_cpu_pct_s"])
    latest = resources.drop_duplicates(["team", "case"], keep="last")
    counts = pd.crosstab(latest["team"], latest["status"])
    summary = pd.DataFrame({"cases": counts.sum(axis=1)})
    summary["ok"] = counts[STATUS_OK] if STATUS_OK in counts else 0
    for status in sorted(set(counts.columns) - {STATUS_OK}):
        summary[status] = counts[status]
    grouped = latest.groupby("team")
    summary["median_time_s"] = grouped["time_s"].median()
    summary["median_auc_cpu_pct_s"] = grouped["auc_cpu_pct_s"].median()
    return summary.rename_axis("team").reset_index()


def _write_run_settings(path: Path, protocol: Protocol, limits: ContainerLimits, interface: ContainerInterface,
                        gpus, keep_images: bool, max_output_bytes: int) -> None:
    """Record the limits and relaxations in force, and the machine, beside the runs (atomically)."""
    import platform
    from dataclasses import asdict

    from .._version import __version__
    from .docker import host_memory_bytes

    cpu_model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu_model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    settings = {
        **protocol.record(),
        "limits": asdict(limits),
        "container": asdict(interface),
        "gpus": gpus,
        "keep_images": keep_images,
        "max_output_bytes": max_output_bytes,
        "machine": {"host": socket.gethostname(), "platform": platform.platform(), "cpu_model": cpu_model,
                    "n_cpus": os.cpu_count(), "memory_bytes": host_memory_bytes()},
        "flare_eval_version": __version__,
    }
    write_settings(settings, path)


def _measured_with(previous: pd.DataFrame, identity: _Identity | InvalidSubmissionError) -> bool:
    """Whether earlier rows were measured with the image the submission holds now."""
    ids = set(previous["image_id"].fillna("")) if "image_id" in previous else {""}
    if isinstance(identity, InvalidSubmissionError):
        return ids == {""} and set(previous["status"]) == {STATUS_INVALID_SUBMISSION}
    return ids == {identity.image_id}


def _set_aside(resources_csv: Path, previous: pd.DataFrame, identity) -> None:
    """Keep the rows of another image beside the team's folder, and say so."""
    old = sorted(set(previous["image_id"].fillna("unknown"))) if "image_id" in previous else ["unknown"]
    label = (old[0].removeprefix("sha256:")[:12] or "unknown") if len(old) == 1 else "mixed"
    target = resources_csv.with_name(f"resources.superseded-{label}.csv")
    os.replace(resources_csv, target)
    now = "an invalid submission" if isinstance(identity, InvalidSubmissionError) else identity.image_id
    warnings.warn(f"team {resources_csv.parent.name}: its rows were measured with image {', '.join(old)}, the "
                  f"submission is now {now}; every case runs again (old rows kept in {target})",
                  HarnessWarning, stacklevel=3)


def _dead_from_start(statuses: list[str], limit: int | None) -> bool:
    """Whether a team's first ``limit`` cases all timed out or crashed (fail fast; None: never)."""
    return limit is not None and len(statuses) >= limit and \
        all(status in (STATUS_TIMEOUT, STATUS_CRASHED) for status in statuses[:limit])


def _run_here(engine, todo, cases, settings, gpu: NvmlGpu | None, record, keep_images: bool = False, starting=None,
              manifests: dict[str, ArchiveInfo] | None = None, stopped=None) -> None:
    host = socket.gethostname()
    loaded: dict[str, str | InvalidSubmissionError | EngineUnreachable] = {}
    had_before: dict[str, bool] = {}
    announced: set[str] = set()
    last_case = {submission.team: case for submission, case in todo}
    for submission, case in todo:
        team = submission.team
        if team not in loaded:
            had_before[team] = image_exists(engine, submission.image_id) if submission.image_id else False
            loaded[team] = _load_submission(engine, submission, (manifests or {}).get(team))
        image = loaded[team]
        if starting is not None:
            starting(team, case)
        if isinstance(image, InvalidSubmissionError):
            record(_invalid_submission(submission, case, str(image)))
        elif isinstance(image, EngineUnreachable):
            record(_engine_failed(submission, case, str(image), image_id=submission.image_id))
        elif stopped is not None and stopped(team):
            limit = settings.limits.max_consecutive_failures
            if team not in announced:
                announced.add(team)
                warnings.warn(f"team {team}: its first {limit} cases all timed out or crashed; its remaining "
                              f"cases are not run and get status {STATUS_STOPPED} "
                              "(--max-consecutive-failures)", HarnessWarning, stacklevel=3)
            record(_not_run(submission, case, STATUS_STOPPED, f"not run: the team's first {limit} cases all "
                            "timed out or crashed (--max-consecutive-failures)", image_id=image))
        else:
            record(execute_case(engine, image, team, case, cases[case], settings, gpu, host,
                                reference=str(submission.archive or submission.image)))
        if case == last_case[team] and not keep_images and submission.archive is not None \
                and not had_before[team]:
            remove_image(engine, submission.image_id)


def _warn_if_machines_differ(resources: pd.DataFrame) -> None:
    """Times and AUCs are comparable only from identical machines: say when they are not."""
    columns = [c for c in ("gpu_name", "gpu_driver", "n_cpus") if c in resources]
    if resources.empty or not columns:
        return
    ran = resources[resources["n_cpus"].notna()] if "n_cpus" in resources else resources  # not-run rows have none
    distinct = ran[columns].astype(str).replace("nan", "").drop_duplicates()
    if len(distinct) > 1:
        described = "; ".join(", ".join(f"{c}={v}" for c, v in row.items()) for _, row in distinct.iterrows())
        warnings.warn(f"cases ran on different machines ({described}): times and AUCs may not be comparable",
                      HarnessWarning, stacklevel=3)

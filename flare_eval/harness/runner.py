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
Each row records the ID (sha256) of the image that was measured; a team whose
archive now holds another image is run again, its old rows kept aside.

Every submission is checked before any runs (team name, archive, manifest);
one that fails gets status ``invalid_submission`` on every case and the run
goes on with the others.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
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
    FlareEvalWarning,
)
from ..io import (
    TEAM_NAME_PATTERN,
    InvalidLabelMapError,
    append_rows,
    case_id,
    check_team_name,
    convert_image,
    drop_torn_tail,
    read_header,
    read_resources,
    read_table,
    write_settings,
    write_table,
)
from ..layout import SCRATCH, log_path, predictions_dir, resources_path, samples_path
from ..protocol import ContainerInterface, Protocol, load_protocol
from .docker import (
    ArchiveInfo,
    ContainerLimits,
    ContainerRun,
    InvalidSubmissionError,
    docker_client,
    image_exists,
    inspect_archive,
    load_image_archive,
    remove_image,
    remove_orphaned_containers,
    remove_stale_containers,
    run_container,
)
from .resources import cpu_percent, summarize_run
from .sampler import GPU_MODE_NONE, GpuUnavailable, NvmlGpu, default_gpu_index, remove_idle_cgroups

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

RESOURCE_COLUMNS = [
    "team", "case", "time_s", "engine_time_s", "auc_gpu_mib_s", "auc_cpu_pct_s", "max_gpu_mib", "max_cpu_pct",
    "gpu_measured", "gpu_mode", "exit_code", "status", "n_samples", "image", "image_id", "host", "worker", "n_cpus",
    "gpu_name", "gpu_driver", "started_at",
]
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CHANNEL = "_0000"
DEFAULT_MAX_OUTPUT_BYTES = 2 * 1024**3
#: A prediction may take at most this many bytes per voxel of the case's image (float64 is 8), plus a header.
_OUTPUT_BYTES_PER_VOXEL = 8
_OUTPUT_HEADER_BYTES = 1024**2
#: Most dropped output entries listed one by one in a case's log.
_DROPPED_LISTED = 50


class HarnessWarning(FlareEvalWarning):
    """A run went on, but something deserves attention (no GPU, dropped files, stale containers)."""


@dataclass(frozen=True)
class Submission:
    """One team's algorithm: an image archive to load, or an image the engine already has.

    ``image_id`` (``sha256:...``) is filled in by `run_containers` from the
    archive's manifest or the engine; containers run by it, never by a tag.
    """

    team: str
    archive: Path | None = None
    image: str | None = None
    image_id: str | None = None


def find_submissions(folder: str | Path) -> list[Submission]:
    """One `Submission` per image archive (``<team>.tar.gz``, ``.tgz`` or ``.tar``) in ``folder``.

    Team names come from the file names and are checked by `run_containers`
    (see `check_team_name`), so a badly named archive is reported, not lost.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.
    ValueError
        If it holds no archive.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"submissions folder {folder} does not exist or is not a folder")
    found = []
    for path in sorted(folder.iterdir()):
        for suffix in ARCHIVE_SUFFIXES:
            if path.name.endswith(suffix) and path.is_file():
                found.append(Submission(team=path.name[: -len(suffix)], archive=path))
                break
    if not found:
        raise ValueError(f"submissions folder {folder} holds no image archives ({', '.join(ARCHIVE_SUFFIXES)})")
    return found


def find_cases(inputs_dir: str | Path) -> dict[str, Path]:
    """Case id -> image file, for the images ``<case>_0000.<ext>`` of ``inputs_dir`` (any label-map format)."""
    inputs_dir = Path(inputs_dir)
    if not inputs_dir.is_dir():
        raise FileNotFoundError(f"inputs folder {inputs_dir} does not exist or is not a folder")
    cases: dict[str, Path] = {}
    for path in sorted(inputs_dir.iterdir()):
        stem = case_id(path)
        if stem is not None and stem.endswith(_CHANNEL) and len(stem) > len(_CHANNEL) and path.is_file():
            case = stem[: -len(_CHANNEL)]
            if case in cases:
                raise ValueError(f"inputs folder {inputs_dir} holds case {case!r} twice: {cases[case].name} and "
                                 f"{path.name}")
            cases[case] = path
    if not cases:
        raise ValueError(f"inputs folder {inputs_dir} holds no images named <case>{_CHANNEL}.nii.gz (or .mha, ...)")
    return cases


def keep_outputs(
    output_dir: Path, expected: str, predictions_dir: Path, kept_name: str, *,
    max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES, max_voxels: int | None = None,
) -> tuple[Path | None, list[str], bool]:
    """Move the expected prediction out of a container's output folder; report everything else.

    Only a regular, non-empty file of at most ``max_bytes`` whose name is
    ``expected`` (or matches it, when it is a pattern such as ``*.mha``; then
    exactly one file may match) and whose header claims at most
    ``max_voxels`` voxels is kept, as ``predictions_dir/kept_name``. Links,
    folders, device nodes and other names are not. Nothing is read but the
    kept file's header, and the folder listing itself is bounded: after
    `_DROPPED_LISTED` dropped entries only a count follows.

    Returns
    -------
    kept : Path or None
        Where the prediction now lies.
    dropped : list of str
        One line per entry that was not kept, with the reason.
    refused : bool
        Whether the expected file was there, a regular file, but not kept
        (empty, too large, or a header that rules it out).
    """
    matching: list[os.DirEntry] = []
    dropped: list[str] = []
    n_unlisted = 0

    def drop(line: str) -> None:
        nonlocal n_unlisted
        if len(dropped) < _DROPPED_LISTED:
            dropped.append(line)
        else:
            n_unlisted += 1

    with os.scandir(output_dir) as entries:
        for entry in entries:
            shown = printable(entry.name)
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                drop(f"{shown}: a symbolic link, not a file")
            elif not stat.S_ISREG(mode):
                drop(f"{shown}: not a regular file")
            elif not fnmatch.fnmatchcase(entry.name, expected):
                drop(f"{shown}: unexpected name (expected {printable(expected)})")
            elif len(matching) < 2:
                matching.append(entry)
            else:
                drop(f"{shown}: one of several files matching {printable(expected)}, expected one")
    kept, refused = None, False
    for entry in sorted(matching, key=lambda e: e.name):
        info = entry.stat(follow_symlinks=False)
        shown = printable(entry.name)
        refused = True
        if len(matching) > 1:
            drop(f"{shown}: one of several files matching {printable(expected)}, expected one")
        elif info.st_size == 0:
            drop(f"{shown}: empty file")
        elif info.st_size > max_bytes:
            drop(f"{shown}: {info.st_size} bytes, more than the limit of {max_bytes} for this case")
        else:
            problem = _header_problem(Path(entry.path), max_voxels)
            if problem:
                drop(f"{shown}: {printable(problem)}")
                continue
            predictions_dir.mkdir(parents=True, exist_ok=True)
            kept, refused = predictions_dir / kept_name, False
            shutil.move(entry.path, str(kept))
    if n_unlisted:
        dropped.append(f"... and {n_unlisted} more entries")
    return kept, dropped, refused


def printable(name: str) -> str:
    """A name a container chose, as one line of text: undecodable bytes and control characters escaped.

    A file name may hold a newline (to forge a line of the log) or bytes that
    are not UTF-8 (which the log writer would choke on).
    """
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text if text.isprintable() else ascii(text)[1:-1]


def glob_literal(text: str) -> str:
    """``text`` as a glob pattern that matches only itself (case ids may hold ``*``, ``?`` or ``[``)."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def _header_problem(path: Path, max_voxels: int | None) -> str:
    """Why a prediction's header rules it out ('' when it does not): unreadable, or claiming too many voxels."""
    try:
        header = read_header(path)
    except InvalidLabelMapError as exc:
        return str(exc).replace(f"{path}: ", "", 1)
    if max_voxels is not None and header.n_voxels > max_voxels:
        return (f"its header claims {'x'.join(map(str, header.shape))} voxels, more than the "
                f"{max_voxels} of the case's image; not kept")
    return ""


def normalise_prediction(path: Path) -> str:
    """Rewrite a kept prediction as a fresh self-contained file of its format; return why it cannot be ('' if fine).

    The file is read through the allow-list (`flare_eval.io.read_label_map`) in a bounded, disposable worker
    and written again with its labels as integers and its geometry, so nothing downstream ever parses the
    bytes a container chose. In a process that may not start workers (a Dask worker), it is read here.
    """
    import multiprocessing

    from ..execution import TaskLimits, run_bounded

    if multiprocessing.current_process().daemon:
        return _rewrite(path)
    outcome = run_bounded(_rewrite, [(path,)], limits=TaskLimits(),
                          on_failure=lambda arguments, failure: f"reading it failed: {failure}")
    return next(outcome)


def _rewrite(path: Path) -> str:
    from ..io import read_label_map, write_label_map

    try:
        label_map = read_label_map(path)
    except InvalidLabelMapError as exc:
        return str(exc).replace(f"{path}: ", "", 1)
    fresh = path.with_name(f".fresh-{path.name}")
    write_label_map(label_map.array, label_map.affine, fresh)
    os.replace(fresh, path)
    return ""


def case_status(run: ContainerRun, has_prediction: bool, prediction_refused: bool = False) -> str:
    """``engine_error``, ``timeout``, ``crashed`` (could not start, non-zero exit or killed for memory),
    ``invalid_prediction``, ``no_output`` or ``ok``.

    ``prediction_refused``: the expected file was there but not kept (too large,
    or a header that is unreadable or claims too many voxels).
    """
    if run.engine_error:
        return STATUS_ENGINE_ERROR
    if run.start_error:
        return STATUS_CRASHED
    if run.timed_out:
        return STATUS_TIMEOUT
    if run.exit_code != 0 or run.oom_killed:
        return STATUS_CRASHED
    if has_prediction:
        return STATUS_OK
    return STATUS_INVALID_PREDICTION if prediction_refused else STATUS_NO_OUTPUT


def _previous_rows(resources_csv: Path) -> pd.DataFrame | None:
    """The rows of an earlier run (a torn last line dropped first), or None when there are none."""
    drop_torn_tail(resources_csv)
    if not resources_csv.exists() or resources_csv.stat().st_size == 0:
        return None
    return read_table(resources_csv, role="resources table")


def _select_gpu(gpus: str | int | None) -> NvmlGpu | None:
    if gpus is None or gpus == "none":
        return None
    if gpus == "auto":
        index = default_gpu_index()
        if index is None:
            warnings.warn("no GPU found by NVML: containers run without a GPU, AUC_GPU is 0 and "
                          "gpu_measured is false in resources.csv", HarnessWarning, stacklevel=3)
            return None
        return NvmlGpu(index)
    try:
        return NvmlGpu(int(gpus))
    except (GpuUnavailable, ValueError) as exc:
        raise ValueError(f"--gpus {gpus}: {exc}") from exc


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


def _stage_input(image_path: Path, target: Path) -> None:
    """Put the case's image where the container expects it, as a regular file, converting the format if it differs.

    A symbolic link is resolved first: linking the link itself would hand the
    container a link that points nowhere inside it.
    """
    image_path = image_path.resolve(strict=True)
    source_extension = image_path.name[len(case_id(image_path) or ""):]
    target_extension = target.name[len(case_id(target) or ""):]
    if source_extension != target_extension:
        convert_image(image_path, target, follow_link=True)
        return
    try:
        os.link(image_path, target)
    except OSError:
        shutil.copy2(image_path, target)


def _samples_table(run: ContainerRun, n_cpus: int) -> pd.DataFrame:
    times = np.asarray(run.times_s, dtype=np.float64)
    table = pd.DataFrame({
        "time_s": times,
        "cpu_time_s": run.cpu_time_s,
        "cpu_pct": cpu_percent(run.cpu_time_s, times, n_cpus),
    })
    table["gpu_mib"] = run.gpu_mib if run.gpu_mib is not None else np.nan
    return table


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
    runs_dir.mkdir(parents=True, exist_ok=True)
    _write_run_settings(runs_dir / "settings.json", protocol, limits, interface, gpus, keep_images, max_output_bytes)
    settings = _CaseSettings(interface, limits, str(runs_dir), protocol.gpu_allowance_mib, interval_s, max_output_bytes,
                             protocol.gpu_memory)
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
        done = set() if previous is None else set(previous["case"])
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


def _named_submissions(submissions: list[Submission]) -> tuple[list[Submission], list[str]]:
    """The submissions whose team names can name a folder, and a message for each of the others."""
    kept, rejected, seen = [], [], set()
    for submission in submissions:
        source = submission.archive or submission.image
        try:
            check_team_name(submission.team)
        except ValueError as exc:
            rejected.append(f"{source}: {exc}")
            continue
        if submission.team in seen:
            rejected.append(f"{source}: team {submission.team!r} appears twice")
            continue
        seen.add(submission.team)
        kept.append(submission)
    for message in rejected:
        warnings.warn(f"{message}; this submission is not run", HarnessWarning, stacklevel=3)
    return kept, rejected


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


@dataclass(frozen=True)
class _Identity:
    """The image a submission runs: its ID, and what its archive's manifest says."""

    image_id: str
    archive: ArchiveInfo | None = None


def _identify(engine, submission: Submission) -> _Identity | InvalidSubmissionError:
    """The submission's image ID, from its archive's manifest (nothing loaded yet) or from the engine."""
    import docker

    if submission.archive is not None:
        try:
            info = inspect_archive(submission.archive)
        except InvalidSubmissionError as exc:
            return exc
        return _Identity(info.image_id, info)
    try:
        return _Identity(engine.images.get(submission.image).id)
    except docker.errors.ImageNotFound:
        return InvalidSubmissionError(f"image {submission.image!r} is not loaded on the engine")
    except docker.errors.APIError as exc:
        return InvalidSubmissionError(f"image {submission.image!r}: {exc}")


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


def _invalid_submission(submission: Submission, case: str, message: str) -> CaseOutcome:
    return _not_run(submission, case, STATUS_INVALID_SUBMISSION, f"invalid submission, not run: {message}")


def _not_run(submission: Submission, case: str, status: str, message: str, image_id: str = "") -> CaseOutcome:
    """The record of a case that no container ran, with its status and why."""
    row = {column: np.nan for column in RESOURCE_COLUMNS}
    row.update(team=submission.team, case=case, status=status, gpu_measured=False,
               n_samples=0, image=str(submission.archive or submission.image), image_id=image_id,
               host=socket.gethostname(), worker="", gpu_mode=GPU_MODE_NONE, gpu_name="", gpu_driver="",
               started_at="")
    return CaseOutcome(row=row, samples=pd.DataFrame(columns=["time_s", "cpu_time_s", "cpu_pct", "gpu_mib"]),
                       log=f"[flare-eval] {message}\n", prediction=None)


def _empty_scratch(scratch: Path) -> None:
    """Remove what earlier cases left in the scratch folder, permissions notwithstanding."""
    if scratch.exists():
        _remove_tree(scratch)


def _remove_tree(path: Path) -> None:
    """Remove a folder a container wrote into, however deep, also entries it made read-only or mode 000.

    GNU ``chmod -R`` and ``rm -rf`` walk a tree of any depth by descriptor
    (a container can nest thousands of folders, beyond Python's recursion
    and PATH_MAX), never follow links, and stay on one file system. What
    still cannot be removed (a root-owned folder when the harness is not
    root) is reported and tried again at the next start; it never fails the
    run.
    """
    if not os.path.lexists(path):
        return
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": False}
    subprocess.run(["chmod", "-R", "u+rwx", "--", str(path)], **quiet)
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], **quiet)
    if os.path.lexists(path):
        warnings.warn(f"could not remove {path} (files a container made that this user may not delete); "
                      "remove it as root, it is tried again at the next start", HarnessWarning, stacklevel=3)


def _dead_from_start(statuses: list[str], limit: int | None) -> bool:
    """Whether a team's first ``limit`` cases all timed out or crashed (fail fast; None: never)."""
    return limit is not None and len(statuses) >= limit and \
        all(status in (STATUS_TIMEOUT, STATUS_CRASHED) for status in statuses[:limit])


def _run_here(engine, todo, cases, settings, gpu: NvmlGpu | None, record, keep_images: bool = False, starting=None,
              manifests: dict[str, ArchiveInfo] | None = None, stopped=None) -> None:
    host = socket.gethostname()
    loaded: dict[str, str | InvalidSubmissionError] = {}
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


def _load_submission(engine, submission: Submission, manifest: ArchiveInfo | None = None
                     ) -> str | InvalidSubmissionError:
    """The image ID to run; an archive is loaded now (its tags are never trusted, see `load_image_archive`).

    ``manifest``, read when the submissions were checked, spares a second pass
    over the archive; an archive replaced since then loads another image,
    which `load_image_archive` refuses.
    """
    import docker
    import requests

    if submission.archive is None:
        return submission.image_id
    try:
        return load_image_archive(engine, submission.archive, manifest, team=submission.team)
    except (InvalidSubmissionError, docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        error = exc if isinstance(exc, InvalidSubmissionError) else InvalidSubmissionError(
            f"{submission.archive}: the engine failed while loading it ({exc})")
        warnings.warn(f"team {submission.team}: invalid submission, not run: {error}", HarnessWarning, stacklevel=3)
        return error


def _run_on_cluster(scheduler, ship, todo, cases, settings, gpus, record, keep_images: bool = False) -> None:
    from ..execution import SHIP_MODES, connect, run_tasks, workers_see_files

    if ship not in SHIP_MODES:
        raise ValueError(f"ship must be one of {SHIP_MODES}, got {ship!r}")
    client = connect(scheduler)
    try:
        if not todo:
            return
        if ship == "auto":
            ship = "paths" if workers_see_files(client, [cases[todo[0][1]]]) else "bytes"
        sources: dict[str, tuple] = {}
        for submission, _ in todo:
            if submission.team in sources:
                continue
            if submission.archive is None:
                sources[submission.team] = ("image", submission.image_id, submission.image)
            elif ship == "paths":
                sources[submission.team] = ("archive_path", submission.image_id, str(submission.archive.resolve()))
            else:
                data = client.scatter(submission.archive.read_bytes(), broadcast=True)
                sources[submission.team] = ("archive_bytes", submission.image_id, submission.archive.name, data)
        arguments = [(submission.team, sources[submission.team], case, cases[case].name,
                      str(cases[case].resolve()) if ship == "paths" else None, settings, gpus)
                     for submission, case in todo]

        def with_input_bytes(task: tuple) -> tuple:
            if ship == "paths":
                return task
            team, source, case, name, _, task_settings, task_gpus = task
            return team, source, case, name, cases[case].read_bytes(), task_settings, task_gpus

        for outcome in run_tasks(_case_on_worker, arguments, client=client, resources={"GPU": 1}, retries=1,
                                 prepare=with_input_bytes):
            record(outcome)
        if not keep_images:
            client.run(_remove_loaded_images)
    finally:
        if client is not scheduler:
            client.close()


#: Image IDs this worker process loaded from archives (IDs, never tags: two teams' tags cannot collide).
_LOADED_IMAGES: set[str] = set()


def _remove_loaded_images() -> int:
    """On a Dask worker: remove the images this worker process loaded from archives; return how many."""
    engine = docker_client()
    removed = 0
    for image in sorted(_LOADED_IMAGES):
        remove_image(engine, image)
        removed += 1
    _LOADED_IMAGES.clear()
    return removed


def _case_on_worker(team: str, source: tuple, case: str, input_name: str, input_data: str | bytes,
                    settings: _CaseSettings, gpus) -> CaseOutcome:
    """Dask task: one case on the worker's machine (engine, GPU); returns its outcome to the client."""
    from distributed import get_client, get_worker

    worker = get_worker()
    engine = docker_client()
    alive = set(get_client().scheduler_info()["workers"])
    if remove_orphaned_containers(engine, settings.runs_label, alive):
        remove_idle_cgroups()
    kind, image = source[0], source[1]
    reference = source[2]
    if kind != "image" and (image not in _LOADED_IMAGES or not image_exists(engine, image)):
        try:
            if kind == "archive_path":
                loaded = load_image_archive(engine, Path(source[2]), team=team)
            else:
                with tempfile.TemporaryDirectory(prefix="flare-eval-") as scratch:
                    archive = Path(scratch) / source[2]
                    archive.write_bytes(source[3])
                    loaded = load_image_archive(engine, archive, team=team)
        except InvalidSubmissionError as exc:
            return _invalid_submission(Submission(team, image=reference), case, str(exc))
        if loaded != image:
            return _invalid_submission(Submission(team, image=reference), case,
                                       f"the archive now holds image {loaded}, not {image}")
        _LOADED_IMAGES.add(image)
    gpu = _select_gpu(os.environ.get("FLARE_EVAL_GPU", gpus if gpus is not None else "none"))
    try:
        if isinstance(input_data, bytes):
            with tempfile.TemporaryDirectory(prefix="flare-eval-") as scratch:
                staged = Path(scratch) / input_name
                staged.write_bytes(input_data)
                return execute_case(engine, image, team, case, staged, settings, gpu, socket.gethostname(),
                                    worker.address, reference=reference)
        return execute_case(engine, image, team, case, Path(input_data), settings, gpu, socket.gethostname(),
                            worker.address, reference=reference)
    finally:
        if gpu is not None:
            gpu.close()


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


@dataclass
class CaseOutcome:
    """Everything one case produced, wherever it ran; `record_case` writes it into the runs folder."""

    row: dict
    samples: pd.DataFrame
    log: str
    prediction: bytes | None


@dataclass(frozen=True)
class _CaseSettings:
    """What every case of a run shares (picklable, for Dask workers)."""

    interface: ContainerInterface
    limits: ContainerLimits
    runs_label: str
    allowance_mib: float
    interval_s: float
    max_output_bytes: int
    gpu_memory: str = "container"


def execute_case(client, image: str, team: str, case: str, image_path: Path, settings: _CaseSettings,
                 gpu: NvmlGpu | None, host: str, worker: str = "", *, reference: str = "") -> CaseOutcome:
    """Run one case in a container on this machine's engine and gather what it produced.

    ``image`` is the image ID the container runs; ``reference`` (the archive
    or tag the team gave) is recorded beside it.
    """
    interface, limits = settings.interface, settings.limits
    n_cpus = os.cpu_count() or 1
    runs_dir = Path(settings.runs_label)
    scratch_root = runs_dir / SCRATCH if runs_dir.is_dir() else None  # a Dask worker may not see the runs folder
    if scratch_root is not None:
        scratch_root.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{team}-{case}-", dir=scratch_root))
    try:
        input_dir, output_dir, kept_dir = (scratch / name for name in ("inputs", "outputs", "kept"))
        input_dir.mkdir()
        output_dir.mkdir()
        # Containers may run as any user; they must be able to write their outputs.
        output_dir.chmod(0o777)
        staged = input_dir / interface.input_name.format(case=case)
        _stage_input(image_path, staged)
        n_voxels = read_header(staged).n_voxels
        max_bytes = min(settings.max_output_bytes, _OUTPUT_BYTES_PER_VOXEL * n_voxels + _OUTPUT_HEADER_BYTES)
        run = run_container(client, image, team=team, case=case, input_dir=input_dir, output_dir=output_dir,
                            interface=interface, limits=limits, gpu=gpu, runs_label=settings.runs_label,
                            interval_s=settings.interval_s, worker=worker, gpu_memory=settings.gpu_memory)
        kept, dropped, refused = keep_outputs(output_dir, interface.output_name.replace("{case}", glob_literal(case)),
                                              kept_dir,
                                              interface.prediction_name(case), max_bytes=max_bytes,
                                              max_voxels=n_voxels)
        prediction = None
        if kept is not None:
            problem = normalise_prediction(kept)
            if problem:
                dropped.append(f"{printable(kept.name)}: {printable(problem)}")
                refused = True
            else:
                prediction = kept.read_bytes()
    finally:
        _remove_tree(scratch)
    summary = summarize_run(run.times_s, run.cpu_time_s, run.gpu_mib, time_s=run.time_s,
                            total_cpu_s=run.total_cpu_s, n_cpus=n_cpus, allowance_mib=settings.allowance_mib)
    log = run.logs
    if run.start_error:
        log += f"\n[flare-eval] {run.start_error}\n"
    if run.engine_error:
        log += f"\n[flare-eval] {run.engine_error}\n"
    if run.volumes:
        log += (f"\n[flare-eval] the image declares VOLUME {', '.join(map(printable, run.volumes))}: anonymous "
                "volumes were removed with the container\n")
    if dropped:
        log += "\n[flare-eval] dropped from the output folder:\n" + "\n".join(f"  {line}" for line in dropped) + "\n"
    if run.timed_out:
        log += f"\n[flare-eval] killed after the {limits.timeout_s} s timeout\n"
    row = {
        "team": team, "case": case, "time_s": summary.time_s, "engine_time_s": run.engine_time_s,
        "auc_gpu_mib_s": summary.auc_gpu_mib_s,
        "auc_cpu_pct_s": summary.auc_cpu_pct_s, "max_gpu_mib": summary.max_gpu_mib,
        "max_cpu_pct": summary.max_cpu_pct, "gpu_measured": gpu is not None, "gpu_mode": run.gpu_mode or GPU_MODE_NONE,
        "exit_code": run.exit_code, "status": case_status(run, prediction is not None, refused),
        "n_samples": summary.n_samples, "image": reference or image, "image_id": image, "host": host,
        "worker": worker, "n_cpus": n_cpus, "gpu_name": gpu.name if gpu else "",
        "gpu_driver": gpu.driver if gpu else "", "started_at": run.started_at,
    }
    return CaseOutcome(row=row, samples=_samples_table(run, n_cpus), log=log, prediction=prediction)


def record_case(outcome: CaseOutcome, team_dir: Path, output_name: str) -> None:
    """Write a case's prediction, samples and log, then its resources row, which marks it finished."""
    case = outcome.row["case"]
    if outcome.prediction is not None:
        target = predictions_dir(team_dir) / output_name
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(outcome.prediction)
        os.replace(temporary, target)
    write_table(outcome.samples, samples_path(team_dir, case))
    log = log_path(team_dir, case)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(outcome.log, encoding="utf-8", errors="backslashreplace")
    append_rows(pd.DataFrame([outcome.row], columns=RESOURCE_COLUMNS), resources_path(team_dir))

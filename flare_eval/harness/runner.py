"""Run every team's container on every case, one at a time, and record what it used.

Layout of the runs folder (one sub-folder per team)::

    RUNS/<team>/resources.csv        one row per case, appended the moment the case ends
    RUNS/<team>/samples/<case>.csv   the 0.1 s samples: time_s, cpu_time_s, cpu_pct, gpu_mib
    RUNS/<team>/logs/<case>.log      the container's output, then what the harness dropped
    RUNS/<team>/predictions/<case>.nii.gz   (or the format of the protocol's container interface)

A case is finished when its row is in ``resources.csv``; a rerun skips finished
cases (unless ``force``), so a killed harness loses at most the case in flight.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import signal
import socket
import stat
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import append_rows, case_id, convert_image, write_table
from ..protocol import ContainerInterface, Protocol, load_protocol
from .docker import (
    ContainerError,
    ContainerLimits,
    ContainerRun,
    docker_client,
    image_exists,
    load_image_archive,
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
    "record_case",
    "CaseOutcome",
    "RESOURCE_COLUMNS",
    "STATUS_OK",
    "STATUS_TIMEOUT",
    "STATUS_CRASHED",
    "STATUS_NO_OUTPUT",
]

STATUS_OK = "ok"
STATUS_TIMEOUT = "timeout"
STATUS_CRASHED = "crashed"
STATUS_NO_OUTPUT = "no_output"
RESOURCE_COLUMNS = [
    "team", "case", "time_s", "auc_gpu_mib_s", "auc_cpu_pct_s", "max_gpu_mib", "max_cpu_pct",
    "gpu_measured", "gpu_mode", "exit_code", "status", "n_samples", "image", "host", "worker", "n_cpus",
    "gpu_name", "gpu_driver", "started_at",
]
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CHANNEL = "_0000"
DEFAULT_MAX_OUTPUT_BYTES = 2 * 1024**3


class HarnessWarning(UserWarning):
    """A run went on, but something deserves attention (no GPU, dropped files, stale containers)."""


@dataclass(frozen=True)
class Submission:
    """One team's algorithm: an image archive to load, or an image the engine already has."""

    team: str
    archive: Path | None = None
    image: str | None = None


def find_submissions(folder: str | Path) -> list[Submission]:
    """One `Submission` per image archive (``<team>.tar.gz``, ``.tgz`` or ``.tar``) in ``folder``.

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
    max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
) -> tuple[Path | None, list[str]]:
    """Move the expected prediction out of a container's output folder; report everything else.

    Only a regular, non-empty file of at most ``max_bytes`` whose name is
    ``expected`` (or matches it, when it is a pattern such as ``*.mha``; then
    exactly one file may match) is kept, as ``predictions_dir/kept_name``.
    Links, folders and other names are not.

    Returns
    -------
    kept : Path or None
        Where the prediction now lies.
    dropped : list of str
        One line per entry that was not kept, with the reason.
    """
    entries = sorted(output_dir.iterdir())
    matching = [e for e in entries if fnmatch.fnmatchcase(e.name, expected)]
    kept, dropped = None, []
    for entry in entries:
        info = entry.lstat()
        if stat.S_ISLNK(info.st_mode):
            dropped.append(f"{entry.name}: a symbolic link, not a file")
        elif not stat.S_ISREG(info.st_mode):
            dropped.append(f"{entry.name}: not a regular file")
        elif entry not in matching:
            dropped.append(f"{entry.name}: unexpected name (expected {expected})")
        elif len(matching) > 1:
            dropped.append(f"{entry.name}: one of {len(matching)} files matching {expected}, expected one")
        elif info.st_size == 0:
            dropped.append(f"{entry.name}: empty file")
        elif info.st_size > max_bytes:
            dropped.append(f"{entry.name}: {info.st_size} bytes, more than the limit of {max_bytes}")
        else:
            predictions_dir.mkdir(parents=True, exist_ok=True)
            kept = predictions_dir / kept_name
            shutil.move(str(entry), str(kept))
    return kept, dropped


def case_status(run: ContainerRun, has_prediction: bool) -> str:
    """``timeout``, ``crashed`` (non-zero exit or killed for memory), ``no_output`` or ``ok``."""
    if run.timed_out:
        return STATUS_TIMEOUT
    if run.exit_code != 0 or run.oom_killed:
        return STATUS_CRASHED
    return STATUS_OK if has_prediction else STATUS_NO_OUTPUT


def _finished_cases(resources_csv: Path) -> set[str]:
    if not resources_csv.exists() or resources_csv.stat().st_size == 0:
        return set()
    return set(pd.read_csv(resources_csv, dtype={"case": str}, usecols=["case"])["case"])


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
    """Put the case's image where the container expects it, converting the format if it differs."""
    source_extension = image_path.name[len(case_id(image_path) or ""):]
    target_extension = target.name[len(case_id(target) or ""):]
    if source_extension != target_extension:
        convert_image(image_path, target)
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
        Largest prediction file kept.
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

    Returns
    -------
    pandas.DataFrame
        All rows of every team's ``resources.csv`` (earlier runs included).

    Raises
    ------
    ContainerError
        If no engine answers or an image cannot be loaded.
    """
    from tqdm import tqdm

    protocol = load_protocol(protocol)
    limits = limits or ContainerLimits()
    if limits.timeout_s is None:
        # A stuck container must not stall the evaluation: the protocol's time limit (FLARE: 3600 s) applies.
        limits = replace(limits, timeout_s=protocol.time_limit_s)
    interface = interface or protocol.container
    if isinstance(submissions, (str, Path)):
        submissions = find_submissions(submissions)
    cases = find_cases(inputs_dir)
    runs_dir = Path(runs_dir).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    settings = _CaseSettings(interface, limits, str(runs_dir), protocol.gpu_allowance_mib, interval_s, max_output_bytes)
    engine = docker_client()
    stale = remove_stale_containers(engine, settings.runs_label)
    remove_idle_cgroups()
    if stale:
        warnings.warn(f"removed {len(stale)} container(s) left by an interrupted run: {', '.join(stale)}",
                      HarnessWarning, stacklevel=2)
    todo = []
    for submission in submissions:
        done = set() if force else _finished_cases(runs_dir / submission.team / "resources.csv")
        todo.extend((submission, case) for case in cases if case not in done)
    bar = tqdm(total=len(todo), unit="case", disable=None if progress is None else not progress)

    def record(outcome: CaseOutcome) -> None:
        team, case = outcome.row["team"], outcome.row["case"]
        record_case(outcome, runs_dir / team, interface.prediction_name(case))
        bar.set_description(f"{team} {case}")
        bar.set_postfix(last=f"{outcome.row['status']} {outcome.row['time_s']:.1f}s")
        bar.update(1)

    try:
        with _sigterm_as_interrupt():
            if scheduler is None:
                _run_here(engine, todo, cases, settings, gpus, record)
            else:
                _run_on_cluster(scheduler, ship, todo, cases, settings, gpus, record)
    finally:
        bar.close()
        if scheduler is not None:
            # Containers of workers lost mid-case, where they share this engine.
            remove_stale_containers(engine, settings.runs_label)
    frames = [pd.read_csv(p, dtype={"case": str, "team": str}) for p in sorted(runs_dir.glob("*/resources.csv"))]
    resources = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RESOURCE_COLUMNS)
    _warn_if_machines_differ(resources)
    return resources


def _run_here(engine, todo, cases, settings, gpus, record) -> None:
    gpu = _select_gpu(gpus)
    host = socket.gethostname()
    images: dict[str, str] = {}
    try:
        for submission, case in todo:
            if submission.team not in images:
                images[submission.team] = _resolve_image(engine, submission)
            record(execute_case(engine, images[submission.team], submission.team, case, cases[case], settings,
                                gpu, host))
    finally:
        if gpu is not None:
            gpu.close()


def _run_on_cluster(scheduler, ship, todo, cases, settings, gpus, record) -> None:
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
                sources[submission.team] = ("image", submission.image)
            elif ship == "paths":
                sources[submission.team] = ("archive_path", str(submission.archive.resolve()))
            else:
                data = client.scatter(submission.archive.read_bytes(), broadcast=True)
                sources[submission.team] = ("archive_bytes", data, submission.archive.name)
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
    finally:
        if client is not scheduler:
            client.close()


_LOADED_IMAGES: dict[str, str] = {}


def _case_on_worker(team: str, source: tuple, case: str, input_name: str, input_data: str | bytes,
                    settings: _CaseSettings, gpus) -> CaseOutcome:
    """Dask task: one case on the worker's machine (engine, GPU); returns its outcome to the client."""
    from distributed import get_client, get_worker

    worker = get_worker()
    engine = docker_client()
    alive = set(get_client().scheduler_info()["workers"])
    if remove_orphaned_containers(engine, settings.runs_label, alive):
        remove_idle_cgroups()
    kind = source[0]
    if kind == "image":
        image = source[1]
    else:
        key = f"{team}:{source[1] if kind == 'archive_path' else source[2]}"
        if key not in _LOADED_IMAGES or not image_exists(engine, _LOADED_IMAGES[key]):
            if kind == "archive_path":
                _LOADED_IMAGES[key] = load_image_archive(engine, Path(source[1]))
            else:
                with tempfile.TemporaryDirectory(prefix="flare-eval-") as scratch:
                    archive = Path(scratch) / source[2]
                    archive.write_bytes(source[1])
                    _LOADED_IMAGES[key] = load_image_archive(engine, archive)
        image = _LOADED_IMAGES[key]
    gpu = _select_gpu(os.environ.get("FLARE_EVAL_GPU", gpus if gpus is not None else "none"))
    try:
        if isinstance(input_data, bytes):
            with tempfile.TemporaryDirectory(prefix="flare-eval-") as scratch:
                staged = Path(scratch) / input_name
                staged.write_bytes(input_data)
                return execute_case(engine, image, team, case, staged, settings, gpu, socket.gethostname(),
                                    worker.address)
        return execute_case(engine, image, team, case, Path(input_data), settings, gpu, socket.gethostname(),
                            worker.address)
    finally:
        if gpu is not None:
            gpu.close()


def _warn_if_machines_differ(resources: pd.DataFrame) -> None:
    """Times and AUCs are comparable only from identical machines: say when they are not."""
    columns = [c for c in ("gpu_name", "gpu_driver", "n_cpus") if c in resources]
    if resources.empty or not columns:
        return
    distinct = resources[columns].astype(str).replace("nan", "").drop_duplicates()
    if len(distinct) > 1:
        described = "; ".join(", ".join(f"{c}={v}" for c, v in row.items()) for _, row in distinct.iterrows())
        warnings.warn(f"cases ran on different machines ({described}): times and AUCs may not be comparable",
                      HarnessWarning, stacklevel=3)


def _resolve_image(client, submission: Submission) -> str:
    if submission.archive is not None:
        return load_image_archive(client, submission.archive)
    if submission.image and image_exists(client, submission.image):
        return submission.image
    raise ContainerError(f"team {submission.team}: image {submission.image!r} is not loaded on the engine")


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


def execute_case(client, image: str, team: str, case: str, image_path: Path, settings: _CaseSettings,
                 gpu: NvmlGpu | None, host: str, worker: str = "") -> CaseOutcome:
    """Run one case in a container on this machine's engine and gather what it produced."""
    interface, limits = settings.interface, settings.limits
    n_cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="flare-eval-") as scratch:
        input_dir, output_dir, kept_dir = (Path(scratch) / name for name in ("inputs", "outputs", "kept"))
        input_dir.mkdir()
        output_dir.mkdir()
        # Containers may run as any user; they must be able to write their outputs.
        output_dir.chmod(0o777)
        _stage_input(image_path, input_dir / interface.input_name.format(case=case))
        run = run_container(client, image, team=team, case=case, input_dir=input_dir, output_dir=output_dir,
                            interface=interface, limits=limits, gpu=gpu, runs_label=settings.runs_label,
                            interval_s=settings.interval_s, worker=worker)
        kept, dropped = keep_outputs(output_dir, interface.output_name.replace("{case}", case), kept_dir,
                                     interface.prediction_name(case), max_bytes=settings.max_output_bytes)
        prediction = kept.read_bytes() if kept is not None else None
    summary = summarize_run(run.times_s, run.cpu_time_s, run.gpu_mib, time_s=run.time_s,
                            total_cpu_s=run.total_cpu_s, n_cpus=n_cpus, allowance_mib=settings.allowance_mib)
    log = run.logs
    if dropped:
        log += "\n[flare-eval] dropped from the output folder:\n" + "\n".join(f"  {line}" for line in dropped) + "\n"
    if run.timed_out:
        log += f"\n[flare-eval] killed after the {limits.timeout_s} s timeout\n"
    row = {
        "team": team, "case": case, "time_s": summary.time_s, "auc_gpu_mib_s": summary.auc_gpu_mib_s,
        "auc_cpu_pct_s": summary.auc_cpu_pct_s, "max_gpu_mib": summary.max_gpu_mib,
        "max_cpu_pct": summary.max_cpu_pct, "gpu_measured": gpu is not None, "gpu_mode": run.gpu_mode or GPU_MODE_NONE,
        "exit_code": run.exit_code, "status": case_status(run, prediction is not None),
        "n_samples": summary.n_samples, "image": image, "host": host, "worker": worker, "n_cpus": n_cpus,
        "gpu_name": gpu.name if gpu else "", "gpu_driver": gpu.driver if gpu else "", "started_at": run.started_at,
    }
    return CaseOutcome(row=row, samples=_samples_table(run, n_cpus), log=log, prediction=prediction)


def record_case(outcome: CaseOutcome, team_dir: Path, output_name: str) -> None:
    """Write a case's prediction, samples and log, then its resources row, which marks it finished."""
    case = outcome.row["case"]
    if outcome.prediction is not None:
        target = team_dir / "predictions" / output_name
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(outcome.prediction)
        os.replace(temporary, target)
    write_table(outcome.samples, team_dir / "samples" / f"{case}.csv")
    log_path = team_dir / "logs" / f"{case}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(outcome.log, encoding="utf-8")
    append_rows(pd.DataFrame([outcome.row], columns=RESOURCE_COLUMNS), team_dir / "resources.csv")

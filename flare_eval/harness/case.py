"""One case of one team: input staged, container run and sampled, outputs kept, its row recorded.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
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
    STATUS_TIMEOUT,
    HarnessWarning,
)
from ..io import (
    append_rows,
    case_id,
    convert_image,
    read_header,
    write_table,
)
from ..layout import RESOURCE_COLUMNS, SCRATCH, log_path, predictions_dir, resources_path, samples_path
from ..protocol import ContainerInterface
from .docker import (
    ContainerLimits,
    ContainerRun,
    run_container,
)
from .outputs import (
    _OUTPUT_BYTES_PER_VOXEL,
    _OUTPUT_HEADER_BYTES,
    glob_literal,
    keep_outputs,
    normalise_prediction,
    printable,
)
from .resources import cpu_percent, summarize_run
from .sampler import GPU_MODE_NONE, GpuUnavailable, NvmlGpu, default_gpu_index
from .submissions import Submission


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


def _invalid_submission(submission: Submission, case: str, message: str) -> CaseOutcome:
    return _not_run(submission, case, STATUS_INVALID_SUBMISSION, f"invalid submission, not run: {message}")


def _engine_failed(submission: Submission, case: str, message: str, image_id: str = "") -> CaseOutcome:
    """A case not run because the engine (or the Dask workers) failed: ``engine_error``, run again on a rerun."""
    return _not_run(submission, case, STATUS_ENGINE_ERROR, f"not run: {message}", image_id=image_id)


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

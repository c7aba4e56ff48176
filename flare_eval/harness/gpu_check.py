"""Checking GPU memory measurement on the evaluation machine with a CUDA workload of known use.

``flare-eval gpu-check`` (and ``make gpu-check``) runs, before a challenge: the
NVIDIA driver through NVML, the Docker engine's NVIDIA runtime, then the
workload `cuda/alloc_steps.cu` (compiled here with ``nvcc``, statically against
the CUDA runtime) on the host and in a container, and prints what the harness
measured against what the workload allocated. Where there is no GPU it says so
and stops.

The workload prints the time of each of its allocations, so the expected
curve is known: ``context + k * step_mib`` from the ``k``-th allocation on,
where ``context`` is the CUDA context's own memory, measured by a run that
allocates nothing. AUC_GPU is expected to be the integral of
``max(0, curve - allowance)`` over the workload's own timestamps.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import FlareEvalError
from .resources import gpu_auc_mib_s

__all__ = [
    "GpuCheckError",
    "WorkloadPlan",
    "Measurement",
    "build_workload",
    "workload_events",
    "expected_measurement",
    "run_gpu_check",
]

#: Relative difference tolerated between measured and expected (NVML rounds to pages; sampling at 0.1 s).
TOLERANCE = 0.05


class GpuCheckError(FlareEvalError, RuntimeError):
    """A check cannot run (no GPU, no nvcc, no NVIDIA runtime); the message says what is missing."""


@dataclass(frozen=True)
class WorkloadPlan:
    """What the workload allocates: ``n_steps`` steps of ``step_mib`` every ``step_s``, held ``hold_s``."""

    step_mib: int = 1024
    n_steps: int = 4
    step_s: float = 1.0
    hold_s: float = 2.0

    def arguments(self) -> list[str]:
        return [str(self.step_mib), str(self.n_steps), str(self.step_s), str(self.hold_s)]


@dataclass(frozen=True)
class Measurement:
    """Largest GPU memory (MiB) and AUC_GPU (MiB s above the allowance) of one run."""

    max_gpu_mib: float
    auc_gpu_mib_s: float


def build_workload(folder: str | Path) -> Path:
    """Compile the workload with ``nvcc`` (CUDA runtime linked statically) into ``folder``; return the binary.

    Raises
    ------
    GpuCheckError
        If ``nvcc`` is missing or the compilation fails.
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise GpuCheckError("nvcc is not installed: the CUDA workload is compiled from source (install the CUDA "
                            "toolkit, e.g. Debian's nvidia-cuda-toolkit)")
    source = resources.files("flare_eval.harness") / "cuda" / "alloc_steps.cu"
    binary = Path(folder) / "alloc_steps"
    with resources.as_file(source) as path:
        result = subprocess.run([nvcc, "-O2", "-cudart", "static", "-o", str(binary), str(path)],
                                capture_output=True, text=True)
    if result.returncode != 0:
        raise GpuCheckError(f"nvcc could not compile {source.name}: {result.stderr.strip()[-2000:]}")
    return binary


def workload_events(output: str) -> list[tuple[str, float, float]]:
    """The ``(name, seconds since start, MiB allocated)`` events the workload printed."""
    events = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "event":
            events.append((parts[1], float(parts[2]), float(parts[3])))
    return events


def expected_measurement(events: list[tuple[str, float, float]], context_mib: float,
                         allowance_mib: float) -> Measurement:
    """What a perfect sampler measures for the printed events: the step curve plus the context.

    Examples
    --------
    >>> events = [("context", 0.0, 0), ("allocated", 1.0, 2048), ("allocated", 2.0, 4096), ("freed", 4.0, 0)]
    >>> expected_measurement(events, 500.0, 2048.0)
    Measurement(max_gpu_mib=4596.0, auc_gpu_mib_s=5596.0)
    """
    times = np.array([t for _, t, _ in events])
    curve = np.array([context_mib + mib for _, _, mib in events])
    above = np.maximum(0.0, curve[:-1] - allowance_mib)
    return Measurement(float(curve.max()), float(np.sum(above * np.diff(times))))


def workload_image(client, binary: Path, tag: str, changes: tuple[str, ...] = ()) -> str:
    """Import a minimal image holding the workload and the shared libraries it needs; return its ID."""
    libraries = []
    for line in subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            libraries.append(Path(path))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(binary, arcname="alloc_steps")
        for library in libraries:
            tar.add(library.resolve(), arcname=str(library).lstrip("/"))
    repository, _, name = tag.rpartition(":")
    client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=name, changes=list(changes))
    return client.images.get(tag).id


class _ProcessOnly:
    """The sampler's CPU source for a process on the host: no cgroup, just its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def usage_s(self) -> None:
        return None

    def pids(self) -> set[int]:
        return {self.pid}


def run_on_host(binary: Path, gpu, plan: WorkloadPlan, allowance_mib: float) -> tuple[Measurement, str]:
    """Run the workload as a host process, sampling its own GPU memory every 0.1 s."""
    from .sampler import ResourceSampler

    process = subprocess.Popen([str(binary), *plan.arguments()], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    sampler = ResourceSampler(cpu=_ProcessOnly(process.pid), gpu=gpu)
    sampler.start()
    output, errors = process.communicate(timeout=600)
    sampler.stop()
    if process.returncode != 0:
        raise GpuCheckError(f"the workload failed on the host (exit code {process.returncode}): {errors.strip()}")
    gpu_mib = np.asarray(sampler.gpu_mib)
    return Measurement(float(gpu_mib.max(initial=0.0)), gpu_auc_mib_s(sampler.times_s, gpu_mib, allowance_mib)), \
        output


def run_gpu_check(gpu_index: int = 0, plan: WorkloadPlan | None = None, *, allowance_mib: float = 2048.0,
                  report=print) -> bool:
    """Run every check, reporting each line through ``report``; return whether all passed.

    Raises
    ------
    GpuCheckError
        When a check cannot run at all: no GPU (or no driver), no ``nvcc``.
    """
    from .docker import docker_client
    from .sampler import GpuUnavailable, NvmlGpu

    plan = plan or WorkloadPlan()
    try:
        gpu = NvmlGpu(gpu_index)
    except GpuUnavailable as exc:
        raise GpuCheckError(f"no GPU: {exc}. GPU memory cannot be measured on this machine; runs here record "
                            "gpu_measured = false and AUC_GPU = 0") from exc
    report(f"GPU {gpu.index}: {gpu.name}, driver {gpu.driver}")
    passed = True
    with tempfile.TemporaryDirectory(prefix="flare-eval-gpu-check-") as scratch:
        binary = build_workload(scratch)
        report(f"workload compiled: {binary.name} ({plan.n_steps} x {plan.step_mib} MiB every {plan.step_s} s, "
               f"held {plan.hold_s} s)")
        context, _ = run_on_host(binary, gpu, WorkloadPlan(plan.step_mib, 0, 0.0, 2.0), allowance_mib)
        report(f"CUDA context alone: {context.max_gpu_mib:.0f} MiB")
        measured, output = run_on_host(binary, gpu, plan, allowance_mib)
        expected = expected_measurement(workload_events(output), context.max_gpu_mib, allowance_mib)
        passed &= _compare("host", measured, expected, report)
        engine = docker_client()
        runtimes = engine.info().get("Runtimes", {})
        if "nvidia" not in runtimes:
            report(f"FAIL container: the engine has no NVIDIA runtime (runtimes: {sorted(runtimes)}); install the "
                   "NVIDIA Container Toolkit")
            gpu.close()
            return False
        passed &= _check_in_container(engine, binary, gpu, plan, context.max_gpu_mib, allowance_mib, scratch,
                                      report)
    gpu.close()
    return passed


def _check_in_container(engine, binary, gpu, plan, context_mib, allowance_mib, scratch, report) -> bool:
    from dataclasses import replace

    from ..io import write_label_map
    from ..protocol import load_protocol
    from .runner import Submission, run_containers

    tag = f"flare-eval-gpu-check:{int(time.time())}"
    image_id = workload_image(engine, binary, tag)
    inputs = Path(scratch) / "inputs"
    write_label_map(np.zeros((4, 4, 4), np.uint8), np.eye(4), inputs / "gpucheck_0000.nii.gz")
    interface = replace(load_protocol("flare22").container, command=("/alloc_steps", *plan.arguments()))
    try:
        resources_table = run_containers([Submission("gpu-check", image=tag)], inputs, Path(scratch) / "runs",
                                         gpus=gpu.index, interface=interface, progress=False, keep_images=True)
    finally:
        engine.images.remove(image_id, force=True)
    row = resources_table.iloc[-1]
    log = (Path(scratch) / "runs" / "gpu-check" / "logs" / "gpucheck.log").read_text()
    if row["exit_code"] != 0:
        report(f"FAIL container: the workload exited {row['exit_code']}: {log.strip()[-500:]}")
        return False
    expected = expected_measurement(workload_events(log), context_mib, allowance_mib)
    measured = Measurement(float(row["max_gpu_mib"]), float(row["auc_gpu_mib_s"]))
    return _compare(f"container ({row['gpu_mode']})", measured, expected, report)


def _compare(where: str, measured: Measurement, expected: Measurement, report) -> bool:
    ok = True
    for name, got, want in (("max GPU MiB", measured.max_gpu_mib, expected.max_gpu_mib),
                            ("AUC_GPU MiB s", measured.auc_gpu_mib_s, expected.auc_gpu_mib_s)):
        good = abs(got - want) <= TOLERANCE * max(abs(want), 1.0)
        ok &= good
        report(f"{'ok  ' if good else 'FAIL'} {where}: {name} measured {got:.0f}, expected {want:.0f}")
    return ok

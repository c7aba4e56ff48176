"""Sampling a container's CPU time (cgroup accounting) and GPU memory (NVML) every 0.1 s.

CPU time is read from the cgroup that holds the container: cgroup v1
``cpuacct.usage`` (ns) or cgroup v2 ``cpu.stat`` ``usage_usec``. The harness
starts each container under a cgroup parent of its own, which outlives the
container; its counter includes every process the container ever ran, also
short-lived children that a walk of the live process tree misses, and can still
be read after the container has exited.

GPU memory comes from NVML (``nvidia-ml-py``): the memory of the container's
processes where the driver reports per-process use, otherwise the device's
used memory above a baseline taken just before the container starts. The
protocol setting ``gpu_memory: device_total`` reads instead, as the official
FLARE script did, the whole device's used memory with no baseline (idle driver
memory and other processes on the GPU included).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CgroupCpu",
    "NvmlGpu",
    "GpuUnavailable",
    "default_gpu_index",
    "ResourceSampler",
    "remove_idle_cgroups",
    "GPU_MODE_PER_PROCESS",
    "GPU_MODE_DEVICE",
    "GPU_MODE_DEVICE_TOTAL",
    "GPU_MODE_NONE",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
GPU_MODE_PER_PROCESS = "per_process"
GPU_MODE_DEVICE = "device_minus_baseline"
GPU_MODE_DEVICE_TOTAL = "device_total"
GPU_MODE_NONE = "none"
_MIB = 1024 * 1024


class GpuUnavailable(RuntimeError):
    """NVML or the requested GPU cannot be used; the message says why."""


def cgroup_relative_path(cgroup_parent: str, driver: str) -> str:
    """Where Docker puts a cgroup parent, relative to a hierarchy's root.

    With the ``cgroupfs`` driver the parent is a path; with ``systemd`` it is a
    slice name whose dashes denote nesting (``a-b.slice`` lives in ``a.slice``).

    Examples
    --------
    >>> cgroup_relative_path("/flare-eval/x1", "cgroupfs")
    'flare-eval/x1'
    >>> cgroup_relative_path("flare_eval-x1.slice", "systemd")
    'flare_eval.slice/flare_eval-x1.slice'
    """
    if driver == "systemd":
        name = cgroup_parent[: -len(".slice")]
        parts = name.split("-")
        return "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))
    return cgroup_parent.strip("/")


@dataclass
class CgroupCpu:
    """Cumulative CPU time and process ids of one cgroup, cgroup v1 or v2.

    Parameters
    ----------
    relative_path : str
        The cgroup's path below each hierarchy's root (see `cgroup_relative_path`).
    root : Path
        Mount point of the cgroup file system.
    """

    relative_path: str
    root: Path = CGROUP_ROOT
    version: int = field(init=False)

    def __post_init__(self) -> None:
        self.version = 2 if (self.root / "cgroup.controllers").exists() else 1

    def _directories(self) -> list[Path]:
        if self.version == 2:
            return [self.root / self.relative_path]
        return [self.root / name / self.relative_path for name in ("cpuacct", "cpu,cpuacct", "cpu")]

    def usage_s(self) -> float | None:
        """CPU time used so far in s, or None while the cgroup does not exist."""
        for directory in self._directories():
            try:
                if self.version == 2:
                    for line in (directory / "cpu.stat").read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "usage_usec":
                            return int(value) / 1e6
                else:
                    return int((directory / "cpuacct.usage").read_text()) / 1e9
            except (FileNotFoundError, ProcessLookupError, OSError):
                continue
        return None

    def pids(self) -> set[int]:
        """Process ids in the cgroup and its descendants (host pid namespace)."""
        found: set[int] = set()
        directory = self._directories()[0]
        if self.version == 1:
            directory = self.root / "pids" / self.relative_path
        try:
            for procs in directory.rglob("cgroup.procs"):
                found.update(int(v) for v in procs.read_text().split())
        except OSError:
            pass
        return found

    def remove(self) -> None:
        """Remove the (empty) cgroup directories left after the container ended; best effort.

        Ancestors inside ``relative_path`` go too when empty, so nothing is left behind.
        """
        hierarchies = [self.root] if self.version == 2 else [p for p in self.root.iterdir() if p.is_dir()]
        for hierarchy in hierarchies:
            directory = hierarchy / self.relative_path
            if directory.is_dir():
                for sub in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if sub.is_dir():
                        _rmdir_quietly(sub)
            for level in [directory, *directory.parents][: len(Path(self.relative_path).parts)]:
                _rmdir_quietly(level)


def remove_idle_cgroups(parent: str = "flare-eval", root: Path = CGROUP_ROOT) -> int:
    """Remove the empty cgroups left under ``parent`` by harnesses that were killed; return how many.

    Only cgroups without processes can be removed (the kernel refuses the
    others), so those of runs in progress are untouched.
    """
    if not root.is_dir():
        return 0
    hierarchies = [root] if (root / "cgroup.controllers").exists() else [p for p in root.iterdir() if p.is_dir()]
    removed = 0
    for hierarchy in hierarchies:
        folder = hierarchy / parent
        if not folder.is_dir():
            continue
        for group in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if group.is_dir():
                try:
                    group.rmdir()
                    removed += 1
                except OSError:
                    pass
    return removed


def _rmdir_quietly(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


class NvmlGpu:
    """One NVIDIA GPU through NVML.

    Raises
    ------
    GpuUnavailable
        If NVML cannot be loaded (no driver) or the index does not exist.
    """

    def __init__(self, index: int) -> None:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
            raise GpuUnavailable("nvidia-ml-py is not installed") from exc
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise GpuUnavailable(f"NVML cannot be initialised ({exc}): no NVIDIA driver on this machine") from exc
        count = pynvml.nvmlDeviceGetCount()
        if not 0 <= index < count:
            pynvml.nvmlShutdown()
            raise GpuUnavailable(f"GPU index {index} does not exist; NVML finds {count} GPU(s)")
        self.index = index
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.name = _text(pynvml.nvmlDeviceGetName(self._handle))
        self.driver = _text(pynvml.nvmlSystemGetDriverVersion())

    def used_mib(self) -> float:
        """Memory in use on the whole device, MiB."""
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / _MIB

    def processes_mib(self, pids: set[int]) -> float | None:
        """Memory used by the given processes, MiB; None where the driver does not report it."""
        nvml = self._nvml
        total = 0.0
        try:
            running = list(nvml.nvmlDeviceGetComputeRunningProcesses(self._handle))
            running += list(nvml.nvmlDeviceGetGraphicsRunningProcesses(self._handle))
        except nvml.NVMLError:
            return None
        for process in running:
            if process.pid in pids:
                if process.usedGpuMemory is None:
                    return None
                total += process.usedGpuMemory / _MIB
        return total

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def default_gpu_index() -> int | None:
    """Index of the first GPU NVML finds, or None when there is none (or no driver)."""
    try:
        gpu = NvmlGpu(0)
    except GpuUnavailable:
        return None
    gpu.close()
    return 0


@dataclass
class ResourceSampler:
    """Samples CPU time and GPU memory in a background thread at a fixed period.

    Sample ``k`` is taken at ``start + k * interval_s`` on the monotonic clock
    (no drift); the recorded time is the real time of the reading.
    """

    cpu: CgroupCpu
    gpu: NvmlGpu | None = None
    interval_s: float = 0.1
    gpu_memory: str = "container"
    times_s: list[float] = field(default_factory=list)
    cpu_time_s: list[float] = field(default_factory=list)
    gpu_mib: list[float] = field(default_factory=list)
    gpu_mode: str = GPU_MODE_NONE
    _baseline_mib: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _start: float = 0.0

    def start(self) -> float:
        """Take the GPU baseline, start sampling; returns the start time (monotonic s)."""
        if self.gpu is not None and self.gpu_memory == "device_total":
            self.gpu_mode = GPU_MODE_DEVICE_TOTAL
        elif self.gpu is not None:
            self._baseline_mib = self.gpu.used_mib()
            self.gpu_mode = GPU_MODE_PER_PROCESS
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="flare-eval-sampler", daemon=True)
        self._thread.start()
        return self._start

    def stop(self) -> None:
        """Stop sampling (takes one last sample if none was taken)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.times_s:
            self._sample()

    def _run(self) -> None:
        k = 1
        while not self._stop.is_set():
            delay = self._start + k * self.interval_s - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            self._sample()
            k = max(k + 1, int((time.monotonic() - self._start) / self.interval_s) + 1)

    def _sample(self) -> None:
        usage = self.cpu.usage_s()
        now = time.monotonic() - self._start
        if self.times_s and now <= self.times_s[-1]:
            return
        self.times_s.append(now)
        self.cpu_time_s.append(usage if usage is not None else (self.cpu_time_s[-1] if self.cpu_time_s else 0.0))
        if self.gpu is not None:
            self.gpu_mib.append(self._gpu_sample())

    def _gpu_sample(self) -> float:
        if self.gpu_mode == GPU_MODE_DEVICE_TOTAL:
            return self.gpu.used_mib()
        if self.gpu_mode == GPU_MODE_PER_PROCESS:
            used = self.gpu.processes_mib(self.cpu.pids())
            if used is not None:
                return used
            # The driver does not report per-process memory: device use from here on.
            self.gpu_mode = GPU_MODE_DEVICE
        return max(0.0, self.gpu.used_mib() - self._baseline_mib)

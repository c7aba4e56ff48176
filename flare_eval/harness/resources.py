"""Resource metrics of one container run from its samples: pure computation, no I/O.

Conventions:

* Times are seconds on a monotonic clock, measured from the container's start.
* GPU memory samples are instantaneous levels in MiB. ``AUC_GPU`` integrates
  ``max(0, gpu_mib - allowance_mib)`` over the real sample times with the
  trapezoidal rule (the official script summed samples times a nominal 0.1 s,
  which drifts with the real interval).
* CPU samples are averages over the interval since the previous sample, in
  percent of the whole machine (0-100): ``100 * cpu_time / (interval * n_cpus)``,
  from the container's cgroup CPU accounting. Their exact integral is
  ``100 * total_cpu_s / n_cpus``, which is what ``AUC_CPU`` is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CaseResources",
    "cpu_percent",
    "gpu_auc_mib_s",
    "cpu_auc_pct_s",
    "summarize_run",
]


@dataclass(frozen=True)
class CaseResources:
    """Resource use of one case.

    Attributes
    ----------
    time_s : float
        Running time, container start to exit.
    auc_gpu_mib_s : float
        Area under ``max(0, GPU MiB - allowance)`` in MiB s (0 when no GPU was measured).
    auc_cpu_pct_s : float
        Area under the CPU utilization curve in % s (percent of the whole machine).
    max_gpu_mib : float
        Largest GPU memory sample (before the allowance), MiB.
    max_cpu_pct : float
        Largest CPU utilization sample, % of the machine.
    n_samples : int
        Number of samples taken.
    """

    time_s: float
    auc_gpu_mib_s: float
    auc_cpu_pct_s: float
    max_gpu_mib: float
    max_cpu_pct: float
    n_samples: int


def cpu_percent(cpu_time_s: np.ndarray, times_s: np.ndarray, n_cpus: int) -> np.ndarray:
    """CPU utilization over each sampling interval, in percent of the whole machine.

    Parameters
    ----------
    cpu_time_s : (N,) array_like
        Cumulative CPU time of the container (all its processes, all CPUs) at each sample, in s.
    times_s : (N,) array_like
        Sample times in s (strictly increasing).
    n_cpus : int
        Logical CPUs of the machine.

    Returns
    -------
    (N,) ndarray
        Utilization over ``(times_s[i-1], times_s[i]]``; the first entry is the
        average since time 0 (usage 0 at time 0).

    Examples
    --------
    >>> cpu_percent([0.5, 1.5], [1.0, 2.0], n_cpus=2).tolist()
    [25.0, 50.0]
    """
    cpu_time_s = np.asarray(cpu_time_s, dtype=np.float64)
    times_s = np.asarray(times_s, dtype=np.float64)
    if n_cpus < 1:
        raise ValueError(f"n_cpus must be at least 1, got {n_cpus}")
    if cpu_time_s.shape != times_s.shape:
        raise ValueError(f"cpu_time_s and times_s differ in shape: {cpu_time_s.shape} and {times_s.shape}")
    if times_s.size == 0:
        return np.zeros(0)
    intervals = np.diff(times_s, prepend=0.0)
    if np.any(intervals <= 0):
        raise ValueError("times_s must be positive and strictly increasing")
    used = np.diff(cpu_time_s, prepend=0.0)
    return 100.0 * used / (intervals * n_cpus)


def gpu_auc_mib_s(times_s: np.ndarray, gpu_mib: np.ndarray, allowance_mib: float) -> float:
    """Trapezoidal area under ``max(0, gpu_mib - allowance_mib)`` over the sample times, MiB s.

    The curve starts from the first sample (nothing is known before it).

    Examples
    --------
    >>> gpu_auc_mib_s([0.0, 1.0, 2.0], [2048, 4096, 4096], allowance_mib=2048)
    3072.0
    """
    times_s = np.asarray(times_s, dtype=np.float64)
    above = np.maximum(0.0, np.asarray(gpu_mib, dtype=np.float64) - allowance_mib)
    if times_s.size < 2:
        return 0.0
    return float(np.sum((above[1:] + above[:-1]) * np.diff(times_s)) / 2.0)


def cpu_auc_pct_s(total_cpu_s: float, n_cpus: int) -> float:
    """Exact area under the CPU utilization curve, % s, from the total CPU time.

    Examples
    --------
    >>> cpu_auc_pct_s(3.0, n_cpus=4)  # one core busy for 3 s on a 4-CPU machine
    75.0
    """
    return 100.0 * float(total_cpu_s) / n_cpus


def summarize_run(
    times_s: np.ndarray,
    cpu_time_s: np.ndarray,
    gpu_mib: np.ndarray | None,
    *,
    time_s: float,
    total_cpu_s: float,
    n_cpus: int,
    allowance_mib: float,
) -> CaseResources:
    """Resource metrics of one run from its samples.

    Parameters
    ----------
    times_s, cpu_time_s : (N,) array_like
        Sample times and cumulative CPU time at each sample.
    gpu_mib : (N,) array_like or None
        GPU memory samples, or None when no GPU was measured.
    time_s : float
        Running time of the container.
    total_cpu_s : float
        CPU time of the whole run (read after exit, so it includes the last interval).
    n_cpus : int
        Logical CPUs of the machine.
    allowance_mib : float
        GPU memory that is free of charge (FLARE22: 2048 MiB).
    """
    cpu = cpu_percent(cpu_time_s, times_s, n_cpus)
    gpu = np.zeros(0) if gpu_mib is None else np.asarray(gpu_mib, dtype=np.float64)
    return CaseResources(
        time_s=float(time_s),
        auc_gpu_mib_s=0.0 if gpu_mib is None else gpu_auc_mib_s(times_s, gpu, allowance_mib),
        auc_cpu_pct_s=cpu_auc_pct_s(total_cpu_s, n_cpus),
        max_gpu_mib=float(gpu.max()) if gpu.size else 0.0,
        max_cpu_pct=float(cpu.max()) if cpu.size else 0.0,
        n_samples=int(np.asarray(times_s).size),
    )

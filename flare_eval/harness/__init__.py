"""Running submitted containers and measuring their resources.

* :mod:`~flare_eval.harness.docker`: container lifecycle on a Docker engine;
* :mod:`~flare_eval.harness.sampler`: 0.1 s sampling of cgroup CPU time and NVML GPU memory;
* :mod:`~flare_eval.harness.resources`: AUCs and maxima from the samples (pure);
* :mod:`~flare_eval.harness.runner`: every team on every case, resumable, with the output checks.
"""

from ..protocol import ContainerInterface
from .docker import ContainerError, ContainerLimits
from .resources import CaseResources, cpu_auc_pct_s, cpu_percent, gpu_auc_mib_s, summarize_run
from .runner import HarnessWarning, Submission, find_submissions, run_containers

__all__ = [
    "ContainerError",
    "ContainerInterface",
    "ContainerLimits",
    "CaseResources",
    "cpu_auc_pct_s",
    "cpu_percent",
    "gpu_auc_mib_s",
    "summarize_run",
    "HarnessWarning",
    "Submission",
    "find_submissions",
    "run_containers",
]

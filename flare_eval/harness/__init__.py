"""Running submitted containers and measuring their resources.

* :mod:`~flare_eval.harness.docker`: container lifecycle on a Docker engine;
* :mod:`~flare_eval.harness.sampler`: 0.1 s sampling of cgroup CPU time and NVML GPU memory;
* :mod:`~flare_eval.harness.resources`: AUCs and maxima from the samples (pure);
* :mod:`~flare_eval.harness.submissions`: archives and images found, named, identified by digest, loaded;
* :mod:`~flare_eval.harness.case`: one case of one team: input staged, container run and sampled, row recorded;
* :mod:`~flare_eval.harness.outputs`: what a container leaves, checked, kept and rewritten in a bounded worker;
* :mod:`~flare_eval.harness.cluster`: the same cases as tasks on a Dask cluster;
* :mod:`~flare_eval.harness.runner`: every team on every case, resumable: the orchestration and the runs folder.
"""

from ..errors import HarnessWarning
from ..protocol import ContainerInterface
from .docker import ContainerError, ContainerLimits
from .resources import CaseResources, cpu_auc_pct_s, cpu_percent, gpu_auc_mib_s, summarize_run
from .runner import run_containers
from .submissions import Submission, find_submissions

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

"""Every path of a runs folder, spelt once: the harness writes there, collect, the CLI and the report read.

::

    RUNS/settings.json               the limits, machine and protocol of the run
    RUNS/<team>/resources.csv        one row per case, appended the moment the case ends
    RUNS/<team>/samples/<case>.csv   the 0.1 s samples
    RUNS/<team>/logs/<case>.log      the container's output, then what the harness dropped
    RUNS/<team>/predictions/         the kept, normalised predictions
    RUNS/.scratch/                   each running case's staged input and output folder
    RUNS/.flare-eval.lock            held while a run writes the folder (see `flare_eval.io.hold_folder`)
"""

from pathlib import Path

__all__ = ["resources_path", "samples_path", "log_path", "predictions_dir", "SCRATCH", "RESOURCE_COLUMNS"]

#: The columns of ``<team>/resources.csv``, one row per case.
RESOURCE_COLUMNS = [
    "team", "case", "time_s", "engine_time_s", "auc_gpu_mib_s", "auc_cpu_pct_s", "max_gpu_mib", "max_cpu_pct",
    "gpu_measured", "gpu_mode", "exit_code", "status", "n_samples", "image", "image_id", "host", "worker", "n_cpus",
    "gpu_name", "gpu_driver", "started_at",
]

#: The scratch folder's name: it starts with a dot, so no team can be named like it.
SCRATCH = ".scratch"


def resources_path(team_dir: Path) -> Path:
    """``<team>/resources.csv``."""
    return Path(team_dir) / "resources.csv"


def samples_path(team_dir: Path, case: str) -> Path:
    """``<team>/samples/<case>.csv``."""
    return Path(team_dir) / "samples" / f"{case}.csv"


def log_path(team_dir: Path, case: str) -> Path:
    """``<team>/logs/<case>.log``."""
    return Path(team_dir) / "logs" / f"{case}.log"


def predictions_dir(team_dir: Path) -> Path:
    """``<team>/predictions``."""
    return Path(team_dir) / "predictions"

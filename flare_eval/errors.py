"""The package's errors, warnings and case statuses, declared in one place.

Every error flare-eval raises on purpose derives from `FlareEvalError` (and from the built-in class that
says what kind it is, so ``except ValueError`` still works), and every warning it gives from
`FlareEvalWarning`: a notebook can catch or silence all of them at once. The case statuses of
``scores.csv``, ``resources.csv`` and ``results.csv`` are spelt here, once.
"""

__all__ = [
    "FlareEvalError",
    "FlareEvalWarning",
    "FolderInUseError",
    "HarnessWarning",
    "STATUS_OK",
    "STATUS_REORIENTED",
    "STATUS_RESAMPLED",
    "STATUS_MISSING",
    "STATUS_GEOMETRY_MISMATCH",
    "STATUS_INVALID_PREDICTION",
    "STATUS_TIME_LIMIT",
    "STATUS_MEMORY_LIMIT",
    "STATUS_TIMEOUT",
    "STATUS_CRASHED",
    "STATUS_NO_OUTPUT",
    "STATUS_INVALID_SUBMISSION",
    "STATUS_ENGINE_ERROR",
    "STATUS_STOPPED",
    "STATUS_NO_RUN",
    "SCORED_STATUSES",
]


class FlareEvalError(Exception):
    """Base of every error flare-eval raises on purpose; its message names the file or option and the problem."""


class FolderInUseError(FlareEvalError, RuntimeError):
    """Another flare-eval command is writing the same output folder; the message names it and its holder."""


class FlareEvalWarning(UserWarning):
    """Base of every warning flare-eval gives: something was accepted but deserves the user's attention."""


class HarnessWarning(FlareEvalWarning):
    """A run of containers went on, but something deserves attention (no GPU, dropped files, stale containers)."""


# Scoring (scores.csv): how a prediction was scored, or why it could not be.
STATUS_OK = "ok"
STATUS_REORIENTED = "reoriented"
STATUS_RESAMPLED = "resampled"
#: Statuses of cases that were scored (the others scored 0 without looking).
SCORED_STATUSES = (STATUS_OK, STATUS_REORIENTED, STATUS_RESAMPLED)
STATUS_MISSING = "missing"
STATUS_GEOMETRY_MISMATCH = "geometry_mismatch"
STATUS_INVALID_PREDICTION = "invalid_prediction"
#: The case's scoring exceeded the protocol's ``scoring_limits``.
STATUS_TIME_LIMIT = "time_limit"
STATUS_MEMORY_LIMIT = "memory_limit"

# Containers (resources.csv): how a team's run of a case ended.
STATUS_TIMEOUT = "timeout"
STATUS_CRASHED = "crashed"
STATUS_NO_OUTPUT = "no_output"
STATUS_INVALID_SUBMISSION = "invalid_submission"
#: The engine failed while running a case; penalised like the others, and listed so it can be rerun.
STATUS_ENGINE_ERROR = "engine_error"
#: Fail fast: a team whose first cases all timed out or crashed is not run further.
STATUS_STOPPED = "stopped_after_failures"

# Results (results.csv): a case with a prediction but no container run recorded (scored from a folder).
STATUS_NO_RUN = "no_run"

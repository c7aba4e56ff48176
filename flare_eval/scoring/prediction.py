"""A prediction brought onto the ground truth's grid, or the status that says why it could not be.

Headers are checked before any data is read: a prediction whose header claims
another voxel count than the ground truth's is refused unread (a decompression
bomb costs nothing). Predictions on the same physical grid in another
orientation are reoriented exactly; on another grid they are refused, or with
``resample`` resampled by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import metrics
from ..errors import (
    STATUS_GEOMETRY_MISMATCH,
    STATUS_INVALID_PREDICTION,
    STATUS_MISSING,
    STATUS_OK,
    STATUS_REORIENTED,
    STATUS_RESAMPLED,
)
from ..io import InvalidLabelMapError, LabelMap, read_header, read_label_map

__all__ = ["MAX_RESAMPLE_BYTES"]

#: Largest prediction (bytes once read) that ``resample`` reads when its grid differs from the ground truth's.
MAX_RESAMPLE_BYTES = 2 * 1024**3


def _as_label_map(image: str | Path | np.ndarray | LabelMap, spacing_mm, role: str) -> LabelMap:
    if isinstance(image, LabelMap):
        return image
    if isinstance(image, np.ndarray):
        if spacing_mm is None:
            raise ValueError(f"{role} is a bare array: pass spacing_mm (there is no header to read it from)")
        if not np.issubdtype(image.dtype, np.integer) and image.dtype != bool:
            raise TypeError(f"{role} must hold integer labels, got dtype {image.dtype}")
        spacing = tuple(float(s) for s in metrics._check_spacing(spacing_mm, 3))
        return LabelMap(image, spacing, np.diag([*spacing, 1.0]), None)
    return read_label_map(image)


@dataclass(frozen=True)
class _Options:
    """How predictions that are not plain matches are handled (travels with each task)."""

    strict: bool = False
    resample: bool = False


@dataclass(frozen=True)
class _Prediction:
    """A prediction brought onto the ground truth's grid, or why it could not be (``labels`` None)."""

    labels: np.ndarray | None
    status: str
    message: str
    label_map: LabelMap | None = None


def _load_prediction(
    gt_map: LabelMap, pred, options: _Options, spacing_mm: Sequence[float] | None = None
) -> _Prediction:
    """Check, read and, where the rules allow, reorient or resample a prediction onto the ground truth's grid.

    Raises only with ``options.strict``; otherwise a prediction that cannot be
    used comes back with ``labels`` None and its status and message.
    """
    from ..geometry import match_grid, reorient, resample_nearest

    if pred is None:
        return _Prediction(None, STATUS_MISSING, "no prediction file for this case")
    try:
        refused = _refuse_by_header(pred, gt_map, options)
    except InvalidLabelMapError as exc:
        if options.strict:
            raise
        return _Prediction(None, STATUS_INVALID_PREDICTION, str(exc))
    if refused is not None:
        if options.strict:
            raise ValueError(refused[1])
        return _Prediction(None, *refused)
    try:
        pred_map = _as_label_map(pred, spacing_mm if spacing_mm is not None else gt_map.spacing_mm, "pred")
    except InvalidLabelMapError as exc:
        if options.strict:
            raise
        return _Prediction(None, STATUS_INVALID_PREDICTION, str(exc))
    match = match_grid(gt_map.array.shape, gt_map.affine, pred_map.array.shape, pred_map.affine)
    if match.kind == "reoriented":
        return _Prediction(reorient(pred_map.array, match), STATUS_REORIENTED,
                           f"prediction {pred_map.path} {match.description}", pred_map)
    if match.kind == "different":
        problem = f"prediction {pred_map.path} is not on the grid of ground truth {gt_map.path}: {match.description}"
        if not options.resample:
            if options.strict:
                raise ValueError(problem)
            return _Prediction(None, STATUS_GEOMETRY_MISMATCH, problem + " (--resample to resample it)", pred_map)
        labels = resample_nearest(pred_map.array, pred_map.affine, gt_map.array.shape, gt_map.affine)
        return _Prediction(labels, STATUS_RESAMPLED, problem + "; resampled with nearest-neighbour interpolation",
                           pred_map)
    return _Prediction(pred_map.array, STATUS_OK, "", pred_map)


def _refuse_by_header(pred, gt_map: LabelMap, options: _Options) -> tuple[str, str] | None:
    """``(status, message)`` when a prediction file's header alone rules it out, before any data is read.

    A prediction on the ground truth's grid (in any orientation) has as many
    voxels; reading one that claims more would allocate what an untrusted header
    asks for.
    """
    if not isinstance(pred, (str, Path)):
        return None
    header = read_header(pred)
    expected = int(gt_map.array.size)
    if header.n_voxels == expected:
        return None
    problem = (f"prediction {header.path} is not on the grid of ground truth {gt_map.path}: shape "
               f"{header.shape} != {gt_map.array.shape} (from its header; the data was not read)")
    if not options.resample:
        return STATUS_GEOMETRY_MISMATCH, problem + " (--resample to resample it)"
    if header.n_bytes > MAX_RESAMPLE_BYTES:
        return (STATUS_INVALID_PREDICTION, f"{problem}; its {header.n_voxels} voxels of {header.dtype} would take "
                f"{header.n_bytes / 2**30:.1f} GiB, more than the {MAX_RESAMPLE_BYTES / 2**30:g} GiB that "
                "--resample reads")
    return None

"""Scoring protocols of regions (KiTS23, BraTS 2023, FLARE24, autoPET): every region's metrics. Pure, no I/O.

A region is the union of some labels; each of its metrics is one of
`flare_eval.protocol.METRIC_KINDS`, with the challenge's parameters and rules
for empty masks (see `flare_eval.protocol.RegionMetric`). Two protocol-wide
rules apply on top: ``invalid_labels = "zero_scores"`` (FLARE24: a prediction
holding any label that is not one of the protocol's scores 0 in every Dice and
surface metric) and ``rounding`` (decimals, as the official script rounds).
The FLARE organ protocols do not come here (see :mod:`flare_eval.scoring`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import metrics
from .lesions import brats_lesion_wise, false_volumes_ml
from .protocol import Protocol, Region

__all__ = ["score_regions"]


def score_regions(gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float], protocol: Protocol) -> list[dict]:
    """Score every region of a region protocol on two label arrays of one grid.

    Parameters
    ----------
    gt, pred : (I, J, K) ndarray of integers
        Ground-truth and predicted label maps.
    spacing_mm : sequence of 3 floats
        Voxel size in mm, from the header the protocol names (``spacing_from``).
    protocol : Protocol
        With ``regions``.

    Returns
    -------
    list of dict
        One per region: ``region`` and a value per column of its metrics
        (rounded to ``protocol.rounding`` decimals when it says so).

    Examples
    --------
    >>> from flare_eval import load_protocol
    >>> gt = np.zeros((8, 8, 8), np.uint8); gt[2:6, 2:6, 2:6] = 1
    >>> [round(v, 4) for v in score_regions(gt, gt, (1, 1, 1), load_protocol("flare24-t1"))[0].values()
    ...  if not isinstance(v, str)]
    [1.0, 1.0]
    """
    if not protocol.regions:
        raise ValueError(f"protocol {protocol.name!r} scores organs, not regions: use flare_eval.score_label_maps")
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred must have the same shape, got {gt.shape} and {pred.shape}")
    spacing = metrics._check_spacing(spacing_mm, 3)
    invalid = protocol.invalid_labels == "zero_scores" and bool(metrics._labels_outside(pred, protocol.labels))
    rows = []
    for region in protocol.regions:
        row: dict = {"region": region.name}
        row.update(_score_region(gt, pred, spacing, region, invalid))
        if protocol.rounding is not None:
            # NumPy's rounding (scale, round half to even, unscale), as the official scripts round NumPy floats.
            row = {k: (float(np.round(np.float64(v), protocol.rounding)) if isinstance(v, float) else v)
                   for k, v in row.items()}
        rows.append(row)
    return rows


def _score_region(gt: np.ndarray, pred: np.ndarray, spacing: np.ndarray, region: Region, invalid: bool) -> dict:
    mask_gt = np.isin(gt, region.labels)
    mask_pred = np.isin(pred, region.labels)
    gt_empty, pred_empty = not mask_gt.any(), not mask_pred.any()
    values: dict = {}
    dice = None
    distances = None  # computed once, for every surface metric of the region
    # Surface Dice needs distances only up to its tolerance, which is much faster; HD95 needs them all.
    kinds = {m.kind for m in region.metrics}
    reach_mm = np.inf if "hausdorff" in kinds else max(
        (m.tolerance_mm for m in region.metrics if m.kind == "surface_dice"), default=np.inf)
    for metric in region.metrics:
        if metric.kind == "brats_lesion_wise":
            scores = brats_lesion_wise(mask_gt, mask_pred, spacing, dilation_iterations=metric.dilation_iterations,
                                       min_lesion_mm3=metric.min_lesion_mm3, penalty_mm=metric.penalty_mm or 374.0)
            values.update(zip(metric.columns, (
                scores.lesion_wise_dice, scores.lesion_wise_hd95_mm, scores.legacy_dice, scores.legacy_hd95_mm,
                scores.n_tp, scores.n_fp, scores.n_fn, scores.sensitivity, scores.specificity,
                scores.gt_volume_mm3)))
            continue
        if metric.kind == "false_volumes":
            # autoPET: components of every non-zero value of the raw arrays, as the official code finds them.
            values.update(zip(metric.columns, false_volumes_ml(gt, pred, spacing,
                                                               connectivity=metric.connectivity or 18)))
            continue
        if metric.kind == "dice_raw":
            # autoPET: the raw label values, not the region's mask (another label inflates the score).
            overlap = float(np.sum(gt.astype(np.float64) * pred))
            total = float(np.sum(gt, dtype=np.float64) + np.sum(pred, dtype=np.float64))
            values[metric.name] = overlap * 2 / total if total else float("nan")
            continue
        if invalid and metric.kind in ("dice", "surface_dice"):
            values[metric.name] = 0.0
            continue
        if gt_empty or pred_empty:
            value = metric.both_empty if gt_empty and pred_empty else metric.one_empty
            values[metric.name] = float("nan") if value is None else float(value)
            if metric.kind == "dice":
                dice = values[metric.name]
            continue
        if metric.kind == "dice":
            dice = metrics.dice_coefficient(mask_gt, mask_pred)
            values[metric.name] = dice
        elif metric.kind == "surface_dice":
            if metric.zero_below_dice is not None and dice is not None and dice < metric.zero_below_dice:
                values[metric.name] = 0.0
                continue
            distances = distances or metrics.surface_distances(mask_gt, mask_pred, spacing, max_distance_mm=reach_mm)
            values[metric.name] = distances.surface_dice(metric.tolerance_mm)
        elif metric.kind == "hausdorff":
            distances = distances or metrics.surface_distances(mask_gt, mask_pred, spacing, max_distance_mm=reach_mm)
            values[metric.name] = distances.robust_hausdorff(metric.percentile)
    return values

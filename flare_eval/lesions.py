"""Lesion-wise metrics: connected components, BraTS 2023 lesion matching, autoPET false volumes. Pure, no I/O.

Conventions (all lengths in mm, volumes in mm^3 unless a name says ``ml``):

* Components are 26-connected (BraTS) or 18-connected (autoPET), as
  `scipy.ndimage.label` with the matching structuring element.
* BraTS 2023 (``brats_lesion_wise``): ground-truth components that one
  dilation of the ground truth joins are one lesion; a predicted component
  matches a lesion when it touches the lesion dilated again; the rules for
  small lesions, false positives and the 374 mm penalty are those of the
  organizers' evaluation, written out in the function's docstring.
* autoPET 2022 (``false_volumes_ml``): a predicted component that touches no
  ground truth is false-positive volume, a ground-truth component that no
  prediction touches is false-negative volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .metrics import _check_spacing, _dilate_18, _mask_box, _union_of_boxes, surface_distances

__all__ = ["connected_components", "LesionWiseScores", "brats_lesion_wise", "false_volumes_ml"]

#: Connectivity -> the 3D structuring element of `scipy.ndimage` (6: faces, 18: + edges, 26: + corners).
_STRUCTURES = {6: 1, 18: 2, 26: 3}


def connected_components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Label the connected components of a 3D mask; returns ``(labels, count)``, components numbered from 1.

    Examples
    --------
    >>> mask = np.zeros((3, 3, 3), bool); mask[0, 0, 0] = mask[1, 1, 1] = True
    >>> connected_components(mask, 26)[1], connected_components(mask, 18)[1]
    (1, 2)
    """
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity must be one of {sorted(_STRUCTURES)}, got {connectivity}")
    structure = ndimage.generate_binary_structure(3, _STRUCTURES[connectivity])
    labels, count = ndimage.label(mask, structure=structure)
    return labels, int(count)


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Dilation with the 18-connected element, ``iterations`` times (BraTS's choice; nothing beyond the edges)."""
    grown = mask.copy()
    for _ in range(iterations):
        grown = _dilate_18(grown)
    return grown


@dataclass(frozen=True)
class LesionWiseScores:
    """BraTS 2023 scores of one region of one case (the organizers' column names in brackets).

    Attributes
    ----------
    lesion_wise_dice, lesion_wise_hd95_mm : float
        [LesionWise_Score_Dice, LesionWise_Score_HD95]
    legacy_dice, legacy_hd95_mm : float
        Dice and HD95 of the whole region [Legacy_Dice, Legacy_HD95].
    n_tp, n_fp, n_fn : int
        Matched lesions, unmatched predicted components, missed lesions (small lesions not counted).
    sensitivity, specificity : float
        Voxel-wise, as the organizers compute them.
    gt_volume_mm3 : float
        Volume of the region's ground truth [GT_Complete_Volume].
    """

    lesion_wise_dice: float
    lesion_wise_hd95_mm: float
    legacy_dice: float
    legacy_hd95_mm: float
    n_tp: int
    n_fp: int
    n_fn: int
    sensitivity: float
    specificity: float
    gt_volume_mm3: float


def brats_lesion_wise(
    mask_gt: np.ndarray,
    mask_pred: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    dilation_iterations: int,
    min_lesion_mm3: float,
    penalty_mm: float = 374.0,
    n_voxels: int | None = None,
) -> LesionWiseScores:
    """BraTS 2023 lesion-wise Dice and HD95 of one region, with the organizers' rules.

    1. Ground-truth components (26-connected) that fall in one component of the
       ground truth dilated ``dilation_iterations`` times (18-connected element)
       form one lesion.
    2. Each lesion, dilated ``dilation_iterations`` times again, matches every
       predicted component (26-connected, never merged) that touches it; its
       Dice and HD95 are taken against the union of those components (HD95 of a
       lesion with no match: ``penalty_mm``).
    3. Lesions of volume ``<= min_lesion_mm3`` are left out of the scores and of
       the counts; a predicted component matching only such a lesion is not a
       false positive either.
    4. False positives: predicted components matching no lesion, of any size.
    5. Lesion-wise Dice = sum of lesion Dice / (lesions + FP); lesion-wise HD95 =
       (sum of lesion HD95 + ``penalty_mm`` x FP) / (lesions + FP); with no
       lesion and no FP, Dice 1 and HD95 0.

    Legacy Dice and HD95 are the whole region's (both empty: 1 and 0; one empty:
    Dice 0 and HD95 ``penalty_mm``). ``spacing_mm`` is the voxel size used for
    volumes and distances (BraTS takes the prediction's). ``n_voxels`` is the
    size of the whole volume when the masks are a crop of it (for the
    specificity's true negatives; default: the masks' size).
    """
    spacing = _check_spacing(spacing_mm, 3)
    gt, pred = np.asarray(mask_gt, bool), np.asarray(mask_pred, bool)
    n_voxels = gt.size if n_voxels is None else int(n_voxels)
    box = _mask_box(gt | pred)
    if box is not None:
        # Everything happens within the dilations' reach of the labelled voxels; outside, only background.
        box = _grow(box, dilation_iterations + 1, gt.shape)
        gt, pred = gt[box], pred[box]
    gt_vx, pred_vx = int(gt.sum()), int(pred.sum())
    if gt_vx == 0 and pred_vx == 0:
        legacy_dice, legacy_hd95 = 1.0, 0.0
    else:
        legacy_dice = 2.0 * int(np.count_nonzero(gt & pred)) / (gt_vx + pred_vx)
        legacy_hd95 = _hd95_or_penalty(gt, pred, spacing, penalty_mm)
    true_positive = int(np.count_nonzero(gt & pred))
    true_negative = n_voxels - int(np.count_nonzero(gt | pred))
    tiny = np.finfo(float).tiny
    sensitivity = 1.0 if gt_vx == 0 and pred_vx == 0 else true_positive / (gt_vx + tiny)
    specificity = true_negative / (true_negative + (pred_vx - true_positive) + tiny)

    joined, _ = connected_components(_dilate(gt, dilation_iterations), 26)
    lesion_of_voxel = np.where(gt, joined, 0)
    predicted, _ = connected_components(pred, 26)
    component_boxes = ndimage.find_objects(predicted)
    matched_any: set[int] = set()
    dices, distances = [], []
    n_tp = n_fn = 0
    # Each lesion is handled in its own box, grown by the dilation's reach: the same result as on the whole volume.
    for lesion, box in enumerate(ndimage.find_objects(lesion_of_voxel), start=1):
        if box is None:
            continue
        grown = _grow(box, dilation_iterations, gt.shape)
        lesion_crop = lesion_of_voxel[grown] == lesion
        reach = _dilate(lesion_crop, dilation_iterations)
        matches = np.unique(predicted[grown][reach & pred[grown]])
        matched_any.update(int(m) for m in matches)
        if volume_mm3(np.count_nonzero(lesion_crop), spacing) <= min_lesion_mm3:
            continue
        if matches.size:
            n_tp += 1
            union_box = box
            for match in matches:
                union_box = _union_of_boxes(union_box, component_boxes[match - 1])
            lesion_mask = lesion_of_voxel[union_box] == lesion
            union = np.isin(predicted[union_box], matches)
            dices.append(2.0 * int(np.count_nonzero(lesion_mask & union))
                         / (int(lesion_mask.sum()) + int(union.sum())))
            distances.append(_hd95_or_penalty(lesion_mask, union, spacing, penalty_mm))
        else:
            n_fn += 1
            dices.append(0.0)
            distances.append(penalty_mm)
    n_fp = len(set(np.unique(predicted[predicted > 0]).tolist()) - matched_any)
    denominator = len(dices) + n_fp
    if denominator == 0:
        lesion_dice, lesion_hd95 = 1.0, 0.0
    else:
        lesion_dice = float(np.sum(dices)) / denominator
        lesion_hd95 = (float(np.sum(distances)) + penalty_mm * n_fp) / denominator
    return LesionWiseScores(lesion_dice, lesion_hd95, legacy_dice, legacy_hd95, n_tp, n_fp, n_fn,
                            sensitivity, specificity, volume_mm3(gt_vx, spacing))


def volume_mm3(n_voxels: int, spacing_mm: Sequence[float]) -> float:
    """Volume of ``n_voxels`` voxels in mm^3, as ``((n * sx) * sy) * sz`` in double precision.

    The official BraTS code multiplies in this order; ``n * (sx * sy * sz)``
    rounds differently on some spacings, and a lesion of exactly the
    threshold volume would then be kept where the official code drops it.

    Examples
    --------
    >>> volume_mm3(3, (0.1, 0.7, 1.0)) == ((3 * 0.1) * 0.7) * 1.0
    True
    """
    volume = float(n_voxels)
    for size in spacing_mm:
        volume *= float(size)
    return volume


def _grow(box: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(0, b.start - margin), min(n, b.stop + margin)) for b, n in zip(box, shape))


def _hd95_or_penalty(gt: np.ndarray, pred: np.ndarray, spacing: np.ndarray, penalty_mm: float) -> float:
    """DeepMind's HD95; ``penalty_mm`` where it is infinite (a surface is missing)."""
    hd95 = surface_distances(gt, pred, spacing).robust_hausdorff(95)
    return penalty_mm if not np.isfinite(hd95) else hd95


def false_volumes_ml(labels_gt: np.ndarray, labels_pred: np.ndarray, spacing_mm: Sequence[float], *,
                     connectivity: int = 18) -> tuple[float, float]:
    """autoPET 2022's false-positive and false-negative volumes in mL.

    Components are found per value, as the organizers' code finds them on the
    raw arrays (voxels of different non-zero values are different components).
    A predicted component that touches no ground-truth voxel counts fully as
    false-positive volume; a ground-truth component that no predicted voxel
    touches counts fully as false-negative volume. mL = voxels x voxel volume /
    1000, with ``spacing_mm`` (autoPET takes the prediction's), the voxel volume
    a single-precision product of the spacings divided by 1000 in double
    precision, as the organizers' code computed it under NumPy 1.x.

    Examples
    --------
    >>> gt = np.zeros((6, 6, 6), np.uint8); gt[0:2, 0:2, 0:2] = 1; gt[4:6, 4:6, 4:6] = 1
    >>> pred = np.zeros_like(gt); pred[0, 0, 0] = 1; pred[0, 4:6, 0] = 1
    >>> false_volumes_ml(gt, pred, (10.0, 10.0, 10.0))
    (2.0, 8.0)
    """
    spacing = _check_spacing(spacing_mm, 3)
    # The product in single precision, as the organizers multiply the header's float32 pixdims; the division in
    # double, as NumPy 1.x (the NumPy of 2022) divided a float32 scalar by a Python int.
    voxel_ml = float(np.float32(spacing[0]) * np.float32(spacing[1]) * np.float32(spacing[2])) / 1000.0
    false_positive = false_negative = 0
    for gt, pred in _separate_groups((labels_gt != 0) | (labels_pred != 0), labels_gt, labels_pred):
        false_positive += _untouched_voxels(pred, gt != 0, connectivity)
        false_negative += _untouched_voxels(gt, pred != 0, connectivity)
    return false_positive * voxel_ml, false_negative * voxel_ml


#: Edge of the blocks `_separate_groups` finds occupied, in voxels.
_BLOCK_VX = 16


def _separate_groups(occupied: np.ndarray, *arrays: np.ndarray):
    """Crops of ``arrays`` around each group of touching occupied blocks, zero outside the group's blocks.

    Lesions are small and scattered over a whole-body scan: labelling their components over the whole volume
    costs the volume. A component's voxels lie in occupied blocks that touch one another (26-connected), so
    each group of touching blocks holds whole components, and no component is in two groups; each group is
    handed out once, the blocks of other groups in its bounding box zeroed.
    """
    coarse = occupied
    for axis in range(3):
        coarse = np.logical_or.reduceat(coarse, np.arange(0, occupied.shape[axis], _BLOCK_VX), axis=axis)
    groups, _ = ndimage.label(coarse, structure=np.ones((3, 3, 3), bool))
    for group, box in enumerate(ndimage.find_objects(groups), start=1):
        fine = tuple(slice(b.start * _BLOCK_VX, min(b.stop * _BLOCK_VX, n)) for b, n in zip(box, occupied.shape))
        member = groups[box] == group
        for axis in range(3):
            member = np.repeat(member, _BLOCK_VX, axis=axis)
        member = member[tuple(slice(0, f.stop - f.start) for f in fine)]
        yield tuple(np.where(member, array[fine], 0) for array in arrays)


def _untouched_voxels(labels: np.ndarray, other: np.ndarray, connectivity: int) -> int:
    """Voxels of the components of ``labels`` (per value) that share no voxel with ``other``."""
    total = 0
    for value in np.unique(labels[labels != 0]):
        components, count = connected_components(labels == value, connectivity)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        touched = np.unique(components[other & (components > 0)])
        untouched = np.setdiff1d(np.arange(1, count + 1), touched)
        total += int(sizes[untouched].sum())
    return total

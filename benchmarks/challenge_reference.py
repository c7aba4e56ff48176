"""Whole-volume versions of the BraTS 2023 and autoPET 2022 lesion rules, as the organizers' code works.

Written from ``../shared/reference/other-challenges.md`` (no official code is copied): every lesion and
every component is handled on the whole volume, one at a time, with DeepMind's surface-distance for HD95.
The tests compare flare-eval's cropped implementation with these; the benchmark times both.
"""

import numpy as np
import surface_distance as deepmind
from scipy import ndimage

PENALTY_MM = 374.0


def brats_lesion_wise(gt, pred, spacing, dilation, min_volume_mm3, penalty=PENALTY_MM):
    """(lesion-wise Dice, lesion-wise HD95, TP, FP, FN) of one region's boolean masks."""
    structure18 = ndimage.generate_binary_structure(3, 2)
    structure26 = np.ones((3, 3, 3))
    voxel = float(np.prod(spacing))
    dilated = ndimage.binary_dilation(gt, structure18, iterations=dilation) if dilation else gt.copy()
    joined, n_joined = ndimage.label(dilated, structure26)
    lesions = np.where(gt, joined, 0)
    components, _ = ndimage.label(pred, structure26)
    matched, dices, hds = set(), [], []
    tp = fn = 0
    for lesion in range(1, n_joined + 1):
        mask = lesions == lesion
        if not mask.any():
            continue
        reach = ndimage.binary_dilation(mask, structure18, iterations=dilation) if dilation else mask
        hits = set(np.unique(components[reach & pred]).tolist()) - {0}
        matched |= hits
        if mask.sum() * voxel <= min_volume_mm3:
            continue
        union = np.isin(components, list(hits))
        dice = 2 * (mask & union).sum() / (mask.sum() + union.sum())
        if hits:
            hd = deepmind.compute_robust_hausdorff(deepmind.compute_surface_distances(mask, union, spacing), 95)
            tp += 1
        else:
            hd = penalty
            fn += 1
        dices.append(dice)
        hds.append(hd if np.isfinite(hd) else penalty)
    fp = len(set(np.unique(components).tolist()) - {0} - matched)
    n = len(dices) + fp
    if n == 0:
        return 1.0, 0.0, tp, fp, fn
    return sum(dices) / n, (sum(hds) + penalty * fp) / n, tp, fp, fn


def false_volumes(gt, pred, voxel_ml):
    """autoPET's (false-positive, false-negative) volumes: components one at a time, 18-connected, per value."""
    structure = ndimage.generate_binary_structure(3, 2)

    def untouched(labels, other):
        total = 0
        for value in np.unique(labels[labels != 0]):
            components, n = ndimage.label(labels == value, structure)
            for k in range(1, n + 1):
                component = components == k
                if not (component & (other != 0)).any():
                    total += int(component.sum())
        return total

    return untouched(pred, gt) * voxel_ml, untouched(gt, pred) * voxel_ml

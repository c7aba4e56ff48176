"""A reference pipeline equivalent to the official FLARE22 DSC/NSD script.

Written from the description in ``../shared/reference/flare-official-evaluation.md``
(no official code is copied): nibabel float64 loading cast to uint8, spacing
from the ground truth header, DeepMind ``surface-distance`` per organ, the
empty-mask rules and the half-open ``[z_min, z_max)`` cut for aorta, IVC and
esophagus. Used by the benchmark and, as an independent check, by the tests.

Two deviations, both where the official script cannot run: a prediction that
is empty after the cut scores NSD 0 (DeepMind's GitHub HEAD does this; the PyPI
0.1 wheel raises under NumPy 2), and a ground truth on a single slice raises
``ValueError`` (the official script crashes there too).
"""

import nibabel as nib
import numpy as np
import surface_distance

FLARE22_TOLERANCES_MM = {1: 5, 2: 3, 3: 3, 4: 5, 5: 2, 6: 2, 7: 2, 8: 2, 9: 2, 10: 3, 11: 5, 12: 7, 13: 3}
SLICE_RANGE_LABELS = (5, 6, 10)


def official_scores_of_arrays(gt, seg, spacing_mm):
    """{label: (DSC, NSD)} for uint8 arrays, as the official script computes them (unrounded)."""
    out = {}
    for label, tolerance_mm in FLARE22_TOLERANCES_MM.items():
        gt_any, seg_any = bool((gt == label).any()), bool((seg == label).any())
        if not gt_any:
            out[label] = (1.0, 1.0) if not seg_any else (0.0, 0.0)
            continue
        if label in SLICE_RANGE_LABELS:
            z = np.where(gt == label)[2]
            if z.min() == z.max():
                raise ValueError(f"label {label}: ground truth on one slice, the official script crashes")
            organ_gt = gt[:, :, z.min() : z.max()] == label
            organ_seg = seg[:, :, z.min() : z.max()] == label
        else:
            organ_gt, organ_seg = gt == label, seg == label
        dsc = surface_distance.compute_dice_coefficient(organ_gt, organ_seg)
        if not organ_seg.any():
            nsd = 0.0
        else:
            distances = surface_distance.compute_surface_distances(organ_gt, organ_seg, spacing_mm)
            nsd = surface_distance.compute_surface_dice_at_tolerance(distances, tolerance_mm)
        out[label] = (float(dsc), float(nsd))
    return out


def official_scores(gt_path, seg_path):
    """Load both files the official way (float64, then uint8) and score them."""
    gt_image = nib.load(str(gt_path))
    seg_image = nib.load(str(seg_path))
    gt = np.uint8(gt_image.get_fdata())
    seg = np.uint8(seg_image.get_fdata())
    return official_scores_of_arrays(gt, seg, gt_image.header.get_zooms())

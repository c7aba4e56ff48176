"""Rebuild the bundled example data in ``examples/data`` (deterministic).

Ground truth comes from the real label maps in ``../shared/data/real`` (derived
from TotalSegmentator's test files, Apache-2.0, relabelled to FLARE22
numbering). Predictions of three made-up teams are derived from them:

* ``teamA``: an independent segmentation of the same CT where one exists
  (TotalSegmentator's fast model), otherwise the ground truth with the
  pancreas missed and the stomach over-segmented.
* ``teamB``: every organ eroded by one voxel (systematic under-segmentation).
* ``teamC``: the ground truth shifted by one voxel along the first axis, and no
  prediction at all for ``case_0002`` (a missing file).

Run from the repository root: ``python examples/make_example_data.py SHARED_DATA_DIR``.
"""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

OUT = Path(__file__).parent / "data"


def load(path):
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj).astype(np.uint8), image.affine, image.header


def save(array, affine, header, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array.astype(np.uint8), affine, header)
    image.set_data_dtype(np.uint8)
    nib.save(image, str(path))


def erode_each(labels):
    out = np.zeros_like(labels)
    for value in np.unique(labels[labels > 0]):
        out[ndimage.binary_erosion(labels == value)] = value
    return out


def main(real):
    gt1, aff1, hdr1 = load(real / "ts_example_gt.nii.gz")
    fast1, _, _ = load(real / "ts_example_fast.nii.gz")
    gt2, aff2, hdr2 = load(real / "ts_dicom_gt_LAS.nii.gz")
    cases = {
        "case_0001": (gt1, fast1, aff1, hdr1),
        "case_0002": (gt2, None, aff2, hdr2),
        "case_0003": (fast1, gt1, aff1, hdr1),
    }
    for case, (gt, other, affine, header) in cases.items():
        save(gt, affine, header, OUT / "labels" / f"{case}.nii.gz")
        if other is None:
            other = gt.copy()
            other[other == 4] = 0
            other[ndimage.binary_dilation(gt == 11, iterations=2) & (gt == 0)] = 11
        save(other, affine, header, OUT / "predictions" / "teamA" / f"{case}.nii.gz")
        save(erode_each(gt), affine, header, OUT / "predictions" / "teamB" / f"{case}.nii.gz")
        if case != "case_0002":
            save(np.roll(gt, 1, axis=0), affine, header, OUT / "predictions" / "teamC" / f"{case}.nii.gz")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data/real"))

"""Rebuild ``examples/data/challenges/``: small made-up cases for the KiTS23, BraTS 2023, FLARE24 and autoPET presets.

For each preset family, three cases of ground truth (``labels/``) and the predictions of two made-up teams
(``predictions/teamA``, ``predictions/teamB``): teamA's follow the ground truth closely, teamB's are shifted,
miss a lesion and add a false positive. The label values follow each challenge (KiTS23: 1 kidney, 2 tumour,
3 cyst; BraTS: 1 necrosis, 2 oedema, 3 enhancing; FLARE24 and autoPET: 1 lesion). Small volumes (48 x 48 x 32
at 1 x 1 x 1.5 mm) keep them light; ``tests/test_challenges.py`` scores, ranks and reports them end to end.
Deterministic: ``python examples/make_example_challenges.py``.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

HERE = Path(__file__).parent / "data" / "challenges"
SHAPE = (48, 48, 32)
SPACING_MM = (1.0, 1.0, 1.5)


def ball(centre, radius):
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    scale = (1.0, 1.0, SPACING_MM[0] / SPACING_MM[2])
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, scale)) <= radius**2


def kits(rng):
    labels = np.zeros(SHAPE, np.uint8)
    for x in (14, 34):
        labels[ball((x, 24, 16), 9)] = 1
    labels[ball((34, 26, 18), 4)] = 2
    labels[ball((12, 22, 14), 2.5)] = 3
    return labels


def brats(rng):
    labels = np.zeros(SHAPE, np.uint8)
    for centre, radius in (((16, 18, 14), 8), ((34, 32, 18), 5)):
        labels[ball(centre, radius)] = 2
        labels[ball(centre, radius * 0.6)] = 1
        labels[ball(centre, radius * 0.35)] = 3
    return labels


def lesions(rng):
    labels = np.zeros(SHAPE, np.uint8)
    for centre, radius in (((14, 14, 10), 5), ((32, 30, 20), 3.5), ((36, 12, 12), 2.5)):
        labels[ball(centre, radius)] = 1
    return labels


FAMILIES = {"kits23": kits, "brats2023-gli": brats, "flare24-t1": lesions, "autopet2022": lesions}


def save(labels, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(labels, np.diag([*SPACING_MM, 1.0]))
    image.set_data_dtype(np.uint8)
    nib.save(image, str(path))


def main() -> None:
    rng = np.random.default_rng(17)
    for preset, make in FAMILIES.items():
        for k in range(3):
            truth = np.roll(make(rng), (k - 1, 1 - k, 0), axis=(0, 1, 2))
            save(truth, HERE / preset / "labels" / f"case_{k + 1:04d}.nii.gz")
            close = truth.copy()
            edge = (truth > 0) & (rng.random(SHAPE) < 0.08)
            close[edge] = 0
            save(close, HERE / preset / "predictions" / "teamA" / f"case_{k + 1:04d}.nii.gz")
            rough = np.roll(truth, (2, 0, 1), axis=(0, 1, 2))
            components, _ = ndimage.label(rough > 0)
            rough[components == components.max()] = 0  # one lesion or structure missed
            rough[ball((40, 40, 26), 2.5)] = truth.max()  # a false positive far from everything
            save(rough, HERE / preset / "predictions" / "teamB" / f"case_{k + 1:04d}.nii.gz")


if __name__ == "__main__":
    main()

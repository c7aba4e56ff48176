"""Scoring speed: flare-eval's CLI against the official-equivalent reference, side by side.

Builds CT-sized cases (512x512x100 voxels, 0.8x0.8x2.5 mm, 13 organs) from the
real label maps in ``examples/data`` (nearest-neighbour upsampling of the
3 mm ground truth and of an independent segmentation of the same CT), then in
one run:

* scores them with ``flare-eval score --workers 1`` (one process, one thread,
  wall clock of the whole command, Python start-up included);
* scores them with ``official_reference.py`` (nibabel float64 loading and
  DeepMind surface-distance per organ, as the official FLARE22 script);
* checks that every DSC and NSD agree to 1e-9 and prints per-case times and
  their ratio.

Usage: ``python benchmarks/bench_scoring.py [--cases N]``.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import ndimage  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from official_reference import official_scores  # noqa: E402

SHAPE = (512, 512, 100)
SPACING_MM = (0.8, 0.8, 2.5)


def upsample(path: Path) -> np.ndarray:
    labels = np.asanyarray(nib.load(str(path)).dataobj).astype(np.uint8)
    return ndimage.zoom(labels, [n / s for n, s in zip(SHAPE, labels.shape)], order=0)


def build_cases(folder: Path, n_cases: int) -> tuple[Path, Path]:
    examples = HERE.parent / "examples" / "data"
    gt_dir, pred_dir = folder / "gt", folder / "pred"
    gt_dir.mkdir(parents=True, exist_ok=True)
    pred_dir.mkdir(parents=True, exist_ok=True)
    truth = upsample(examples / "labels" / "case_0001.nii.gz")
    other = upsample(examples / "predictions" / "teamA" / "case_0001.nii.gz")
    affine = np.diag([*SPACING_MM, 1.0])
    for i in range(n_cases):
        # Different but realistic disagreements per case: shifts of the independent segmentation.
        prediction = np.roll(other, shift=(i % 3 - 1, i // 3, 0), axis=(0, 1, 2))
        nib.save(nib.Nifti1Image(truth, affine), str(gt_dir / f"case_{i:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(prediction, affine), str(pred_dir / f"case_{i:04d}.nii.gz"))
    return gt_dir, pred_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, pred_dir = build_cases(Path(tmp), args.cases)
        cli = Path(sys.executable).parent / "flare-eval"
        start = time.perf_counter()
        subprocess.run([str(cli), "score", str(pred_dir), str(gt_dir), "--out", f"{tmp}/out", "--workers", "1",
                        "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        ours_s = (time.perf_counter() - start) / args.cases
        ours = pd.read_csv(f"{tmp}/out/scores.csv")

        start = time.perf_counter()
        reference = {p.name[:-7]: official_scores(p, pred_dir / p.name) for p in sorted(gt_dir.glob("*.nii.gz"))}
        reference_s = (time.perf_counter() - start) / args.cases

    worst = 0.0
    for row in ours.itertuples():
        dsc, nsd = reference[row.case][row.label]
        worst = max(worst, abs(row.DSC - dsc), abs(row.NSD - nsd))
    print(f"cases: {args.cases} x {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} voxels, spacing {SPACING_MM} mm, 13 organs")
    print(f"reference (nibabel float64 + DeepMind surface-distance): {reference_s:7.3f} s per case")
    print(f"flare-eval score --workers 1 (whole command):           {ours_s:7.3f} s per case")
    print(f"speed-up: {reference_s / ours_s:.1f}x; largest |difference| in DSC or NSD: {worst:.2e}")
    if worst > 1e-9:
        sys.exit("values differ from the reference")


if __name__ == "__main__":
    main()

"""Scoring speed on cases no one tuned for: synthetic abdomens of realistic extent, the whole command.

Each case is drawn afresh (its own seed): 13 organs with the extents they have in an adult abdomen, in
millimetres (a liver of about 20 x 15 x 16 cm, kidneys of 11 cm, an aorta and an IVC through every slice,
an esophagus through the upper half, adrenal glands of 3 cm), placed with random jitter, on grids from
256 x 256 x 80 (1.5 x 1.5 x 5 mm) to 512 x 512 x 300 (0.8 x 0.8 x 1 mm). The prediction is the ground
truth shifted by up to 3 voxels along every axis (z included), every organ dilated or eroded by a voxel,
one organ dropped, one organ swallowed into its neighbour's label, and spurious blobs of random organs.

For each grid and number of cases per command (1 and 8; 48 on the first grid, on every grid with
``--many``), in one run: ``flare-eval score --workers 1`` (one process, the whole command's wall clock,
Python start-up included) and ``official_reference.py`` (nibabel float64 loading and DeepMind
surface-distance per organ, as the official FLARE22 script), on the same files, alternately three times for
up to 8 cases on the two smaller grids (the fastest of each side counts: short runs on a shared machine are
at the mercy of bursts of load); every DSC and NSD must agree to 1e-12. It prints seconds per case for each
and their ratio (``ratio``: our whole command against the reference's scoring alone, in a process that has
already imported it), flare-eval's peak memory, and ``command_ratio``: the same with the reference's own
start-up (a fresh interpreter importing nibabel, NumPy and surface-distance, measured once per run) added to
its time, as when the official script is run as a command.

A second table takes one 512 x 512 x 100 abdomen and predictions of kinds a team may send: the hostile
prediction above stored as uint8, as int64 (``argmax``'s type) and as float32, the ground truth shifted
12 voxels (past the offset scan's reach for most organs) and every organ labelled liver. Per case, one
process: what a scoring worker does (read and check both files, score) against the reference's loading
and scoring; values must agree as above.

Usage: ``python benchmarks/bench_realistic.py [--grids 256x256x80,512x512x100,512x512x300] [--many]
[--no-variants]``.
"""

import argparse
import os
import statistics
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
from bench_scoring import timed_score_command, worst_difference  # noqa: E402
from official_reference import official_scores  # noqa: E402

#: Times each command of at most 8 cases on grids up to 512 x 512 x 100 is run (alternating with the reference;
#: the fastest of each counts).
REPEATS = 3
#: Spacing of each grid, in mm: coarse, the FLARE22 typical, and a thin-slice scan.
GRIDS = {(256, 256, 80): (1.5, 1.5, 5.0), (512, 512, 100): (0.8, 0.8, 2.5), (512, 512, 300): (0.8, 0.8, 1.0)}
#: label: (centre as fractions of the body box (x: patient's left is +, y: anterior is -, z: head is +),
#: semi-axes in mm, kind). Tubes run along z over the given fraction of the scan.
ORGANS = {
    1: ((-0.22, -0.05, 0.62), (100, 75, 80), "ellipsoid"),  # liver
    2: ((-0.18, 0.25, 0.40), (30, 30, 55), "ellipsoid"),  # right kidney
    3: ((0.25, 0.15, 0.62), (50, 30, 50), "ellipsoid"),  # spleen
    4: ((0.05, 0.05, 0.50), (75, 15, 15), "ellipsoid"),  # pancreas
    5: ((0.02, 0.18, (0.0, 1.0)), (12, 12, 0), "tube"),  # aorta
    6: ((-0.06, 0.16, (0.0, 0.9)), (12, 13, 0), "tube"),  # IVC
    7: ((-0.10, 0.20, 0.66), (15, 5, 20), "ellipsoid"),  # right adrenal gland
    8: ((0.10, 0.20, 0.66), (15, 5, 20), "ellipsoid"),  # left adrenal gland
    9: ((-0.15, -0.15, 0.52), (20, 15, 40), "ellipsoid"),  # gallbladder
    10: ((0.00, 0.22, (0.6, 1.0)), (8, 8, 0), "tube"),  # esophagus
    11: ((0.15, -0.12, 0.65), (75, 45, 50), "ellipsoid"),  # stomach
    12: ((-0.05, 0.00, 0.42), (30, 12, 40), "ellipsoid"),  # duodenum
    13: ((0.20, 0.25, 0.40), (30, 30, 55), "ellipsoid"),  # left kidney
}


def synthetic_abdomen(shape: tuple[int, int, int], spacing_mm: tuple[float, ...], seed: int) -> np.ndarray:
    """A label map of 13 organs of adult size (jittered by the seed) on the grid; later organs drawn on top."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    extent_mm = np.array(shape) * np.array(spacing_mm)
    body_mm = np.array([330.0, 250.0, extent_mm[2]])  # the body box, centred in-plane
    axes = [(np.arange(n) + 0.5) * s - e / 2 for n, s, e in zip(shape, spacing_mm, extent_mm)]
    x, y = np.meshgrid(axes[0], axes[1], indexing="ij")
    for label, (centre, semi_mm, kind) in ORGANS.items():
        semi = np.array(semi_mm, float) * rng.uniform(0.85, 1.15, 3)
        if kind == "tube":
            cx, cy, (z0, z1) = centre
            cx, cy = (np.array([cx, cy]) + rng.normal(0, 0.01, 2)) * body_mm[:2]
            disc = ((x - cx) / semi[0]) ** 2 + ((y - cy) / semi[1]) ** 2 <= 1
            first, last = int(z0 * shape[2]), int(z1 * shape[2])
            labels[:, :, first:last][np.broadcast_to(disc[..., None], (*disc.shape, last - first))] = label
            continue
        c = (np.array(centre) + rng.normal(0, 0.015, 3)) * body_mm - np.array([0, 0, extent_mm[2] / 2])
        lo = [max(0, int((c[i] - semi[i] + extent_mm[i] / 2) / spacing_mm[i]) - 1) for i in range(3)]
        hi = [min(shape[i], int((c[i] + semi[i] + extent_mm[i] / 2) / spacing_mm[i]) + 2) for i in range(3)]
        if any(h <= l_ for l_, h in zip(lo, hi)):
            continue
        box = tuple(slice(l_, h) for l_, h in zip(lo, hi))
        grid = np.meshgrid(*(axes[i][box[i]] for i in range(3)), indexing="ij")
        inside = sum(((grid[i] - c[i]) / semi[i]) ** 2 for i in range(3)) <= 1
        labels[box][inside] = label
    return labels


def hostile_prediction(truth: np.ndarray, seed: int) -> np.ndarray:
    """The truth shifted (up to 3 voxels, every axis), each organ dilated or eroded, one dropped, one merged
    into its neighbour's label, and spurious blobs."""
    rng = np.random.default_rng(seed + 10_000)
    shift = tuple(int(s) for s in rng.integers(-3, 4, 3))
    shifted = np.roll(truth, shift=shift, axis=(0, 1, 2))
    out = shifted.copy()
    for label in range(1, 14):
        mask = shifted == label
        changed = ndimage.binary_dilation(mask) if rng.random() < 0.5 else ndimage.binary_erosion(mask)
        out[mask & ~changed] = 0
        out[changed & (shifted == 0)] = label
    out[out == rng.integers(1, 14)] = 0  # a dropped organ
    merged = rng.integers(1, 14)
    out[out == merged] = 1 + merged % 13  # an organ labelled as another
    for _ in range(int(rng.integers(3, 7))):
        centre = rng.integers([5, 5, 2], np.array(truth.shape) - [5, 5, 2])
        out[centre[0] - 4: centre[0] + 4, centre[1] - 4: centre[1] + 4, centre[2] - 2: centre[2] + 2] = \
            rng.integers(1, 14)
    return out


def build(folder: Path, shape, spacing_mm, n_cases: int) -> tuple[Path, Path]:
    gt_dir, pred_dir = folder / "gt", folder / "pred"
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir(parents=True)
    affine = np.diag([*spacing_mm, 1.0])
    for i in range(n_cases):
        truth = synthetic_abdomen(shape, spacing_mm, seed=i)
        nib.save(nib.Nifti1Image(truth, affine), str(gt_dir / f"case_{i:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(hostile_prediction(truth, i), affine), str(pred_dir / f"case_{i:04d}.nii.gz"))
    return gt_dir, pred_dir


def reference_startup_s() -> float:
    """Wall time (median of 3) of a fresh interpreter that imports the reference pipeline and exits."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import official_reference"], cwd=HERE, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(shape, spacing_mm, n_cases: int, folder: Path, startup_s: float, repeats: int) -> dict:
    gt_dir, pred_dir = build(folder, shape, spacing_mm, n_cases)
    out = folder / "out"
    ours_times, reference_times = [], []
    for _ in range(repeats):  # alternated, the fastest of each: a burst of load on a shared machine hits one run
        elapsed_s, peak_mib = timed_score_command(pred_dir, gt_dir, out)
        ours_times.append(elapsed_s / n_cases)
        start = time.perf_counter()
        reference = {p.name[:-7]: official_scores(p, pred_dir / p.name) for p in sorted(gt_dir.glob("*.nii.gz"))}
        reference_times.append((time.perf_counter() - start) / n_cases)
    ours_s, reference_s = min(ours_times), min(reference_times)
    ours = pd.read_csv(out / "scores.csv", dtype={"case": str})
    worst = worst_difference(ours.to_dict("records"), reference)
    return {"grid": "x".join(map(str, shape)), "cases": n_cases, "reference_s": reference_s,
            "flare_eval_s": ours_s, "ratio": reference_s / ours_s,
            "command_ratio": (reference_s + startup_s / n_cases) / ours_s,
            "peak_mib": peak_mib, "worst_difference": worst}


def prediction_variants(truth: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Predictions of the kinds a team may send, for the second table."""
    hostile = hostile_prediction(truth, seed)
    return {"hostile uint8": hostile, "hostile int64": hostile.astype(np.int64),
            "hostile float32": hostile.astype(np.float32),
            "shifted 12 voxels": np.roll(truth, (12, -9, 2), axis=(0, 1, 2)),
            "every organ liver": np.where(truth > 0, 1, 0).astype(np.uint8)}


def run_variants(folder: Path, shape=(512, 512, 100)) -> pd.DataFrame:
    """Seconds per case of a scoring worker's task and of the reference, per kind of prediction."""
    from flare_eval.io import CasePair
    from flare_eval.protocol import load_protocol
    from flare_eval.scoring.case import _score_case_task
    from flare_eval.scoring.prediction import _Options

    spacing_mm = GRIDS[shape]
    affine = np.diag([*spacing_mm, 1.0])
    truth = synthetic_abdomen(shape, spacing_mm, seed=100)
    gt_path = folder / "gt.nii.gz"
    nib.save(nib.Nifti1Image(truth, affine), str(gt_path))
    protocol, options = load_protocol("flare22"), _Options(False, False)
    _score_case_task(None, CasePair("warm", gt_path, gt_path), protocol, options)  # libraries loaded, as in a worker
    rows = []
    for number, (kind, prediction) in enumerate(prediction_variants(truth, seed=100).items()):
        pred_path = folder / f"pred_{number}.nii.gz"
        nib.save(nib.Nifti1Image(prediction, affine, dtype=prediction.dtype), str(pred_path))
        start = time.perf_counter()
        _, ours, _ = _score_case_task(None, CasePair("case", gt_path, pred_path), protocol, options)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        reference = official_scores(gt_path, pred_path)
        reference_s = time.perf_counter() - start
        rows.append({"prediction": kind, "reference_s": reference_s, "flare_eval_s": ours_s,
                     "ratio": reference_s / ours_s, "worst_difference": worst_difference(ours, {"case": reference})})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", default="256x256x80,512x512x100,512x512x300")
    parser.add_argument("--many", action="store_true",
                        help="48 cases per command on every grid, not only the first (long: the reference)")
    parser.add_argument("--no-variants", action="store_true", help="skip the table of kinds of prediction")
    args = parser.parse_args()
    startup_s = reference_startup_s()
    rows = []
    for number, text in enumerate(args.grids.split(",")):
        shape = tuple(int(n) for n in text.split("x"))
        for n_cases in (1, 8, *((48,) if args.many or number == 0 else ())):
            with tempfile.TemporaryDirectory() as tmp:
                short = n_cases <= 8 and np.prod(shape) <= 512 * 512 * 100  # where a burst of load would tell
                rows.append(run(shape, GRIDS[shape], n_cases, Path(tmp), startup_s, REPEATS if short else 1))
            print(f"{text} x {n_cases}: done", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    print("synthetic abdomens of realistic extent, hostile predictions; s per case, whole command for flare-eval; "
          f"the reference's start-up: {startup_s:.2f} s")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    differ = bool((table.worst_difference > 1e-12).any())
    if not args.no_variants:
        with tempfile.TemporaryDirectory() as tmp:
            variants = run_variants(Path(tmp))
        print("\nkinds of prediction, one 512x512x100 abdomen; s per case in one process (a worker's task: read, "
              "check, score)")
        print(variants.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        differ = differ or bool((variants.worst_difference > 1e-12).any())
    if differ:
        sys.exit("values differ from the reference")


if __name__ == "__main__":
    main()

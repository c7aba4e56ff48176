"""Scoring speed: flare-eval's CLI against the official-equivalent reference, side by side, on several sets.

Builds CT-sized cases (512x512x100 voxels, 0.8x0.8x2.5 mm, 13 organs) from the real label maps in
``examples/data`` (nearest-neighbour upsampling of the 3 mm ground truth and of an independent
segmentation of the same CT), in sets of different difficulty:

* ``gentle``: the independent segmentation shifted by at most one voxel in-plane (the original set);
* ``hard``: shifted by up to 3 voxels along every axis including z, dilated or eroded per case, with
  spurious blobs far from the organs;
* ``perfect``, ``empty`` (a prediction file with no organ at all), ``scattered`` (the ground truth
  plus thousands of isolated false-positive voxels);
* ``third``: the hard predictions in a volume three times as tall, organs in its middle third (a larger
  scan where the per-volume costs dominate).

For each set, in one run: ``flare-eval score --workers 1`` (one process, wall clock of the whole command,
Python start-up included) and ``official_reference.py`` (nibabel float64 loading and DeepMind
surface-distance per organ, as the official FLARE22 script); every DSC and NSD must agree to 1e-12. It
prints per set: reference s/case, flare-eval s/case, their ratio, the floor (bare gzip decompression of
both volumes) and flare-eval's peak memory.

Usage: ``python benchmarks/bench_scoring.py [--cases N] [--sets gentle,hard,...]``.
"""

import argparse
import functools
import gzip
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
SETS = ("gentle", "hard", "perfect", "empty", "scattered", "third")


def upsample(path: Path) -> np.ndarray:
    labels = np.asanyarray(nib.load(str(path)).dataobj).astype(np.uint8)
    return ndimage.zoom(labels, [n / s for n, s in zip(SHAPE, labels.shape)], order=0)


def morph(labels: np.ndarray, grow: bool) -> np.ndarray:
    """Every organ dilated (or eroded) by one voxel, as a coarser or finer model would draw it."""
    out = labels.copy()
    for label in range(1, 14):
        mask = labels == label
        changed = ndimage.binary_dilation(mask) if grow else ndimage.binary_erosion(mask)
        out[mask & ~changed] = 0
        out[changed & (labels == 0)] = label
    return out


def hard_prediction(other: np.ndarray, i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    shift = tuple(int(s) for s in rng.integers(-3, 4, 3))
    prediction = morph(np.roll(other, shift=shift, axis=(0, 1, 2)), grow=bool(i % 2))
    for _ in range(6):  # spurious blobs of random organs away from the body
        centre = rng.integers([20, 20, 5], [100, 490, 95])
        prediction[centre[0] - 4: centre[0] + 4, centre[1] - 4: centre[1] + 4, centre[2] - 2: centre[2] + 2] = \
            rng.integers(1, 14)
    return prediction


def example_volumes() -> tuple[np.ndarray, np.ndarray]:
    """The bundled ground truth and team A's prediction of case_0001, upsampled to the benchmark's grid."""
    examples = HERE.parent / "examples" / "data"
    return (upsample(examples / "labels" / "case_0001.nii.gz"),
            upsample(examples / "predictions" / "teamA" / "case_0001.nii.gz"))


def build_set(name: str, folder: Path, n_cases: int, truth: np.ndarray, other: np.ndarray) -> tuple[Path, Path]:
    gt_dir, pred_dir = folder / name / "gt", folder / name / "pred"
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir(parents=True)
    affine = np.diag([*SPACING_MM, 1.0])
    for i in range(n_cases):
        gt = truth
        if name == "gentle":
            prediction = np.roll(other, shift=(i % 3 - 1, i // 3, 0), axis=(0, 1, 2))
        elif name in ("hard", "third"):
            prediction = hard_prediction(other, i)
        elif name == "perfect":
            prediction = truth
        elif name == "scattered":
            prediction = truth.copy()
            flat = np.random.default_rng(i).choice(truth.size, 5000, replace=False)
            prediction.reshape(-1)[flat] = np.random.default_rng(i + 1).integers(1, 14, flat.size)
        else:  # empty: a prediction without any organ
            prediction = np.zeros_like(truth)
        if name == "third":
            tall = np.zeros(SHAPE[:2] + (3 * SHAPE[2],), np.uint8)
            tall[:, :, SHAPE[2]: 2 * SHAPE[2]] = gt
            gt = tall
            tall = np.zeros_like(gt)
            tall[:, :, SHAPE[2]: 2 * SHAPE[2]] = prediction
            prediction = tall
        nib.save(nib.Nifti1Image(gt, affine), str(gt_dir / f"case_{i:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(prediction, affine), str(pred_dir / f"case_{i:04d}.nii.gz"))
    return gt_dir, pred_dir


def floor_s(gt_dir: Path, pred_dir: Path) -> float:
    """Seconds per case to decompress both volumes and nothing else."""
    files = sorted(gt_dir.glob("*.nii.gz")) + sorted(pred_dir.glob("*.nii.gz"))
    start = time.perf_counter()
    for path in files:
        gzip.decompress(path.read_bytes())
    return (time.perf_counter() - start) / len(list(gt_dir.glob("*.nii.gz")))


@functools.cache
def byte_compile_flare_eval() -> None:
    """Compile flare-eval's modules to bytecode once, as installing a wheel does: an editable install where
    PYTHONDONTWRITEBYTECODE is set (as on the development machine) would compile them at every start."""
    import flare_eval

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(flare_eval.__file__).parent)], check=True)


def timed_score_command(pred_dir: Path, gt_dir: Path, out: Path) -> tuple[float, float]:
    """Run ``flare-eval score --workers 1`` as a fresh process; its wall time (s) and peak memory (MiB).

    The peak is that of the command's process or of the worker processes it scored in, whichever is larger.
    flare-eval's modules are byte-compiled first (see `byte_compile_flare_eval`).
    """
    byte_compile_flare_eval()
    peak_file = out.with_name(out.name + ".peak_kib")
    # As the installed script runs (cli.command), the peak's file taken off the arguments first.
    command = ("import atexit, resource, sys; from flare_eval.cli import command; peak = sys.argv.pop(1); "
               "atexit.register(lambda: open(peak, 'w').write(str(max(int(next(line.split()[1] for line in "
               "open('/proc/self/status') if line.startswith('VmHWM'))), "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)))); "
               "sys.exit(command())")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", command, str(peak_file), "score", str(pred_dir), str(gt_dir), "--out",
                    str(out), "--workers", "1", "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, int(peak_file.read_text()) / 1024


def worst_difference(rows, reference: dict) -> float:
    """Largest |difference| of DSC or NSD between our rows (mappings with case, label, DSC, NSD) and the
    reference's ``{case: {label: (DSC, NSD)}}``."""
    return max((max(abs(row["DSC"] - reference[row["case"]][row["label"]][0]),
                    abs(row["NSD"] - reference[row["case"]][row["label"]][1])) for row in rows), default=0.0)


def run_set(name: str, folder: Path, n_cases: int, truth: np.ndarray, other: np.ndarray) -> dict:
    gt_dir, pred_dir = build_set(name, folder, n_cases, truth, other)
    out = folder / name / "out"
    elapsed_s, peak_mib = timed_score_command(pred_dir, gt_dir, out)
    ours_s = elapsed_s / n_cases
    ours = pd.read_csv(out / "scores.csv", dtype={"case": str})

    start = time.perf_counter()
    reference = {gt_path.name[:-7]: official_scores(gt_path, pred_dir / gt_path.name)
                 for gt_path in sorted(gt_dir.glob("*.nii.gz"))}
    reference_s = (time.perf_counter() - start) / n_cases

    worst = worst_difference(ours.to_dict("records"), reference)
    return {"set": name, "reference_s": reference_s, "flare_eval_s": ours_s, "ratio": reference_s / ours_s,
            "floor_s": floor_s(gt_dir, pred_dir), "peak_mib": peak_mib, "worst_difference": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    args = parser.parse_args()
    truth, other = example_volumes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            rows.append(run_set(name, Path(tmp), args.cases, truth, other))
            print(f"{name}: done", file=sys.stderr)
    table = pd.DataFrame(rows)
    print(f"{args.cases} cases per set, {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} voxels ('third': x3 slices), "
          f"spacing {SPACING_MM} mm, 13 organs; times in s per case, whole command for flare-eval")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if (table.worst_difference > 1e-12).any():
        sys.exit("values differ from the reference")


if __name__ == "__main__":
    main()

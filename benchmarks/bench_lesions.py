"""Lesion-wise scoring speed: flare-eval's BraTS 2023 and autoPET rules against whole-volume reference code.

Builds BraTS-sized cases (240x240x155 voxels at 1 mm) with tumours made of several lesions in three nested
regions (WT, TC, ET), and predictions that find some lesions, miss others and add false positives; then, in
one run, scores every region with flare-eval (`flare_eval.lesions`, each lesion in its own box) and with
`challenge_reference.py` (the organizers' algorithm on whole volumes, one lesion at a time, DeepMind's
HD95), checks that every value agrees and prints the times and their ratio. The same for autoPET's
false-positive and false-negative volumes on 400x400x300 PET-sized cases.

KiTS23 at full resolution (512x512x160 at 0.78x0.78x1.5 mm, two kidneys with a mass and a tumour) is timed
against DeepMind's surface Dice on the whole volumes, as the organizers' code computes it.

Usage: ``python benchmarks/bench_lesions.py [--cases N]``.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import challenge_reference  # noqa: E402
import surface_distance as deepmind  # noqa: E402

from flare_eval import load_protocol  # noqa: E402
from flare_eval.lesions import brats_lesion_wise, false_volumes_ml  # noqa: E402
from flare_eval.scoring import score_label_maps  # noqa: E402

KITS_REGIONS = {"kidney_and_mass": ((1, 2, 3), 1.0330772532390826), "mass": ((2, 3), 1.1328796488598762),
                "tumor": ((2,), 1.1498198361434828)}


def ball(shape, centre, radius):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def brats_case(rng, shape=(240, 240, 155)):
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for _ in range(6):
        centre = rng.integers(40, [200, 200, 115])
        radius = int(rng.integers(4, 14))
        gt[ball(shape, centre, radius)] = 2
        gt[ball(shape, centre, radius * 0.6)] = 1
        gt[ball(shape, centre, radius * 0.3)] = 3
        if rng.random() < 0.7:  # found, a little off
            shifted = centre + rng.integers(-2, 3, 3)
            pred[ball(shape, shifted, radius)] = 2
            pred[ball(shape, shifted, radius * 0.6)] = 1
            pred[ball(shape, shifted, radius * 0.3)] = 3
    for _ in range(3):  # false positives
        pred[ball(shape, rng.integers(20, [220, 220, 135]), int(rng.integers(2, 5)))] = 2
    return gt, pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(2023)
    regions = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    ours_s = reference_s = 0.0
    worst = 0.0
    for _ in range(args.cases):
        gt, pred = brats_case(rng)
        for labels in regions.values():
            g, p = np.isin(gt, labels), np.isin(pred, labels)
            start = time.perf_counter()
            ours = brats_lesion_wise(g, p, (1, 1, 1), dilation_iterations=3, min_lesion_mm3=50)
            ours_s += time.perf_counter() - start
            start = time.perf_counter()
            dice, hd95, tp, fp, fn = challenge_reference.brats_lesion_wise(g, p, (1, 1, 1), 3, 50)
            reference_s += time.perf_counter() - start
            assert (ours.n_tp, ours.n_fp, ours.n_fn) == (tp, fp, fn)
            worst = max(worst, abs(ours.lesion_wise_dice - dice), abs(ours.lesion_wise_hd95_mm - hd95))
    print(f"BraTS 2023 lesion-wise (GLI rules), {args.cases} cases x 3 regions, 240x240x155 voxels:")
    print(f"  reference (whole volume per lesion): {reference_s / args.cases:7.2f} s per case")
    print(f"  flare-eval (a box per lesion):       {ours_s / args.cases:7.2f} s per case")
    print(f"  speed-up {reference_s / ours_s:.1f}x; largest |difference| {worst:.1e}")
    if worst > 1e-12:
        sys.exit("values differ from the reference")

    ours_s = reference_s = 0.0
    for _ in range(args.cases):
        shape = (400, 400, 300)
        gt = np.zeros(shape, np.uint8)
        pred = np.zeros(shape, np.uint8)
        for _ in range(12):
            centre = rng.integers(20, [380, 380, 280])
            gt[ball(shape, centre, int(rng.integers(2, 8)))] = 1
            if rng.random() < 0.6:
                pred[ball(shape, centre + rng.integers(-2, 3, 3), int(rng.integers(2, 8)))] = 1
        for _ in range(10):
            pred[ball(shape, rng.integers(10, [390, 390, 290]), int(rng.integers(1, 4)))] = 1
        start = time.perf_counter()
        ours = false_volumes_ml(gt, pred, (2.0, 2.0, 3.0))
        ours_s += time.perf_counter() - start
        start = time.perf_counter()
        reference = challenge_reference.false_volumes(gt, pred, 12.0 / 1000)
        reference_s += time.perf_counter() - start
        assert np.allclose(ours, reference, rtol=0, atol=1e-9), (ours, reference)
    print(f"autoPET 2022 false volumes, {args.cases} cases, 400x400x300 voxels:")
    print(f"  reference (one component at a time): {reference_s / args.cases:7.2f} s per case")
    print(f"  flare-eval (per group of blocks):      {ours_s / args.cases:7.2f} s per case")
    print(f"  speed-up {reference_s / ours_s:.1f}x; values identical")

    ours_s = reference_s = 0.0
    worst = 0.0
    spacing = (0.78, 0.78, 1.5)
    protocol = load_protocol("kits23")
    for _ in range(args.cases):
        shape = (512, 512, 160)
        gt = np.zeros(shape, np.uint8)
        for centre_x in (150, 360):
            centre = np.array([centre_x, 250, 80]) + rng.integers(-5, 6, 3)
            gt[ball(shape, centre, 45)] = 1
        gt[ball(shape, centre + [10, 0, 5], 18)] = 2
        gt[ball(shape, centre + [-12, 8, 0], 8)] = 3
        pred = np.roll(gt, tuple(int(v) for v in rng.integers(-2, 3, 3)), axis=(0, 1, 2))
        start = time.perf_counter()
        rows = {row["region"]: row for row in score_label_maps(gt, pred, spacing, protocol)}
        ours_s += time.perf_counter() - start
        start = time.perf_counter()
        for region, (labels, tolerance) in KITS_REGIONS.items():
            g, p = np.isin(gt, labels), np.isin(pred, labels)
            dice = deepmind.compute_dice_coefficient(g, p)
            sd = deepmind.compute_surface_dice_at_tolerance(deepmind.compute_surface_distances(g, p, spacing),
                                                            tolerance)
            worst = max(worst, abs(rows[region]["Dice"] - dice), abs(rows[region]["SD"] - sd))
        reference_s += time.perf_counter() - start
    print(f"KiTS23, {args.cases} cases x 3 regions, 512x512x160 voxels at 0.78x0.78x1.5 mm:")
    print(f"  reference (DeepMind on whole volumes): {reference_s / args.cases:7.2f} s per case")
    print(f"  flare-eval:                            {ours_s / args.cases:7.2f} s per case")
    print(f"  speed-up {reference_s / ours_s:.1f}x; largest |difference| {worst:.1e}")
    if worst > 1e-12:
        sys.exit("values differ from the reference")


if __name__ == "__main__":
    main()

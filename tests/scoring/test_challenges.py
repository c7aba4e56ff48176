"""KiTS23, BraTS 2023, FLARE24 task 1 and autoPET 2022 presets against hand-worked cases and independent code.

The independent references are DeepMind's surface-distance (surface Dice, robust Hausdorff) and, for the
lesion rules, straightforward whole-volume versions of the organizers' algorithms written from the
reference sheet (benchmarks/challenge_reference.py: no cropping, one lesion at a time), which flare-eval's
cropped implementation must equal.
"""

import json
import re

import challenge_reference
import numpy as np
import pandas as pd
import pytest
import surface_distance as deepmind
from conftest import REPO, write_nifti

import flare_eval as fe
from flare_eval.cli import main
from flare_eval.lesions import brats_lesion_wise, false_volumes_ml
from flare_eval.metrics import surface_distances

KITS_TOLERANCES = {"kidney_and_mass": 1.0330772532390826, "mass": 1.1328796488598762, "tumor": 1.1498198361434828}


def by_region(rows):
    return {row["region"]: row for row in rows}


def random_blobs(rng, shape, n, size=(2, 6), label=1):
    volume = np.zeros(shape, np.uint8)
    for _ in range(n):
        corner = [rng.integers(0, s - size[1]) for s in shape]
        extent = [rng.integers(*size) for _ in shape]
        volume[tuple(slice(c, c + e) for c, e in zip(corner, extent))] = label
    return volume


# KiTS23 -----------------------------------------------------------------------------------------------

def test_kits23_regions_equal_deepmind_and_the_empty_rules():
    gt = np.zeros((30, 30, 16), np.uint8)
    gt[4:24, 4:24, 2:14] = 1
    gt[8:16, 8:16, 4:10] = 2
    gt[18:21, 18:21, 5:8] = 3
    pred = np.roll(gt, (1, -1, 0), axis=(0, 1, 2))
    spacing = (0.78, 0.78, 1.5)
    rows = by_region(fe.score_label_maps(gt, pred, spacing, fe.load_protocol("kits23")))
    for region, labels in (("kidney_and_mass", [1, 2, 3]), ("mass", [2, 3]), ("tumor", [2])):
        g, p = np.isin(gt, labels), np.isin(pred, labels)
        assert rows[region]["Dice"] == pytest.approx(deepmind.compute_dice_coefficient(g, p), abs=1e-15)
        expected = deepmind.compute_surface_dice_at_tolerance(deepmind.compute_surface_distances(g, p, spacing),
                                                              KITS_TOLERANCES[region])
        assert rows[region]["SD"] == pytest.approx(expected, abs=1e-12)
    # No tumor in either: 1 and 1; a tumor in the prediction only: 0 and 0.
    no_tumor = np.where(gt == 2, 1, gt)
    rows = by_region(fe.score_label_maps(no_tumor, no_tumor, spacing, fe.load_protocol("kits23")))
    assert (rows["tumor"]["Dice"], rows["tumor"]["SD"]) == (1.0, 1.0)
    rows = by_region(fe.score_label_maps(no_tumor, gt, spacing, fe.load_protocol("kits23")))
    assert (rows["tumor"]["Dice"], rows["tumor"]["SD"]) == (0.0, 0.0)


def test_kits23_ranking_averages_two_region_means_and_breaks_ties_by_tumor_dice():
    # Team means: Dice a .9 b .8 c .7 d .8; SD a .5 b .7 c .8 d .6 -> Dice ranks 1 2 4 2, SD ranks 4 2 1 3
    # mean ranks a 2.5 b 2 c 2.5 d 2.5 -> b first; a, c, d tied at 2.5, ordered by tumor Dice d > c > a.
    rows = []
    for team, dice, sd, tumor in (("a", .9, .5, .1), ("b", .8, .7, .5), ("c", .7, .8, .2), ("d", .8, .6, .3)):
        rows += [(team, case, dice, sd, tumor) for case in ("x", "y")]
    table = pd.DataFrame(rows, columns=["team", "case", "Dice", "SD", "Dice_tumor"])
    ranking = fe.rank(table, "kits23").set_index("team")
    assert ranking["rank"].to_dict() == {"b": 1, "d": 2, "c": 3, "a": 4}
    assert ranking.loc["a", "score"] == 2.5 and ranking.loc["b", "score"] == 2.0


def test_region_results_average_the_regions_and_keep_the_tie_break():
    scores = pd.DataFrame({"team": "t", "case": "x", "region": ["kidney_and_mass", "mass", "tumor"],
                           "Dice": [0.9, 0.6, 0.3], "SD": [1.0, 0.5, 0.0]})
    from flare_eval.results import region_results

    results = region_results(scores, "kits23")
    assert results.iloc[0][["Dice", "SD", "Dice_tumor"]].tolist() == pytest.approx([0.6, 0.5, 0.3])


# HD95 -------------------------------------------------------------------------------------------------

def test_hd95_equals_deepmind_robust_hausdorff():
    rng = np.random.default_rng(3)
    for trial in range(12):
        g = random_blobs(rng, (24, 22, 14), 3).astype(bool)
        p = random_blobs(rng, (24, 22, 14), 3).astype(bool)
        spacing = (0.8, 0.8, 2.5) if trial % 2 else (1.0, 1.0, 1.0)
        expected = deepmind.compute_robust_hausdorff(deepmind.compute_surface_distances(g, p, spacing), 95)
        assert surface_distances(g, p, spacing).robust_hausdorff(95) == expected


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 2.5), (0.7, 1.3, 1.1)])
def test_distances_of_far_surfaces_by_k_d_tree_equal_deepmind_and_the_feature_transform(monkeypatch, spacing):
    """Small blobs far apart in a large box: the k-d tree path gives every distance as the feature transform does."""
    rng = np.random.default_rng(21)
    shape = (70, 64, 40)
    g, p = np.zeros(shape, bool), np.zeros(shape, bool)
    for mask, corner in ((g, (4, 5, 3)), (p, (6, 7, 4)), (p, (55, 50, 30)), (g, (60, 8, 33))):
        mask[tuple(slice(c, c + 6) for c in corner)] |= rng.random((6, 6, 6)) > 0.3
    expected = deepmind.compute_surface_distances(g, p, spacing)
    by_tree = surface_distances(g, p, spacing)
    monkeypatch.setattr("flare_eval.metrics._TREE_COST_PER_POINT", float("inf"))  # the feature transform only
    by_transform = surface_distances(g, p, spacing)
    for ours in (by_tree, by_transform):
        assert ours.robust_hausdorff(95) == deepmind.compute_robust_hausdorff(expected, 95)
        assert ours.robust_hausdorff(100) == deepmind.compute_robust_hausdorff(expected, 100)
    np.testing.assert_array_equal(by_tree.distances_gt_to_pred_mm, by_transform.distances_gt_to_pred_mm)
    np.testing.assert_array_equal(by_tree.distances_pred_to_gt_mm, by_transform.distances_pred_to_gt_mm)
    np.testing.assert_array_equal(np.sort(by_tree.distances_gt_to_pred_mm), expected["distances_gt_to_pred"])


# BraTS 2023 -------------------------------------------------------------------------------------------

def test_brats_hand_worked_one_found_one_missed_one_false_positive():
    gt = np.zeros((40, 40, 40), bool)
    gt[2:6, 2:6, 2:6] = True      # lesion 1: 64 mm^3, found exactly
    gt[20:24, 20:24, 20:24] = True  # lesion 2: missed
    pred = np.zeros_like(gt)
    pred[2:6, 2:6, 2:6] = True
    pred[34:37, 2:5, 34:37] = True  # far from every lesion: a false positive
    scores = brats_lesion_wise(gt, pred, (1, 1, 1), dilation_iterations=3, min_lesion_mm3=50)
    assert (scores.n_tp, scores.n_fp, scores.n_fn) == (1, 1, 1)
    assert scores.lesion_wise_dice == pytest.approx(1 / 3)
    assert scores.lesion_wise_hd95_mm == pytest.approx((0 + 374 + 374) / 3)
    assert scores.legacy_dice == pytest.approx(2 * 64 / (128 + 64 + 27))
    assert scores.gt_volume_mm3 == 128


def test_brats_lesions_joined_by_dilation_and_small_lesions_left_out():
    gt = np.zeros((40, 40, 20), bool)
    gt[5:10, 5:10, 5:10] = True
    gt[13:18, 5:10, 5:10] = True    # a gap of 3 voxels: joined by 3 dilations (GLI), not by 1 (MEN)
    gt[30:33, 30:33, 5:8] = True    # 27 mm^3: under the 50 mm^3 threshold
    pred = np.zeros_like(gt)
    pred[5:10, 5:10, 5:10] = True   # covers one half of the joined lesion
    pred[30:33, 30:33, 5:8] = True  # matches only the small lesion: neither counted nor a false positive
    gli = brats_lesion_wise(gt, pred, (1, 1, 1), dilation_iterations=3, min_lesion_mm3=50)
    assert (gli.n_tp, gli.n_fp, gli.n_fn) == (1, 0, 0)
    assert gli.lesion_wise_dice == pytest.approx(2 * 125 / (250 + 125))
    men = brats_lesion_wise(gt, pred, (1, 1, 1), dilation_iterations=1, min_lesion_mm3=50)
    assert (men.n_tp, men.n_fp, men.n_fn) == (1, 0, 1)
    assert men.lesion_wise_dice == pytest.approx(0.5)  # one lesion found exactly, one missed


def test_brats_empty_region_and_anisotropic_volume_threshold():
    empty = np.zeros((10, 10, 10), bool)
    scores = brats_lesion_wise(empty, empty, (1, 1, 1), dilation_iterations=3, min_lesion_mm3=50)
    assert (scores.lesion_wise_dice, scores.lesion_wise_hd95_mm, scores.legacy_dice, scores.legacy_hd95_mm) == \
        (1.0, 0.0, 1.0, 0.0)
    gt = np.zeros((20, 20, 10), bool)
    gt[5:9, 5:9, 2:5] = True  # 48 voxels: 48 mm^3 at 1 mm, 48 x 1.6 = 76.8 mm^3 at 0.8 x 0.8 x 2.5 mm
    nothing = np.zeros_like(gt)
    missed = brats_lesion_wise(gt, nothing, (1, 1, 1), dilation_iterations=1, min_lesion_mm3=50)
    assert missed.n_fn == 0 and missed.lesion_wise_dice == 1.0  # small at 1 mm: left out
    missed = brats_lesion_wise(gt, nothing, (0.8, 0.8, 2.5), dilation_iterations=1, min_lesion_mm3=50)
    assert missed.n_fn == 1 and missed.lesion_wise_dice == 0.0 and missed.lesion_wise_hd95_mm == 374.0
    assert missed.legacy_hd95_mm == 374.0


@pytest.mark.parametrize(("dilation", "min_volume", "spacing"), [(3, 50, (1, 1, 1)), (1, 2, (0.8, 0.8, 2.5))])
def test_brats_equals_the_whole_volume_algorithm_on_random_lesions(dilation, min_volume, spacing):
    rng = np.random.default_rng(dilation)
    for _ in range(6):
        gt = random_blobs(rng, (36, 34, 20), 5).astype(bool)
        pred = (random_blobs(rng, (36, 34, 20), 4).astype(bool) | np.roll(gt, 1, axis=0)) & \
            (rng.random((36, 34, 20)) > 0.02)
        ours = brats_lesion_wise(gt, pred, spacing, dilation_iterations=dilation, min_lesion_mm3=min_volume)
        dice, hd95, tp, fp, fn = challenge_reference.brats_lesion_wise(gt, pred, spacing, dilation, min_volume)
        assert (ours.n_tp, ours.n_fp, ours.n_fn) == (tp, fp, fn)
        assert ours.lesion_wise_dice == pytest.approx(dice, abs=1e-12)
        assert ours.lesion_wise_hd95_mm == pytest.approx(hd95, abs=1e-12)


def test_brats_presets_score_the_three_regions():
    gt = np.zeros((30, 30, 20), np.uint8)
    gt[5:15, 5:15, 5:15] = 2
    gt[7:12, 7:12, 7:12] = 1
    gt[8:10, 8:10, 8:10] = 3
    rows = by_region(fe.score_label_maps(gt, gt, (1, 1, 1), fe.load_protocol("brats2023-gli")))
    assert list(rows) == ["WT", "TC", "ET"]
    for region in ("WT", "TC"):
        row = rows[region]
        assert row["LesionWise_Dice"] == 1.0 and row["LesionWise_HD95"] == 0.0 and row["Num_TP"] == 1
    assert rows["ET"]["Num_TP"] == 0 and rows["ET"]["GT_Complete_Volume"] == 8  # 8 mm^3: under 50, left out
    for name, dilation, volume in (("gli", 3, 50), ("ssa", 3, 50), ("ped", 3, 50), ("men", 1, 50), ("met", 1, 2)):
        metric = fe.load_protocol(f"brats2023-{name}").regions[0].metrics[0]
        assert (metric.dilation_iterations, metric.min_lesion_mm3, metric.penalty_mm) == (dilation, volume, 374.0)


# FLARE24 task 1 ---------------------------------------------------------------------------------------

def test_flare24_rules():
    protocol = fe.load_protocol("flare24-t1")
    gt = np.zeros((20, 20, 10), np.uint8)
    gt[2:12, 2:12, 2:8] = 1
    pred = np.zeros_like(gt)
    pred[10:14, 10:14, 6:9] = 1  # DSC well below 0.2: NSD is set to 0 whatever the surfaces
    row = fe.score_label_maps(gt, pred, (1, 1, 1), protocol)[0]
    assert row["DSC"] == np.round(2 * 2 * 2 * 2 / (600 + 48), 4) and row["NSD"] == 0.0
    near = np.roll(gt, 1, axis=0)
    row = fe.score_label_maps(gt, near, (1, 1, 1), protocol)[0]
    expected = deepmind.compute_surface_dice_at_tolerance(
        deepmind.compute_surface_distances(gt.astype(bool), near.astype(bool), (1, 1, 1)), 2.0)
    assert row["NSD"] == np.round(expected, 4) and row["DSC"] == 0.9  # rounded to 4 decimals, as NumPy rounds
    row = fe.score_label_maps(gt, np.where(gt == 1, 2, 0).astype(np.uint8) + gt, (1, 1, 1), protocol)[0]
    assert (row["DSC"], row["NSD"]) == (0.0, 0.0)  # a label other than 0 and 1 in the prediction
    empty = np.zeros_like(gt)
    assert fe.score_label_maps(empty, empty, (1, 1, 1), protocol)[0]["DSC"] == 1.0
    # The label check comes first: an empty ground truth and a prediction holding label 2 score 0, not 1.
    stray = np.zeros_like(gt)
    stray[0, 0, 0] = 2
    assert fe.score_label_maps(empty, stray, (1, 1, 1), protocol)[0]["DSC"] == 0.0


# autoPET 2022 -----------------------------------------------------------------------------------------

def test_autopet_false_volumes_over_groups_of_blocks_equal_the_whole_volume_reference():
    """Components are found per group of occupied 16-voxel blocks; the sums equal the whole-volume algorithm's:
    scattered lesions, lesions across block corners, and a group inside the bounding box of another."""
    from flare_eval import lesions

    rng = np.random.default_rng(11)
    gt = random_blobs(rng, (120, 120, 60), 12, size=(1, 6))
    pred = random_blobs(rng, (120, 120, 60), 12, size=(1, 6))
    gt[0:64, 1, 1] = 1  # an L of blocks ...
    gt[1, 0:64, 1] = 1
    pred[40:42, 40:42, 3:5] = 1  # ... around a false positive of its own group, inside the L's bounding box
    pred[30:50, 2, 2] = 2  # another value along the L, touching nothing
    gt[15:17, 15:17, 30:32] = 1  # a lesion across the corner of eight blocks
    pred[16, 16, 31] = 1
    for connectivity in (6, 18, 26):
        ours = false_volumes_ml(gt, pred, (2.0, 2.0, 3.0), connectivity=connectivity)
        whole = (lesions._untouched_voxels(pred, gt != 0, connectivity) * 0.012,
                 lesions._untouched_voxels(gt, pred != 0, connectivity) * 0.012)
        assert ours == pytest.approx(whole, abs=1e-12), connectivity
    assert false_volumes_ml(gt, pred, (2.0, 2.0, 3.0)) == pytest.approx(
        challenge_reference.false_volumes(gt, pred, 12.0 / 1000), abs=1e-9)


def test_autopet_false_volumes_and_raw_dice():
    rng = np.random.default_rng(5)
    for _ in range(5):
        gt = random_blobs(rng, (30, 30, 20), 6)
        pred = random_blobs(rng, (30, 30, 20), 6)
        spacing = (2.0, 2.0, 3.0)
        ours = false_volumes_ml(gt, pred, spacing)
        assert ours == pytest.approx(challenge_reference.false_volumes(gt, pred, 12.0 / 1000))
    protocol = fe.load_protocol("autopet2022")
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[2:6, 2:6, 2:6] = 1
    pred = gt.copy()
    pred[2, 2, 2] = 2  # another label inflates the raw Dice, as in the official script
    row = fe.score_label_maps(gt, pred, (1, 1, 1), protocol)[0]
    assert row["Dice"] == pytest.approx(2 * (64 + 1) / (64 + 65))
    empty = np.zeros_like(gt)
    row = fe.score_label_maps(empty, empty, (1, 1, 1), protocol)[0]
    assert np.isnan(row["Dice"]) and row["FP_volume_ml"] == 0 and row["FN_volume_ml"] == 0


# End to end -------------------------------------------------------------------------------------------

def test_score_command_with_a_challenge_preset(tmp_path, capsys):
    gt = np.zeros((24, 24, 12), np.uint8)
    gt[3:18, 3:18, 2:10] = 1
    gt[6:11, 6:11, 4:8] = 2
    write_nifti(tmp_path / "gt" / "c1.nii.gz", gt, (0.8, 0.8, 2.5))
    write_nifti(tmp_path / "gt" / "c2.nii.gz", gt, (0.8, 0.8, 2.5))
    write_nifti(tmp_path / "pred" / "c1.nii.gz", np.roll(gt, 1, axis=1), (0.8, 0.8, 2.5))
    code = main(["score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(tmp_path / "out"),
                 "--protocol", "kits23", "--workers", "1", "--no-progress"])
    assert code == 1 and "c2: missing" in capsys.readouterr().err
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert list(scores.columns) == ["case", "region", "Dice", "SD", "status", "message"]
    assert scores.region.tolist() == ["kidney_and_mass", "mass", "tumor"] * 2
    missing = scores[scores.case == "c2"]
    assert (missing.Dice.tolist(), missing.SD.tolist()) == ([0, 0, 0], [0, 0, 0])  # scored as an empty prediction
    official = pd.read_csv(tmp_path / "out" / "scores_official.csv")
    assert list(official.columns) == ["Name", "kidney_and_mass_Dice", "kidney_and_mass_SD", "mass_Dice", "mass_SD",
                                      "tumor_Dice", "tumor_SD"]
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert {"region", "metric", "n", "mean", "median"} <= set(summary.columns)


def test_flare22_outputs_are_unchanged_by_the_general_protocol(examples):
    scores = fe.score_folder(examples.predictions / "teamA", examples.labels, workers=1, progress=False)
    assert list(scores.columns) == ["case", "label", "organ", "DSC", "NSD", "status", "gt_voxels", "pred_voxels",
                                    "message"]
    flare22 = fe.load_protocol("flare22")
    assert flare22.layout.name == "organs" and all(len(region.labels) == 1 for region in flare22.regions)


@pytest.mark.parametrize("preset", ["kits23", "brats2023-gli", "flare24-t1", "autopet2022"])
def test_presets_collect_rank_and_report_the_bundled_examples(preset, examples, tmp_path):
    """The bundled cases of each preset: collect (scores and results), rank (with bootstrap and tests), report."""
    import shutil

    source = examples.challenges / preset
    for team in ("teamA", "teamB"):
        shutil.copytree(source / "predictions" / team, tmp_path / "runs" / team / "predictions")
    results = fe.collect_results(tmp_path / "runs", source / "labels", tmp_path / "results.csv", preset,
                                 workers=1, progress=False)
    assert set(results.team) == {"teamA", "teamB"} and len(results) == 6
    outputs = fe.rank_results(tmp_path / "results.csv", tmp_path / "ranking", preset, n_samples=20)
    assert outputs.ranking.set_index("team").loc["teamA", "rank"] == 1  # the close predictions win
    index = fe.report(tmp_path, tmp_path / "report", preset)
    text = index.read_text()
    assert all(re.search(rf"<h2>\d+\. {title}", text) for title in ("Leaderboard", "Accuracy per region", "Podium"))


@pytest.mark.parametrize(("preset", "expected_x_mm"), [("kits23", 0.80004), ("flare24-t1", 0.8)])
def test_spacing_comes_from_the_header_the_preset_names(preset, expected_x_mm, tmp_path, monkeypatch):
    """KiTS, BraTS and autoPET read the prediction's spacing, FLARE24 the ground truth's (same grid, 1e-4 apart)."""
    import flare_eval.scoring.case as case

    gt = np.zeros((12, 12, 8), np.uint8)
    gt[3:8, 3:8, 2:6] = 1
    write_nifti(tmp_path / "gt.nii.gz", gt, (0.8, 0.8, 2.5))
    write_nifti(tmp_path / "pred.nii.gz", gt, (0.80004, 0.8, 2.5))
    seen = []
    original = case.score_label_maps

    def recording(g, p, spacing, protocol, **options):
        seen.append(tuple(spacing))
        return original(g, p, spacing, protocol, **options)

    monkeypatch.setattr(case, "score_label_maps", recording)
    scores = fe.score_case(tmp_path / "pred.nii.gz", tmp_path / "gt.nii.gz", preset)
    assert set(scores.status) == {"ok"}
    assert seen[0][0] == pytest.approx(expected_x_mm, abs=1e-7)


def test_flare24_one_empty_scores_zero():
    protocol = fe.load_protocol("flare24-t1")
    gt = np.zeros((10, 10, 10), np.uint8)
    pred = gt.copy()
    pred[2:5, 2:5, 2:5] = 1
    assert [fe.score_label_maps(gt, pred, (1, 1, 1), protocol)[0][m] for m in ("DSC", "NSD")] == [0.0, 0.0]
    assert [fe.score_label_maps(pred, gt, (1, 1, 1), protocol)[0][m] for m in ("DSC", "NSD")] == [0.0, 0.0]


# Fidelity corners (issue 20: raw values; issue 22: the official code's arithmetic) ----------------------

def _autopet_case():
    gt = np.zeros((12, 12, 12), np.uint8)
    gt[2:4, 2:4, 2:4] = 1  # 8 voxels
    return gt


@pytest.mark.parametrize("bad", [2, 255, -63])
def test_autopet_refuses_values_other_than_0_and_1(bad):
    gt = _autopet_case()
    pred = gt.astype(np.int16)
    pred[3, 3, 3] = bad  # on raw values the official Dice would be 2 * (7 + bad) / (8 + 7 + bad): above 1, or worse
    row = fe.score_case(pred, gt, "autopet2022", spacing_mm=(1, 1, 1)).iloc[0]
    assert row.status == "invalid_prediction" and "outside the protocol's labels" in row.message
    assert row.Dice == 0 and row.FP_volume_ml == 0 and row.FN_volume_ml == pytest.approx(8 * 0.001)


def test_a_value_outside_its_metric_range_is_the_worst_value_and_invalid(tmp_path):
    """Without the refusal, raw Dice can leave [0, 1]: the range check still stops it from ranking first."""
    import json

    protocol = tmp_path / "raw.json"
    protocol.write_text(json.dumps({"extends": "autopet2022", "invalid_labels": "ignore"}))
    gt = _autopet_case()
    pred = gt.astype(np.int16)
    pred[2:4, 2:4, 2:4] = 255
    row = fe.score_case(pred, gt, str(protocol), spacing_mm=(1, 1, 1)).iloc[0]
    assert row.status == "invalid_prediction" and row.Dice == 0
    assert "Dice = 1.99" in row.message and "outside [0.0, 1.0]" in row.message


def test_autopet_false_volumes_count_components_of_every_non_zero_value(tmp_path):
    """Hand-worked: the official code finds 18-connected components per value over the raw arrays."""
    import json

    protocol = tmp_path / "raw.json"
    protocol.write_text(json.dumps({"extends": "autopet2022", "invalid_labels": "ignore"}))
    gt = _autopet_case()
    pred = gt.copy()
    pred[8:11, 8, 8] = 2  # 3 voxels of another value, touching no ground truth: false positive
    pred[4, 2, 2] = 2  # 1 voxel of value 2 beside the lesion: a component of its own, touching none
    row = fe.score_label_maps(gt, pred, (1, 1, 1), fe.load_protocol(str(protocol)))[0]
    assert row["FP_volume_ml"] == pytest.approx(4 * 0.001) and row["FN_volume_ml"] == 0


def test_autopet_voxel_volume_is_a_float32_product_divided_in_double():
    """The official pixdim[1]*pixdim[2]*pixdim[3]/1000 under NumPy 1.x: float32 product, double division."""
    spacing = (0.7, 0.9, 3.3)
    gt = np.zeros((6, 6, 6), np.uint8)
    pred = gt.copy()
    pred[0, 0, 0:3] = 1  # 3 voxels of false positive
    product = np.float32(0.7) * np.float32(0.9) * np.float32(3.3)
    assert false_volumes_ml(gt, pred, spacing)[0] == 3 * (float(product) / 1000)
    # The single-precision division (NumPy 2's reading of the same line) differs in the last bits here.
    assert 3 * (float(product) / 1000) != 3 * float(product / np.float32(1000))


def test_brats_lesion_volume_follows_the_official_order_at_the_threshold():
    """((n * sx) * sy) * sz is exactly 50 mm^3 here (dropped: not above 50); n * (sx * sy * sz) is just above."""
    n, sx, sy = 26, 0.3, 1.1
    sz = 50.0 / (n * sx * sy)
    assert ((n * sx) * sy) * sz <= 50 < n * (sx * sy * sz)  # the two orders disagree on this spacing
    gt = np.zeros((40, 12, 12), bool)
    gt[5:5 + n, 6, 6] = True  # one lesion of 26 voxels, missed by the prediction
    scores = brats_lesion_wise(gt, np.zeros_like(gt), (sx, sy, sz), dilation_iterations=3, min_lesion_mm3=50,
                               penalty_mm=374)
    assert scores.n_fn == 0 and scores.lesion_wise_dice == 1.0 and scores.lesion_wise_hd95_mm == 0.0
    assert scores.gt_volume_mm3 == ((n * sx) * sy) * sz


def test_brats_ranks_each_region_and_metric_within_each_case_then_averages(tmp_path):
    """Hand-worked: averaging the regions first puts A first; ranking per region, as BraTS does, puts B first."""
    import json

    dice = {"A": (1.0, 0.0, 0.0), "B": (0.3, 0.3, 0.3), "C": (0.2, 0.2, 0.5)}
    rows = [{"team": team, "case": "c1", "region": region, "LesionWise_Dice": value, "LesionWise_HD95": 10.0}
            for team, values in dice.items() for region, value in zip(("WT", "TC", "ET"), values)]
    scores = pd.DataFrame(rows)
    protocol = fe.load_protocol("brats2023-gli")
    results = fe.region_results(scores, protocol)
    assert list(results.columns[2:5]) == ["LesionWise_Dice_WT", "LesionWise_Dice_TC", "LesionWise_Dice_ET"]
    # Dice ranks: WT A1 B2 C3, TC B1 C2 A3, ET C1 B2 A3; HD95 all tied at 1: sums A 7+3, B 5+3, C 6+3.
    ranking = fe.rank(results, protocol).set_index("team")
    assert ranking["rank"].to_dict() == {"B": 1, "C": 2, "A": 3}
    assert ranking.loc["B", "score"] == pytest.approx((5 + 3) / 6)
    averaged = tmp_path / "averaged.json"
    averaged.write_text(json.dumps({"extends": "brats2023-gli", "ranking": {"metrics": [
        {"name": "LesionWise_Dice", "higher_is_better": True, "worst": 0.0},
        {"name": "LesionWise_HD95", "higher_is_better": False, "worst": 374.0}]}}))
    other = fe.load_protocol(str(averaged))
    assert fe.rank(fe.region_results(scores, other), other).iloc[0]["team"] == "A"


def test_a_tie_break_region_may_hold_underscores(tmp_path):
    import json

    custom = tmp_path / "kits.json"
    custom.write_text(json.dumps({"extends": "kits23", "ranking": {
        "scheme": "aggregate_then_rank", "tie_break": "Dice_kidney_and_mass",
        "metrics": [{"name": "Dice", "higher_is_better": True, "worst": 0.0}]}}))
    protocol = fe.load_protocol(str(custom))
    assert protocol.tie_break_parts() == ("Dice", "kidney_and_mass")
    scores = pd.DataFrame({"team": ["a"] * 3, "case": ["1"] * 3, "region": ["kidney_and_mass", "mass", "tumor"],
                           "Dice": [0.9, 0.8, 0.7], "SD": [0.5, 0.5, 0.5]})
    assert fe.region_results(scores, protocol)["Dice_kidney_and_mass"].tolist() == [0.9]


def test_a_predictions_only_challenge_from_team_folders_to_report(examples, tmp_path, capsys):
    """The documented path: a folder of team folders of predictions -> collect -> rank -> report, no containers."""
    import shutil

    source = examples.challenges / "kits23"
    shutil.copytree(source / "predictions", tmp_path / "teams")
    out = tmp_path / "out"
    assert main(["collect", str(tmp_path / "teams"), "--labels", str(source / "labels"), "--protocol", "kits23",
                 "--out", str(out / "results.csv"), "--no-progress"]) == 0
    results = pd.read_csv(out / "results.csv")
    assert set(results.status) == {"no_run"} and "Time" not in results
    assert main(["rank", str(out / "results.csv"), "--protocol", "kits23", "--out", str(out / "ranking"),
                 "--samples", "20"]) == 0
    assert main(["report", str(out), "--protocol", "kits23", "--runs", str(tmp_path / "teams"),
                 "--out", str(out / "report")]) == 0
    text = (out / "report" / "index.html").read_text()
    assert "No container runs are recorded" in text and "Every case of every team ended ok" not in text
    assert re.search(r"<h2>\d+\. Accuracy per region", text)


def _run_every_command(protocol: str, teams, labels, out, tmp_path, capsys) -> None:
    """collect names the protocol once; the other commands read it from the folders; the report comes last and
    shows what every other command wrote (volumes, the paired comparison, cohorts)."""
    scores = teams / "teamA" / "scores.csv"
    commands = [
        ["collect", str(teams), "--labels", str(labels), "--protocol", protocol, "--out", str(out / "results.csv"),
         "--no-progress", "--quiet"],
        ["rank", str(out / "results.csv"), "--out", str(out / "ranking"), "--samples", "20"],
        ["quantify", str(teams / "teamA"), str(labels), "--protocol", protocol, "--out", str(out / "quantify"),
         "--no-progress"],
        ["compare", str(teams), "teamA", "teamB", "--out", str(out / "compare"), "--samples", "50"],
        ["review", str(teams), "--out", str(out / "review.csv"), "--threshold", "1"],
        ["cohorts", str(teams), "--metadata", str(tmp_path / "metadata.csv"), "--out", str(out / "cohorts")],
        ["report", str(out), "--runs", str(teams), "--out", str(out / "report")],
    ]
    for argv in commands:
        if argv[0] == "cohorts":
            cases = sorted(pd.read_csv(scores, dtype={"case": str})["case"].unique())
            pd.DataFrame({"case": cases, "sex": ["F", "M"] * (len(cases) // 2) + ["F"] * (len(cases) % 2)}).to_csv(
                tmp_path / "metadata.csv", index=False)
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (0, 1), (argv[0], err)
        assert "internal error" not in err and "Traceback" not in err, (argv[0], err)
        if argv[0] == "cohorts":
            assert code == 0 and "too few to say much" in err, err
    text = (out / "report" / "index.html").read_text()
    for heading in ("volumes", "Paired comparison", "Cohorts and subgroups"):
        assert re.search(rf"<h2>\d+\. [^<]*{heading}", text), heading


@pytest.mark.parametrize("preset", ["flare22", "kits23", "brats2023-gli", "flare24-t1", "autopet2022"])
def test_every_command_works_for_every_preset_and_reads_the_recorded_protocol(preset, examples, tmp_path, capsys):
    """collect names the protocol once; rank, report, cohorts, compare and review read it from the folders."""
    from golden import bundled_teams

    teams, labels = bundled_teams(preset, tmp_path)
    out = tmp_path / "out"
    _run_every_command(preset, teams, labels, out, tmp_path, capsys)
    recorded = json.loads((out / "ranking" / "settings.json").read_text())
    assert recorded["protocol"] == preset and recorded["protocol_definition"]["name"] == preset
    # A protocol that differs from the recorded one is refused, naming both.
    other = "kits23" if preset != "kits23" else "flare22"
    assert main(["rank", str(out / "results.csv"), "--out", str(out / "r2"), "--protocol", other]) == 2
    assert f"--protocol {other} differs from the protocol {preset} recorded in" in capsys.readouterr().err


def test_a_new_output_folder_does_not_take_the_protocol_of_a_run_beside_it(examples, tmp_path, capsys):
    """An output folder that does not exist yet records nothing: its parent's other folders are other runs."""
    from golden import bundled_teams

    teams, labels = bundled_teams("kits23", tmp_path)
    runs = tmp_path / "runs"
    assert main(["score", str(teams / "teamA"), str(labels), "--protocol", "kits23", "--out", str(runs / "a_kits"),
                 "--no-progress"]) == 0
    flare = ["score", str(examples.predictions / "teamA"), str(examples.labels), "--no-progress", "--out"]
    assert main([*flare, str(runs / "b_flare")]) == 0  # nothing given, nothing recorded there: flare22
    assert json.loads((runs / "b_flare" / "settings.json").read_text())["protocol"] == "flare22"
    assert main([*flare, str(runs / "c_flare"), "--protocol", "flare22"]) == 0, capsys.readouterr().err


def test_a_new_challenge_written_as_json_only_is_scored_ranked_and_reported(examples, tmp_path, capsys):
    """examples/new_challenge.json (the README's worked example): regions, metrics and ranking as data, no code."""
    from golden import bundled_teams

    protocol = str(REPO / "examples" / "new_challenge.json")
    teams, labels = bundled_teams("kits23", tmp_path)
    assert main(["score", str(teams / "teamA"), str(labels), "--protocol", protocol, "--out",
                 str(tmp_path / "scored"), "--no-progress"]) == 0
    scores = pd.read_csv(tmp_path / "scored" / "scores.csv")
    assert list(scores.columns) == ["case", "region", "Dice", "HD95", "NSD", "status", "message"]
    # The kidney is every label 1-3 together, the tumour label 2; each value equals DeepMind's on the union.
    first = scores[scores.case == scores.case.iloc[0]].set_index("region")
    gt = fe.read_label_map(labels / f"{scores.case.iloc[0]}.nii.gz")
    pred = fe.read_label_map(teams / "teamA" / f"{scores.case.iloc[0]}.nii.gz")
    kidney_gt, kidney_pred = np.isin(gt.array, [1, 2, 3]), np.isin(pred.array, [1, 2, 3])
    distances = deepmind.compute_surface_distances(kidney_gt, kidney_pred, gt.spacing_mm)
    assert first.loc["kidney", "HD95"] == pytest.approx(deepmind.compute_robust_hausdorff(distances, 95), abs=1e-12)
    tumour = deepmind.compute_surface_distances(gt.array == 2, pred.array == 2, gt.spacing_mm)
    assert first.loc["tumour", "NSD"] == pytest.approx(deepmind.compute_surface_dice_at_tolerance(tumour, 2.0),
                                                       abs=1e-12)
    out = tmp_path / "out"
    _run_every_command(protocol, teams, labels, out, tmp_path, capsys)
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == ["team", "case", "Dice", "HD95", "NSD_tumour", "Dice_tumour", "status"]
    ranking = pd.read_csv(out / "ranking" / "ranking.csv")
    assert ranking.set_index("team").loc["teamA", "rank"] == 1 and "tie_break_mean" in ranking
    text = (out / "report" / "index.html").read_text()
    assert "kidney-tumour-example" in text and re.search(r"<h2>\d+\. Accuracy per region", text)
    # The Python API's file-level steps read the recorded protocol too, as the commands do.
    api = fe.rank_results(out / "results.csv", tmp_path / "api_ranking", n_samples=10)
    assert list(api.ranking.columns[:5]) == ["team", "rank", "score", "Dice_mean", "Dice_rank"]
    assert "Dice" in set(fe.review(teams, tmp_path / "review.csv", threshold=1).columns)


def test_ranking_methods_are_compared_with_the_protocols_own_ranking():
    """KiTS23's official ranking is aggregate-then-rank with a tie-break: the methods' taus are measured to it."""
    rng = np.random.default_rng(3)
    rows = [{"team": t, "case": str(c), "Dice": rng.uniform(0.5, 1), "SD": rng.uniform(0.5, 1),
             "Dice_tumor": rng.uniform(0.5, 1)} for t in "abcdef" for c in range(8)]
    table = pd.DataFrame(rows)
    protocol = fe.load_protocol("kits23")
    methods = fe.ranking_methods(table, protocol)
    official = fe.rank(table, protocol).set_index("team")["rank"]
    assert methods.set_index("team")["official"].to_dict() == official.to_dict()
    from flare_eval.ranking import kendall_tau_b, ranking_methods_agreement

    agreement = ranking_methods_agreement(methods).set_index("method")["kendall_tau"]
    expected = kendall_tau_b(methods["official"].to_numpy(), methods["rank_then_aggregate"].to_numpy())
    assert agreement["rank_then_aggregate"] == pytest.approx(expected)

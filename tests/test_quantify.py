"""Volumes, diameters and agreement."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from flare_eval.cli import main
from flare_eval.volumes import equivalent_diameter_mm, measure_label_map, organ_volume_ml, volume_agreement


def cylinder(radius_mm, spacing_mm, length_slices=20, size=120):
    shape = (size, size, length_slices)
    ii, jj = np.meshgrid(np.arange(size) * spacing_mm[0], np.arange(size) * spacing_mm[1], indexing="ij")
    centre = size / 2 * spacing_mm[0], size / 2 * spacing_mm[1]
    disc = (ii - centre[0]) ** 2 + (jj - centre[1]) ** 2 <= radius_mm**2
    return np.repeat(disc[:, :, None], shape[2], axis=2)


@pytest.mark.parametrize("radius_mm", [5.0, 8.0, 12.5])
@pytest.mark.parametrize("spacing_mm", [(0.5, 0.5, 2.5), (0.8, 0.6, 1.0)])
def test_cylinder_diameter(radius_mm, spacing_mm):
    tube = cylinder(radius_mm, spacing_mm)
    # Pixelation error of an equal-area circle: within half a pixel.
    assert equivalent_diameter_mm(tube, spacing_mm) == pytest.approx(2 * radius_mm, abs=max(spacing_mm[:2]) / 2)


def test_diameter_is_median_over_slices_and_axis_aware():
    spacing = (0.5, 0.5, 2.0)
    tube = cylinder(6.0, spacing)
    tube[:, :, :3] = False
    tube[:40, :, 3] = False  # one partial end slice does not move the median
    assert equivalent_diameter_mm(tube, spacing) == pytest.approx(12.0, abs=0.25)
    moved = np.moveaxis(tube, 2, 0)
    assert equivalent_diameter_mm(moved, (2.0, 0.5, 0.5), axis=0) == equivalent_diameter_mm(tube, spacing)
    assert np.isnan(equivalent_diameter_mm(np.zeros((3, 3, 3), bool), spacing))


def test_volume_and_measure_label_map():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:5] = 1
    labels[5:, :2] = 5
    assert organ_volume_ml(labels == 1, (0.8, 0.8, 2.5)) == pytest.approx(500 * 1.6 / 1000)
    table = measure_label_map(labels, (0.8, 0.8, 2.5), "flare22")
    assert table.set_index("organ").loc["Liver", "volume_ml"] == pytest.approx(0.8)
    assert np.isnan(table.set_index("organ").loc["Liver", "diameter_mm"])
    assert table.set_index("organ").loc["Aorta", "diameter_mm"] == pytest.approx(2 * np.sqrt(10 * 0.64 / np.pi))


def test_agreement_against_scipy():
    rng = np.random.default_rng(0)
    gt = rng.uniform(100, 2000, 12)
    pred = gt * rng.normal(1.0, 0.05, 12) + 10
    volumes = pd.DataFrame({"case": range(12), "label": 1, "organ": "Liver", "volume_ml_pred": pred,
                            "volume_ml_gt": gt})
    row = volume_agreement(volumes).iloc[0]
    assert row.pearson_r == pytest.approx(stats.pearsonr(pred, gt).statistic)
    difference = pred - gt
    assert row.mean_difference_ml == pytest.approx(difference.mean())
    assert row.loa_upper_ml == pytest.approx(difference.mean() + 1.96 * difference.std(ddof=1))
    assert row.loa_lower_ml == pytest.approx(difference.mean() - 1.96 * difference.std(ddof=1))


def test_quantify_command(examples, tmp_path, capsys):
    assert main(["quantify", str(examples.predictions / "teamB"), str(examples.labels), "--out", str(tmp_path),
                 "--no-progress"]) == 0
    assert "pearson_r" in capsys.readouterr().out
    volumes = pd.read_csv(tmp_path / "volumes.csv")
    assert set(volumes.source) == {"prediction", "ground_truth"}
    liver = volumes[(volumes.case == "case_0001") & (volumes.organ == "Liver")].set_index("source").volume_ml
    assert liver["ground_truth"] == pytest.approx(38634 * 27 / 1000)  # voxels x 3 mm^3 spacing
    assert liver["prediction"] < liver["ground_truth"]  # teamB erodes every organ
    agreement = pd.read_csv(tmp_path / "agreement.csv")
    assert (agreement.set_index("organ").loc["Liver", "mean_difference_ml"]) < 0
    summary = pd.read_csv(tmp_path / "volume_summary.csv")
    assert {"median", "q1", "q3", "text"} <= set(summary.columns)
    assert main(["quantify", str(examples.predictions / "teamB"), "--out", str(tmp_path / "nogt"),
                 "--no-progress"]) == 0
    assert not (tmp_path / "nogt" / "agreement.csv").exists()


def test_quantify_without_an_output_folder_only_returns_tables(examples, tmp_path, monkeypatch):
    from flare_eval import quantify

    monkeypatch.chdir(tmp_path)
    outputs = quantify(examples.predictions / "teamA", examples.labels)
    assert outputs.folder is None and len(outputs.volumes) and outputs.agreement is not None
    assert list(tmp_path.iterdir()) == []


def test_quantify_reads_predictions_through_the_allow_list_and_leaves_out_a_refused_one(examples, tmp_path):
    import shutil

    from flare_eval import quantify

    pred = tmp_path / "pred"
    shutil.copytree(examples.predictions / "teamA", pred)
    first = sorted(pred.glob("*.nii.gz"))[0]
    first.unlink()
    first.symlink_to(sorted(examples.labels.glob("*.nii.gz"))[0])  # a link to the ground truth
    with pytest.warns(UserWarning, match=r"left out of the volumes: .*symbolic link"):
        outputs = quantify(pred, examples.labels)
    measured = set(outputs.volumes[outputs.volumes.source == "prediction"].case)
    assert first.name.removesuffix(".nii.gz") not in measured and len(measured) == len(list(pred.iterdir())) - 1

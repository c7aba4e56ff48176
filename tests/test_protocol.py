"""Protocol presets, user files, and their installation."""

import json
import subprocess
import sys

import pytest

from flare_eval import available_protocols, load_protocol

FLARE22_TOLERANCES = {1: 5, 2: 3, 3: 3, 4: 5, 5: 2, 6: 2, 7: 2, 8: 2, 9: 2, 10: 3, 11: 5, 12: 7, 13: 3}


def test_presets():
    assert {"flare21", "flare22", "flare22-grand-challenge", "flare23"} <= set(available_protocols())
    p22 = load_protocol("flare22")
    assert {r.labels[0]: r.metric("NSD").tolerance_mm for r in p22.regions} == FLARE22_TOLERANCES
    assert [r.name for r in p22.regions][:5] == ["Liver", "RK", "Spleen", "Pancreas", "Aorta"]
    assert [r.name for r in p22.regions if r.sliced] == ["Aorta", "IVC", "Esophagus"]
    assert p22.slice_range.labels == (5, 6, 10) and p22.slice_range.mode == "half_open"
    assert [(m.name, m.weight, m.worst) for m in p22.ranking_metrics] == [
        ("DSC", 1.0, 0.0), ("NSD", 1.0, 0.0), ("Time", 1.0, 3600.0),
        ("AUC_GPU", 0.5, 29491200.0), ("AUC_CPU", 0.5, 360000.0),
    ]
    p21 = load_protocol("flare21")
    assert p21.labels == (1, 2, 3, 4) and {r.metric("NSD").tolerance_mm for r in p21.regions} == {1.0}
    assert p21.slice_range is None
    p23 = load_protocol("flare23")
    assert p23.region_of_label(14).metric("NSD").tolerance_mm == 2.0 and p23.region_of_label(14).name == "Lesion"


def test_inclusive_mode_copy():
    inclusive = load_protocol("flare22").with_slice_range_mode("inclusive")
    assert inclusive.slice_range.mode == "inclusive"
    assert load_protocol("flare22").slice_range.mode == "half_open"
    with pytest.raises(ValueError, match="must be one of"):
        load_protocol("flare22").with_slice_range_mode("open")


def test_user_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "organs": [{"label": 3, "code": "Sp", "tolerance_mm": 1.5}]}))
    protocol = load_protocol(path)
    assert protocol.labels == (3,) and protocol.region("Sp").metric("NSD").tolerance_mm == 1.5
    assert protocol.slice_range is None and protocol.layout.key_columns == ("label", "organ")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"organs": []}), "'organs' is empty"),
        (json.dumps({"organs": [{"label": 1, "code": "L"}]}), r"missing field organs\[0\]\.'tolerance_mm'"),
        (json.dumps({"organs": [{"label": 1, "code": "L", "tolerance_mm": -1}]}), "must be positive"),
        (json.dumps({"organs": [{"label": 1, "code": "L", "tolerance_mm": 1}] * 2}), "duplicated labels"),
        (
            json.dumps({"organs": [{"label": 1, "code": "L", "tolerance_mm": 1}], "slice_range": {"labels": [7]}}),
            r"slice_range.labels \[7\] are not labels of the protocol",
        ),
    ],
)
def test_bad_user_files_name_file_and_field(tmp_path, content, pattern):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=pattern) as info:
        load_protocol(path)
    assert "bad.json" in str(info.value)


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match=r"unknown protocol 'flare99': use one of \[.*'flare21', 'flare22'"):
        load_protocol("flare99")


def test_non_editable_install_ships_presets_and_examples(tmp_path):
    """`pip install .` (a real wheel build, not editable) finds the presets from another directory."""
    target = tmp_path / "site"
    repo = __import__("conftest").REPO
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(repo)],
        check=True,
    )
    code = (
        "import flare_eval, sys; "
        f"assert flare_eval.__file__.startswith({str(target)!r}), flare_eval.__file__; "
        "print(flare_eval.available_protocols()); "
        "print(flare_eval.load_protocol('flare22').region('Duodenum').metric('NSD').tolerance_mm); "
        "print(sorted(p.name for p in flare_eval.example_paths().labels.glob('*.nii.gz'))); "
        "print((flare_eval.example_paths().runs / 'teamA' / 'samples' / 'case_0001.csv').is_file() and "
        "(flare_eval.example_paths().challenges / 'kits23' / 'predictions' / 'teamB' / 'case_0003.nii.gz').is_file())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert ("['autopet2022', 'brats2023-gli', 'brats2023-men', 'brats2023-met', 'brats2023-ped', 'brats2023-ssa', "
            "'flare21', 'flare22', 'flare22-grand-challenge', 'flare23', 'flare24-t1', 'kits23']") in result.stdout
    assert "7.0" in result.stdout
    assert "case_0001.nii.gz" in result.stdout
    assert result.stdout.strip().endswith("True")  # the example runs are shipped
    licences = list(target.glob("flare_eval-*.dist-info/**/LICENSE"))
    assert licences and "Apache License" in licences[0].read_text()
    assert (target / "flare_eval" / "harness" / "cuda" / "alloc_steps.cu").is_file()
    assert (target / "flare_eval" / "harness" / "_watchdog.py").is_file()


def test_a_field_of_the_wrong_type_is_named(tmp_path):
    import json

    import pytest

    from flare_eval import load_protocol

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"extends": "kits23", "regions": [
        {"name": "x", "labels": [1], "metrics": [{"kind": "surface_dice", "name": "SD", "tolerance_mm": "2"}]}]}))
    with pytest.raises(ValueError, match=r"regions\[0\]\.metrics\[0\]\.tolerance_mm must be a number or null, "
                                         r"got '2'"):
        load_protocol(bad)
    bad.write_text(json.dumps({"extends": "flare22", "organs": [{"label": "one", "code": "Liver",
                                                                  "tolerance_mm": 5}]}))
    with pytest.raises(ValueError, match=r"organs\[0\] is malformed: label must be a whole number"):
        load_protocol(bad)


@pytest.mark.parametrize(("metric", "pattern"), [
    ({"kind": "surface_dice", "name": "SD", "tolerance_mm": -1}, r"metrics\[0\]\.tolerance_mm must be a positive"),
    ({"kind": "hausdorff", "name": "HD", "percentile": 150}, r"metrics\[0\]\.percentile must lie in \(0, 100\]"),
    ({"kind": "hausdorff", "name": "HD", "tolerance_mm": 2}, r"unknown field\(s\) \['tolerance_mm'\] for kind "
                                                             r"'hausdorff'; its fields: .*'percentile'"),
    ({"kind": "jaccard", "name": "J"}, r"metrics\[0\]\.kind must be one of \('dice', "),
    ({"kind": "dice"}, r"metrics\[0\]: missing field 'name'"),
    ({"kind": "false_volumes", "name": "fv", "connectivity": 4}, r"connectivity must be 6, 18 or 26"),
    ({"kind": "brats_lesion_wise", "name": "L", "min_lesion_mm3": 50}, r"dilation_iterations must be a whole"),
])
def test_each_metric_kind_checks_its_own_fields(tmp_path, metric, pattern):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"regions": [{"name": "r", "labels": [1], "metrics": [metric]}]}))
    with pytest.raises(ValueError, match=pattern):
        load_protocol(path)


def test_flare_organs_are_regions_written_in_short(tmp_path):
    """FLARE22's organs written out as regions score and lay out exactly as the preset."""
    import numpy as np

    from flare_eval import score_label_maps

    flare22 = load_protocol("flare22")
    regions = [{"name": r.name, "labels": list(r.labels), "title": r.title, "metrics": [
        {"kind": "dice", "name": "DSC"},
        {"kind": "surface_dice", "name": "NSD", "tolerance_mm": r.metric("NSD").tolerance_mm},
        {"kind": "voxel_counts"}]} for r in flare22.regions]
    path = tmp_path / "long.json"
    path.write_text(json.dumps({"extends": "flare22", "regions": regions, "layout": "organs",
                                "unusable_prediction": "zero"}))
    long = load_protocol(path)
    assert long.regions == flare22.regions and long.layout == flare22.layout
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 14, (20, 18, 16)).astype(np.uint8)
    pred = np.roll(gt, 1, axis=2)
    assert score_label_maps(gt, pred, (1, 1, 2), long) == score_label_maps(gt, pred, (1, 1, 2), flare22)


def test_a_slice_range_cuts_a_region_of_several_labels():
    """The rule cuts a region whose labels it all lists, at the ground truth's labelled slices of the union."""
    import numpy as np

    from flare_eval import score_label_maps

    protocol = load_protocol({"name": "cut", "regions": [{"name": "vessels", "labels": [1, 2], "metrics": [
        {"kind": "dice", "name": "DSC"}, {"kind": "voxel_counts"}]}],
        "slice_range": {"labels": [1, 2], "mode": "half_open"}})
    gt = np.zeros((6, 6, 10), np.uint8)
    gt[1:3, 1:3, 2:5] = 1
    gt[3:5, 3:5, 5:7] = 2  # the union spans slices 2..6; half-open drops slice 6
    pred = gt.copy()
    pred[:, :, 6:9] = 2  # extra prediction at and beyond the top slice: cut away
    row = score_label_maps(gt, pred, (1, 1, 1), protocol)[0]
    assert row["DSC"] == 1.0 and row["gt_voxels"] == 4 * 3 + 4 * 1 and row["pred_voxels"] == row["gt_voxels"]

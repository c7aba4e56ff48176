"""Scoring rules, against hand computation and the official-equivalent reference."""

import numpy as np
import pandas as pd
import pytest
import surface_distance as deepmind
from conftest import write_nifti
from official_reference import official_scores, official_scores_of_arrays

from flare_eval import FlareEvalWarning, execution, load_protocol, official_table, score, score_case, score_folder
from flare_eval.scoring import summarize_scores

SPACING = (0.8, 0.8, 2.5)


def blob(shape, lo, hi, label, out=None):
    out = np.zeros(shape, np.uint8) if out is None else out
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = label
    return out


def row(frame, label):
    return frame[frame["label"] == label].iloc[0]


def test_matches_official_reference_on_bundled_examples(examples):
    for team in ("teamA", "teamB", "teamC"):
        for gt_path in sorted(examples.labels.glob("*.nii.gz")):
            pred_path = examples.predictions / team / gt_path.name
            if not pred_path.exists():
                continue
            reference = official_scores(gt_path, pred_path)
            ours = score_case(pred_path, gt_path)
            for r in ours.itertuples():
                assert r.DSC == pytest.approx(reference[r.label][0], abs=1e-12), (team, gt_path.name, r.organ)
                assert r.NSD == pytest.approx(reference[r.label][1], abs=1e-9), (team, gt_path.name, r.organ)


def test_empty_mask_rules():
    shape = (20, 20, 10)
    gt = blob(shape, (2, 2, 2), (8, 8, 6), 1)  # liver only in GT
    blob(shape, (10, 10, 2), (14, 14, 5), 2, gt)  # right kidney in both
    pred = blob(shape, (10, 10, 2), (14, 14, 5), 2)
    blob(shape, (15, 2, 2), (18, 5, 5), 3, pred)  # spleen only in prediction
    scores = score_case(pred, gt, spacing_mm=SPACING)
    assert (row(scores, 1).DSC, row(scores, 1).NSD) == (0.0, 0.0)  # GT present, prediction empty
    assert (row(scores, 2).DSC, row(scores, 2).NSD) == (1.0, 1.0)
    assert (row(scores, 3).DSC, row(scores, 3).NSD) == (0.0, 0.0)  # GT empty, prediction present
    assert (row(scores, 4).DSC, row(scores, 4).NSD) == (1.0, 1.0)  # both empty
    assert set(scores["status"]) == {"ok"}
    reference = official_scores_of_arrays(gt, pred, SPACING)
    assert [tuple(reference[label]) for label in range(1, 14)] == list(zip(scores.DSC, scores.NSD))


def aorta_case():
    """Aorta on slices 2..7 of the ground truth; the prediction runs from 1 to 9."""
    shape = (16, 16, 12)
    gt = blob(shape, (5, 5, 2), (9, 9, 8), 5)
    pred = blob(shape, (5, 6, 1), (9, 10, 10), 5)
    return gt, pred


def test_slice_range_half_open_like_official():
    gt, pred = aorta_case()
    scores = score_case(pred, gt, spacing_mm=SPACING)
    # Hand-worked DSC on slices [2, 7): GT 4x4x5=80, prediction 4x4x5=80, overlap 4x3x5=60.
    assert row(scores, 5).DSC == pytest.approx(2 * 60 / 160)
    assert row(scores, 5).gt_voxels == 80
    cut_gt, cut_pred = gt[:, :, 2:7] == 5, pred[:, :, 2:7] == 5
    expected_nsd = deepmind.compute_surface_dice_at_tolerance(
        deepmind.compute_surface_distances(cut_gt, cut_pred, SPACING), 2.0
    )
    assert row(scores, 5).NSD == pytest.approx(expected_nsd, abs=1e-12)
    assert row(scores, 5).NSD == pytest.approx(official_scores_of_arrays(gt, pred, SPACING)[5][1], abs=1e-12)


def test_slice_range_inclusive_option():
    gt, pred = aorta_case()
    inclusive = load_protocol("flare22").with_slice_range_mode("inclusive")
    scores = score_case(pred, gt, inclusive, spacing_mm=SPACING)
    assert row(scores, 5).DSC == pytest.approx(2 * 72 / 192)  # slices 2..7 inclusive: 96 each, 72 shared
    cut_gt, cut_pred = gt[:, :, 2:8] == 5, pred[:, :, 2:8] == 5
    expected_nsd = deepmind.compute_surface_dice_at_tolerance(
        deepmind.compute_surface_distances(cut_gt, cut_pred, SPACING), 2.0
    )
    assert row(scores, 5).NSD == pytest.approx(expected_nsd, abs=1e-12)


def test_slice_range_on_the_third_axis_only_and_for_tubular_organs_only():
    gt, pred = aorta_case()
    liver_gt, liver_pred = np.where(gt == 5, 1, 0).astype(np.uint8), np.where(pred == 5, 1, 0).astype(np.uint8)
    scores = score_case(liver_pred, liver_gt, spacing_mm=SPACING)
    assert row(scores, 1).DSC == pytest.approx(2 * 72 / (96 + 144))  # no cut for the liver


def test_single_slice_tubular_organ_is_scored_on_that_slice():
    shape = (12, 12, 6)
    gt = blob(shape, (3, 3, 2), (7, 7, 3), 10)  # esophagus on slice 2 only
    pred = blob(shape, (3, 4, 2), (7, 8, 4), 10)
    with pytest.raises(ValueError, match="one slice"):
        official_scores_of_arrays(gt, pred, SPACING)  # the official script crashes here
    scores = score_case(pred, gt, spacing_mm=SPACING)
    assert row(scores, 10).DSC == pytest.approx(2 * 12 / 32)
    expected = deepmind.compute_surface_dice_at_tolerance(
        deepmind.compute_surface_distances(gt[:, :, 2:3] == 10, pred[:, :, 2:3] == 10, SPACING), 3.0
    )
    assert row(scores, 10).NSD == pytest.approx(expected, abs=1e-12)


def test_unknown_labels_are_background_with_a_warning(tmp_path):
    gt = blob((10, 10, 10), (2, 2, 2), (6, 6, 6), 1).astype(np.int16)
    pred = gt.copy()
    pred[7:9, 7:9, 7:9] = 269  # the official uint8 cast would score this as label 13
    gt_path = write_nifti(tmp_path / "gt" / "c.nii.gz", gt)
    pred_path = write_nifti(tmp_path / "pred" / "c.nii.gz", pred)
    with pytest.warns(FlareEvalWarning, match=r"pred/c\.nii\.gz: prediction holds values \[269\]"):
        scores = score_case(pred_path, gt_path)
    assert (row(scores, 13).DSC, row(scores, 13).NSD) == (1.0, 1.0)
    assert row(scores, 1).DSC == 1.0


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.int64])
def test_wider_integer_types_score_as_their_one_byte_copies(examples, dtype):
    """Labels stored wider (argmax gives int64) are scored on one-byte copies when every value fits one byte;
    the scores are those of the one-byte arrays. A value that does not fit (269) keeps the wide array."""
    from flare_eval import read_label_map, score_label_maps
    from flare_eval.scoring.engine import _narrowed

    gt_path = sorted(examples.labels.glob("*.nii.gz"))[0]
    gt, pred = (read_label_map(p) for p in (gt_path, examples.predictions / "teamA" / gt_path.name))
    assert gt.array.dtype == pred.array.dtype == np.uint8 and gt.array.flags.f_contiguous
    expected = score_label_maps(gt.array, pred.array, gt.spacing_mm, "flare22")
    wide_gt, wide_pred = gt.array.astype(dtype, order="K"), pred.array.astype(dtype, order="K")
    assert score_label_maps(wide_gt, wide_pred, gt.spacing_mm, "flare22") == expected
    narrow = _narrowed(wide_pred, range(1, 14), None)
    assert narrow.dtype == np.uint8 and narrow.flags.f_contiguous and np.array_equal(narrow, pred.array)

    wide_pred[0, 0, 0] = 269  # a stray value: scored as background, never wrapped to 13 (a label)
    assert _narrowed(wide_pred, range(1, 14), None) is _narrowed(wide_pred, range(1, 14), [269]) is wide_pred
    pred.array[0, 0, 0] = 0
    with pytest.warns(FlareEvalWarning, match=r"values \[269\]"):
        assert score_label_maps(wide_gt, wide_pred, gt.spacing_mm, "flare22") == score_label_maps(
            gt.array, pred.array, gt.spacing_mm, "flare22")


def test_missing_mismatched_and_invalid_predictions_score_zero(tmp_path):
    organ = blob((10, 10, 10), (2, 2, 2), (6, 6, 6), 1)
    write_nifti(tmp_path / "gt" / "ok.nii.gz", organ, SPACING)
    write_nifti(tmp_path / "gt" / "missing.nii.gz", organ, SPACING)
    write_nifti(tmp_path / "gt" / "shape.nii.gz", organ, SPACING)
    write_nifti(tmp_path / "gt" / "half.nii.gz", organ, SPACING)
    write_nifti(tmp_path / "pred" / "ok.nii.gz", organ, SPACING)
    write_nifti(tmp_path / "pred" / "shape.nii.gz", organ[:, :, :9], SPACING)
    write_nifti(tmp_path / "pred" / "half.nii.gz", organ.astype(np.float32) / 2, SPACING)
    write_nifti(tmp_path / "pred" / "extra.nii.gz", organ, SPACING)
    with pytest.warns(FlareEvalWarning, match="extra.nii.gz"):
        scores = score_folder(tmp_path / "pred", tmp_path / "gt", workers=1, progress=False)
    by_case = scores.groupby("case")
    assert len(scores) == 4 * 13
    status = by_case["status"].first().to_dict()
    assert status == {"half": "invalid_prediction", "missing": "missing", "ok": "ok", "shape": "geometry_mismatch"}
    for case in ("half", "missing", "shape"):
        assert (by_case.get_group(case)[["DSC", "NSD"]] == 0).all().all()
    assert "shape.nii.gz" in by_case.get_group("shape")["message"].iloc[0]
    assert "not whole numbers" in by_case.get_group("half")["message"].iloc[0]
    with pytest.raises(ValueError, match="is not on the grid of ground truth .*shape.nii.gz: shape"):
        score_case(tmp_path / "pred" / "shape.nii.gz", tmp_path / "gt" / "shape.nii.gz", strict=True)


def test_parallel_equals_serial_and_official_table(examples):
    serial = score_folder(examples.predictions / "teamC", examples.labels, workers=1, progress=False)
    parallel = score_folder(examples.predictions / "teamC", examples.labels, workers=2, progress=False)
    pd.testing.assert_frame_equal(serial, parallel)
    table = official_table(serial, "flare22")
    assert list(table.columns[:3]) == ["Name", "Liver_DSC", "RK_DSC"] and table.columns[-1] == "LK_NSD"
    assert list(table["Name"]) == ["case_0001.nii.gz", "case_0002.nii.gz", "case_0003.nii.gz"]
    liver = serial[(serial.case == "case_0001") & (serial.label == 1)].DSC.iloc[0]
    assert table.loc[0, "Liver_DSC"] == round(liver, 4)


def test_summary_statistics(examples):
    scores = score_folder(examples.predictions / "teamA", examples.labels, workers=1, progress=False)
    summary = summarize_scores(scores, "flare22")
    liver = scores[scores.label == 1].DSC
    got = summary[summary.organ == "Liver"].iloc[0]
    assert got.DSC_median == pytest.approx(np.median(liver))
    assert got.DSC_q1 == pytest.approx(np.quantile(liver, 0.25))
    mean_row = summary.iloc[-1]
    assert mean_row.organ == "mean"
    assert mean_row.DSC_mean == pytest.approx(scores.groupby("case").DSC.mean().mean())


def recording_run_tasks(scored: list):
    """`run_tasks` that first notes the case of every task it is given (the tasks run in other processes)."""
    original = execution.run_tasks

    def run_tasks(function, argument_tuples, **options):
        scored.extend(arguments[1].case for arguments in argument_tuples)
        return original(function, argument_tuples, **options)

    return run_tasks


def test_score_writes_tables_and_resumes(examples, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first, files = score(examples.predictions / "teamB", examples.labels, out, workers=1, progress=False)
    assert files.scores.exists() and files.official.exists() and files.summary.exists()
    assert not (out / "scores.partial.csv").exists()
    written = pd.read_csv(files.scores)
    assert np.array_equal(written.DSC.to_numpy(), first.DSC.to_numpy())  # not rounded

    # Simulate an interrupted run: one case finished in the partial file.
    first[first.case == "case_0001"].to_csv(out / "scores.partial.csv", index=False)
    scored = []
    monkeypatch.setattr(execution, "run_tasks", recording_run_tasks(scored))
    resumed, _ = score(examples.predictions / "teamB", examples.labels, out, workers=1, progress=False)
    assert scored == ["case_0002", "case_0003"]
    pd.testing.assert_frame_equal(resumed[["case", "label", "DSC", "NSD"]], first[["case", "label", "DSC", "NSD"]])


def test_torn_partial_scores_drop_the_torn_case_and_rescore_it(examples, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first, _ = score(examples.predictions / "teamB", examples.labels, out, workers=1, progress=False)
    done = first[first.case.isin(["case_0001", "case_0002"])]
    text = done.to_csv(index=False)
    lines = text.splitlines(keepends=True)
    # A kill -9 mid-append: case_0002 has five complete rows, then half a row.
    torn = "".join(lines[: 1 + 13 + 5]) + lines[1 + 13 + 5][:20]
    (out / "scores.partial.csv").write_text(torn)
    scored = []
    monkeypatch.setattr(execution, "run_tasks", recording_run_tasks(scored))
    with pytest.warns(UserWarning, match=r"scores.partial.csv: dropped an incomplete last line"):
        resumed, _ = score(examples.predictions / "teamB", examples.labels, out, workers=1, progress=False)
    assert scored == ["case_0002", "case_0003"]
    pd.testing.assert_frame_equal(resumed[["case", "label", "DSC", "NSD"]], first[["case", "label", "DSC", "NSD"]])


def test_a_decompression_bomb_with_the_right_header_reads_only_what_the_header_claims(tmp_path):
    """A gzip stream far longer than its header's shape: only shape x itemsize bytes are ever inflated."""
    import gzip
    import subprocess
    import sys

    import nibabel as nib
    from conftest import PEAK_RSS_KIB

    gt = np.zeros((64, 64, 32), np.uint8)
    gt[10:30, 10:30, 5:20] = 1
    write_nifti(tmp_path / "gt" / "c.nii.gz", gt)
    header = nib.Nifti1Header()
    header.set_data_shape(gt.shape)
    header.set_data_dtype(np.uint8)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    stream = gzip.compress(header.binaryblock + b"\0" * 4 + gt.tobytes(order="F") + bytes(300 * 2**20), 1)
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "c.nii.gz").write_bytes(stream)
    assert len(stream) < 2 * 2**20  # 300 MB of zeros inflate from under 2 MB
    del stream
    script = ("import flare_eval as fe; "
              f"s = fe.score_case({str(tmp_path / 'pred' / 'c.nii.gz')!r}, {str(tmp_path / 'gt' / 'c.nii.gz')!r}); "
              f"print(round(float(s.DSC.iloc[0]), 6), {PEAK_RSS_KIB})")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert float(out[0]) == 1.0
    assert int(out[1]) < 250 * 1024  # KiB, well under the 300 MB the stream would inflate to


def test_unreadable_ground_truth_stops_the_run(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "bad.nii.gz").write_bytes(b"nope")
    (tmp_path / "pred").mkdir()
    with pytest.raises(ValueError, match=r"bad\.nii\.gz: name ends in \.gz but the file is not gzip"):
        score_folder(tmp_path / "pred", tmp_path / "gt", workers=1, progress=False)


def test_array_api_requires_spacing():
    with pytest.raises(ValueError, match="pass spacing_mm"):
        score_case(np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3, 3), np.uint8))


@pytest.mark.parametrize(("limits", "status", "bound"), [
    ({"memory_mib": 16}, "memory_limit", "memory limit of 16 MiB"),
    ({"time_s": 0.001}, "time_limit", "time limit of 0.001 s"),
])
def test_a_case_past_the_protocols_scoring_limits_is_marked_and_the_run_goes_on(tmp_path, limits, status, bound):
    import json

    # 64 MiB a map, far beyond the limit below (which bounds what a task adds to its worker, whose heap may hold
    # some free memory already)
    labels = np.zeros((512, 512, 256), np.uint8)
    labels[40:200, 30:220, 5:60] = 1
    labels[100:140, 90:150, 20:40] = 2
    for case in ("a", "b"):
        write_nifti(tmp_path / "gt" / f"{case}.nii.gz", labels, SPACING)
        write_nifti(tmp_path / "pred" / f"{case}.nii.gz", labels, SPACING)
    protocol = tmp_path / "tight.json"
    protocol.write_text(json.dumps({"extends": "flare22", "scoring_limits": limits}))
    with pytest.warns(FlareEvalWarning, match=bound):
        scores = score_folder(tmp_path / "pred", tmp_path / "gt", str(protocol), workers=2, progress=False)
    assert set(scores.status) == {status}
    assert scores.DSC.max() == 0 and bound in scores.message.iloc[0]
    assert scores.case.nunique() == 2

"""Formats and geometry: the same case in any format or orientation scores the same."""

import numpy as np
import pytest

from flare_eval import read_label_map, score_case, score_folder
from flare_eval.cli import main
from flare_eval.geometry import match_grid, reorient, superior_axis
from flare_eval.io import pair_cases, write_label_map


@pytest.fixture
def case(examples):
    """A real case (ground truth, prediction) on a RAS grid with anisotropic spacing and an origin."""
    gt = read_label_map(examples.labels / "case_0001.nii.gz").array
    pred = read_label_map(examples.predictions / "teamA" / "case_0001.nii.gz").array
    affine = np.array([[0.8, 0, 0, -40.0], [0, 1.1, 0, 12.5], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])
    return gt, pred, affine


def flipped(array, affine, axis):
    """The same physical image with ``axis`` stored the other way round."""
    new = affine.copy()
    new[:3, 3] = affine[:3, 3] + affine[:3, axis] * (array.shape[axis] - 1)
    new[:3, axis] = -affine[:3, axis]
    return np.flip(array, axis), new


def transposed(array, affine, order):
    """The same physical image with its axes stored in another order."""
    new = np.eye(4)
    new[:3, :3] = affine[:3, :3][:, order]
    new[:3, 3] = affine[:3, 3]
    return np.transpose(array, order), new


def variants(array, affine):
    yield "RAS.nii.gz", array, affine
    yield "LAS.nii.gz", *flipped(array, affine, 0)
    yield "RAS.mha", array, affine
    yield "RAS.nrrd", array, affine
    yield "LPS.mha", *flipped(*flipped(array, affine, 0), 1)
    yield "ASR.nii.gz", *transposed(array, affine, (1, 2, 0))
    yield "RAI.mha", *flipped(array, affine, 2)


def test_prediction_in_any_format_or_orientation_scores_the_same(case, tmp_path):
    gt, pred, affine = case
    gt_path = write_label_map(gt, affine, tmp_path / "gt.nii.gz")
    reference = score_case(write_label_map(pred, affine, tmp_path / "p.nii.gz"), gt_path)
    assert set(reference.status) == {"ok"}
    for name, array, matrix in variants(pred, affine):
        scores = score_case(write_label_map(array, matrix, tmp_path / f"pred_{name}"), gt_path)
        np.testing.assert_array_equal(scores.DSC, reference.DSC, err_msg=name)
        # Reoriented arrays may sit in memory the other way round: sums of areas differ in the last bit.
        np.testing.assert_allclose(scores.NSD, reference.NSD, rtol=0, atol=1e-12, err_msg=name)
        expected = "ok" if name.startswith("RAS") else "reoriented"
        assert set(scores.status) == {expected}, name
        if expected == "reoriented":
            assert f"stored as {name[:3]}, reoriented exactly to the ground truth's RAS grid" in scores.message[0]


def test_ground_truth_in_any_format_or_orientation_scores_the_same(case, tmp_path):
    """Also moves the superior-inferior axis, to which the aorta/IVC/esophagus slice rule applies."""
    gt, pred, affine = case
    # Files store spacing in float32 (NIfTI) or float64 (ITK): compare like with like.
    reference = score_case(write_label_map(pred, affine, tmp_path / "ref_pred.nii.gz"),
                           write_label_map(gt, affine, tmp_path / "ref_gt.nii.gz"))
    itk_reference = score_case(pred, gt, spacing_mm=(0.8, 1.1, 2.5))
    for name, gt_array, gt_matrix in variants(gt, affine):
        gt_path = write_label_map(gt_array, gt_matrix, tmp_path / f"gt_{name}")
        pred_path = write_label_map(pred, affine, tmp_path / f"pred_for_{name}.nii.gz")
        scores = score_case(pred_path, gt_path)
        expected = reference if name.endswith(".nii.gz") else itk_reference
        np.testing.assert_array_equal(scores.DSC, expected.DSC, err_msg=name)
        np.testing.assert_allclose(scores.NSD, expected.NSD, rtol=0, atol=1e-12, err_msg=name)


def test_slice_rule_follows_the_superior_inferior_axis():
    assert superior_axis(np.diag([1.0, 1, 1, 1])) == (2, 1)
    aorta_gt = np.zeros((4, 4, 6), np.uint8)
    aorta_gt[1:3, 1:3, 1:5] = 5  # slices 1..4
    aorta_pred = aorta_gt.copy()
    aorta_pred[1:3, 1:3, 4] = 0  # the prediction misses the most superior slice
    ras = score_case(aorta_pred, aorta_gt, spacing_mm=(1, 1, 1)).set_index("label").loc[5]
    assert ras.DSC == 1.0  # the official half-open cut drops that slice
    # The same images with the superior-inferior axis stored inferior-first: still the superior slice.
    flipped_scores = score_case(aorta_pred[:, :, ::-1], aorta_gt[:, :, ::-1], spacing_mm=(1, 1, 1))
    assert flipped_scores.set_index("label").loc[5].DSC == 0.8  # arrays carry no header: RAS assumed
    from flare_eval.scoring import score_label_maps

    rai = score_label_maps(aorta_gt[:, :, ::-1], aorta_pred[:, :, ::-1], (1, 1, 1), "flare22", superior=(2, -1))
    assert rai[4]["DSC"] == 1.0


def test_different_grid_is_an_error_unless_resampled(case, tmp_path):
    gt, pred, affine = case
    write_label_map(gt, affine, tmp_path / "gt" / "c.nii.gz")
    # The ground truth on a grid twice as fine in-plane, voxel centres aligned: resampling returns it exactly.
    fine = np.repeat(np.repeat(gt, 2, axis=0), 2, axis=1)
    fine_affine = affine.copy()
    fine_affine[0, 0], fine_affine[1, 1] = 0.4, 0.55
    fine_affine[:3, 3] = affine[:3, 3] - np.array([0.2, 0.275, 0])
    write_label_map(fine, fine_affine, tmp_path / "pred" / "c.mha")
    scores = score_folder(tmp_path / "pred", tmp_path / "gt", workers=1, progress=False)
    assert set(scores.status) == {"geometry_mismatch"} and (scores.DSC == 0).all()
    assert "shape (244, 202, 30) != (122, 101, 30)" in scores.message[0] and "--resample" in scores.message[0]
    resampled = score_folder(tmp_path / "pred", tmp_path / "gt", workers=1, progress=False, resample=True)
    assert set(resampled.status) == {"resampled"}
    assert (resampled.DSC == 1.0).all() and (resampled.NSD == 1.0).all()
    assert "nearest-neighbour" in resampled.message[0]


def test_shifted_grid_is_different_not_reoriented():
    ras = np.diag([1.0, 1.0, 2.0, 1.0])
    shifted = ras.copy()
    shifted[0, 3] = 1.0  # one voxel off
    assert match_grid((5, 5, 5), ras, (5, 5, 5), shifted).kind == "different"
    half = ras.copy()
    half[0, 3] = 0.5
    assert match_grid((5, 5, 5), ras, (5, 5, 5), half).kind == "different"
    match = match_grid((5, 6, 7), ras, (7, 5, 6), transposed(np.zeros((5, 6, 7)), ras, (2, 0, 1))[1])
    assert match.kind == "reoriented"
    with pytest.raises(ValueError, match="cannot be reoriented"):
        reorient(np.zeros((5, 5, 5)), match_grid((5, 5, 5), ras, (5, 5, 5), shifted))


def test_pairing_ignores_the_extension_and_refuses_duplicates(tmp_path):
    write_label_map(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "gt" / "a.mha")
    write_label_map(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "gt" / "b.nrrd")
    write_label_map(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "pred" / "a.nii.gz")
    write_label_map(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "pred" / "b_0000.mhd")
    pairing = pair_cases(tmp_path / "pred", tmp_path / "gt")
    assert [(p.case, p.pred_path.name) for p in pairing.pairs] == [("a", "a.nii.gz"), ("b", "b_0000.mhd")]
    write_label_map(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "pred" / "a.nrrd")
    with pytest.raises(ValueError, match="holds case 'a' twice: a.nii.gz and a.nrrd"):
        pair_cases(tmp_path / "pred", tmp_path / "gt")


def test_cli_notes_reoriented_cases_without_failing(case, tmp_path, capsys):
    gt, pred, affine = case
    write_label_map(gt, affine, tmp_path / "gt" / "c.mha")
    write_label_map(*flipped(pred, affine, 0), tmp_path / "pred" / "c.nii.gz")
    assert main(["score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    assert "note: c: reoriented" in capsys.readouterr().err


def test_bad_itk_file_is_a_clear_error(tmp_path):
    from flare_eval import InvalidLabelMapError

    (tmp_path / "x.mha").write_text("ObjectType = Image\nNDims = 3\n")
    with pytest.raises(InvalidLabelMapError, match=r"x\.mha: no ElementDataFile field"):
        read_label_map(tmp_path / "x.mha")
    # A header that passes the checks, with its data cut short: SimpleITK's own error, named.
    (tmp_path / "y.mha").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\n"
                                    "ElementDataFile = LOCAL\nxx")
    with pytest.raises(InvalidLabelMapError, match=r"y\.mha: cannot be read by SimpleITK"):
        read_label_map(tmp_path / "y.mha")

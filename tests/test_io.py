"""Reading label maps and pairing files."""

import gzip

import numpy as np
import pytest
from conftest import write_nifti

from flare_eval import InvalidLabelMapError, pair_cases, read_label_map


def test_reads_stored_integer_type_without_wrapping(tmp_path):
    labels = np.zeros((4, 4, 4), np.int16)
    labels[0, 0, 0] = 269  # the official uint8 cast turns this into 13
    labels[1, 1, 1] = 13
    image = read_label_map(write_nifti(tmp_path / "a.nii.gz", labels, (0.8, 0.8, 2.5)))
    assert image.array.dtype == np.int16
    assert image.array[0, 0, 0] == 269
    assert image.spacing_mm == pytest.approx((0.8, 0.8, 2.5))
    assert "orientation=RAS" in repr(image) and "0.8x0.8x2.5" in repr(image)


def test_whole_floats_are_cast_exactly(tmp_path):
    labels = np.zeros((3, 3, 3), np.float32)
    labels[0] = 13.0
    labels[1] = 300.0
    image = read_label_map(write_nifti(tmp_path / "f.nii.gz", labels))
    assert np.issubdtype(image.array.dtype, np.integer)
    assert set(np.unique(image.array)) == {0, 13, 300}


def test_fractional_values_are_an_error_naming_the_file(tmp_path):
    labels = np.zeros((3, 3, 3), np.float32)
    labels[0, 0, 0] = 0.5
    path = write_nifti(tmp_path / "half.nii.gz", labels)
    with pytest.raises(InvalidLabelMapError, match=r"half\.nii\.gz: 1 voxels .* not whole numbers \(e\.g\. .*0\.5"):
        read_label_map(path)


def test_nan_values_are_an_error(tmp_path):
    labels = np.zeros((3, 3, 3), np.float32)
    labels[0, 0, 0] = np.nan
    with pytest.raises(InvalidLabelMapError, match="NaN or infinite"):
        read_label_map(write_nifti(tmp_path / "nan.nii.gz", labels))


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("missing.nii.gz", None, "does not exist"),
        ("empty.nii.gz", b"", "file is empty"),
        ("plain.nii.gz", b"not gzip at all", "not gzip-compressed"),
        ("zipped.nii", gzip.compress(b"xx"), "does not end in .gz"),
        ("garbage.nii.gz", gzip.compress(b"garbage"), "a NIfTI header takes 348 bytes"),
        ("notes.txt", b"hello", "not a label map"),
    ],
)
def test_bad_files_get_clear_errors(tmp_path, name, content, pattern):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InvalidLabelMapError, match=pattern) as info:
        read_label_map(path)
    assert name in str(info.value)


def test_4d_is_rejected(tmp_path):
    with pytest.raises(InvalidLabelMapError, match=r"must be 3D, got shape \(2, 2, 2, 2\)"):
        read_label_map(write_nifti(tmp_path / "x.nii.gz", np.zeros((2, 2, 2, 2), np.uint8)))


def test_pairing_accepts_nnunet_suffix_and_reports_extras(tmp_path):
    for case in ("a", "b", "c"):
        write_nifti(tmp_path / "gt" / f"{case}.nii.gz", np.zeros((2, 2, 2), np.uint8))
    write_nifti(tmp_path / "pred" / "a.nii.gz", np.zeros((2, 2, 2), np.uint8))
    write_nifti(tmp_path / "pred" / "b_0000.nii.gz", np.zeros((2, 2, 2), np.uint8))
    write_nifti(tmp_path / "pred" / "zzz.nii.gz", np.zeros((2, 2, 2), np.uint8))
    (tmp_path / "pred" / "readme.txt").write_text("ignored: not a label map")
    pairing = pair_cases(tmp_path / "pred", tmp_path / "gt")
    assert [(p.case, p.pred_path.name if p.pred_path else None) for p in pairing.pairs] == [
        ("a", "a.nii.gz"),
        ("b", "b_0000.nii.gz"),
        ("c", None),
    ]
    assert [p.name for p in pairing.extra_predictions] == ["zzz.nii.gz"]


def test_pairing_errors(tmp_path):
    (tmp_path / "gt").mkdir()
    with pytest.raises(FileNotFoundError, match="prediction folder .*nope"):
        write_nifti(tmp_path / "gt" / "a.nii.gz", np.zeros((2, 2, 2), np.uint8))
        pair_cases(tmp_path / "nope", tmp_path / "gt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no label maps"):
        pair_cases(tmp_path / "gt", tmp_path / "empty")


def test_every_error_and_warning_of_the_package_derives_from_one_base():
    """A notebook can catch or silence everything flare-eval raises or warns about at once."""
    import flare_eval as fe
    from flare_eval.cohort_stats import CohortWarning
    from flare_eval.execution import TaskFailed
    from flare_eval.formats import RefusedFileError
    from flare_eval.harness.docker import InvalidSubmissionError
    from flare_eval.harness.gpu_check import GpuCheckError
    from flare_eval.harness.runner import HarnessWarning
    from flare_eval.pipeline import CollectWarning
    from flare_eval.reporting.html import ReportWarning

    for error in (fe.InvalidLabelMapError, fe.ResultsTableError, fe.ContainerError, InvalidSubmissionError,
                  RefusedFileError, TaskFailed, GpuCheckError):
        assert issubclass(error, fe.FlareEvalError), error
    for warning in (fe.RankingWarning, CohortWarning, HarnessWarning, CollectWarning, ReportWarning):
        assert issubclass(warning, fe.FlareEvalWarning), warning
    assert issubclass(fe.InvalidLabelMapError, ValueError)  # and still the built-in kind it always was

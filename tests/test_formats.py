"""The allow-list of label-map files: every way a file can reach data outside itself is refused from its header.

Each hostile file here is made by hand, small, and aimed at the ground truth it sits beside; each must score 0
with a status and a message that says why, and no check may hang or take memory a header asks for.
"""

import os
import struct
import subprocess
import sys
import threading

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import PEAK_RSS_KIB, write_nifti

from flare_eval import InvalidLabelMapError, read_header, read_label_map, score_folder
from flare_eval.cli import main
from flare_eval.formats import MAX_EXTENSION_BYTES, inspect_label_file
from flare_eval.io import write_label_map


@pytest.fixture
def case(tmp_path):
    """One ground-truth case (labels/c.nii.gz, labels/c.mha, labels/c.raw) and an empty predictions folder."""
    labels = np.zeros((12, 10, 8), np.uint8)
    labels[2:9, 2:8, 1:7] = 1
    labels[9:11, 3:6, 2:6] = 2
    gt = write_nifti(tmp_path / "labels" / "c.nii.gz", labels, (0.8, 0.8, 2.5))
    # The raw voxels of the ground truth, as a detached header would point at them.
    (tmp_path / "c.raw").write_bytes(np.ascontiguousarray(labels.transpose(2, 1, 0)).tobytes())
    (tmp_path / "pred").mkdir()
    return tmp_path, gt, labels


def nrrd_pointing_at(target, encoding="raw", byte_skip=None):
    lines = ["NRRD0004", "type: uint8", "dimension: 3", "sizes: 12 10 8", "encoding: " + encoding,
             "space directions: (0.8,0,0) (0,0.8,0) (0,0,2.5)", "space: left-posterior-superior",
             f"data file: {target}"]
    if byte_skip is not None:
        lines.insert(-1, f"byte skip: {byte_skip}")
    return ("\n".join(lines) + "\n").encode()


def mha_pointing_at(target, n_dims="3", name="ElementDataFile"):
    return (f"ObjectType = Image\nNDims = {n_dims}\nDimSize = 12 10 8\nElementSpacing = 0.8 0.8 2.5\n"
            f"ElementType = MET_UCHAR\n{name} = {target}\n").encode()


def detached_variants(folder, gt):
    """(file name, bytes) of predictions whose data would be the ground truth's."""
    raw = folder / "c.raw"
    relative = os.path.relpath(raw, folder / "pred")
    return [
        ("nrrd-absolute", "c.nrrd", nrrd_pointing_at(raw)),
        ("nrrd-gzip-skip", "c.nrrd", nrrd_pointing_at(gt, "gzip", -1)),
        ("nrrd-relative", "c.nrrd", nrrd_pointing_at(relative)),
        ("nrrd-list", "c.nrrd", nrrd_pointing_at("LIST") + relative.encode() + b"\n"),
        ("nrrd-datafile", "c.nrrd", nrrd_pointing_at(raw).replace(b"data file:", b"datafile:")),
        ("mha-absolute", "c.mha", mha_pointing_at(raw)),
        ("mha-relative", "c.mha", mha_pointing_at(relative)),
        ("mha-proc", "c.mha", mha_pointing_at(f"/proc/self/cwd/{os.path.relpath(raw)}")),
        ("mha-list", "c.mha", mha_pointing_at("LIST") + relative.encode() + b"\n"),
        ("mhd-relative", "c.mhd", mha_pointing_at(relative)),
        # A first, lower-case field that this parser would read and SimpleITK would skip.
        ("mha-case", "c.mha", mha_pointing_at("LOCAL", name="elementdatafile") + f"ElementDataFile = {raw}\n".encode()),
    ]


def test_no_detached_header_reaches_the_ground_truth(case):
    folder, gt, _ = case
    for label, name, content in detached_variants(folder, gt):
        for old in (folder / "pred").iterdir():
            old.unlink()
        (folder / "pred" / name).write_bytes(content)
        with pytest.raises(InvalidLabelMapError) as info:
            read_label_map(folder / "pred" / name)
        assert name in str(info.value), label
        assert any(word in str(info.value) for word in ("outside the file", "spelt")), (label, str(info.value))
        scores = score_folder(folder / "pred", folder / "labels", workers=1, progress=False)
        assert set(scores.status) == {"invalid_prediction"}, label
        assert scores.DSC.max() == 0 and scores.NSD.max() == 0, label


def test_through_score_a_detached_prediction_scores_zero_and_exits_1(case, capsys):
    folder, _, _ = case
    (folder / "pred" / "c.nrrd").write_bytes(nrrd_pointing_at(folder / "c.raw"))
    assert main(["score", str(folder / "pred"), str(folder / "labels"), "--out", str(folder / "out"),
                 "--no-progress", "--workers", "1"]) == 1
    scores = pd.read_csv(folder / "out" / "scores.csv")
    assert scores.DSC.max() == 0 and set(scores.status) == {"invalid_prediction"}
    assert "data lies outside the file" in scores.message.iloc[0]


def test_a_link_to_the_ground_truth_is_refused_but_a_copy_is_scored(case):
    folder, gt, _ = case
    (folder / "pred" / "c.nii.gz").symlink_to(gt)
    scores = score_folder(folder / "pred", folder / "labels", workers=1, progress=False)
    assert set(scores.status) == {"invalid_prediction"} and "symbolic link" in scores.message.iloc[0]
    (folder / "pred" / "c.nii.gz").unlink()
    (folder / "pred" / "c.nii.gz").write_bytes(gt.read_bytes())
    scores = score_folder(folder / "pred", folder / "labels", workers=1, progress=False)
    assert set(scores.status) == {"ok"}


def test_the_organizers_linked_ground_truth_is_followed(case, tmp_path):
    folder, gt, labels = case
    linked = tmp_path / "linked_labels"
    linked.mkdir()
    (linked / "c.nii.gz").symlink_to(gt)
    write_nifti(folder / "pred" / "c.nii.gz", labels, (0.8, 0.8, 2.5))
    scores = score_folder(folder / "pred", linked, workers=1, progress=False)
    assert set(scores.status) == {"ok"} and scores.DSC.min() == 1


def test_pipes_and_devices_never_block(case):
    folder, _, _ = case
    fifo = folder / "pred" / "c.nii.gz"
    os.mkfifo(fifo)
    outcome = {}

    def check():
        try:
            read_header(fifo)
        except InvalidLabelMapError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "reading a named pipe blocked"
    assert "not a regular file" in outcome["error"]
    # A detached header naming a device is refused from its text, never opened.
    for device in ("/dev/stdin", "/dev/tty", "/dev/kmsg", "/dev/zero"):
        (folder / "pred" / "d.mha").write_bytes(mha_pointing_at(device))
        with pytest.raises(InvalidLabelMapError, match="outside the file"):
            read_label_map(folder / "pred" / "d.mha")


def test_malformed_metaimage_headers_are_refused_before_simpleitk(tmp_path):
    cases = {
        "negative": (mha_pointing_at("LOCAL", n_dims="-3"), "NDims = -3"),
        "huge_dims": (mha_pointing_at("LOCAL", n_dims="40"), "NDims = 40"),
        "not_a_number": (mha_pointing_at("LOCAL", n_dims="three"), "not a list of integers"),
        "no_end": (b"ObjectType = Image\nNDims = 3\n" + b"X = 1\n" * 150_000, "more than 200 lines"),
        "duplicate": (b"NDims = 3\n" + mha_pointing_at("LOCAL"), "appears twice"),
        "channels": (mha_pointing_at("LOCAL").replace(b"ElementType", b"ElementNumberOfChannels = 3\nElementType"),
                     "holds 3"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.mha"
        path.write_bytes(content + b"\0" * 960)
        with pytest.raises(InvalidLabelMapError, match=message):
            read_header(path)


def test_nifti_pairs_and_oversized_extensions_are_refused(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((4, 4, 4))
    header.set_data_dtype(np.uint8)
    pair = bytearray(header.binaryblock)
    pair[344:348] = b"ni1\0"
    (tmp_path / "pair.nii").write_bytes(bytes(pair) + b"\0" * 68)
    with pytest.raises(InvalidLabelMapError, match=r"\.hdr/\.img pair"):
        read_header(tmp_path / "pair.nii")

    # NIfTI-2 with 3 MB of extensions: refused from the offset alone, nothing allocated.
    image = nib.Nifti2Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    for _ in range(3):
        image.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"x" * 1_000_000))
    nib.save(image, tmp_path / "big.nii.gz")
    with pytest.raises(InvalidLabelMapError, match=f"more than the {MAX_EXTENSION_BYTES} accepted"):
        read_header(tmp_path / "big.nii.gz")

    # One small extension that claims 2 GiB: its size must fit between the header and the data.
    small = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    small.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"y" * 8))
    nib.save(small, tmp_path / "liar.nii")
    data = bytearray((tmp_path / "liar.nii").read_bytes())
    data[352:356] = struct.pack("<i", 2**31 - 16)
    (tmp_path / "liar.nii").write_bytes(bytes(data))
    with pytest.raises(InvalidLabelMapError, match="do not fit between the header and the data"):
        read_label_map(tmp_path / "liar.nii")
    # Honest small extensions still pass.
    small.header.extensions.clear()
    small.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"note"))
    nib.save(small, tmp_path / "honest.nii.gz")
    assert read_label_map(tmp_path / "honest.nii.gz").array.shape == (4, 4, 4)


def test_checking_hostile_headers_takes_little_memory(tmp_path):
    """Peak memory of a process that checks every hostile header of this module (VmHWM, not the test's)."""
    image = nib.Nifti2Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    image.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"x" * 3_000_000))
    nib.save(image, tmp_path / "ext.nii.gz")
    (tmp_path / "fields.mha").write_bytes(b"ObjectType = Image\n" + b"Field = 1\n" * 150_000)
    (tmp_path / "negative.mha").write_bytes(mha_pointing_at("LOCAL", n_dims="-3") + b"\0" * 960)
    script = (
        "import sys\nfrom flare_eval import read_label_map, InvalidLabelMapError\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n        read_label_map(path)\n    except InvalidLabelMapError:\n        pass\n"
        "    else:\n        raise SystemExit(path + ' was read')\n"
        f"print({PEAK_RSS_KIB})\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *(str(p) for p in sorted(tmp_path.iterdir()))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) < 400 * 1024  # KiB: imports only, nothing the headers asked for


def test_accepted_formats_round_trip_with_their_facts(tmp_path):
    labels = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    for name in ("a.nii.gz", "a.nii", "a.mha", "a.nrrd"):
        path = write_label_map(labels, np.diag([0.5, 1.0, 2.0, 1.0]), tmp_path / name)
        facts = inspect_label_file(path)
        assert facts.shape == (3, 4, 5) and facts.dtype == np.int16, name
        assert np.array_equal(read_label_map(path).array, labels), name

"""Tiny test submissions: busybox images, one per behaviour, built locally (nothing is pulled)."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
from conftest import SESSION, write_nifti

COPY_ANSWERS = (
    'for f in /workspace/inputs/*_0000.nii.gz; do c=$(basename "$f" _0000.nii.gz); '
    'cp "/answers/$c.nii.gz" "/workspace/outputs/$c.nii.gz"; done\n'
)
BURN_ONE_CORE = "i=0; while [ $i -lt 1500000 ]; do i=$((i+1)); done\n"

TEAMS = {
    "good": COPY_ANSWERS,
    "burner": BURN_ONE_CORE + COPY_ANSWERS,
    # Thousands of short-lived child processes: only cgroup accounting sees all of them.
    "forker": "i=0; while [ $i -lt 1500 ]; do /bin/true; i=$((i+1)); done\n" + COPY_ANSWERS,
    "sleeper": "sleep 1.5\n" + COPY_ANSWERS,
    "hanger": "sleep 600\n",
    "crasher": "echo boom >&2\nexit 3\n",
    "silent": "echo nothing to say\n",
    "linker": (
        'for f in /workspace/inputs/*_0000.nii.gz; do c=$(basename "$f" _0000.nii.gz); '
        'ln -s /answers/$c.nii.gz "/workspace/outputs/$c.nii.gz"; done\n'
        "echo x > /workspace/outputs/wrong_name.nii.gz\nmkdir /workspace/outputs/folder\n"
    ),
    "networker": (
        "if wget -q -T 2 -O /dev/null http://1.1.1.1/ 2>/dev/null; then echo NETWORK-REACHABLE; "
        "else echo NETWORK-UNREACHABLE; fi\n"
        "if touch /workspace/inputs/tamper 2>/dev/null; then echo INPUTS-WRITABLE; else echo INPUTS-READ-ONLY; fi\n"
        + COPY_ANSWERS
    ),
}
# A grand-challenge style submission: its own entry point, one .mha in, one .mha out, a name of its choosing.
GRAND_CHALLENGE_TEAMS = {
    "gc_good": (
        'for f in /input/images/ct/*.mha; do c=$(basename "$f" .mha); '
        'cp "/answers/$c.mha" "/output/images/abdominal-organ-segmentation/result-$c.mha"; done\n'
    ),
}
# Hostile or careless submissions, one per defence of the harness (tests/harness/test_hostile.py).
HOSTILE_TEAMS = {
    # 83 bytes of gzip whose NIfTI header claims 2000 x 2000 x 2000 voxels.
    "bomb": 'for f in /workspace/inputs/*_0000.nii.gz; do c=$(basename "$f" _0000.nii.gz); '
            'cp /answers/bomb.nii.gz "/workspace/outputs/$c.nii.gz"; done\n',
    # A sparse file of 1.5 GB under the expected name: never read, never copied.
    "sparse": 'for f in /workspace/inputs/*_0000.nii.gz; do c=$(basename "$f" _0000.nii.gz); '
              'truncate -s 1500M "/workspace/outputs/$c.nii.gz"; done\n',
    # Thousands of junk names: the log lists a bounded number.
    "junk": "i=0; while [ $i -lt 3000 ]; do : > /workspace/outputs/junk$i; i=$((i+1)); done\n" + COPY_ANSWERS,
    # A root-owned folder of mode 000 holding a file: scratch cleanup must still succeed.
    "lockdir": "mkdir -p /workspace/outputs/locked/deeper && echo x > /workspace/outputs/locked/deeper/f && "
               "chmod 000 /workspace/outputs/locked/deeper /workspace/outputs/locked\n" + COPY_ANSWERS,
    # What the container may do: capabilities, device nodes, setuid bits, open files.
    "probe": "grep CapEff /proc/self/status\n"
             "if mknod /workspace/outputs/dev b 8 0 2>/dev/null; then echo MKNOD-ALLOWED; else echo MKNOD-DENIED; fi\n"
             "echo NOFILE=$(ulimit -n) FSIZE=$(ulimit -f)\n"
             "echo PID1=$(cat /proc/1/cmdline | tr '\\0' ' ')\n" + COPY_ANSWERS,
    # 30 MB of output: the engine keeps a tail of it and the harness fetches only that.
    "flood": "yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef | head -c 30000000\n"
             "echo FLOOD-END\n" + COPY_ANSWERS,
    # Two teams whose archives carry the same tag, and one that claims the organizer's tag.
    "twin1": "echo I-AM-TWIN1\n" + COPY_ANSWERS,
    "twin2": "echo I-AM-TWIN2\n" + COPY_ANSWERS,
    "thief": "echo I-AM-THIEF\n" + COPY_ANSWERS,
    # An image the engine cannot start: a user that does not exist (also an honest mistake).
    "nouser": COPY_ANSWERS,
    # A regular file where the outputs folder is mounted: the engine refuses to start it.
    "outfile": COPY_ANSWERS,
    # Output names that are not UTF-8, or that would forge a line of the log.
    "weirdname": ": > \"/workspace/outputs/$(printf 'bad\\377name')\"\n"
                 ": > \"/workspace/outputs/$(printf 'x\\n[flare-eval] all fine')\"\n" + COPY_ANSWERS,
    # 3000 nested folders, deeper than Python's recursion and PATH_MAX.
    "deeptree": "cd /workspace/outputs && i=0; while [ $i -lt 3000 ]; do mkdir d && cd d; i=$((i+1)); done\n"
                + COPY_ANSWERS,
    # VOLUME in the image: the engine makes an anonymous volume per container.
    "volume": "echo data > /data/junk\n" + COPY_ANSWERS,
    # A prediction whose header passes but whose voxels are not whole labels (0.5): refused when it is
    # normalised, before anything downstream reads it.
    "halfvalues": 'for f in /workspace/inputs/*_0000.nii.gz; do c=$(basename "$f" _0000.nii.gz); '
                  'cp /answers/half.nii.gz "/workspace/outputs/$c.nii.gz"; done\n',
}
#: Image configuration or root files a hostile team changes beyond its script.
HOSTILE_CHANGES = {"nouser": ("USER nosuchuser",), "volume": ("VOLUME /data",)}
HOSTILE_ROOT_FILES = {"outfile": {"workspace/outputs": b"not a folder"}}


def half_values_bytes() -> bytes:
    """A float32 NIfTI on the test cases' grid (12 x 12 x 8 at 0.8 x 0.8 x 2.5 mm) holding one voxel of 0.5."""
    import nibabel as nib

    data = np.zeros((12, 12, 8), np.float32)
    data[2:8, 2:8, 1:6] = 1
    data[3, 3, 3] = 0.5
    return gzip.compress(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])).to_bytes())


HOSTILE_ROOT_FILES["halfvalues"] = {"answers/half.nii.gz": half_values_bytes()}
#: Every test image carries TEST_IMAGE_LABEL with this session's token, so the suite removes all it built and only
#: those (tests/conftest.py): a second test session on the same engine keeps its own.
TEST_IMAGE_LABEL = "flare-eval-test"
IMAGE_CHANGES = ("WORKDIR /workspace", f"LABEL {TEST_IMAGE_LABEL}={SESSION}")
APPLETS = ["sh", "cat", "cp", "ls", "sleep", "mkdir", "true", "echo", "ln", "rm", "basename", "wget", "touch", "date",
           "truncate", "chmod", "grep", "mknod", "yes", "head", "tr", "printf"]


def busybox_path() -> Path:
    path = Path(shutil.which("busybox") or "/bin/busybox")
    result = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
    if not path.exists() or result.returncode == 0:
        raise RuntimeError(f"{path} is missing or not statically linked: install Debian's busybox-static")
    return path


def make_cases(folder: Path, n_cases: int = 2) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Input images, ground-truth labels and the answers baked into the good teams' images."""
    images, labels = folder / "imagesTs", folder / "labelsTs"
    answers = {}
    for i in range(n_cases):
        case = f"case{i}"
        image = np.zeros((12, 12, 8), np.int16)
        label = np.zeros((12, 12, 8), np.uint8)
        label[2:8, 2:8, 1:6] = 1
        label[8:11, 3:6, 2 + i: 6] = 2
        write_nifti(images / f"{case}_0000.nii.gz", image, (0.8, 0.8, 2.5))
        write_nifti(labels / f"{case}.nii.gz", label, (0.8, 0.8, 2.5))
        answer = label.copy()
        answer[2, 2:8, 1:6] = 0  # a realistic, imperfect prediction
        answers[case] = answer
    return images, labels, answers


def bomb_bytes() -> bytes:
    """A gzip NIfTI of a few dozen bytes whose header claims 2000 x 2000 x 2000 voxels of uint8."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    return gzip.compress(header.binaryblock + b"\0" * 4)


def build_archive(client, predict_sh: str, answers_dir: Path, target: Path, tag: str,
                  changes=None, root_files=None) -> str:
    """Build one busybox image running ``predict_sh``, save it as ``target`` carrying ``tag``; return its ID.

    ``changes`` are added to `IMAGE_CHANGES`; ``root_files`` (path -> bytes) are added to the image's root.
    The image is removed from the engine afterwards (the harness must load it from the archive).
    """
    repository, _, name = tag.rpartition(":")
    client.api.import_image_from_data(_root_tar(predict_sh, answers_dir, root_files=root_files),
                                      repository=repository, tag=name, changes=[*IMAGE_CHANGES, *(changes or ())])
    image = client.images.get(tag)
    data = b"".join(image.save(named=tag))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gzip.compress(data, compresslevel=1) if target.name.endswith(".gz") else data)
    client.images.remove(image.id, force=True)
    return image.id


def _root_tar(predict_sh: str, answers_dir: Path, answer_suffix: str = ".nii.gz", root_files=None) -> bytes:
    buffer = io.BytesIO()
    busybox = busybox_path()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        def add_dir(name):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)

        def add_file(name, data, mode=0o755):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for name in ("bin", "tmp", "workspace", "answers", "etc"):
            add_dir(name)
        add_file("bin/busybox", busybox.read_bytes())
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        # FLARE's command is /bin/bash -c "sh predict.sh"; busybox has no bash, a shim stands in.
        add_file("bin/bash", b'#!/bin/sh\nexec /bin/sh "$@"\n')
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        add_file("workspace/predict.sh", predict_sh.encode(), 0o644)
        for answer in sorted(answers_dir.glob(f"*{answer_suffix}")):
            add_file(f"answers/{answer.name}", answer.read_bytes(), 0o644)
        add_file("answers/bomb.nii.gz", bomb_bytes(), 0o644)
        for name, data in (root_files or {}).items():
            add_file(name, data, 0o644)
    return buffer.getvalue()


def build_team_archives(client, folder: Path, answers: dict[str, np.ndarray], teams=None,
                        grand_challenge: bool = False) -> Path:
    """Build one image per team, save each as ``<team>.tar`` (one as ``.tar.gz``) in ``folder/submissions``.

    ``grand_challenge`` builds the `GRAND_CHALLENGE_TEAMS` (answers as ``.mha``, the script as the image's command).
    """
    from flare_eval.io import write_label_map

    answers_dir = folder / "answers"
    suffix = ".mha" if grand_challenge else ".nii.gz"
    for case, answer in answers.items():
        write_label_map(answer, np.diag([0.8, 0.8, 2.5, 1.0]), answers_dir / f"{case}{suffix}")
    scripts = GRAND_CHALLENGE_TEAMS if grand_challenge else TEAMS
    changes = [*IMAGE_CHANGES] + (['CMD ["sh", "/workspace/predict.sh"]'] if grand_challenge else [])
    submissions = folder / ("submissions_gc" if grand_challenge else "submissions")
    submissions.mkdir(parents=True, exist_ok=True)
    for index, team in enumerate(teams or scripts):
        reference = f"flare-eval-test/{team}:latest"
        client.api.import_image_from_data(
            _root_tar(scripts[team], answers_dir, suffix), repository=f"flare-eval-test/{team}", tag="latest",
            changes=changes,
        )
        data = b"".join(client.images.get(reference).save(named=True))
        if index == 0:
            (submissions / f"{team}.tar.gz").write_bytes(gzip.compress(data, compresslevel=1))
        else:
            (submissions / f"{team}.tar").write_bytes(data)
        client.images.remove(reference, force=True)  # the harness must load it from the archive
    os.sync()
    return submissions

"""What a container leaves: output names checked, predictions kept and rewritten in a bounded worker.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
from pathlib import Path

from ..io import (
    InvalidLabelMapError,
    read_header,
)

DEFAULT_MAX_OUTPUT_BYTES = 2 * 1024**3
#: A prediction may take at most this many bytes per voxel of the case's image (float64 is 8), plus a header.
_OUTPUT_BYTES_PER_VOXEL = 8
_OUTPUT_HEADER_BYTES = 1024**2
#: Most dropped output entries listed one by one in a case's log.
_DROPPED_LISTED = 50


def keep_outputs(
    output_dir: Path, expected: str, predictions_dir: Path, kept_name: str, *,
    max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES, max_voxels: int | None = None,
) -> tuple[Path | None, list[str], bool]:
    """Move the expected prediction out of a container's output folder; report everything else.

    Only a regular, non-empty file of at most ``max_bytes`` whose name is
    ``expected`` (or matches it, when it is a pattern such as ``*.mha``; then
    exactly one file may match) and whose header claims at most
    ``max_voxels`` voxels is kept, as ``predictions_dir/kept_name``. Links,
    folders, device nodes and other names are not. Nothing is read but the
    kept file's header, and the folder listing itself is bounded: after
    `_DROPPED_LISTED` dropped entries only a count follows.

    Returns
    -------
    kept : Path or None
        Where the prediction now lies.
    dropped : list of str
        One line per entry that was not kept, with the reason.
    refused : bool
        Whether the expected file was there, a regular file, but not kept
        (empty, too large, or a header that rules it out).
    """
    matching: list[os.DirEntry] = []
    dropped: list[str] = []
    n_unlisted = 0

    def drop(line: str) -> None:
        nonlocal n_unlisted
        if len(dropped) < _DROPPED_LISTED:
            dropped.append(line)
        else:
            n_unlisted += 1

    with os.scandir(output_dir) as entries:
        for entry in entries:
            shown = printable(entry.name)
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                drop(f"{shown}: a symbolic link, not a file")
            elif not stat.S_ISREG(mode):
                drop(f"{shown}: not a regular file")
            elif not fnmatch.fnmatchcase(entry.name, expected):
                drop(f"{shown}: unexpected name (expected {printable(expected)})")
            elif len(matching) < 2:
                matching.append(entry)
            else:
                drop(f"{shown}: one of several files matching {printable(expected)}, expected one")
    kept, refused = None, False
    for entry in sorted(matching, key=lambda e: e.name):
        info = entry.stat(follow_symlinks=False)
        shown = printable(entry.name)
        refused = True
        if len(matching) > 1:
            drop(f"{shown}: one of several files matching {printable(expected)}, expected one")
        elif info.st_size == 0:
            drop(f"{shown}: empty file")
        elif info.st_size > max_bytes:
            drop(f"{shown}: {info.st_size} bytes, more than the limit of {max_bytes} for this case")
        else:
            problem = _header_problem(Path(entry.path), max_voxels)
            if problem:
                drop(f"{shown}: {printable(problem)}")
                continue
            predictions_dir.mkdir(parents=True, exist_ok=True)
            kept, refused = predictions_dir / kept_name, False
            shutil.move(entry.path, str(kept))
    if n_unlisted:
        dropped.append(f"... and {n_unlisted} more entries")
    return kept, dropped, refused


def printable(name: str) -> str:
    """A name a container chose, as one line of text: undecodable bytes and control characters escaped.

    A file name may hold a newline (to forge a line of the log) or bytes that
    are not UTF-8 (which the log writer would choke on).
    """
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text if text.isprintable() else ascii(text)[1:-1]


def glob_literal(text: str) -> str:
    """``text`` as a glob pattern that matches only itself (case ids may hold ``*``, ``?`` or ``[``)."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def _header_problem(path: Path, max_voxels: int | None) -> str:
    """Why a prediction's header rules it out ('' when it does not): unreadable, or claiming too many voxels."""
    try:
        header = read_header(path)
    except InvalidLabelMapError as exc:
        return str(exc).replace(f"{path}: ", "", 1)
    if max_voxels is not None and header.n_voxels > max_voxels:
        return (f"its header claims {'x'.join(map(str, header.shape))} voxels, more than the "
                f"{max_voxels} of the case's image; not kept")
    return ""


def normalise_prediction(path: Path) -> str:
    """Rewrite a kept prediction as a fresh self-contained file of its format; return why it cannot be ('' if fine).

    The file is read through the allow-list (`flare_eval.io.read_label_map`) in a bounded, disposable worker
    and written again with its labels as integers and its geometry, so nothing downstream ever parses the
    bytes a container chose. In a process that may not start workers (a Dask worker), it is read here.
    """
    import multiprocessing

    from ..execution import TaskLimits, run_bounded

    if multiprocessing.current_process().daemon:
        return _rewrite(path)
    outcome = run_bounded(_rewrite, [(path,)], limits=TaskLimits(),
                          on_failure=lambda arguments, failure: f"reading it failed: {failure}")
    return next(outcome)


def _rewrite(path: Path) -> str:
    from ..io import read_label_map, write_label_map

    try:
        label_map = read_label_map(path)
    except InvalidLabelMapError as exc:
        return str(exc).replace(f"{path}: ", "", 1)
    fresh = path.with_name(f".fresh-{path.name}")
    write_label_map(label_map.array, label_map.affine, fresh)
    os.replace(fresh, path)
    return ""

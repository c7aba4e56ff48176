"""Reading and writing label maps, pairing predictions with ground truth, CSV tables.

This is the only module that opens image files, and it opens only files that
pass the allow-list of `flare_eval.formats` (self-contained regular files,
headers checked by flare-eval's own parser before any library sees them).
NIfTI (``.nii``, ``.nii.gz``) is read with nibabel, MetaImage (``.mha``,
``.mhd``) and NRRD (``.nrrd``) with SimpleITK, each through the descriptor that
was checked; every format yields the same `LabelMap`: the array indexed
``[i, j, k]`` along the file's own voxel axes, and the voxel-to-world affine in
RAS+ millimetres (ITK's LPS geometry is converted). Labels keep their stored
integer type (never read through float64 or wrapped to uint8, unlike the
official script, which turns a label of 269 into 13). Spacing always comes from
the file header; there is no default spacing.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import FlareEvalError, FlareEvalWarning, FolderInUseError
from .formats import LabelFileFacts, RefusedFileError, inspect_label_file, open_checked
from .geometry import affine_from_itk, itk_image

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "LabelMap",
    "ImageHeader",
    "InvalidLabelMapError",
    "read_header",
    "read_label_map",
    "write_label_map",
    "convert_image",
    "case_id",
    "CasePair",
    "Pairing",
    "pair_cases",
    "LABEL_MAP_SUFFIXES",
    "TEAM_NAME_PATTERN",
    "check_team_name",
    "write_table",
    "write_settings",
    "read_settings",
    "append_rows",
    "drop_torn_tail",
    "read_table",
    "read_scores",
    "read_resources",
    "hold_folder",
    "FOLDER_LOCK_NAME",
]

LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
#: Team names become folder names and table cells: a letter or digit first (never ``.``, ``-`` or a CSV formula's
#: ``=``, ``+``, ``@``), then letters, digits, ``_``, ``.``, ``-``.
TEAM_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
# nnU-Net names images <case>_0000.nii.gz; some teams keep that suffix on predictions.
_CHANNEL_SUFFIX = "_0000"


class InvalidLabelMapError(FlareEvalError, ValueError):
    """A file that cannot be used as a label map; the message names the file and the problem."""


@dataclass(frozen=True, repr=False)
class LabelMap:
    """A 3D label map with its geometry.

    Attributes
    ----------
    array : (I, J, K) ndarray of integers
        Label values in their stored integer type.
    spacing_mm : tuple of 3 floats
        Voxel size along each array axis in mm, from the header.
    affine : (4, 4) ndarray
        Voxel-to-world (RAS+, mm) transform from the header.
    path : Path or None
        File the map was read from, if any.
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    path: Path | None = None

    @property
    def orientation(self) -> str:
        """Axis codes such as ``'RAS'`` (where each array axis points)."""
        from .geometry import orientation_codes

        return orientation_codes(self.affine)

    def __repr__(self) -> str:
        spacing = "x".join(f"{s:g}" for s in self.spacing_mm)
        return (
            f"LabelMap(shape={self.array.shape}, dtype={self.array.dtype}, spacing_mm={spacing}, "
            f"orientation={self.orientation}, path={str(self.path) if self.path else None!r})"
        )


def check_team_name(team: str) -> None:
    """Raise ValueError unless ``team`` matches `TEAM_NAME_PATTERN` (it names folders under the runs folder).

    Examples
    --------
    >>> check_team_name("team-A_2.1")
    >>> check_team_name("..")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: team name '..' is not allowed: use letters, digits, ...
    """
    if not TEAM_NAME_PATTERN.match(team):
        raise ValueError(f"team name {team!r} is not allowed: use letters, digits, '_', '.' and '-', starting with "
                         "a letter or digit (at most 100 characters)")


def case_id(path: Path) -> str | None:
    """Case id of a label-map file: its name without the extension, or None if not a label map.

    Examples
    --------
    >>> case_id(Path("FLARE22_Ts_0001.nii.gz"))
    'FLARE22_Ts_0001'
    >>> case_id(Path("notes.txt")) is None
    True
    """
    for suffix in LABEL_MAP_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header claims, read without its voxel data.

    Attributes
    ----------
    shape : tuple of int
        Voxels along each axis (a trailing axis of length 1 is kept).
    dtype : numpy.dtype
        The stored voxel type (before any scaling the header asks for).
    path : Path
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    path: Path

    @property
    def n_voxels(self) -> int:
        """Voxels the data would hold."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 0

    @property
    def n_bytes(self) -> int:
        """Bytes the data would take in memory once read (scaled data becomes float64)."""
        return self.n_voxels * max(self.dtype.itemsize, 8)


@contextmanager
def _checked_file(path: str | Path, *, follow_link: bool) -> Iterator[tuple[Path, int, LabelFileFacts]]:
    """Open a file that passed the allow-list (`flare_eval.formats`): its path, descriptor and header facts.

    Everything below reads through the yielded descriptor, so the libraries
    parse the very file that was checked.
    """
    path = Path(path)
    if follow_link and path.is_symlink():
        path = path.resolve()
    if not os.path.lexists(path):
        raise InvalidLabelMapError(f"{path}: file does not exist")
    try:
        descriptor = open_checked(path)
    except (RefusedFileError, OSError) as exc:
        raise InvalidLabelMapError(f"{path}: {exc}") from None
    try:
        try:
            facts = inspect_label_file(path, descriptor)
        except (RefusedFileError, OSError) as exc:
            raise InvalidLabelMapError(f"{path}: {exc}") from None
        yield path, descriptor, facts
    finally:
        os.close(descriptor)


def _itk_problem(exc: RuntimeError) -> str:
    """The last line of a SimpleITK error, which says what went wrong."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else "unknown error"


def read_header(path: str | Path, *, follow_link: bool = False) -> ImageHeader:
    """Read an image's header only: shape and voxel type, never the data.

    This is how untrusted files are checked before anything is allocated for
    them: an 83-byte file can claim 2000 x 2000 x 2000 voxels. The header is
    parsed by flare-eval itself (`flare_eval.formats`), never by an imaging
    library, and only self-contained files of the accepted formats pass.

    Parameters
    ----------
    path : str or Path
    follow_link : bool
        Accept a symbolic link (and read what it points to). For the
        organizer's own files only; predictions must be regular files.

    Raises
    ------
    InvalidLabelMapError
        If the file is missing, empty, a link or special file, of an unknown
        format, keeps its data in another file, or its header is malformed or
        holds a voxel type that is not a real number.
    """
    with _checked_file(path, follow_link=follow_link) as (path, _, facts):
        return ImageHeader(shape=facts.shape, dtype=facts.dtype, path=path)


def read_label_map(path: str | Path, *, follow_link: bool = False) -> LabelMap:
    """Read a 3D label map (``.nii``, ``.nii.gz``, ``.mha``, ``.mhd`` or ``.nrrd``).

    Only a self-contained regular file passes (see `flare_eval.formats`): a
    link, a detached header or data kept in another file is refused before
    any library parses it.

    Parameters
    ----------
    path : str or Path
    follow_link : bool
        Accept a symbolic link (the organizer's ground truth); predictions
        must be regular files.

    Returns
    -------
    LabelMap
        Integer labels in their stored type. Whole numbers stored as floats
        (or scaled by the header) are cast exactly to the smallest integer type
        that holds them.

    Raises
    ------
    InvalidLabelMapError
        If the file is refused by the allow-list, not readable in its format,
        not 3D, or holds values that are not whole numbers (e.g. 0.5), NaN or
        infinite.
    """
    data, spacing, affine, path = _read_image(path, follow_link=follow_link)
    return LabelMap(array=_as_integer_labels(data, path), spacing_mm=spacing, affine=affine, path=path)


def _read_image(path: str | Path, *, follow_link: bool) -> tuple[np.ndarray, tuple[float, ...], np.ndarray, Path]:
    """Voxel values (any real type), spacing and affine of a checked 3D image file."""
    with _checked_file(path, follow_link=follow_link) as (path, descriptor, facts):
        if facts.format.startswith("nifti"):
            data, spacing, affine = _read_nifti(path, descriptor, facts)
        else:
            data, spacing, affine = _read_itk(path, descriptor, facts)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidLabelMapError(f"{path}: label maps must be 3D, got shape {data.shape}")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InvalidLabelMapError(f"{path}: header spacing must be positive, got {spacing}")
    return data, spacing, affine, path


def _gzip_file():
    """The fastest gzip reader at hand: ISA-L's (about 1.6 times zlib's speed on label maps), else the standard one."""
    try:
        from isal.igzip import GzipFile
    except ImportError:  # isal is a dependency; a platform without its wheels falls back to zlib
        from gzip import GzipFile
    return GzipFile


def _read_nifti(path: Path, descriptor: int, facts: LabelFileFacts
                ) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    import nibabel as nib

    kind = nib.Nifti1Image if facts.format == "nifti1" else nib.Nifti2Image
    try:
        with os.fdopen(os.dup(descriptor), "rb") as raw:
            raw.seek(0)
            stream = _gzip_file()(fileobj=raw, mode="rb") if facts.compressed else raw
            image = kind.from_stream(stream)
            data = np.asanyarray(image.dataobj)
            zooms = image.header.get_zooms()
    except MemoryError:
        raise  # a bound of the worker, not a fault of the file
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InvalidLabelMapError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc})") from exc
    return data, tuple(float(z) for z in zooms[:3]), image.affine


_ITK_IO = {"metaimage": "MetaImageIO", "nrrd": "NrrdImageIO"}


def _read_itk(path: Path, descriptor: int, facts: LabelFileFacts) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    # The descriptor's own path: SimpleITK reads the checked file, with the reader of the checked format.
    reader.SetFileName(f"/proc/self/fd/{descriptor}" if os.path.isdir("/proc/self/fd") else f"/dev/fd/{descriptor}")
    reader.SetImageIO(_ITK_IO[facts.format])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InvalidLabelMapError(f"{path}: cannot be read by SimpleITK ({_itk_problem(exc)})") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidLabelMapError(f"{path}: label maps hold one value per voxel, this file holds "
                                   f"{image.GetNumberOfComponentsPerPixel()}")
    if image.GetDimension() != 3:
        raise InvalidLabelMapError(f"{path}: label maps must be 3D, got {image.GetDimension()}D")
    # ITK arrays come as [k, j, i]; the transpose is a view indexed like NIfTI's [i, j, k].
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    spacing = tuple(float(s) for s in image.GetSpacing())
    return data, spacing, affine_from_itk(image.GetDirection(), spacing, image.GetOrigin())


def write_label_map(array: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write a label map in the format its name says (NIfTI with nibabel, others with SimpleITK).

    ``affine`` is the RAS+ voxel-to-world transform; it may hold no shear.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if case_id(path) is None:
        raise ValueError(f"{path}: unsupported label-map format; use one of {LABEL_MAP_SUFFIXES}")
    if path.name.endswith(_NIFTI_SUFFIXES):
        import nibabel as nib

        image = nib.Nifti1Image(np.asarray(array), affine)
        image.set_data_dtype(np.asarray(array).dtype)
        nib.save(image, str(path))
        return path
    import SimpleITK as sitk

    sitk.WriteImage(itk_image(np.asarray(array), affine), str(path), useCompression=True)
    return path


def convert_image(source: str | Path, target: str | Path, *, follow_link: bool = False) -> Path:
    """Copy an image (CT or label map) into another format, geometry and values unchanged.

    The source passes the same allow-list as every label map (see `read_label_map`).
    """
    data, _, affine, _ = _read_image(source, follow_link=follow_link)
    target = Path(target)
    try:
        write_label_map(data, affine, target)
    except (RuntimeError, ValueError) as exc:
        raise InvalidLabelMapError(f"{source}: cannot be converted to {target.name} ({exc})") from exc
    return target


def _as_integer_labels(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype == bool:
        return data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        return data
    if not np.issubdtype(data.dtype, np.floating):
        raise InvalidLabelMapError(f"{path}: unsupported data type {data.dtype} for a label map")
    # The extremes are finite only when every value is (a NaN makes them NaN): no pass of its own for that.
    low, high = float(data.min()), float(data.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InvalidLabelMapError(f"{path}: {int((~np.isfinite(data)).sum())} voxels are NaN or infinite")
    candidate = next((t for t in (np.uint8, np.int16, np.int32, np.int64)
                      if np.iinfo(t).min <= low and high <= np.iinfo(t).max), None)
    if candidate is None:
        raise InvalidLabelMapError(f"{path}: label values {low:g}..{high:g} do not fit a 64-bit integer")
    labels = data.astype(candidate)
    if not np.array_equal(labels, data):  # the cast truncated a fraction somewhere
        fractional = data != np.round(data)
        example = data[fractional].flat[0]
        raise InvalidLabelMapError(
            f"{path}: {int(fractional.sum())} voxels hold values that are not whole numbers "
            f"(e.g. {example!r}); label maps must hold integer labels"
        )
    return labels


@dataclass(frozen=True)
class CasePair:
    """A ground-truth file and its prediction (None when the prediction is missing)."""

    case: str
    gt_path: Path
    pred_path: Path | None


@dataclass(frozen=True)
class Pairing:
    """Result of `pair_cases`.

    Attributes
    ----------
    pairs : list of CasePair
        One per ground-truth file, sorted by case id.
    extra_predictions : list of Path
        Prediction files that match no ground-truth case.
    """

    pairs: list[CasePair]
    extra_predictions: list[Path]


def _label_map_files(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{role} folder {folder} does not exist or is not a folder")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        cid = case_id(path)
        # A link is listed, not followed: reading it gives the case a status that says why it was refused.
        if cid is not None and (path.is_symlink() or path.is_file()):
            if cid in files:
                raise ValueError(f"{role} folder {folder} holds case {cid!r} twice: {files[cid].name} and "
                                 f"{path.name}; keep one")
            files[cid] = path
    return files


def pair_cases(pred_dir: str | Path, gt_dir: str | Path) -> Pairing:
    """Pair every ground-truth label map with its prediction.

    The case id is the ground-truth file name without its extension (any of
    `LABEL_MAP_SUFFIXES`). Its prediction is ``<case>`` with any of those
    extensions in ``pred_dir``, or, if absent, ``<case>_0000`` (the nnU-Net
    image name); formats may differ between the folders.

    Raises
    ------
    FileNotFoundError
        If a folder does not exist.
    ValueError
        If the ground-truth folder holds no label maps, or a folder holds one
        case in two formats.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    gt_files = _label_map_files(gt_dir, "ground-truth")
    if not gt_files:
        raise ValueError(f"ground-truth folder {gt_dir} holds no label maps ({', '.join(LABEL_MAP_SUFFIXES)})")
    pred_files = _label_map_files(pred_dir, "prediction")
    used: set[str] = set()
    pairs = []
    for cid, gt_path in gt_files.items():
        for candidate in (cid, cid + _CHANNEL_SUFFIX):
            if candidate in pred_files:
                used.add(candidate)
                pairs.append(CasePair(cid, gt_path, pred_files[candidate]))
                break
        else:
            pairs.append(CasePair(cid, gt_path, None))
    extras = [path for cid, path in pred_files.items() if cid not in used]
    return Pairing(pairs=pairs, extra_predictions=extras)


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a CSV atomically: to a temporary file first, then renamed over ``path``.

    A reader never sees a half-written file, and an interrupted write leaves the
    previous version in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    table.to_csv(temporary, index=False, encoding="utf-8")
    os.replace(temporary, path)
    return path


def read_settings(path: str | Path) -> dict:
    """An output folder's ``settings.json`` (empty when there is none or it is not a JSON object)."""
    import json

    path = Path(path)
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    return settings if isinstance(settings, dict) else {}


def write_settings(settings: dict, path: str | Path, *, merge: bool = False) -> Path:
    """Write an output folder's ``settings.json`` atomically (values that JSON lacks written as text).

    With ``merge``, the entries are added to those already in the file (two steps writing one folder).
    """
    import json

    path = Path(path)
    if merge:
        settings = {**read_settings(path), **settings}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(settings, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def append_rows(rows: pd.DataFrame, path: str | Path) -> None:
    """Append rows to a CSV (header written once) and flush them to disk at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not path.exists() or path.stat().st_size == 0
    with open(path, "a", encoding="utf-8", newline="") as handle:
        rows.to_csv(handle, index=False, header=new_file)
        handle.flush()
        os.fsync(handle.fileno())


def drop_torn_tail(path: str | Path) -> bool:
    """Cut an appended CSV back to its last complete line; return whether anything was cut.

    `append_rows` writes whole lines; a kill -9 or a full disk during an
    append can leave a last line without its newline, which would make every
    later read fail. A warning names the file.
    """
    import warnings

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return False
        size = handle.seek(0, os.SEEK_END)
        chunk = 1 << 16
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - chunk)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    warnings.warn(f"{path}: dropped an incomplete last line ({size - keep} bytes) left by an interrupted write; "
                  "that case runs again", stacklevel=2)
    return True


def read_table(path: str | Path, *, role: str = "table") -> pd.DataFrame:
    """Read a CSV written by another step (or by hand), with errors that name the file.

    ``team`` and ``case`` columns are read as text so that ids such as ``0001``
    keep their leading zeros.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is empty or not parseable as CSV.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{role} {path} does not exist")
    try:
        return pd.read_csv(path, dtype={"team": str, "case": str}, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise ValueError(f"{role} {path} is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{role} {path} is not a readable CSV file ({exc})") from exc


def read_scores(source: str | Path) -> pd.DataFrame:
    """Long scores of several teams: a ``scores.csv`` with a ``team`` column, or a runs folder.

    Raises
    ------
    FileNotFoundError
        If ``source`` does not exist.
    ValueError
        If the table lacks the columns of long scores, or the folder holds no team scores.

    A folder is read as ``<folder>/<team>/scores.csv`` (or ``<folder>/runs/<team>/scores.csv``),
    the team taken from the folder name.
    """
    import pandas as pd

    source = Path(source)
    if source.is_file():
        scores = read_table(source, role="scores table")
        if "team" not in scores:
            raise ValueError(f"scores table {source} has no 'team' column: score with --teams, or give a runs folder")
        from .protocol import layout_of_table

        try:
            layout_of_table(scores.columns)
        except ValueError as exc:
            raise ValueError(f"scores table {source}: {exc}; it should be the long scores.csv of `score`, one "
                             "row per case and organ or region") from None
        if "case" not in scores:
            raise ValueError(f"scores table {source} has no 'case' column: it should be the long scores.csv of "
                             "`score`, one row per case and organ or region")
        return scores
    if not source.is_dir():
        raise FileNotFoundError(f"{source} does not exist: give a scores.csv or a runs folder")
    files = sorted(source.glob("*/scores.csv")) or sorted(source.glob("runs/*/scores.csv"))
    if not files:
        raise ValueError(f"{source} holds no <team>/scores.csv")
    return pd.concat([read_table(p, role="scores table").assign(team=p.parent.name) for p in files],
                     ignore_index=True)


def read_resources(runs_dir: str | Path) -> pd.DataFrame:
    """Every team's ``<runs_dir>/<team>/resources.csv`` as one table, the team taken from the folder name.

    Folders whose names start with a dot (the harness's ``.scratch``) are not
    teams. An empty table when no team has run yet.
    """
    import pandas as pd

    files = [path for path in sorted(Path(runs_dir).glob("*/resources.csv")) if not path.parent.name.startswith(".")]
    frames = [read_table(path, role="resources table").assign(team=path.parent.name) for path in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


#: The file in an output folder that `hold_folder` locks; it names the command holding the folder.
FOLDER_LOCK_NAME = ".flare-eval.lock"
#: Folders held, and the process and thread holding each (POSIX locks belong to a process, not to a thread,
#: and a forked child inherits this table but not the locks).
_HELD_FOLDERS: dict[Path, tuple[int, int]] = {}
_HELD_FOLDERS_GUARD = threading.Lock()


@contextmanager
def hold_folder(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold an output folder while ``command`` writes it; another process asking meanwhile is refused.

    Two commands writing one folder at once (a run started again while the
    first still goes) would remove each other's containers, time their cases
    against each other and interleave their tables. The hold is a POSIX
    record lock on ``folder/.flare-eval.lock``, a file that names the holder
    (command, process, host, start) for the refusal's message and is removed
    when the hold ends. The kernel drops the lock when the process ends,
    however it ends, so a killed command can be resumed at once; forked
    workers do not inherit it. A step of a larger command (evaluate's run of
    containers) may hold the folder again in the same thread. On a file
    system without locks the command goes on, with a warning.

    Yields
    ------
    Path
        The folder, created if needed and resolved.

    Raises
    ------
    FolderInUseError
        If another process, or another thread of this one, holds the folder.
    """
    import socket
    import time
    import warnings

    folder = Path(folder).resolve()
    lock_path = folder / FOLDER_LOCK_NAME
    with _HELD_FOLDERS_GUARD:
        holder = _HELD_FOLDERS.get(folder)
        if holder is not None and holder[0] != os.getpid():
            holder = None  # a fork of the holder holds nothing
        if holder is None:
            folder.mkdir(parents=True, exist_ok=True)
            descriptor, locked = _open_and_lock(lock_path, folder)
            _HELD_FOLDERS[folder] = (os.getpid(), threading.get_ident())
    if holder is not None:
        if holder[1] != threading.get_ident():
            raise FolderInUseError(f"{folder} is in use by another thread of this process; give each its own "
                                   "output folder")
        yield folder  # the outer hold, in this thread, releases it
        return
    try:
        if locked:
            holder_text = (f"flare-eval {command}, process {os.getpid()} on {socket.gethostname()}, since "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, holder_text.encode("utf-8"), 0)
        else:
            warnings.warn(f"{folder}: its file system cannot lock files, so another command writing this folder "
                          "at the same time would go unnoticed: run one at a time", FlareEvalWarning, stacklevel=3)
        yield folder
    finally:
        with _HELD_FOLDERS_GUARD:
            del _HELD_FOLDERS[folder]
            # Removed while still locked: a command that opened the file meanwhile finds it gone once it gets
            # the lock, and takes a new one (see _open_and_lock).
            lock_path.unlink(missing_ok=True)
            os.close(descriptor)  # releases the lock


def _open_and_lock(path: Path, folder: Path) -> tuple[int, bool]:
    """The descriptor of the lock file ``path``, locked; and False where the file system cannot lock."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            if not _lock(descriptor, folder):
                return descriptor, False
            opened = os.fstat(descriptor)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(descriptor)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino):
            return descriptor, True
        os.close(descriptor)  # the holder removed this file as it ended; lock the one at the path now


def _lock(descriptor: int, folder: Path) -> bool:
    """Take the lock of `hold_folder` without waiting; False where the file system has none."""
    import fcntl

    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            holder = os.pread(descriptor, 500, 0).decode("utf-8", errors="replace").strip() or "unknown"
            raise FolderInUseError(f"{folder} is in use by {holder}: wait for it to end, or write to another "
                                   "folder") from None
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        raise
    return True

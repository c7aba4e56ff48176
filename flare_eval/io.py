"""Reading label maps and pairing predictions with ground truth.

This is the only module that opens image files. Label maps are read with
nibabel in their stored integer type (never through float64 and never wrapped
to uint8, unlike the official script, which turns a label of 269 into 13).
Spacing always comes from the file header; there is no default spacing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "LabelMap",
    "InvalidLabelMapError",
    "read_label_map",
    "case_id",
    "CasePair",
    "Pairing",
    "pair_cases",
    "geometry_mismatch",
    "LABEL_MAP_SUFFIXES",
    "write_table",
    "append_rows",
    "read_table",
]

LABEL_MAP_SUFFIXES = (".nii.gz", ".nii")
# nnU-Net names images <case>_0000.nii.gz; some teams keep that suffix on predictions.
_CHANNEL_SUFFIX = "_0000"
_SPACING_RTOL = 1e-4


class InvalidLabelMapError(ValueError):
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
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    def __repr__(self) -> str:
        spacing = "x".join(f"{s:g}" for s in self.spacing_mm)
        return (
            f"LabelMap(shape={self.array.shape}, dtype={self.array.dtype}, spacing_mm={spacing}, "
            f"orientation={self.orientation}, path={str(self.path) if self.path else None!r})"
        )


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


def read_label_map(path: str | Path) -> LabelMap:
    """Read a 3D NIfTI label map.

    Parameters
    ----------
    path : str or Path
        A ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    LabelMap
        Integer labels in their stored type. Whole numbers stored as floats
        (or scaled by the header) are cast exactly to the smallest integer type
        that holds them.

    Raises
    ------
    InvalidLabelMapError
        If the file is missing, empty, not a NIfTI file, not 3D, or holds
        values that are not whole numbers (e.g. 0.5), NaN or infinite.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InvalidLabelMapError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise InvalidLabelMapError(f"{path}: file is empty")
    if case_id(path) is None:
        raise InvalidLabelMapError(f"{path}: not a label map; expected one of {LABEL_MAP_SUFFIXES}")
    _check_gzip_magic(path)
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        zooms = image.header.get_zooms()
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InvalidLabelMapError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InvalidLabelMapError(f"{path}: label maps must be 3D, got shape {data.shape}")
    spacing = tuple(float(z) for z in zooms[:3])
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InvalidLabelMapError(f"{path}: header spacing must be positive, got {spacing}")
    return LabelMap(array=_as_integer_labels(data, path), spacing_mm=spacing, affine=image.affine, path=path)


def _check_gzip_magic(path: Path) -> None:
    with open(path, "rb") as handle:
        is_gzip = handle.read(2) == b"\x1f\x8b"
    if path.name.endswith(".gz") and not is_gzip:
        raise InvalidLabelMapError(f"{path}: name ends in .gz but the file is not gzip-compressed")
    if not path.name.endswith(".gz") and is_gzip:
        raise InvalidLabelMapError(f"{path}: file is gzip-compressed but its name does not end in .gz")


def _as_integer_labels(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype == bool:
        return data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        return data
    if not np.issubdtype(data.dtype, np.floating):
        raise InvalidLabelMapError(f"{path}: unsupported data type {data.dtype} for a label map")
    finite = np.isfinite(data)
    if not finite.all():
        raise InvalidLabelMapError(f"{path}: {int((~finite).sum())} voxels are NaN or infinite")
    fractional = data != np.round(data)
    if fractional.any():
        example = data[fractional].flat[0]
        raise InvalidLabelMapError(
            f"{path}: {int(fractional.sum())} voxels hold values that are not whole numbers "
            f"(e.g. {example!r}); label maps must hold integer labels"
        )
    low, high = float(data.min()), float(data.max())
    for candidate in (np.uint8, np.int16, np.int32, np.int64):
        info = np.iinfo(candidate)
        if info.min <= low and high <= info.max:
            return data.astype(candidate)
    raise InvalidLabelMapError(f"{path}: label values {low:g}..{high:g} do not fit a 64-bit integer")


def geometry_mismatch(gt: LabelMap, pred: LabelMap) -> str | None:
    """Describe how ``pred``'s voxel grid differs from ``gt``'s, or None if they match.

    Compares shape, spacing (relative tolerance 1e-4) and orientation.
    """
    problems = []
    if gt.array.shape != pred.array.shape:
        problems.append(f"shape {pred.array.shape} != {gt.array.shape}")
    if not np.allclose(pred.spacing_mm, gt.spacing_mm, rtol=_SPACING_RTOL, atol=0):
        problems.append(f"spacing {pred.spacing_mm} != {gt.spacing_mm} mm")
    if pred.orientation != gt.orientation:
        problems.append(f"orientation {pred.orientation} != {gt.orientation}")
    if not problems:
        return None
    return f"prediction {pred.path} does not match ground truth {gt.path}: " + "; ".join(problems)


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
    files = {}
    for path in sorted(folder.iterdir()):
        cid = case_id(path)
        if cid is not None and path.is_file():
            files[cid] = path
    return files


def pair_cases(pred_dir: str | Path, gt_dir: str | Path) -> Pairing:
    """Pair every ground-truth label map with its prediction.

    The case id is the ground-truth file name without ``.nii.gz``/``.nii``.
    Its prediction is ``<case>.nii.gz`` (or ``.nii``) in ``pred_dir``, or, if
    absent, ``<case>_0000.nii.gz`` (the nnU-Net image name).

    Raises
    ------
    FileNotFoundError
        If a folder does not exist.
    ValueError
        If the ground-truth folder holds no label maps.
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


def append_rows(rows: pd.DataFrame, path: str | Path) -> None:
    """Append rows to a CSV (header written once) and flush them to disk at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not path.exists() or path.stat().st_size == 0
    with open(path, "a", encoding="utf-8", newline="") as handle:
        rows.to_csv(handle, index=False, header=new_file)
        handle.flush()
        os.fsync(handle.fileno())


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

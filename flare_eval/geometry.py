"""Voxel grids in physical space: comparing, reorienting exactly, resampling. No file I/O.

A grid is an array shape and a voxel-to-world affine (RAS+, mm). Two grids are
the *same* when shapes, spacings (relative tolerance 1e-4), directions
(1e-4) and origins (a thousandth of a voxel) agree. A prediction stored in
another axis order or orientation of the same physical grid (LAS against RAS,
or axes swapped) covers the very same voxel centres: it is reoriented to the
ground truth's grid by transposes and flips alone, exactly. Any other grid is
*different*; it can only be resampled (nearest neighbour), which is not exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "GridMatch",
    "match_grid",
    "reorient",
    "resample_nearest",
    "superior_axis",
    "orientation_codes",
    "affine_from_itk",
    "itk_image",
]

_SPACING_RTOL = 1e-4
_DIRECTION_ATOL = 1e-4
_ORIGIN_VOXEL_FRACTION = 1e-3


@dataclass(frozen=True)
class GridMatch:
    """How a prediction's grid relates to the ground truth's.

    Attributes
    ----------
    kind : {"same", "reoriented", "different"}
    axes : tuple of int
        For ``reoriented``: ground-truth axis ``i`` is prediction axis ``axes[i]``.
    flips : tuple of bool
        For ``reoriented``: whether that axis runs the other way.
    description : str
        What differs, in words.
    """

    kind: str
    axes: tuple[int, ...] = (0, 1, 2)
    flips: tuple[bool, ...] = (False, False, False)
    description: str = ""


def orientation_codes(affine: np.ndarray) -> str:
    """Where each array axis points, e.g. ``'RAS'`` (nibabel's convention).

    Examples
    --------
    >>> orientation_codes(np.diag([-1.0, 1.0, 2.0, 1.0]))
    'LAS'
    """
    import nibabel as nib

    return "".join(nib.aff2axcodes(affine))


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def match_grid(gt_shape: tuple[int, ...], gt_affine: np.ndarray, pred_shape: tuple[int, ...],
               pred_affine: np.ndarray) -> GridMatch:
    """Compare a prediction's grid with the ground truth's (see the module docstring).

    Examples
    --------
    >>> ras = np.diag([1.0, 1.0, 2.0, 1.0])
    >>> las = ras.copy(); las[0, 0] = -1; las[0, 3] = 9  # axis 0 flipped, same voxel centres
    >>> match_grid((10, 4, 4), ras, (10, 4, 4), las).kind
    'reoriented'
    """
    gt_affine = np.asarray(gt_affine, dtype=np.float64)
    pred_affine = np.asarray(pred_affine, dtype=np.float64)
    gt_spacing, pred_spacing = _spacing(gt_affine), _spacing(pred_affine)
    if tuple(gt_shape) == tuple(pred_shape) and _same_affine(gt_affine, pred_affine, gt_spacing):
        return GridMatch("same")
    # Where prediction voxel indices land on the ground truth's index grid.
    mapping = np.linalg.solve(gt_affine, pred_affine)
    linear, offset = mapping[:3, :3], mapping[:3, 3]
    signed_permutation = np.round(linear)
    is_permutation = (
        np.allclose(linear, signed_permutation, atol=_SPACING_RTOL)
        and np.all(np.abs(signed_permutation).sum(axis=0) == 1)
        and np.all(np.abs(signed_permutation).sum(axis=1) == 1)
    )
    described = _describe(gt_shape, gt_affine, gt_spacing, pred_shape, pred_affine, pred_spacing)
    if not is_permutation:
        return GridMatch("different", description=described)
    axes = tuple(int(np.flatnonzero(signed_permutation[i])[0]) for i in range(3))
    flips = tuple(bool(signed_permutation[i, axes[i]] < 0) for i in range(3))
    for i in range(3):
        expected = (pred_shape[axes[i]] - 1) if flips[i] else 0
        if gt_shape[i] != pred_shape[axes[i]] or abs(offset[i] - expected) > _ORIGIN_VOXEL_FRACTION:
            return GridMatch("different", description=described)
    return GridMatch("reoriented", axes, flips,
                     f"stored as {orientation_codes(pred_affine)}, reoriented exactly to the ground truth's "
                     f"{orientation_codes(gt_affine)} grid")


def _same_affine(a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> bool:
    spacing_b = _spacing(b)
    if not np.allclose(spacing_b, spacing, rtol=_SPACING_RTOL, atol=0):
        return False
    if not np.allclose(a[:3, :3] / spacing, b[:3, :3] / spacing_b, atol=_DIRECTION_ATOL):
        return False
    return bool(np.all(np.abs(a[:3, 3] - b[:3, 3]) <= _ORIGIN_VOXEL_FRACTION * spacing.min()))


def _describe(gt_shape, gt_affine, gt_spacing, pred_shape, pred_affine, pred_spacing) -> str:
    parts = []
    if tuple(gt_shape) != tuple(pred_shape):
        parts.append(f"shape {tuple(pred_shape)} != {tuple(gt_shape)}")
    if not np.allclose(np.sort(pred_spacing), np.sort(gt_spacing), rtol=_SPACING_RTOL, atol=0):
        parts.append(f"spacing {tuple(np.round(pred_spacing, 6))} != {tuple(np.round(gt_spacing, 6))} mm")
    if orientation_codes(pred_affine) != orientation_codes(gt_affine):
        parts.append(f"orientation {orientation_codes(pred_affine)} != {orientation_codes(gt_affine)}")
    if not parts:
        parts.append(f"origin {tuple(np.round(pred_affine[:3, 3], 4))} != {tuple(np.round(gt_affine[:3, 3], 4))} mm"
                     " or directions differ")
    return "; ".join(parts)


def reorient(array: np.ndarray, match: GridMatch) -> np.ndarray:
    """Transpose and flip a prediction's array onto the ground truth's grid (exact, no interpolation)."""
    if match.kind == "same":
        return array
    if match.kind != "reoriented":
        raise ValueError(f"grids differ ({match.description}): they cannot be reoriented, only resampled")
    out = np.transpose(array, match.axes)
    flipped = tuple(i for i, flip in enumerate(match.flips) if flip)
    return np.flip(out, axis=flipped) if flipped else out


# ITK's world frame is LPS; NIfTI's and ours is RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def affine_from_itk(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """RAS+ voxel-to-world affine of an ITK (LPS) geometry: direction (row-major 3x3), spacing, origin."""
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ np.asarray(direction, dtype=np.float64).reshape(3, 3) @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(origin, dtype=np.float64)
    return affine


def itk_image(array: np.ndarray, affine: np.ndarray):
    """A SimpleITK image of an ``[i, j, k]`` array on the grid of a RAS+ affine (no shear)."""
    import SimpleITK as sitk

    matrix = np.asarray(affine, dtype=np.float64)
    spacing = _spacing(matrix)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple((_LPS_TO_RAS @ (matrix[:3, :3] / spacing)).ravel().tolist()))
    image.SetOrigin(tuple((_LPS_TO_RAS @ matrix[:3, 3]).tolist()))
    return image


def resample_nearest(array: np.ndarray, affine: np.ndarray, target_shape: tuple[int, ...],
                     target_affine: np.ndarray) -> np.ndarray:
    """Resample labels onto another grid with nearest-neighbour interpolation (SimpleITK); outside is 0."""
    import SimpleITK as sitk

    source = itk_image(array, affine)
    reference = itk_image(np.zeros(target_shape, dtype=array.dtype), target_affine)
    resampled = sitk.Resample(source, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              source.GetPixelID())
    return sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)


def superior_axis(affine: np.ndarray) -> tuple[int, int]:
    """The array axis closest to the superior-inferior direction, and +1 if it points superior, else -1.

    Examples
    --------
    >>> superior_axis(np.diag([1.0, 1.0, 2.5, 1.0]))  # RAS: the third axis, pointing superior
    (2, 1)
    >>> superior_axis(np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]]))
    (1, -1)
    """
    superior = np.asarray(affine, dtype=np.float64)[2, :3] / _spacing(affine)
    axis = int(np.argmax(np.abs(superior)))
    return axis, 1 if superior[axis] > 0 else -1

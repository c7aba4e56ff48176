"""Overlap and surface metrics on binary masks: pure NumPy/SciPy, no I/O.

Conventions (those of DeepMind's ``surface-distance``, which FLARE used):

* Arrays are indexed ``[i, j, k]`` and ``spacing_mm`` gives the voxel size
  along each array axis in millimetres.
* The surface of a mask is made of surface elements ("surfels") located at the
  corners of the voxel grid: a corner is on the surface when the 2x2x2 voxels
  around it are neither all inside nor all outside. Each corner's 8-bit
  neighbourhood code gives its surface area in mm^2 (DeepMind's marching-cubes
  lookup table, taken from the ``surface-distance`` package itself).
* The distance of a surfel to the other surface is the Euclidean distance in mm
  to the nearest surface corner of the other mask, computed in float64 exactly
  as ``scipy.ndimage.distance_transform_edt`` computes it:
  ``sqrt(((di*s0)**2 + (dj*s1)**2) + (dk*s2)**2)`` for an integer offset
  ``(di, dj, dk)``. A surfel counts towards NSD when that distance is
  ``<= tolerance_mm`` (inclusive, in float64; no float32 ties).

Undefined values are NaN: `dice_coefficient` of two empty masks and
`SurfaceDistances.surface_dice` of two empty surfaces. What a challenge scores
in those cases is protocol policy, decided in :mod:`flare_eval.scoring`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "SurfaceDistances",
    "dice_coefficient",
    "surface_distances",
    "normalized_surface_dice",
]

# Bit weight of each voxel of a corner's 2x2x2 neighbourhood, in DeepMind's
# encoding: the voxel at offset (1, 1, 1) from the corner's lower voxel is bit 0
# and the voxel at (0, 0, 0) is bit 7.
_NEIGHBOUR_OFFSETS = tuple((a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1))
_NEIGHBOUR_WEIGHTS = tuple(1 << (7 - (4 * a + 2 * b + c)) for a, b, c in _NEIGHBOUR_OFFSETS)

# The offset scan (see `_scan_offsets`) hands the corners it has not settled to a
# feature transform once the lookups it made exceed this many per voxel of the
# box: a lookup costs a few ns, a feature transform ~100 ns per voxel.
_SCAN_TO_TRANSFORM_COST = 12
#: What a byte of a shifted OR over the box costs, in lookups of the offset scan (measured: about a twentieth).
_DILATION_BYTE_COST = 0.05


@dataclass(frozen=True)
class SurfaceDistances:
    """Surfels of two masks with their distances to the other mask's surface.

    Attributes
    ----------
    distances_gt_to_pred_mm : (N,) ndarray of float64
        Distance of each ground-truth surfel to the predicted surface. Values
        beyond `max_distance_mm` are ``inf``, as are all values when the
        prediction has no surface.
    distances_pred_to_gt_mm : (M,) ndarray of float64
        Same for the predicted surfels.
    surfel_areas_gt_mm2 : (N,) ndarray of float64
        Area of each ground-truth surfel in mm^2.
    surfel_areas_pred_mm2 : (M,) ndarray of float64
        Area of each predicted surfel in mm^2.
    max_distance_mm : float
        Distances are exact up to this value (``inf``: exact everywhere).
    """

    distances_gt_to_pred_mm: np.ndarray
    distances_pred_to_gt_mm: np.ndarray
    surfel_areas_gt_mm2: np.ndarray
    surfel_areas_pred_mm2: np.ndarray
    max_distance_mm: float

    def surface_dice(self, tolerance_mm: float) -> float:
        """Normalized surface Dice (NSD) at ``tolerance_mm``.

        The area of the surfels of both surfaces lying within the tolerance of
        the other surface, divided by the total area of both surfaces. NaN
        when both surfaces are empty.

        Raises
        ------
        ValueError
            If ``tolerance_mm`` exceeds `max_distance_mm`, beyond which the
            distances were not computed.
        """
        if tolerance_mm > self.max_distance_mm:
            raise ValueError(
                f"tolerance_mm={tolerance_mm} exceeds max_distance_mm={self.max_distance_mm} "
                "used to compute these distances; recompute with a larger max_distance_mm"
            )
        total_mm2 = self.surfel_areas_gt_mm2.sum() + self.surfel_areas_pred_mm2.sum()
        if total_mm2 == 0:
            return float("nan")
        within_mm2 = (
            self.surfel_areas_gt_mm2[self.distances_gt_to_pred_mm <= tolerance_mm].sum()
            + self.surfel_areas_pred_mm2[self.distances_pred_to_gt_mm <= tolerance_mm].sum()
        )
        return float(within_mm2 / total_mm2)

    def robust_hausdorff(self, percent: float) -> float:
        """DeepMind's robust Hausdorff distance at ``percent`` (95: HD95), in mm.

        Per direction, the surfels are sorted by distance (then by area, as
        DeepMind sorts its (distance, area) pairs) and the distance of the
        first surfel at which the cumulative share of surface area reaches
        ``percent / 100`` is taken, with no interpolation; the result is the
        larger of the two directions. ``inf`` when either surface is empty.
        (MedPy pools both directions and interpolates; MONAI takes per-direction
        percentiles of unweighted distances: both give other values.)

        Raises
        ------
        ValueError
            If the distances were truncated (`max_distance_mm` finite).
        """
        if np.isfinite(self.max_distance_mm):
            raise ValueError("the robust Hausdorff distance needs every distance: compute with max_distance_mm=inf")

        def one_way(distances: np.ndarray, areas: np.ndarray) -> float:
            if distances.size == 0:
                return float("inf")
            order = np.lexsort((areas, distances))
            cumulative = np.cumsum(areas[order]) / np.sum(areas)
            index = int(np.searchsorted(cumulative, percent / 100.0))
            return float(distances[order][min(index, distances.size - 1)])

        return max(one_way(self.distances_gt_to_pred_mm, self.surfel_areas_gt_mm2),
                   one_way(self.distances_pred_to_gt_mm, self.surfel_areas_pred_mm2))


def dice_coefficient(mask_gt: np.ndarray, mask_pred: np.ndarray) -> float:
    """Dice similarity coefficient ``2 |G & P| / (|G| + |P|)`` of two masks.

    Parameters
    ----------
    mask_gt, mask_pred : (I, J[, K]) ndarray of bool
        Masks of the same shape.

    Returns
    -------
    float
        In ``[0, 1]``; NaN when both masks are empty.

    Examples
    --------
    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4), bool); b[1:3] = True
    >>> dice_coefficient(a, b)
    0.5
    """
    mask_gt, mask_pred = _check_masks(mask_gt, mask_pred, len(mask_gt.shape) or 1)
    return _dice_from_counts(int(np.count_nonzero(mask_gt & mask_pred)), int(mask_gt.sum()), int(mask_pred.sum()))


def _dice_from_counts(intersection_vx: int, gt_vx: int, pred_vx: int) -> float:
    if gt_vx + pred_vx == 0:
        return float("nan")
    return 2.0 * intersection_vx / (gt_vx + pred_vx)


def surface_distances(
    mask_gt: np.ndarray,
    mask_pred: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    max_distance_mm: float = np.inf,
) -> SurfaceDistances:
    """Distances between the surfaces of two 3D masks, surfel by surfel.

    Parameters
    ----------
    mask_gt, mask_pred : (I, J, K) ndarray of bool
        Ground-truth and predicted masks on the same voxel grid.
    spacing_mm : sequence of 3 floats
        Voxel size along each array axis, in mm.
    max_distance_mm : float, optional
        Distances above this value are reported as ``inf``. Any finite value
        makes the computation proportional to the surfaces rather than to the
        masks' bounding box, which is much faster for large organs; NSD at any
        tolerance up to this value is unaffected.

    Returns
    -------
    SurfaceDistances

    Notes
    -----
    Values agree with DeepMind's ``compute_surface_distances`` (see the module
    docstring for the exact formula). When several surface corners of the
    other mask are at the same true distance, floating-point rounding of that
    distance may differ in its last bit between implementations; this can only
    matter for a surfel whose distance equals the tolerance to within 1e-15.

    Examples
    --------
    >>> gt = np.zeros((6, 6, 6), bool); gt[1:4, 1:4, 1:4] = True
    >>> pred = np.zeros((6, 6, 6), bool); pred[1:4, 1:4, 2:5] = True
    >>> d = surface_distances(gt, pred, (1.0, 1.0, 2.0))
    >>> round(d.surface_dice(1.0), 4), round(d.surface_dice(2.0), 4)
    (0.7999, 1.0)
    """
    mask_gt, mask_pred = _check_masks(mask_gt, mask_pred, 3)
    spacing = _check_spacing(spacing_mm, 3)
    if not max_distance_mm > 0:
        raise ValueError(f"max_distance_mm must be positive, got {max_distance_mm}")

    box = _union_box(mask_gt, mask_pred)
    if box is None:
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty, empty, empty, float(max_distance_mm))
    return _surface_distances_of_crops(mask_gt[box], mask_pred[box], spacing, max_distance_mm=max_distance_mm)


def _surface_distances_of_crops(
    gt_crop: np.ndarray,
    pred_crop: np.ndarray,
    spacing: np.ndarray,
    *,
    max_distance_mm: float,
    gt_box: tuple[slice, ...] | None = None,
    pred_box: tuple[slice, ...] | None = None,
) -> SurfaceDistances:
    """`surface_distances` on masks already cropped to (at least) their union's bounding box.

    ``gt_box`` and ``pred_box``, boxes within the crops that hold every voxel
    of each mask (slices with explicit bounds; default: the whole crop), limit
    the search for surface corners: a mask far from the other (a spurious
    blob) makes the union's box mostly empty.
    """
    if all(m.flags.f_contiguous and not m.flags.c_contiguous for m in (gt_crop, pred_crop)):
        # Work on the C-ordered transposes (NIfTI arrays are Fortran-ordered). Surfel
        # areas do not depend on the axis order; distances are summed in the
        # original axis order so that they round exactly as on the original arrays.
        gt_crop, pred_crop, spacing, axis_order = gt_crop.T, pred_crop.T, spacing[::-1], (2, 1, 0)
        gt_box, pred_box = (None if box is None else box[::-1] for box in (gt_box, pred_box))
    else:
        gt_crop, pred_crop, axis_order = np.ascontiguousarray(gt_crop), np.ascontiguousarray(pred_crop), (0, 1, 2)
    margin_vx = _margin_vx(spacing, max_distance_mm)
    grid = _CornerGrid(tuple(n + 2 * m + 1 for n, m in zip(gt_crop.shape, margin_vx)), spacing, axis_order)
    gt_corners, gt_codes = _surface_corners(gt_crop, margin_vx, gt_box)
    pred_corners, pred_codes = _surface_corners(pred_crop, margin_vx, pred_box)
    area_table = _surfel_area_table(tuple(spacing.tolist()))
    return SurfaceDistances(
        distances_gt_to_pred_mm=_nearest_distances(gt_corners, pred_corners, grid, max_distance_mm),
        distances_pred_to_gt_mm=_nearest_distances(pred_corners, gt_corners, grid, max_distance_mm),
        surfel_areas_gt_mm2=area_table[gt_codes],
        surfel_areas_pred_mm2=area_table[pred_codes],
        max_distance_mm=float(max_distance_mm),
    )


@dataclass(frozen=True)
class _CornerGrid:
    """Geometry of a C-ordered corner grid.

    ``axis_order[i]`` is the axis of the caller's array that grid axis ``i``
    stands for; distances are summed in the caller's axis order.
    """

    shape: tuple[int, ...]
    spacing: np.ndarray
    axis_order: tuple[int, ...]

    def lengths_mm(self, offsets_vx: np.ndarray) -> np.ndarray:
        """Lengths in mm of integer offsets (rows), rounded exactly as scipy's EDT rounds them."""
        scaled = offsets_vx.astype(np.float64) * self.spacing
        np.multiply(scaled, scaled, out=scaled)
        first, second, third = (self.axis_order.index(axis) for axis in range(3))
        # Axis by axis in the caller's order reproduces np.add.reduce(dt, axis=0).
        squared = scaled[:, first] + scaled[:, second]
        squared += scaled[:, third]
        return np.sqrt(squared)


def normalized_surface_dice(
    mask_gt: np.ndarray,
    mask_pred: np.ndarray,
    spacing_mm: Sequence[float],
    tolerance_mm: float,
) -> float:
    """Normalized surface Dice (NSD) of two 3D masks at ``tolerance_mm``.

    Equal to DeepMind's ``compute_surface_dice_at_tolerance``; computed with
    distances truncated at the tolerance (see `surface_distances`).

    Returns
    -------
    float
        In ``[0, 1]``; NaN when both masks are empty, 0 when exactly one is.

    Examples
    --------
    >>> gt = np.zeros((8, 8, 8), bool); gt[2:6, 2:6, 2:6] = True
    >>> normalized_surface_dice(gt, gt, (1.0, 1.0, 1.0), tolerance_mm=1.0)
    1.0
    """
    return surface_distances(mask_gt, mask_pred, spacing_mm, max_distance_mm=tolerance_mm).surface_dice(
        tolerance_mm
    )


def _check_masks(mask_gt: np.ndarray, mask_pred: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    for name, mask in (("mask_gt", mask_gt), ("mask_pred", mask_pred)):
        if not isinstance(mask, np.ndarray) or mask.dtype != bool:
            raise TypeError(f"{name} must be a numpy array of dtype bool, got {type(mask).__name__} "
                            f"of dtype {getattr(mask, 'dtype', None)}")
        if mask.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}D, got shape {mask.shape}")
    if mask_gt.shape != mask_pred.shape:
        raise ValueError(f"mask_gt and mask_pred must have the same shape, got {mask_gt.shape} and {mask_pred.shape}")
    return mask_gt, mask_pred


def _check_spacing(spacing_mm: Sequence[float], ndim: int) -> np.ndarray:
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (ndim,) or not np.all(np.isfinite(spacing)) or not np.all(spacing > 0):
        raise ValueError(f"spacing_mm must be {ndim} positive finite numbers, got {spacing_mm!r}")
    return spacing


def _mask_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the non-zero voxels of a 3D array (a mask or labels) as slices; None when there are none."""
    if mask.flags.f_contiguous and not mask.flags.c_contiguous:
        # NIfTI arrays are Fortran-ordered; their transpose is a C-ordered view.
        box = _mask_box(mask.T)
        return None if box is None else box[::-1]
    # Reductions over outer axes are vectorised; one over the innermost axis is not.
    along_0 = mask.reshape(mask.shape[0], -1).any(axis=1)
    if not along_0.any():
        return None
    plane_12 = mask.any(axis=0)
    box = []
    for profile in (along_0, plane_12.any(axis=1), plane_12.any(axis=0)):
        hits = np.flatnonzero(profile)
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _union_of_boxes(box_a: tuple[slice, ...] | None, box_b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """The smallest box holding both boxes (None stands for an empty box)."""
    if box_a is None:
        return box_b
    if box_b is None:
        return box_a
    return tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box_a, box_b))


def _labels_outside(labels: np.ndarray, known: Sequence[int]) -> list[int]:
    """Values of a label map other than 0 and ``known``, sorted (a min/max pass first, unique only when needed)."""
    low, high = int(labels.min()), int(labels.max())
    allowed = {0, *known}
    if low >= 0 and all(v in allowed for v in range(low, high + 1)):
        return []
    return [int(v) for v in np.unique(labels) if int(v) not in allowed]


def _union_box(mask_a: np.ndarray, mask_b: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box (as slices) of the union of two masks; None if both are empty."""
    return _mask_box(mask_a | mask_b)


def _margin_vx(spacing: np.ndarray, max_distance_mm: float) -> tuple[int, ...]:
    """Offset in voxels along each axis beyond which no offset lies within ``max_distance_mm``."""
    if not np.isfinite(max_distance_mm):
        return (0,) * len(spacing)
    # One voxel more than the quotient, in case the division rounds below an exact multiple.
    return tuple(int(np.floor(max_distance_mm / s)) + 1 for s in spacing)


@lru_cache(maxsize=64)
def _surfel_area_table(spacing_mm: tuple[float, ...]) -> np.ndarray:
    """Area in mm^2 of the surfel of each of the 256 neighbourhood codes."""
    table = _deepmind_lookup_tables().create_table_neighbour_code_to_surface_area(spacing_mm)
    return np.asarray(table, dtype=np.float64)


@lru_cache(maxsize=1)
def _deepmind_lookup_tables():
    """DeepMind's ``surface_distance.lookup_tables`` module, loaded on its own.

    Importing it through its package runs the package's ``__init__``, which
    imports DeepMind's metrics and with them ``scipy.ndimage`` (a third of a
    second, on every worker's first case); the tables need only NumPy.
    """
    import importlib.util

    package = importlib.util.find_spec("surface_distance")  # finds the package without running its __init__
    if package is None or not package.submodule_search_locations:
        raise ImportError("flare-eval needs DeepMind's surface-distance package (pip install surface-distance)")
    path = Path(next(iter(package.submodule_search_locations))) / "lookup_tables.py"
    spec = importlib.util.spec_from_file_location("surface_distance.lookup_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _surface_corners(
    mask: np.ndarray, margin_vx: Sequence[int], box: tuple[slice, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Surface corners of a 3D mask and their neighbourhood codes.

    Corner ``c`` of the mask sits between voxels ``c - 1`` and ``c`` along each
    axis (``c`` in ``0 .. n``). Corners are returned as flat indices into a
    corner grid of shape ``n + 2 * margin + 1`` in which corner ``c`` has index
    ``c + margin``, so that offsets up to ``margin`` voxels never leave the grid,
    in increasing order. Only ``box`` (explicit bounds; default: the whole
    mask), which must hold every voxel of the mask, is searched.
    """
    if box is None:
        box = tuple(slice(0, n) for n in mask.shape)
    cropped = mask[box]
    voxels = np.zeros(tuple(n + 2 for n in cropped.shape), dtype=bool)
    voxels[1:-1, 1:-1, 1:-1] = cropped
    any_set = voxels
    all_set = voxels
    for axis in range(3):
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis] = slice(None, -1)
        upper[axis] = slice(1, None)
        any_set = any_set[tuple(lower)] | any_set[tuple(upper)]
        all_set = all_set[tuple(lower)] & all_set[tuple(upper)]
    local = np.flatnonzero(any_set & ~all_set)

    # Local corner (i, j, k) covers voxels (i, j, k) .. (i+1, j+1, k+1) of the padded box and is corner
    # (i, j, k) + box.start of the mask. Its row i * m_1 + j and column k come from one division; the flat
    # indices it needs are per-row tables plus k (unravelling and ravelling again cost twice as much).
    m_0, m_1, m_2 = any_set.shape
    n_1, n_2 = voxels.shape[1], voxels.shape[2]
    row, k = np.divmod(local, m_2)
    i_of_row, j_of_row = np.divmod(np.arange(m_0 * m_1), m_1)
    base = ((i_of_row * n_1 + j_of_row) * n_2)[row]
    base += k
    flat_voxels = voxels.reshape(-1).view(np.uint8)
    codes = np.zeros(local.shape, dtype=np.uint8)
    for (a, b, c), weight in zip(_NEIGHBOUR_OFFSETS, _NEIGHBOUR_WEIGHTS):
        codes |= flat_voxels[base + ((a * n_1 + b) * n_2 + c)] * np.uint8(weight)
    grid_1, grid_2 = (n + 2 * m + 1 for n, m in zip(mask.shape[1:], margin_vx[1:]))
    start_0, start_1, start_2 = (part.start + m for part, m in zip(box, margin_vx))
    corners = (((i_of_row + start_0) * grid_1 + j_of_row + start_1) * grid_2 + start_2)[row]
    corners += k
    return corners, codes


@lru_cache(maxsize=64)
def _ball_offsets(
    spacing_mm: tuple[float, ...], axis_order: tuple[int, ...], max_distance_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets within ``max_distance_mm``, sorted by length, and their lengths."""
    grid = _CornerGrid((0, 0, 0), np.asarray(spacing_mm), axis_order)
    reach = _margin_vx(grid.spacing, max_distance_mm)
    axes = [np.arange(-r, r + 1) for r in reach]
    offsets = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    lengths = grid.lengths_mm(offsets)
    keep = lengths <= max_distance_mm
    order = np.argsort(lengths[keep], kind="stable")
    return offsets[keep][order], lengths[keep][order]


@lru_cache(maxsize=64)
def _ball_columns(
    spacing_mm: tuple[float, ...], axis_order: tuple[int, ...], max_distance_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ball of `_ball_offsets` as columns along the last axis: offsets ``(a, b)`` along the first two
    axes and, for each, the largest ``|c|`` of an offset ``(a, b, c)`` in the ball, sorted by it.

    Lengths grow with ``|c|``, so the offsets of a column are exactly those with ``|c|`` up to its largest.
    """
    offsets, _ = _ball_offsets(spacing_mm, axis_order, max_distance_mm)
    pairs, inverse = np.unique(offsets[:, :2], axis=0, return_inverse=True)
    half_lengths = np.zeros(len(pairs), dtype=np.intp)
    np.maximum.at(half_lengths, inverse.reshape(-1), np.abs(offsets[:, 2]))
    order = np.argsort(half_lengths, kind="stable")
    return pairs[order, 0], pairs[order, 1], half_lengths[order]


def _any_within_ball(position: np.ndarray, is_feature: np.ndarray, grid: _CornerGrid,
                     columns: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Whether a feature lies at any offset of the ball from each position (flat indices into ``grid``).

    One lookup per column of the ball instead of one per offset: the feature
    mask spread along the last axis by a column's half-length holds a feature
    of that column wherever one is. Positions lie at least the ball's reach
    from the grid's faces (the grid's margin), so no spread or lookup crosses
    into another row.
    """
    first, second, half_lengths = columns
    shifts = first * (grid.shape[1] * grid.shape[2]) + second * grid.shape[2]
    found = np.zeros(position.size, dtype=bool)
    spread = is_feature.copy()
    spread_by = 0
    for shift, half_length in zip(shifts.tolist(), half_lengths.tolist()):
        while spread_by < half_length:
            spread_by += 1
            spread[spread_by:] |= is_feature[:-spread_by]
            spread[:-spread_by] |= is_feature[spread_by:]
        found |= spread[position + shift]
    return found


def _nearest_distances(
    query: np.ndarray, features: np.ndarray, grid: _CornerGrid, max_distance_mm: float
) -> np.ndarray:
    """Distance in mm from each query corner to the nearest feature corner.

    Both are flat indices into ``grid``. Distances above
    ``max_distance_mm`` are ``inf``.
    """
    distances = np.full(query.shape, np.inf)
    if query.size == 0 or features.size == 0:
        return distances
    if np.isfinite(max_distance_mm):
        remaining = _scan_offsets(query, features, grid, max_distance_mm, distances)
    else:
        remaining = np.arange(query.size)
    if remaining.size:
        left, near, box = query[remaining], features, grid
        if np.isfinite(max_distance_mm):
            left, near, box = _within_reach(left, features, grid, max_distance_mm)
        if near.size == 0:
            found = np.full(left.shape, np.inf)
        elif (near.size + left.size) * _TREE_COST_PER_POINT < np.prod(box.shape):
            found = _tree_distances(left, near, box)
        else:
            found = _feature_transform_distances(left, near, box)
        found[found > max_distance_mm] = np.inf
        distances[remaining] = found
    return distances


def _within_reach(
    query: np.ndarray, features: np.ndarray, grid: _CornerGrid, max_distance_mm: float
) -> tuple[np.ndarray, np.ndarray, _CornerGrid]:
    """The queries, the features that may lie within ``max_distance_mm`` of one, and the box holding both.

    The box is that of the queries grown by the reach of the distance along
    each axis (within the grid): every feature within the distance of a query
    lies in it, so the nearest features found in it are the nearest ones
    wherever they are that close; farther ones count as ``inf`` anyway. A few
    corners left far from the other surface (an organ labelled as its
    neighbour) then cost their own box, not the whole organ's. Queries and
    features are returned as flat indices into the box's grid.
    """
    query_ijk = np.stack(np.unravel_index(query, grid.shape))
    feature_ijk = np.stack(np.unravel_index(features, grid.shape))
    reach = np.asarray(_margin_vx(grid.spacing, max_distance_mm))[:, None]
    low = np.maximum(query_ijk.min(axis=1, keepdims=True) - reach, 0)
    high = np.minimum(query_ijk.max(axis=1, keepdims=True) + reach + 1, np.asarray(grid.shape)[:, None])
    inside = np.all((feature_ijk >= low) & (feature_ijk < high), axis=0)
    box = _CornerGrid(tuple((high - low).ravel().tolist()), grid.spacing, grid.axis_order)
    return (np.ravel_multi_index(tuple(query_ijk - low), box.shape),
            np.ravel_multi_index(tuple(feature_ijk[:, inside] - low), box.shape), box)


def _scan_offsets(
    query: np.ndarray, features: np.ndarray, grid: _CornerGrid, max_distance_mm: float, distances: np.ndarray
) -> np.ndarray:
    """Fill ``distances`` by testing offsets in order of increasing length.

    The first offset at which a query corner finds a feature corner is its
    nearest one, so each corner is settled by its first hit; corners with no
    feature within ``max_distance_mm`` stay ``inf``. The work is proportional
    to the surfaces, not to the box, unless many corners stay far from the
    other surface: once the lookups made cost as much as a feature transform
    of the box, the indices of those still unsettled are returned for one. The
    two together never cost more than twice the cheaper; a rule that guessed
    from the corners still unsettled would give up at the first offset on every
    large organ of a fine grid, though nearly all its corners settle within a
    few voxels. Corners near the other surface but beyond the tolerance (a
    prediction shifted past it) would test every offset: once each open
    corner has made as many lookups as there are columns in the ball, those
    with no feature in any column are struck off (see `_any_within_ball`),
    where the lookups that saves outweigh spreading the feature mask.
    """
    is_feature = np.zeros(int(np.prod(grid.shape)), dtype=bool)
    is_feature[features] = True
    ball = (tuple(grid.spacing.tolist()), grid.axis_order, float(max_distance_mm))
    offsets, lengths = _ball_offsets(*ball)
    columns = _ball_columns(*ball)
    n_columns = columns[0].size
    spread_cost = _DILATION_BYTE_COST * 2 * int(columns[2][-1]) * is_feature.size
    strides = np.array([grid.shape[1] * grid.shape[2], grid.shape[2], 1])
    flat_offsets = offsets @ strides
    budget = _SCAN_TO_TRANSFORM_COST * is_feature.size
    # Corners with no feature anywhere near would test every offset in vain: they stay inf at once.
    unsettled = np.flatnonzero(_near_features(query, features, grid, max_distance_mm))
    if unsettled.size == 0:
        return unsettled
    position = query[unsettled]
    # Settled corners are struck off ``open_`` and dropped from the arrays only once they are half of them:
    # compacting at every offset that settles a few cost as much as the lookups.
    open_ = np.ones(position.size, dtype=bool)
    n_open = position.size
    spent = 0
    for index, (offset, length) in enumerate(zip(flat_offsets.tolist(), lengths.tolist())):
        if spent > budget:
            return unsettled[open_]
        if index == n_columns and n_open * (flat_offsets.size - 2 * n_columns) > spread_cost:
            unsettled, position = unsettled[open_], position[open_]
            near = _any_within_ball(position, is_feature, grid, columns)
            spent += n_columns * position.size
            unsettled, position = unsettled[near], position[near]
            open_ = np.ones(position.size, dtype=bool)
            n_open = position.size
            if n_open == 0:
                break
        spent += position.size
        hit = is_feature[position + offset]
        hit &= open_
        n_hit = int(np.count_nonzero(hit))
        if n_hit:
            distances[unsettled[hit]] = length
            n_open -= n_hit
            if n_open == 0:
                break
            open_ &= ~hit
            if 2 * n_open < position.size:
                unsettled, position = unsettled[open_], position[open_]
                open_ = np.ones(position.size, dtype=bool)
    return np.zeros(0, dtype=np.intp)


def _near_features(query: np.ndarray, features: np.ndarray, grid: _CornerGrid, max_distance_mm: float) -> np.ndarray:
    """Whether a feature may lie within ``max_distance_mm`` of each query corner (False: certainly none).

    The grid is cut into blocks as long as the reach of the ball along each
    axis; a feature within reach lies in the query's block or in one of its 26
    neighbours, so a query whose 27 blocks hold no feature is farther away.
    The test costs one pass over the corners, not over the offsets.
    """
    reach = _margin_vx(grid.spacing, max_distance_mm)
    blocks = tuple(n // r + 3 for n, r in zip(grid.shape, reach))  # one empty block on each side
    n_0, n_1, n_2 = grid.shape
    # The flat block index of each row (i, j) of the grid and of each column k: a corner's block is the sum of
    # two lookups, after one division (unravelling and dividing each coordinate cost six times as much).
    block_of_row = (((np.arange(n_0) // reach[0] + 1) * (blocks[1] * blocks[2]))[:, None]
                    + ((np.arange(n_1) // reach[1] + 1) * blocks[2])[None, :]).reshape(-1)
    block_of_column = np.arange(n_2) // reach[2] + 1

    def block_of(corners: np.ndarray) -> np.ndarray:
        row, column = np.divmod(corners, n_2)
        block = block_of_row[row]
        block += block_of_column[column]
        return block

    occupied = np.zeros(blocks, dtype=bool)
    occupied.reshape(-1)[block_of(features)] = True
    return _dilate_by_cube(occupied).reshape(-1)[block_of(query)]


def _dilate_along(mask: np.ndarray, axis: int) -> np.ndarray:
    """A 3D mask dilated by one voxel both ways along ``axis`` (nothing beyond the edges)."""
    lower = [slice(None)] * 3
    upper = [slice(None)] * 3
    lower[axis], upper[axis] = slice(None, -1), slice(1, None)
    grown = mask.copy()
    grown[tuple(lower)] |= mask[tuple(upper)]
    grown[tuple(upper)] |= mask[tuple(lower)]
    return grown


def _dilate_by_cube(mask: np.ndarray) -> np.ndarray:
    """A 3D mask dilated by the 3 x 3 x 3 cube (26-connected element), one axis at a time.

    Equal to ``ndimage.maximum_filter(mask, size=3, mode="constant")``, about
    fifteen times faster on boolean arrays.
    """
    return _dilate_along(_dilate_along(_dilate_along(mask, 0), 1), 2)


def _dilate_18(mask: np.ndarray) -> np.ndarray:
    """A 3D mask dilated by the 18-connected element (the 3 x 3 x 3 cube without its corners).

    The element is the union of the three axis-aligned 3 x 3 squares, each
    the product of two lines; equal to ``ndimage.binary_dilation`` with
    ``generate_binary_structure(3, 2)``, about ten times faster.
    """
    along_0, along_1 = _dilate_along(mask, 0), _dilate_along(mask, 1)
    grown = _dilate_along(along_0, 1)
    grown |= _dilate_along(along_0, 2)
    grown |= _dilate_along(along_1, 2)
    return grown


#: A nearest-neighbour query costs about as much as the feature transform of this many voxels (measured).
_TREE_COST_PER_POINT = 40
#: Nearest features compared per query corner by their exact lengths (see `_tree_distances`).
_TREE_CANDIDATES = 8


def _tree_distances(query: np.ndarray, features: np.ndarray, grid: _CornerGrid) -> np.ndarray:
    """Exact distances from query corners to the nearest feature corner via a k-d tree of the features.

    For surfaces far apart in a large, mostly empty box (a false positive far
    from every lesion) the tree costs the surfaces, not the box. The tree's
    floating-point distances only choose candidates: each query's distance is
    the shortest of the lengths of its `_TREE_CANDIDATES` nearest offsets,
    computed as the feature transform computes lengths, so that features at
    the same distance give the same value.
    """
    from scipy.spatial import cKDTree

    query_ijk = np.stack(np.unravel_index(query, grid.shape), axis=-1)
    feature_ijk = np.stack(np.unravel_index(features, grid.shape), axis=-1)
    k = min(_TREE_CANDIDATES, features.size)
    _, nearest = cKDTree(feature_ijk * grid.spacing).query(query_ijk * grid.spacing, k=k)
    nearest = nearest.reshape(query.size, k)
    offsets = feature_ijk[nearest] - query_ijk[:, None, :]
    return grid.lengths_mm(offsets.reshape(-1, 3)).reshape(query.size, k).min(axis=1)


def _feature_transform_distances(query: np.ndarray, features: np.ndarray, grid: _CornerGrid) -> np.ndarray:
    """Exact distances from query corners to the nearest feature corner via scipy's EDT."""
    # Imported here: scipy.ndimage costs a third of a second at start-up, and most cases never come this far.
    from scipy import ndimage

    not_feature = np.ones(grid.shape, dtype=bool)
    not_feature.reshape(-1)[features] = False
    nearest = ndimage.distance_transform_edt(
        not_feature, sampling=grid.spacing, return_distances=False, return_indices=True
    )
    query_ijk = np.stack(np.unravel_index(query, grid.shape), axis=-1)
    nearest_ijk = nearest.reshape(3, -1)[:, query].T
    return grid.lengths_mm(nearest_ijk - query_ijk)

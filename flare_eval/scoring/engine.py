"""The scoring engine: every region of a protocol on two label arrays of one grid. Pure, no I/O.

One pass over each volume finds the bounding box of every label; each region
is then scored on the crop of its boxes' union, where its masks, counts and
surface distances are computed once for all its metrics (see
:class:`flare_eval.metric_kinds.RegionPair`). FLARE's organs, KiTS23's nested
regions, BraTS's lesion-wise metrics and autoPET's raw-value metrics all go
through here.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import numpy as np

from .. import metrics
from ..errors import FlareEvalWarning
from ..protocol import Protocol, Region, SliceRangeRule, load_protocol

__all__ = ["score_label_maps", "RegionPair"]


def score_label_maps(
    gt: np.ndarray,
    pred: np.ndarray,
    spacing_mm: Sequence[float],
    protocol: str | Protocol,
    *,
    superior: tuple[int, int] = (2, 1),
) -> list[dict]:
    """Score every region of the protocol on two label arrays of the same grid.

    Parameters
    ----------
    gt, pred : (I, J, K) ndarray of integers
        Ground-truth and predicted label maps.
    spacing_mm : sequence of 3 floats
        Voxel size along each array axis, in mm.
    protocol : str or Protocol
        Preset name, JSON path or `Protocol`.
    superior : (int, int)
        The array axis of the superior-inferior direction and +1 if indices
        increase towards superior, else -1 (see
        :func:`flare_eval.geometry.superior_axis`); the slice-range rule cuts
        along it. The default is RAS's third axis, as the official script.

    Returns
    -------
    list of dict
        One row per region, in protocol order: the layout's key columns
        (FLARE: ``label, organ``; else ``region``) and a value per column of the
        region's metrics, rounded to ``protocol.rounding`` decimals when it
        says so.

    Warns
    -----
    FlareEvalWarning
        When the ground truth, or under ``invalid_labels = "ignore"`` the
        prediction, holds values that are not protocol labels; they are
        scored as background.

    Examples
    --------
    >>> gt = np.zeros((8, 8, 8), np.uint8); gt[2:6, 2:6, 2:6] = 1
    >>> pred = gt.copy(); pred[2:6, 2:6, 5] = 0
    >>> row = score_label_maps(gt, pred, (1, 1, 1), "flare22")[0]
    >>> row["organ"], round(row["DSC"], 4), row["gt_voxels"]
    ('Liver', 0.8571, 64)
    """
    protocol = load_protocol(protocol)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred must have the same shape, got {gt.shape} and {pred.shape}")
    if gt.ndim != 3:
        raise ValueError(f"label maps must be 3D, got shape {gt.shape}")
    if superior[0] not in (0, 1, 2) or superior[1] not in (1, -1):
        raise ValueError(f"superior must be (axis in 0..2, +1 or -1), got {superior}")
    spacing = metrics._check_spacing(spacing_mm, 3)
    invalid, gt_outside, pred_outside = _check_values(gt, pred, protocol)
    gt, pred = _narrowed(gt, protocol.labels, gt_outside), _narrowed(pred, protocol.labels, pred_outside)
    # One pass over each volume finds every label's bounding box; all later work is on crops.
    gt_boxes, pred_boxes = _label_boxes(gt, protocol.labels), _label_boxes(pred, protocol.labels)
    rows = []
    for region in protocol.regions:
        pair = _region_pair(gt, pred, spacing, region, gt_boxes, pred_boxes, protocol.slice_range, superior)
        row = protocol.layout.keys(region)
        for metric in region.metrics:
            if invalid and metric.zeroed_by_invalid_labels:
                row.update(dict.fromkeys(metric.columns, 0.0))
            else:
                row.update(metric.score(pair))
        if protocol.rounding is not None:
            # NumPy's rounding (scale, round half to even, unscale), as the official scripts round NumPy floats.
            row = {k: (float(np.round(np.float64(v), protocol.rounding)) if isinstance(v, float) else v)
                   for k, v in row.items()}
        rows.append(row)
    return rows


def _check_values(gt: np.ndarray, pred: np.ndarray, protocol: Protocol) -> tuple[bool, list[int], list[int] | None]:
    """Warn of values outside the protocol's labels.

    Returns whether the prediction holds any under ``zero_scores``, and the
    values outside the labels (sorted) of the ground truth and of the
    prediction (None where the rule needs no check: ``refuse``, applied before).
    """
    gt_outside = metrics._labels_outside(gt, protocol.labels)
    pred_outside = None if protocol.invalid_labels == "refuse" else metrics._labels_outside(pred, protocol.labels)
    warned = [("ground truth", gt_outside)] + [("prediction", pred_outside)] * (protocol.invalid_labels == "ignore")
    for name, unknown in warned:
        if unknown:
            warnings.warn(f"{name} holds values {unknown} that are not labels of protocol {protocol.name!r}; "
                          "they are scored as background", FlareEvalWarning, stacklevel=3)
    return protocol.invalid_labels == "zero_scores" and bool(pred_outside), gt_outside, pred_outside


def _narrowed(labels: np.ndarray, wanted: Sequence[int], outside: list[int] | None) -> np.ndarray:
    """``labels`` as one-byte integers, the same values in the same memory order, when every value fits one.

    Predictions saved as int64 (``argmax``'s type) or int16 hold labels below 256
    as often as uint8 files do; every later pass (boxes, region masks) then reads
    an eighth or a half of the bytes, and the boxes come from label bits.
    ``outside`` are the values outside ``wanted`` and 0, sorted, when already
    known (None: not known). Arrays whose values do not fit are returned as they are.
    """
    if labels.dtype.itemsize == 1 or labels.dtype.kind not in "iu" or max(wanted) > 255:
        return labels
    if outside is None:
        outside = [int(labels.min()), int(labels.max())]
    if outside and (outside[0] < 0 or outside[-1] > 255):
        return labels
    return labels.astype(np.uint8, order="K")


def _region_pair(gt: np.ndarray, pred: np.ndarray, spacing: np.ndarray, region: Region, gt_boxes: dict,
                 pred_boxes: dict, rule: SliceRangeRule | None, superior: tuple[int, int]) -> RegionPair:
    """The region's crops, after the slice-range cut where the rule applies to it."""
    gt_box = _union_of(gt_boxes[label] for label in region.labels)
    pred_box = _union_of(pred_boxes[label] for label in region.labels)
    if region.sliced and gt_box is not None:
        axis, direction = superior
        first, stop = gt_box[axis].start, gt_box[axis].stop
        if rule.mode == "half_open" and stop - first > 1:
            # The official [z_min, z_max) on RAS images drops the most superior labelled slice.
            if direction > 0:
                stop -= 1
            else:
                first += 1
        gt_box = _restrict_box(gt, gt_box, axis, slice(first, stop), region.labels)
        pred_box = _restrict_box(pred, pred_box, axis, slice(first, stop), region.labels)
    box = metrics._union_of_boxes(gt_box, pred_box)
    if box is None:
        pair = RegionPair(gt, pred, None, None, None, spacing, region.labels)
    else:
        pair = RegionPair(gt, pred, box, _region_mask(gt[box], region.labels), _region_mask(pred[box], region.labels),
                          spacing, region.labels, mask_boxes=(_within(gt_box, box), _within(pred_box, box)))
    pair.reach_mm = max((m.reach_mm for m in region.metrics), default=0.0) or np.inf
    return pair


def _within(inner: tuple[slice, ...] | None, outer: tuple[slice, ...]) -> tuple[slice, ...]:
    """``inner`` in the coordinates of ``outer``, which holds it; None (an empty mask) becomes an empty box."""
    if inner is None:
        return (slice(0, 0),) * len(outer)
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def _placed(part: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    """``part``, a box within ``outer``, in the coordinates ``outer`` is given in (the inverse of `_within`)."""
    return tuple(slice(o.start + p.start, o.start + p.stop) for p, o in zip(part, outer))


def _union_of(boxes) -> tuple[slice, ...] | None:
    union = None
    for box in boxes:
        union = metrics._union_of_boxes(union, box)
    return union


def _label_boxes(labels: np.ndarray, wanted: Sequence[int]) -> dict[int, tuple[slice, ...] | None]:
    """Bounding box of each wanted label (None where absent), from one pass over the labelled part of the array.

    Values above the largest wanted label, or below 1, are ignored, so a
    stray huge value allocates nothing.
    """
    # NIfTI arrays are Fortran-ordered: scanning the C-ordered transpose is five times faster.
    transposed = labels.flags.f_contiguous and not labels.flags.c_contiguous
    scanned = labels.T if transposed else labels
    # Vectorised reductions find the box of every non-zero value first (a third of a typical CT grid).
    occupied = metrics._mask_box(scanned)
    if occupied is None:
        return dict.fromkeys(wanted)
    if labels.dtype.itemsize == 1 and max(wanted) < 64:
        found = _boxes_from_label_bits(scanned[occupied], wanted)
    else:
        found = _boxes_from_find_objects(scanned[occupied], wanted)
    boxes = {}
    for label, box in found.items():
        if box is not None:
            box = _placed(box, occupied)
            box = box[::-1] if transposed else box
        boxes[label] = box
    return boxes


#: Slices of a volume turned into label bits at a time (bounds the temporary to a few MiB).
_BITS_SLAB = 16


def _boxes_from_label_bits(labels: np.ndarray, wanted: Sequence[int]) -> dict[int, tuple[slice, ...] | None]:
    """Boxes of labels below 64 in a one-byte array: each voxel's label as a bit, OR-ed onto the three axes.

    A label's extent along each axis is where its bit is set in the OR over
    the other two axes, so the three profiles (axis 0 from each slab, axes 1
    and 2 from the OR over axis 0) give every box; about three times faster than
    ``find_objects``, which spends the same time on every voxel. Values of 64
    and above (and negative ones, read as bytes above 127) shift the bit out:
    they set none.
    """
    largest = max(wanted)
    bits = next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if largest < 8 * np.dtype(t).itemsize)
    one, values = bits(1), labels.view(np.uint8)
    plane = np.zeros(labels.shape[1:], bits)
    along_0 = np.zeros(labels.shape[0], bits)
    for start in range(0, labels.shape[0], _BITS_SLAB):
        slab = np.left_shift(one, values[start:start + _BITS_SLAB], dtype=bits)
        plane |= np.bitwise_or.reduce(slab, axis=0)
        along_0[start:start + len(slab)] = np.bitwise_or.reduce(slab.reshape(len(slab), -1), axis=1)
    profiles = (along_0, np.bitwise_or.reduce(plane, axis=1), np.bitwise_or.reduce(plane, axis=0))
    boxes = {}
    for label in wanted:
        hits = [np.flatnonzero(profile & bits(1 << label)) for profile in profiles]
        boxes[label] = (tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hits)
                        if label > 0 and hits[0].size else None)
    return boxes


def _boxes_from_find_objects(labels: np.ndarray, wanted: Sequence[int]) -> dict[int, tuple[slice, ...] | None]:
    """Boxes of any integer labels with scipy's ``find_objects``."""
    from scipy import ndimage

    if labels.dtype.kind not in "iu" or labels.dtype.itemsize > 8:
        labels = labels.astype(np.int64)
    if labels.dtype == np.uint64:
        # find_objects works on signed integers; values beyond int64 are not labels anyway.
        labels = np.where(labels > np.iinfo(np.int64).max, 0, labels).astype(np.int64)
    found = ndimage.find_objects(labels, max_label=max(wanted))
    return {label: found[label - 1] if label > 0 else None for label in wanted}


def _restrict_box(labels: np.ndarray, box: tuple[slice, ...] | None, axis: int, cut: slice,
                  region_labels: tuple[int, ...]) -> tuple[slice, ...] | None:
    """The bounding box of the region within ``box`` once indices along ``axis`` are limited to ``cut``."""
    if box is None:
        return None
    start, stop = max(box[axis].start, cut.start), min(box[axis].stop, cut.stop)
    if start >= stop:
        return None
    limited = list(box)
    limited[axis] = slice(start, stop)
    inner = metrics._mask_box(_region_mask(labels[tuple(limited)], region_labels))
    if inner is None:
        return None
    return _placed(inner, tuple(limited))


class RegionPair:
    """Ground truth and prediction of one region of one case, as the metrics see them.

    Parameters
    ----------
    gt, pred : (I, J, K) ndarray of integers
        The whole label maps (for the metrics of raw values or of the whole volume).
    box : tuple of slices or None
        The union of the region's bounding boxes in both maps (after any
        slice-range cut); None when both are empty.
    gt_mask, pred_mask : ndarray of bool or None
        The region's masks within ``box``.
    spacing_mm : (3,) ndarray
        Voxel size in mm.
    labels : tuple of int
        The region's labels (to grow a crop from the whole maps).
    mask_boxes : (tuple of slices, tuple of slices), optional
        Boxes within ``box`` that hold every voxel of ``gt_mask`` and of
        ``pred_mask`` (default: all of ``box``); surfaces are searched there only.
    """

    def __init__(self, gt: np.ndarray, pred: np.ndarray, box: tuple[slice, ...] | None,
                 gt_mask: np.ndarray | None, pred_mask: np.ndarray | None, spacing_mm: np.ndarray,
                 labels: tuple[int, ...], *, mask_boxes: tuple[tuple[slice, ...], tuple[slice, ...]] | None = None
                 ) -> None:
        self.gt, self.pred, self.box, self.spacing_mm, self.labels = gt, pred, box, spacing_mm, labels
        self.gt_mask, self.pred_mask = gt_mask, pred_mask
        self.mask_boxes = mask_boxes or (None, None)
        self.gt_voxels = 0 if gt_mask is None else int(np.count_nonzero(gt_mask))
        self.pred_voxels = 0 if pred_mask is None else int(np.count_nonzero(pred_mask))
        self._distances: metrics.SurfaceDistances | None = None
        #: The farthest any metric of the region needs surface distances (set by the engine).
        self.reach_mm = np.inf

    @property
    def gt_empty(self) -> bool:
        return self.gt_voxels == 0

    @property
    def pred_empty(self) -> bool:
        return self.pred_voxels == 0

    @functools.cached_property
    def dice(self) -> float:
        """Dice of the two masks (NaN when both are empty)."""
        if self.box is None:
            return float("nan")
        overlap = int(np.count_nonzero(self.gt_mask & self.pred_mask))
        return float(metrics._dice_from_counts(overlap, self.gt_voxels, self.pred_voxels))

    def surface_distances(self) -> metrics.SurfaceDistances:
        """Surface distances up to `reach_mm`, computed once for every metric of the region."""
        if self._distances is None:
            self._distances = metrics._surface_distances_of_crops(
                self.gt_mask, self.pred_mask, self.spacing_mm, max_distance_mm=self.reach_mm,
                gt_box=self.mask_boxes[0], pred_box=self.mask_boxes[1])
        return self._distances

    def grown_masks(self, margin_vx: int) -> tuple[np.ndarray, np.ndarray]:
        """The region's masks in ``box`` grown by ``margin_vx`` voxels on every side (within the volume)."""
        if self.box is None:
            return np.zeros((1, 1, 1), bool), np.zeros((1, 1, 1), bool)
        grown = tuple(slice(max(0, b.start - margin_vx), min(n, b.stop + margin_vx))
                      for b, n in zip(self.box, self.gt.shape))
        return _region_mask(self.gt[grown], self.labels), _region_mask(self.pred[grown], self.labels)


def _region_mask(labels: np.ndarray, region_labels: tuple[int, ...]) -> np.ndarray:
    if len(region_labels) == 1:
        return labels == region_labels[0]
    return np.isin(labels, region_labels)

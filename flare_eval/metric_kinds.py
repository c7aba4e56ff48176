"""Kinds of region metrics: each a small class that owns its parameters, columns, empty rules and checks. Pure.

A challenge scores each of its regions (a label, or the union of several) with
a list of metrics. Each metric is one of the classes here, named in a protocol
file by its ``kind``::

    {"kind": "surface_dice", "name": "NSD", "tolerance_mm": 2.0}

=====================  =============================================  ==========================
kind                   value                                          columns
=====================  =============================================  ==========================
``dice``               Dice of the region's masks                     ``name``
``dice_raw``           autoPET: ``2 sum(g p) / (sum g + sum p)`` on   ``name``
                       the raw label values
``surface_dice``       DeepMind's NSD at ``tolerance_mm``             ``name``
``hausdorff``          DeepMind's robust Hausdorff at ``percentile``  ``name``
``brats_lesion_wise``  BraTS 2023 lesion matching                     `LESION_WISE_COLUMNS`
``false_volumes``      autoPET false-positive/negative volumes        `FALSE_VOLUME_COLUMNS`
``voxel_counts``       voxels of the region in ground truth and       ``gt_voxels``,
                       prediction (after the slice-range cut)         ``pred_voxels``
=====================  =============================================  ==========================

A metric sees a region of one case through a
:class:`flare_eval.scoring.engine.RegionPair`: the two masks cropped to their
union's bounding box, their voxel counts and, computed once for every metric of
the region that asks, the surface distances. The engine that builds it is
:func:`flare_eval.scoring.score_label_maps`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # the command line loads protocols without NumPy; the engine brings it
    from .scoring.engine import RegionPair

__all__ = [
    "RegionMetric",
    "Dice",
    "RawDice",
    "SurfaceDice",
    "HausdorffPercentile",
    "LesionWise",
    "FalseVolumes",
    "VoxelCounts",
    "METRIC_KINDS",
    "metric_from_fields",
    "MetricFieldError",
    "LESION_WISE_COLUMNS",
    "FALSE_VOLUME_COLUMNS",
]

LESION_WISE_COLUMNS = ("LesionWise_Dice", "LesionWise_HD95", "Legacy_Dice", "Legacy_HD95", "Num_TP", "Num_FP",
                       "Num_FN", "Sensitivity", "Specificity", "GT_Complete_Volume")
FALSE_VOLUME_COLUMNS = ("FP_volume_ml", "FN_volume_ml")
VOXEL_COUNT_COLUMNS = ("gt_voxels", "pred_voxels")


@dataclass(frozen=True)
class RegionMetric:
    """One metric of a region: the base of every kind.

    Attributes
    ----------
    name : str
        Column name (for the kinds that write one column).
    both_empty, one_empty : float or None
        Value when ground truth and prediction are both empty, or exactly one
        is (None: NaN; for ``hausdorff`` one empty may be a penalty in mm).
    """

    kind: ClassVar[str] = ""
    #: Whether a prediction holding labels outside the protocol scores 0 here (``invalid_labels = "zero_scores"``).
    zeroed_by_invalid_labels: ClassVar[bool] = False
    #: Whether its columns describe the masks rather than score them (written after ``status``, never ranked).
    descriptive: ClassVar[bool] = False
    name: str
    both_empty: float | None = 1.0
    one_empty: float | None = 0.0

    @property
    def columns(self) -> tuple[str, ...]:
        """The score columns this metric writes."""
        return (self.name,)

    @property
    def reach_mm(self) -> float:
        """How far surface distances must be known for this metric (0: it needs none)."""
        return 0.0

    def check(self) -> None:
        """Raise ValueError naming the field when a parameter is out of its range."""

    def score(self, pair: RegionPair) -> dict[str, float]:
        """Values of this metric's columns for ``pair``; the empty rules first."""
        if pair.gt_empty or pair.pred_empty:
            value = self.both_empty if pair.gt_empty and pair.pred_empty else self.one_empty
            return {self.name: float("nan") if value is None else float(value)}
        return {self.name: self.value(pair)}

    def value(self, pair: RegionPair) -> float:
        """The metric on two non-empty masks."""
        raise NotImplementedError

    def unscored(self) -> dict[str, float]:
        """Values of a case that could not be scored, under the rule ``unusable_prediction = "zero"``: all 0."""
        return dict.fromkeys(self.columns, 0.0)


@dataclass(frozen=True)
class Dice(RegionMetric):
    """Dice ``2 |G & P| / (|G| + |P|)`` of the region's masks."""

    kind: ClassVar[str] = "dice"
    zeroed_by_invalid_labels: ClassVar[bool] = True

    def value(self, pair: RegionPair) -> float:
        return pair.dice


@dataclass(frozen=True)
class RawDice(RegionMetric):
    """autoPET's Dice on the raw label values, ``2 sum(g p) / (sum g + sum p)`` over the whole volume.

    Another label than the region's inflates it, so autoPET's protocol refuses
    such predictions (``invalid_labels = "refuse"``). NaN when both sums are 0.
    """

    kind: ClassVar[str] = "dice_raw"

    def score(self, pair: RegionPair) -> dict[str, float]:
        import numpy as np

        overlap = float(np.sum(pair.gt.astype(np.float64) * pair.pred))
        total = float(np.sum(pair.gt, dtype=np.float64) + np.sum(pair.pred, dtype=np.float64))
        return {self.name: overlap * 2 / total if total else float("nan")}


@dataclass(frozen=True)
class SurfaceDice(RegionMetric):
    """DeepMind's surface Dice (NSD) at ``tolerance_mm``.

    Attributes
    ----------
    tolerance_mm : float
        Largest distance, in mm, at which a surfel still counts as matched.
    zero_below_dice : float or None
        FLARE24's rule: 0 when the region's Dice is below this value.
    """

    kind: ClassVar[str] = "surface_dice"
    zeroed_by_invalid_labels: ClassVar[bool] = True
    tolerance_mm: float | None = None
    zero_below_dice: float | None = None

    @property
    def reach_mm(self) -> float:
        return float(self.tolerance_mm)

    def check(self) -> None:
        if not (self.tolerance_mm or 0) > 0:
            raise ValueError("tolerance_mm must be a positive number")

    def value(self, pair: RegionPair) -> float:
        if self.zero_below_dice is not None and pair.dice < self.zero_below_dice:
            return 0.0
        return float(pair.surface_distances().surface_dice(self.tolerance_mm))


@dataclass(frozen=True)
class HausdorffPercentile(RegionMetric):
    """DeepMind's robust Hausdorff distance in mm at ``percentile`` (HD95 at 95)."""

    kind: ClassVar[str] = "hausdorff"
    percentile: float | None = None

    @property
    def reach_mm(self) -> float:
        return float("inf")

    def check(self) -> None:
        if not 0 < (self.percentile or 0) <= 100:
            raise ValueError("percentile must lie in (0, 100]")

    def value(self, pair: RegionPair) -> float:
        return float(pair.surface_distances().robust_hausdorff(self.percentile))


@dataclass(frozen=True)
class LesionWise(RegionMetric):
    """BraTS 2023 lesion-wise Dice and HD95 (see :func:`flare_eval.lesions.brats_lesion_wise`).

    Writes `LESION_WISE_COLUMNS`; its own rules cover empty masks.
    """

    kind: ClassVar[str] = "brats_lesion_wise"
    dilation_iterations: int | None = None
    min_lesion_mm3: float | None = None
    penalty_mm: float | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return LESION_WISE_COLUMNS

    def check(self) -> None:
        if self.dilation_iterations is None or self.dilation_iterations < 0:
            raise ValueError("dilation_iterations must be a whole number >= 0")
        if self.min_lesion_mm3 is None:
            raise ValueError("min_lesion_mm3 must be a number")

    def score(self, pair: RegionPair) -> dict[str, float]:
        from .lesions import brats_lesion_wise

        # The matching never reaches further than the dilations from a labelled voxel: a crop that far is exact.
        gt, pred = pair.grown_masks(self.dilation_iterations + 1)
        scores = brats_lesion_wise(gt, pred, pair.spacing_mm, dilation_iterations=self.dilation_iterations,
                                   min_lesion_mm3=self.min_lesion_mm3, penalty_mm=self.penalty_mm or 374.0,
                                   n_voxels=pair.gt.size)
        return dict(zip(self.columns, (
            scores.lesion_wise_dice, scores.lesion_wise_hd95_mm, scores.legacy_dice, scores.legacy_hd95_mm,
            scores.n_tp, scores.n_fp, scores.n_fn, scores.sensitivity, scores.specificity, scores.gt_volume_mm3)))


@dataclass(frozen=True)
class FalseVolumes(RegionMetric):
    """autoPET's false-positive and false-negative volumes in mL (see :func:`flare_eval.lesions.false_volumes_ml`).

    Components of every non-zero value of the raw label maps, ``connectivity``
    6, 18 (autoPET) or 26. Writes `FALSE_VOLUME_COLUMNS`.
    """

    kind: ClassVar[str] = "false_volumes"
    connectivity: int | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return FALSE_VOLUME_COLUMNS

    def check(self) -> None:
        if self.connectivity not in (None, 6, 18, 26):
            raise ValueError("connectivity must be 6, 18 or 26")

    def score(self, pair: RegionPair) -> dict[str, float]:
        from .lesions import false_volumes_ml

        return dict(zip(self.columns, false_volumes_ml(pair.gt, pair.pred, pair.spacing_mm,
                                                       connectivity=self.connectivity or 18)))


@dataclass(frozen=True)
class VoxelCounts(RegionMetric):
    """Voxels of the region in ground truth and prediction, within the evaluated slices (FLARE's tables)."""

    kind: ClassVar[str] = "voxel_counts"
    descriptive: ClassVar[bool] = True
    name: str = "voxel_counts"

    @property
    def columns(self) -> tuple[str, ...]:
        return VOXEL_COUNT_COLUMNS

    def score(self, pair: RegionPair) -> dict[str, float]:
        return {"gt_voxels": pair.gt_voxels, "pred_voxels": pair.pred_voxels}

    def unscored(self) -> dict[str, float]:
        return dict.fromkeys(self.columns, 0)


#: Every kind by the name a protocol file gives it.
METRIC_KINDS: dict[str, type[RegionMetric]] = {
    cls.kind: cls for cls in (Dice, RawDice, SurfaceDice, HausdorffPercentile, LesionWise, FalseVolumes, VoxelCounts)
}


class MetricFieldError(ValueError):
    """A metric's field is wrong: ``field`` names it (None: the metric as a whole)."""

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__(f"{field} {problem}" if field else problem)
        self.field, self.problem = field, problem


def metric_from_fields(fields: dict[str, Any]) -> RegionMetric:
    """Build a metric from a protocol file's fields, each checked against its type.

    Raises
    ------
    MetricFieldError
        A ValueError naming the field: an unknown kind or field, a missing name, a value of
        the wrong type (``"tolerance_mm": "2"`` is text, not a number) or out
        of range.
    """
    kind = fields.get("kind")
    if kind not in METRIC_KINDS:
        raise MetricFieldError("kind", f"must be one of {tuple(METRIC_KINDS)}, got {kind!r}")
    cls = METRIC_KINDS[kind]
    types_of = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known - {"kind"})
    if unknown:
        raise MetricFieldError(None, f"unknown field(s) {unknown} for kind {kind!r}; its fields: {sorted(known)}")
    values = {}
    for key, value in fields.items():
        if key != "kind":
            values[key] = _typed(key, value, types_of[key])
    if "name" not in values and cls is not VoxelCounts:
        raise MetricFieldError(None, "missing field 'name'")
    metric = cls(**values)
    try:
        metric.check()
    except ValueError as exc:
        field, _, problem = str(exc).partition(" ")
        raise MetricFieldError(field, problem) from None
    return metric


def _typed(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type; a wrong one is named."""
    allowed = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
    if value is None and type(None) in allowed:
        return None
    if str in allowed and isinstance(value, str):
        return value
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    wanted = "text" if str in allowed else "a whole number" if int in allowed else "a number"
    if type(None) in allowed:
        wanted += " or null"
    raise MetricFieldError(key, f"must be {wanted}, got {value!r}")

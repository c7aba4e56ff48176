"""Organ volumes and diameters, and their agreement with ground truth: pure computation, no I/O.

* Volume in mL: voxel count x voxel volume (product of the header spacing in
  mm, / 1000).
* Diameter of tubular organs (aorta, IVC, esophagus) in mm: on each axial
  slice (perpendicular to ``axis``, the superior-inferior array axis: 2 for
  RAS NIfTI; :func:`flare_eval.quantify` takes it from each file's header) the
  organ's cross-section area ``A`` gives the diameter of the circle
  of equal area, ``2 * sqrt(A / pi)``; the organ's diameter is the median over
  the slices where it is present. Robust to a few partial slices at the ends.
* Agreement per organ over cases: Pearson's r, the mean difference
  (prediction minus ground truth) and Bland-Altman 95% limits of agreement,
  ``mean +- 1.96 * sd`` (sd with ddof=1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .cohort_stats import unit_columns
from .protocol import Protocol, load_protocol

__all__ = [
    "TUBULAR_CODES",
    "organ_volume_ml",
    "equivalent_diameter_mm",
    "measure_label_map",
    "paired_volumes",
    "volume_agreement",
    "median_iqr_table",
]

#: Organs measured by a diameter too (by their code in the FLARE protocols).
TUBULAR_CODES = ("Aorta", "IVC", "Esophagus")


def organ_volume_ml(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Volume of a mask in mL.

    Examples
    --------
    >>> organ_volume_ml(np.ones((10, 10, 10), bool), (1.0, 1.0, 2.0))
    2.0
    """
    return float(np.count_nonzero(mask)) * float(np.prod(spacing_mm)) / 1000.0


def equivalent_diameter_mm(mask: np.ndarray, spacing_mm: Sequence[float], *, axis: int = 2) -> float:
    """Median over slices of the equal-area circle diameter of the cross-sections, mm.

    Parameters
    ----------
    mask : (I, J, K) ndarray of bool
    spacing_mm : sequence of 3 floats
    axis : int
        The axis perpendicular to the cross-sections (superior-inferior).

    Returns
    -------
    float
        NaN when the mask is empty.

    Examples
    --------
    >>> tube = np.zeros((40, 40, 5), bool)
    >>> ii, jj = np.mgrid[:40, :40]
    >>> tube[(ii - 20) ** 2 + (jj - 20) ** 2 <= 100] = True  # radius 10 voxels
    >>> round(equivalent_diameter_mm(tube, (0.5, 0.5, 1.0)), 1)  # 10 mm expected
    10.0
    """
    spacing = [float(s) for s in spacing_mm]
    in_plane = [spacing[a] for a in range(3) if a != axis]
    other_axes = tuple(a for a in range(3) if a != axis)
    areas_mm2 = np.count_nonzero(mask, axis=other_axes) * in_plane[0] * in_plane[1]
    present = areas_mm2[areas_mm2 > 0]
    if present.size == 0:
        return float("nan")
    return float(np.median(2.0 * np.sqrt(present / np.pi)))


def measure_label_map(
    labels: np.ndarray, spacing_mm: Sequence[float], protocol: str | Protocol, *, axis: int = 2
) -> pd.DataFrame:
    """Volume (and, for tubular organs, diameter) of every region of the protocol in a label map.

    Returns
    -------
    pandas.DataFrame
        The layout's region keys (FLARE: ``label, organ``; else ``region``),
        ``volume_ml`` (of the union of the region's labels) and
        ``diameter_mm`` (NaN but for the tubular organs, `TUBULAR_CODES`, and
        for absent ones).
    """
    protocol = load_protocol(protocol)
    rows = []
    for region in protocol.regions:
        mask = labels == region.labels[0] if len(region.labels) == 1 else np.isin(labels, region.labels)
        diameter = equivalent_diameter_mm(mask, spacing_mm, axis=axis) if region.name in TUBULAR_CODES else np.nan
        rows.append({**protocol.layout.keys(region), "volume_ml": organ_volume_ml(mask, spacing_mm),
                     "diameter_mm": diameter})
    return pd.DataFrame(rows)


def paired_volumes(volumes: pd.DataFrame) -> pd.DataFrame:
    """Predicted and ground-truth volume side by side, for the cases that have both.

    Parameters
    ----------
    volumes : pandas.DataFrame
        Long volumes: ``case, label, organ, source, volume_ml`` with ``source``
        ``prediction`` or ``ground_truth``.

    Returns
    -------
    pandas.DataFrame
        ``case, label, organ, volume_ml_pred, volume_ml_gt``.
    """
    units = unit_columns(volumes)
    wide = volumes.pivot_table(index=["case", *units], columns="source", values="volume_ml").dropna()
    wide = wide.rename(columns={"prediction": "volume_ml_pred", "ground_truth": "volume_ml_gt"})
    return wide.reset_index()[["case", *units, "volume_ml_pred", "volume_ml_gt"]]


def volume_agreement(volumes: pd.DataFrame) -> pd.DataFrame:
    """Agreement of predicted with ground-truth volumes, per organ.

    Parameters
    ----------
    volumes : pandas.DataFrame
        Columns ``case, label, organ, volume_ml_pred, volume_ml_gt`` (see `paired_volumes`).

    Returns
    -------
    pandas.DataFrame
        ``label, organ, n, pearson_r, mean_difference_ml, loa_lower_ml,
        loa_upper_ml`` (difference = prediction - ground truth). Pearson's r
        is NaN with fewer than 3 cases or a constant volume.
    """
    from scipy import stats

    rows = []
    units = unit_columns(volumes)
    for key, group in volumes.groupby(units, sort=True):
        pred, gt = group["volume_ml_pred"].to_numpy(float), group["volume_ml_gt"].to_numpy(float)
        difference = pred - gt
        r = np.nan
        if len(group) >= 3 and np.ptp(pred) > 0 and np.ptp(gt) > 0:
            r = float(stats.pearsonr(pred, gt).statistic)
        sd = float(np.std(difference, ddof=1)) if len(group) > 1 else np.nan
        mean = float(np.mean(difference))
        rows.append({**dict(zip(units, key if isinstance(key, tuple) else (key,))), "n": len(group), "pearson_r": r,
                     "mean_difference_ml": mean, "loa_lower_ml": mean - 1.96 * sd, "loa_upper_ml": mean + 1.96 * sd})
    return pd.DataFrame(rows)


def median_iqr_table(table: pd.DataFrame, value: str, *, by: Sequence[str] | None = None) -> pd.DataFrame:
    """The paper's Table 1 style: ``median (Q1, Q3)`` of ``value`` per group, as numbers and as text.

    ``by`` defaults to the organ (``label, organ``) or region columns of the table.
    """
    grouped = table.groupby(list(by) if by is not None else unit_columns(table), sort=True)[value]
    out = pd.DataFrame({
        "n": grouped.count(),
        "median": grouped.median(),
        "q1": grouped.quantile(0.25),
        "q3": grouped.quantile(0.75),
    }).reset_index()
    out["text"] = [f"{m:.1f} ({a:.1f}, {b:.1f})" for m, a, b in zip(out["median"], out["q1"], out["q3"])]
    return out

"""Significance: one-sided paired Wilcoxon signed-rank tests, as R's ``wilcox.test``, and Holm's adjustment. Pure.

For each metric and each ordered pair of teams, a one-sided paired Wilcoxon
signed-rank test on the cases both teams have, with the normal approximation
and continuity correction of R's ``wilcox.test(paired=TRUE, exact=FALSE)``
(zero differences dropped), and Holm's adjustment over all ordered pairs of one
metric.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .._text import preview
from ..protocol import Protocol
from .arrays import _chunks
from .matrix import RankingWarning, ResultsMatrix, _as_matrix

__all__ = ["ADJUST_METHODS", "holm_adjust", "paired_wilcoxon", "significance", "best_versus_rest"]

ADJUST_METHODS = ("holm", "none")


def holm_adjust(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment, as R's ``p.adjust(p, "holm")``; NaN entries are left out.

    Examples
    --------
    >>> holm_adjust(np.array([0.01, 0.04, 0.03, np.nan])).tolist()
    [0.03, 0.06, 0.06, nan]
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if valid.size == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def paired_wilcoxon(a: np.ndarray, b: np.ndarray, alternative: str) -> np.ndarray:
    """One-sided paired Wilcoxon signed-rank p-values, row by row, as R computes them.

    Each row of ``a`` is compared with the same row of ``b``; positions where
    either is NaN are dropped (R's ``complete.cases``), then zero differences
    (``zero.method = "wilcox"``). The statistic is the sum of the average ranks
    of the positive differences; the p-value is R's
    ``wilcox.test(a, b, paired = TRUE, exact = FALSE, correct = TRUE,
    alternative = alternative)``: the normal approximation with the tie
    correction of the variance and a continuity correction of 0.5.

    Parameters
    ----------
    a, b : (n_pairs, n_cases) array_like
        Paired values; NaN marks a value that is absent.
    alternative : {"greater", "less"}
        ``"greater"`` tests whether ``a`` tends to exceed ``b``.

    Returns
    -------
    (n_pairs,) ndarray of float64
        p-values. When every common difference is zero, R's statistic has
        z = -inf and the p-value is exactly 1 (not NaN: only R's two-sided test
        gives NaN there). When a row has no common (non-NaN) position, R stops
        with "not enough (non-missing) 'x' observations"; the p-value is NaN.

    Examples
    --------
    >>> paired_wilcoxon([[0.9, 0.8, 0.85]], [[0.9, 0.8, 0.85]], "greater").tolist()
    [1.0]
    """
    from scipy.special import ndtr

    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    difference = a - b
    common = ~np.isnan(difference)
    difference[difference == 0] = np.nan
    size = np.abs(difference)
    order = np.argsort(size, axis=1, kind="stable")  # NaN (absent or zero) sort last
    ordered = np.take_along_axis(size, order, axis=1)
    valid = ~np.isnan(ordered)
    n = valid.sum(axis=1).astype(np.float64)
    starts = np.ones(ordered.shape, bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    starts &= valid
    group = np.cumsum(starts, axis=1) - 1  # tie group of each sorted value
    rows = np.broadcast_to(np.arange(ordered.shape[0])[:, None], ordered.shape)
    counts = np.zeros(ordered.shape)
    np.add.at(counts, (rows[valid], group[valid]), 1.0)
    first = np.zeros(ordered.shape)
    first[rows[starts], group[starts]] = np.nonzero(starts)[1]
    # Average rank of a tie group occupying 0-based positions first .. first + count - 1.
    average = first + (counts + 1.0) / 2.0
    sorted_ranks = np.where(valid, np.take_along_axis(average, np.maximum(group, 0), axis=1), 0.0)
    ranks = np.empty_like(sorted_ranks)
    np.put_along_axis(ranks, order, sorted_ranks, axis=1)
    statistic = np.where(difference > 0, ranks, 0.0).sum(axis=1)
    variance = n * (n + 1) * (2 * n + 1) / 24 - (counts**3 - counts).sum(axis=1) / 48
    correction = 0.5 if alternative == "greater" else -0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (statistic - n * (n + 1) / 4 - correction) / np.sqrt(variance)
    p = ndtr(-z) if alternative == "greater" else ndtr(z)
    p[~common.any(axis=1)] = np.nan
    return p


def _warn_no_common_cases(matrix: ResultsMatrix) -> None:
    """Warn, per team, about the teams it shares no case with (their tests cannot be made)."""
    present = matrix.observed.any(axis=0)  # (C, T): the team has some value for the case
    shared = present.T.astype(int) @ present.astype(int)  # (T, T) cases in common
    for t, team in enumerate(matrix.teams):
        apart = [other for o, other in enumerate(matrix.teams) if o != t and shared[t, o] == 0]
        if apart:
            warnings.warn(f"team {team!r} has no case in common with {len(apart)} team(s) ({preview(apart)}): "
                          "their significance tests have p = NaN", RankingWarning, stacklevel=3)


def significance(
    results: pd.DataFrame | ResultsMatrix,
    protocol: str | Protocol | None = None,
    *,
    adjust: str = "holm",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Pairwise one-sided paired Wilcoxon signed-rank tests, per metric.

    For every metric and every ordered pair of teams ``(team_a, team_b)``,
    tests whether ``team_a`` is better than ``team_b`` (greater values for
    metrics where higher is better, smaller otherwise) on the cases both teams
    have in the table (filled-in worst values are not used).

    Parameters
    ----------
    results : pandas.DataFrame or ResultsMatrix
    protocol : str or Protocol
    adjust : {"holm", "none"}
        Multiple-testing adjustment over all ordered pairs of one metric.
    alpha : float
        Significance level for the ``significant`` column.

    Returns
    -------
    pandas.DataFrame
        ``metric, team_a, team_b, n_cases, p_value, p_adjusted, significant``.
        ``p_value`` comes from `paired_wilcoxon`: 1 when the two teams never
        differ (as R gives), NaN when they have no case in common (R stops
        there; a `RankingWarning` names the teams). NaN pairs are not
        significant and not counted by the adjustment. ``significant`` is
        ``p_adjusted <= alpha``, challengeR's decision rule.

    Warns
    -----
    RankingWarning
        For teams that share no case with some other team.
    """
    if adjust not in ADJUST_METHODS:
        raise ValueError(f"adjust must be one of {ADJUST_METHODS}, got {adjust!r}")
    matrix = _as_matrix(results, protocol)
    _warn_no_common_cases(matrix)
    frames = []
    for metric, first, second, n_cases, p in _pairwise_tests(matrix):
        adjusted = holm_adjust(p) if adjust == "holm" else p.copy()
        frames.append(pd.DataFrame({
            "metric": metric.name,
            "team_a": np.asarray(matrix.teams)[first],
            "team_b": np.asarray(matrix.teams)[second],
            "n_cases": n_cases,
            "p_value": p,
            "p_adjusted": adjusted,
            "significant": _is_significant(adjusted, alpha),
        }))
    return pd.concat(frames, ignore_index=True)


def _pairwise_tests(matrix: ResultsMatrix):
    """Per metric: ``(metric, team_a indices, team_b indices, common cases, one-sided p-values)`` of every
    ordered pair, on the values that were in the table (filled-in worst values are not tested)."""
    first, second = np.nonzero(~np.eye(len(matrix.teams), dtype=bool))
    for m, metric in enumerate(matrix.metrics):
        values = np.where(matrix.observed[m], matrix.values[m], np.nan).T  # (T, C)
        alternative = "greater" if metric.higher_is_better else "less"
        p = np.empty(first.size)
        n_cases = np.empty(first.size, dtype=np.int64)
        # Pairs in bounded chunks: every ordered pair of 200 teams over 1000 cases would be 40 million values.
        for pairs in _chunks(first.size, values.shape[1] * 8):
            a, b = values[first[pairs]], values[second[pairs]]
            p[pairs] = paired_wilcoxon(a, b, alternative)
            n_cases[pairs] = (~np.isnan(a) & ~np.isnan(b)).sum(axis=1)
        yield metric, first, second, n_cases, p


def best_versus_rest(
    results: pd.DataFrame | ResultsMatrix,
    protocol: str | Protocol | None = None,
    *,
    metric: str = "DSC",
    adjust: str = "holm",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The paper's comparison: the team with the best median of ``metric`` against every other team.

    One-sided paired Wilcoxon signed-rank tests as in `significance`,
    adjusted over the ``n_teams - 1`` comparisons.

    Returns
    -------
    pandas.DataFrame
        ``metric, team_a`` (the best team), ``team_b, median_a, median_b,
        n_cases, p_value, p_adjusted, significant``, sorted by ``p_value``.
    """
    if adjust not in ADJUST_METHODS:
        raise ValueError(f"adjust must be one of {ADJUST_METHODS}, got {adjust!r}")
    matrix = _as_matrix(results, protocol)
    names = [m.name for m in matrix.metrics]
    if metric not in names:
        raise ValueError(f"metric must be one of {names}, got {metric!r}")
    m = names.index(metric)
    spec = matrix.metrics[m]
    values = np.where(matrix.observed[m], matrix.values[m], np.nan).T  # (T, C)
    medians = np.nanmedian(values, axis=1)
    best = int(np.nanargmax(medians) if spec.higher_is_better else np.nanargmin(medians))
    others = np.array([t for t in range(len(matrix.teams)) if t != best])
    a = np.repeat(values[best][None], len(others), axis=0)
    b = values[others]
    p = paired_wilcoxon(a, b, "greater" if spec.higher_is_better else "less")
    adjusted = holm_adjust(p) if adjust == "holm" else p.copy()
    table = pd.DataFrame({
        "metric": metric,
        "team_a": matrix.teams[best],
        "team_b": np.asarray(matrix.teams)[others],
        "median_a": medians[best],
        "median_b": medians[others],
        "n_cases": (~np.isnan(a) & ~np.isnan(b)).sum(axis=1),
        "p_value": p,
        "p_adjusted": adjusted,
        "significant": _is_significant(adjusted, alpha),
    })
    return table.sort_values(["p_value", "team_b"], ignore_index=True)


def _is_significant(p_adjusted: np.ndarray, alpha: float) -> np.ndarray:
    """challengeR's decision, ``p <= alpha``; NaN is never significant."""
    return np.nan_to_num(p_adjusted, nan=np.inf) <= alpha

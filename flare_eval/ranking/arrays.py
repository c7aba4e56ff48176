"""Rank arithmetic on arrays: ranks with ties at the minimum, weights, Kendall's tau-b, bounded chunks. Pure."""

from __future__ import annotations

import numpy as np

from ..protocol import RankingMetric

__all__ = ["kendall_tau_b", "CHUNK_ELEMENTS"]

#: Most array elements one chunk of the ranking code holds at once (per temporary array): with 8-byte values
#: 32 MiB, so that memory stays bounded however many teams, cases and samples there are.
CHUNK_ELEMENTS = 2**22


def _chunks(n_rows: int, elements_per_row: int) -> list[slice]:
    """Slices of ``range(n_rows)`` whose rows hold at most `CHUNK_ELEMENTS` elements together (at least one row)."""
    step = max(1, CHUNK_ELEMENTS // max(1, elements_per_row))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def _min_ranks(values: np.ndarray, higher_is_better: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, 1 = best, ties at the minimum rank.

    ``values`` has shape ``(n_metrics, ..., n_teams)``; ``higher_is_better``
    has one entry per metric.
    """
    oriented = np.where(higher_is_better.reshape((-1,) + (1,) * (values.ndim - 1)), -values, values)
    # Rank = 1 + number of teams strictly better: exact comparisons, no float tricks. The comparison holds
    # n_teams^2 values per row, so the rows go in bounded chunks.
    rows = oriented.reshape(-1, oriented.shape[-1])
    ranks = np.empty(rows.shape, dtype=np.float64)
    for chunk in _chunks(rows.shape[0], rows.shape[1] * rows.shape[1]):
        part = rows[chunk]
        ranks[chunk] = (part[:, None, :] < part[:, :, None]).sum(axis=-1) + 1
    return ranks.reshape(oriented.shape)


def _weights(metrics: tuple[RankingMetric, ...]) -> np.ndarray:
    return np.array([m.weight for m in metrics], dtype=np.float64)


def _directions(metrics: tuple[RankingMetric, ...]) -> np.ndarray:
    return np.array([m.higher_is_better for m in metrics], dtype=bool)


def _case_ranks(matrix) -> np.ndarray:
    """(n_metrics, n_cases, n_teams) ranks of the teams within each case and metric of a `ResultsMatrix`."""
    return _min_ranks(matrix.values, _directions(matrix.metrics))


def _rank_scores(scores: np.ndarray) -> np.ndarray:
    """Final ranks (1 = best, ties at minimum) from scores where lower is better; along the last axis."""
    return _min_ranks(scores[None], np.array([False]))[0]


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between ``x`` and each row of ``y``.

    Parameters
    ----------
    x : (n,) array_like
        A reference ranking (or any scores).
    y : (n,) or (B, n) array_like
        One or several rankings to compare with ``x``.

    Returns
    -------
    float or (B,) ndarray
        Tau-b as in ``scipy.stats.kendalltau`` and R's ``cor(method="kendall")``;
        NaN where either ranking is constant.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    single = y.ndim == 1
    y2 = np.atleast_2d(y)
    upper = np.triu_indices(x.size, k=1)
    sign_x = np.sign(x[:, None] - x[None, :])[upper]
    tau = np.empty(y2.shape[0])
    # Rows in bounded chunks: one row's signs take n^2 values (200 teams: 40,000), 1000 rows at once 320 MB.
    for rows in _chunks(y2.shape[0], x.size * x.size):
        sign_y = np.sign(y2[rows, :, None] - y2[rows, None, :])[:, upper[0], upper[1]]
        with np.errstate(invalid="ignore", divide="ignore"):
            tau[rows] = (sign_y @ sign_x) / np.sqrt(np.count_nonzero(sign_x) * np.count_nonzero(sign_y, axis=1))
    return float(tau[0]) if single else tau

"""Ranking schemes as objects: how per-case values become a leaderboard. Pure, no I/O.

===========================  ========================================================  ======================
scheme                       per metric                                                then
===========================  ========================================================  ======================
`RankThenAggregate`          rank the teams within each case; mean rank over cases     weighted mean of the
                             (FLARE, BraTS)                                            metrics, ranked
`AggregateThenRank`          each team's mean (or median) over cases, ranked           the same, ties broken
                             (KiTS23, with its tie-break)                              by ``tie_break``
`TestThenRank`               the number of teams a team is significantly better than,  the same
                             ranked (challengeR's ``testThenRank``)
===========================  ========================================================  ======================

Ranks are 1 for the best, ties at the minimum rank. A protocol names its own
scheme (``ranking.scheme``; see `scheme_of`); `rank`, the bootstrap and
`ranking_methods` take it from the prepared results.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pandas as pd

from ..protocol import Protocol, load_protocol
from .arrays import _case_ranks, _directions, _min_ranks, _rank_scores, _weights, kendall_tau_b
from .matrix import RankingWarning, ResultsMatrix, _as_matrix

__all__ = [
    "RankingScheme",
    "RankThenAggregate",
    "AggregateThenRank",
    "TestThenRank",
    "SchemeRanks",
    "scheme_of",
    "rank",
    "case_ranks",
    "RANKING_METHODS",
    "ranking_methods",
    "ranking_methods_agreement",
    "rank_per_region",
]


@dataclass(frozen=True)
class SchemeRanks:
    """Ranks of every team under a scheme, for the full data and for each row of case counts.

    Attributes
    ----------
    full : (T,) ndarray
        Final ranks on the full data.
    full_per_metric : (M, T) ndarray
        Each metric's own ranking on the full data (under the same scheme).
    samples : (B, T) ndarray
        Final ranks for each row of case counts (bootstrap samples).
    samples_per_metric : (M, B, T) ndarray
        Each metric's own ranking for each row of case counts.
    """

    full: np.ndarray
    full_per_metric: np.ndarray
    samples: np.ndarray
    samples_per_metric: np.ndarray


class RankingScheme:
    """The base of every scheme: per-metric positions, combined by the metrics' weights and ranked."""

    name: ClassVar[str] = ""

    def metric_positions(self, matrix: ResultsMatrix) -> np.ndarray:
        """(M, T) each team's position on each metric alone, lower is better (the scheme's first step)."""
        raise NotImplementedError

    def final_ranks(self, matrix: ResultsMatrix) -> np.ndarray:
        """(T,) final ranks: the weighted mean of the metric positions, ranked (ties at the minimum)."""
        return _rank_scores(_weights(matrix.metrics) @ self.metric_positions(matrix))

    def table(self, matrix: ResultsMatrix) -> pd.DataFrame:
        """The leaderboard: ``team, rank, score`` and the per-metric columns of the scheme."""
        positions = self.metric_positions(matrix)
        weights = _weights(matrix.metrics)
        scores = weights @ positions / weights.sum()
        table = pd.DataFrame({"team": matrix.teams, "rank": _rank_scores(scores).astype(int), "score": scores})
        for m, metric in enumerate(matrix.metrics):
            table[f"{metric.name}_position"] = positions[m]
        return table.sort_values(["rank", "team"], ignore_index=True)

    def resampled(self, matrix: ResultsMatrix, counts: np.ndarray, rank_weights: np.ndarray) -> SchemeRanks:
        """Ranks on the full data and for each row of case ``counts`` (B, C); ``rank_weights`` weigh the
        within-case ranks of a case drawn more than once (see `flare_eval.ranking.bootstrap_stability`)."""
        raise NotImplementedError(f"the {self.name} scheme has no bootstrap in flare-eval; rank with "
                                  "rank_then_aggregate or aggregate_then_rank for stability analyses")


@dataclass(frozen=True)
class RankThenAggregate(RankingScheme):
    """FLARE's scheme: within each case and metric the teams are ranked; a team's score is the weighted mean
    of all its ranks, ``sum(w_m * rank) / (n_cases * sum(w_m))``; the scores are ranked."""

    name: ClassVar[str] = "rank_then_aggregate"

    def metric_positions(self, matrix: ResultsMatrix) -> np.ndarray:
        return _case_ranks(matrix).mean(axis=1)

    def table(self, matrix: ResultsMatrix) -> pd.DataFrame:
        ranks = _case_ranks(matrix)
        weights = _weights(matrix.metrics)
        scores = np.tensordot(weights, ranks.sum(axis=1), axes=1) / (len(matrix.cases) * weights.sum())
        table = pd.DataFrame({"team": matrix.teams, "rank": _rank_scores(scores).astype(int), "score": scores})
        for m, metric in enumerate(matrix.metrics):
            table[f"{metric.name}_mean_rank"] = ranks[m].mean(axis=0)
        return table.sort_values(["rank", "team"], ignore_index=True)

    def resampled(self, matrix: ResultsMatrix, counts: np.ndarray, rank_weights: np.ndarray) -> SchemeRanks:
        # A pseudo-case's ranks are its case's ranks: every sample's scores are one matrix product.
        ranks = _case_ranks(matrix)  # (M, C, T)
        weighted = np.tensordot(_weights(matrix.metrics), ranks, axes=1)  # (C, T)
        return SchemeRanks(
            full=_rank_scores(weighted.sum(axis=0)),
            full_per_metric=np.stack([_rank_scores(ranks[m].sum(axis=0)) for m in range(len(matrix.metrics))]),
            samples=_rank_scores(rank_weights @ weighted),  # common factors and terms do not change ranks
            samples_per_metric=np.stack([_rank_scores(rank_weights @ ranks[m]) for m in range(len(matrix.metrics))]),
        )


@dataclass(frozen=True)
class AggregateThenRank(RankingScheme):
    """KiTS23's scheme: each team's ``statistic`` (mean or median) of each metric over the cases is ranked;
    the weighted mean of those ranks is ranked again; teams still tied are ordered by the same statistic of
    the tie-break column (higher first), ties remaining at the minimum.

    Attributes
    ----------
    statistic : {"mean", "median"}
    tie_break : str or None
        The results column that breaks ties (KiTS23: ``Dice_tumor``).
    """

    name: ClassVar[str] = "aggregate_then_rank"
    statistic: str = "mean"
    tie_break: str | None = None

    def __post_init__(self) -> None:
        if self.statistic not in ("mean", "median"):
            raise ValueError(f"statistic must be 'mean' or 'median', got {self.statistic!r}")

    def metric_positions(self, matrix: ResultsMatrix) -> np.ndarray:
        return self._ranks(matrix, np.ones((1, len(matrix.cases))))[2][0]

    def final_ranks(self, matrix: ResultsMatrix) -> np.ndarray:
        return self._ranks(matrix, np.ones((1, len(matrix.cases))))[0][0]

    def table(self, matrix: ResultsMatrix) -> pd.DataFrame:
        final, scores, metric_ranks = self._ranks(matrix, np.ones((1, len(matrix.cases))))
        table = pd.DataFrame({"team": matrix.teams, "rank": final[0].astype(int), "score": scores[0]})
        statistic = np.mean if self.statistic == "mean" else np.median
        for m, metric in enumerate(matrix.metrics):
            table[f"{metric.name}_{self.statistic}"] = statistic(matrix.values[m], axis=0)
            table[f"{metric.name}_rank"] = metric_ranks[0, m].astype(int)
        if matrix.tie_break is not None:
            table[f"tie_break_{self.statistic}"] = statistic(matrix.tie_break, axis=0)
        return table.sort_values(["rank", "team"], ignore_index=True)

    def resampled(self, matrix: ResultsMatrix, counts: np.ndarray, rank_weights: np.ndarray) -> SchemeRanks:
        full, _, full_metric = self._ranks(matrix, np.ones((1, len(matrix.cases))))
        samples, _, sample_metric = self._ranks(matrix, counts)
        return SchemeRanks(full[0], full_metric[0], samples, sample_metric.transpose(1, 0, 2))

    def _aggregate(self, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """(M, C, T) values -> (B, M, T): the statistic over the cases each row of ``counts`` (B, C) draws."""
        if self.statistic == "mean":
            return np.einsum("bc,mct->bmt", counts / counts.sum(axis=1, keepdims=True), values)
        return np.stack([np.median(np.repeat(values, row.astype(np.int64), axis=1), axis=1) for row in counts])

    def _ranks(self, matrix: ResultsMatrix, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Final ranks (B, T), mean ranks (B, T) and per-metric ranks (B, M, T) for each row of ``counts``."""
        aggregated = self._aggregate(matrix.values, counts)  # (B, M, T)
        metric_ranks = _min_ranks(aggregated.transpose(1, 0, 2), _directions(matrix.metrics)).transpose(1, 0, 2)
        metric_weights = _weights(matrix.metrics)
        scores = np.einsum("m,bmt->bt", metric_weights, metric_ranks) / metric_weights.sum()
        if matrix.tie_break is None:
            return _rank_scores(scores), scores, metric_ranks
        tie = self._aggregate(matrix.tie_break[None], counts)[:, 0]  # (B, T)
        ahead = (scores[:, None, :] < scores[:, :, None]) | (
            (scores[:, None, :] == scores[:, :, None]) & (tie[:, None, :] > tie[:, :, None]))
        return (ahead.sum(axis=-1) + 1).astype(np.float64), scores, metric_ranks


@dataclass(frozen=True)
class TestThenRank(RankingScheme):
    """challengeR's ``testThenRank``: per metric, the number of teams a team is significantly better than
    (`flare_eval.ranking.paired_wilcoxon`, one-sided, unadjusted, ``p <= alpha``, on the cases both teams
    have), ranked with more wins first."""

    name: ClassVar[str] = "test_then_rank"
    alpha: float = 0.05

    def metric_positions(self, matrix: ResultsMatrix) -> np.ndarray:
        from .significance import _is_significant, _pairwise_tests

        wins = np.zeros((len(matrix.metrics), len(matrix.teams)))
        for m, (_, first, _, _, p) in enumerate(_pairwise_tests(matrix)):
            np.add.at(wins[m], first, _is_significant(p, self.alpha))
        return _min_ranks(wins, np.ones(len(matrix.metrics), bool))


def scheme_of(protocol: str | Protocol) -> RankingScheme:
    """The protocol's own ranking scheme (``ranking.scheme``, ``ranking.statistic``, ``ranking.tie_break``)."""
    protocol = load_protocol(protocol)
    if protocol.ranking_scheme == "aggregate_then_rank":
        return AggregateThenRank(protocol.ranking_statistic, protocol.tie_break)
    return RankThenAggregate()


def rank(results: pd.DataFrame | ResultsMatrix, protocol: str | Protocol | None = None) -> pd.DataFrame:
    """Rank teams by the protocol's scheme (FLARE: rank-then-aggregate).

    Parameters
    ----------
    results : pandas.DataFrame or ResultsMatrix
        ``team, case`` and one column per ranking metric (see `prepare_results`).
    protocol : str or Protocol
        Gives the scheme and the metrics' directions, weights and worst values;
        needed for a table, not for a prepared matrix.

    Returns
    -------
    pandas.DataFrame
        ``team, rank, score``, sorted by rank then team; ``score`` is the
        weighted mean rank (lower is better). Rank-then-aggregate adds
        ``<metric>_mean_rank`` for each metric; aggregate-then-rank
        ``<metric>_mean`` and ``<metric>_rank`` (and ``tie_break_mean``).

    Examples
    --------
    >>> table = pd.DataFrame({
    ...     "team": ["a", "b", "a", "b"], "case": ["1", "1", "2", "2"],
    ...     "DSC": [0.9, 0.8, 0.7, 0.8], "NSD": [0.9, 0.8, 0.9, 0.8],
    ...     "Time": [10, 20, 10, 20], "AUC_GPU": [0, 0, 0, 0], "AUC_CPU": [5, 1, 5, 1]})
    >>> rank(table, "flare22")[["team", "rank", "score"]].to_string(index=False)
    'team  rank  score\\n   a     1  1.250\\n   b     2  1.625'
    """
    matrix = _as_matrix(results, protocol)
    return matrix.scheme.table(matrix)


def case_ranks(results: pd.DataFrame | ResultsMatrix, protocol: str | Protocol | None = None) -> pd.DataFrame:
    """Each team's overall rank within each case: its weighted mean rank over the metrics, ranked.

    Returns
    -------
    pandas.DataFrame
        ``team, case, score, rank`` (ties at the minimum); the data of
        challengeR's ranking heatmap.
    """
    matrix = _as_matrix(results, protocol)
    weights = _weights(matrix.metrics)
    scores = np.tensordot(weights, _case_ranks(matrix), axes=1) / weights.sum()  # (C, T)
    ranks = _rank_scores(scores)
    return pd.DataFrame({
        "team": np.tile(matrix.teams, len(matrix.cases)),
        "case": np.repeat(matrix.cases, len(matrix.teams)),
        "score": scores.ravel(),
        "rank": ranks.ravel().astype(int),
    })


#: Columns of `ranking_methods`: challengeR's methods, each a scheme.
RANKING_METHODS = ("rank_then_aggregate", "aggregate_mean_then_rank", "aggregate_median_then_rank",
                   "test_then_rank")


def _methods(alpha: float) -> dict[str, RankingScheme]:
    return {"rank_then_aggregate": RankThenAggregate(), "aggregate_mean_then_rank": AggregateThenRank("mean"),
            "aggregate_median_then_rank": AggregateThenRank("median"), "test_then_rank": TestThenRank(alpha)}


def ranking_methods(
    results: pd.DataFrame | ResultsMatrix,
    protocol: str | Protocol | None = None,
    *,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The teams' ranks under the official scheme and under challengeR's other ranking methods.

    Each method is a scheme (`RankThenAggregate`, `AggregateThenRank` with the
    mean or the median, missing values filled with the metric's worst value
    first, `TestThenRank` at ``alpha``): it places the teams per metric, then
    combines the metrics with the protocol's weights and ranks again (ties at
    the minimum). ``official`` is the protocol's own ranking (`rank`:
    rank-then-aggregate for FLARE and BraTS, aggregate-then-rank with its
    tie-break for KiTS23), the one every method is compared with.

    Parameters
    ----------
    results : pandas.DataFrame or ResultsMatrix
    protocol : str or Protocol
    alpha : float
        Significance level of test-then-rank.

    Returns
    -------
    pandas.DataFrame
        ``team, official`` and one column of final ranks per method of
        `RANKING_METHODS`, sorted by the official rank then team.
    """
    matrix = _as_matrix(results, protocol)
    table = pd.DataFrame({"team": matrix.teams})
    table["official"] = matrix.scheme.final_ranks(matrix).astype(int)
    for method, scheme in _methods(alpha).items():
        table[method] = scheme.final_ranks(matrix).astype(int)
    return table.sort_values(["official", "team"], ignore_index=True)


def ranking_methods_agreement(methods: pd.DataFrame) -> pd.DataFrame:
    """Kendall's tau-b between each method's ranking and the protocol's official one.

    Parameters
    ----------
    methods : pandas.DataFrame
        The table of `ranking_methods` (an older table without ``official``:
        rank-then-aggregate is taken as the official ranking).

    Returns
    -------
    pandas.DataFrame
        ``method, kendall_tau`` for every method of `RANKING_METHODS` (NaN
        when a ranking is constant).
    """
    official = methods["official" if "official" in methods else "rank_then_aggregate"].to_numpy()
    return pd.DataFrame({
        "method": list(RANKING_METHODS),
        "kendall_tau": [kendall_tau_b(official, methods[m].to_numpy()) for m in RANKING_METHODS],
    })


def rank_per_region(scores: pd.DataFrame, protocol: str | Protocol) -> pd.DataFrame:
    """Each team's rank in each region (or FLARE organ) alone, and their consensus: challengeR's multi-task view.

    Within each region, the teams are ranked by rank-then-aggregate on the protocol's accuracy metrics of
    that region (FLARE: the organ's DSC and NSD, equal weights; BraTS: the region's lesion-wise Dice and
    HD95). The consensus is the mean of a team's ranks over the regions, ranked (ties at the minimum).

    Parameters
    ----------
    scores : pandas.DataFrame
        Long scores with ``team``, ``case``, the layout's region columns and the metrics.
    protocol : str or Protocol

    Returns
    -------
    pandas.DataFrame
        ``team``, one column of ranks per region (organ codes for FLARE), ``consensus``; sorted by consensus.
    """
    protocol = load_protocol(protocol)
    unit = protocol.layout.name_column
    columns = set(protocol.score_columns)
    chosen = [m for m in protocol.ranking_metrics if m.source in columns]
    metrics = list({m.source: replace(m, name=m.source, region=None, score_column=None, weight=1.0)
                    for m in chosen}.values())
    if not metrics:
        raise ValueError(f"protocol {protocol.name!r} ranks no metric of the scores")
    single = replace(protocol, ranking_metrics=tuple(metrics), ranking_scheme="rank_then_aggregate", tie_break=None)
    table = pd.DataFrame({"team": sorted(scores["team"].astype(str).unique())})
    units = list(dict.fromkeys(scores[unit]))
    for name in units:
        part = scores[scores[unit] == name][["team", "case", *(m.name for m in metrics)]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RankingWarning)
            ranks = rank(part, single).set_index("team")["rank"]
        table[str(name)] = table["team"].map(ranks)
    table["consensus"] = _rank_scores(table[[str(u) for u in units]].mean(axis=1).to_numpy()).astype(int)
    return table.sort_values(["consensus", "team"], ignore_index=True)

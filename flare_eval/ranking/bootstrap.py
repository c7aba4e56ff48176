"""Bootstrap stability of a ranking, challengeR's way without its two bugs. Pure, no I/O.

Each bootstrap sample draws ``n_cases`` cases with replacement (the same draws
for every team) and a case drawn twice counts twice as its own pseudo-case.
Because rank-then-aggregate ranks teams *within* a case, a pseudo-case's ranks
are its case's ranks, so a sample's scores are ``counts @ case_scores``: the
whole bootstrap is one matrix product (see
`flare_eval.ranking.schemes.RankThenAggregate.resampled`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..protocol import Protocol
from .arrays import kendall_tau_b
from .matrix import ResultsMatrix, _as_matrix

__all__ = ["BOOTSTRAP_COPIES", "BootstrapResult", "bootstrap_stability"]

#: How `bootstrap_stability` ranks the copies of a case drawn more than once.
BOOTSTRAP_COPIES = ("separate", "joint")


@dataclass(frozen=True)
class BootstrapResult:
    """Outcome of `bootstrap_stability`.

    Attributes
    ----------
    samples : pandas.DataFrame
        One row per bootstrap sample: ``sample, kendall_tau`` and
        ``kendall_tau_<metric>`` for each metric alone.
    rank_distribution : pandas.DataFrame
        Per team: ``team, rank`` (full data), ``median_rank, rank_2.5, rank_97.5``
        and ``share_first`` (share of samples in which it ranks first).
    ranks : (n_samples, n_teams) ndarray
        The rank of every team in every sample, teams in `teams` order.
    teams : tuple of str
    seed : int
        Seed of the random generator; the same seed gives the same samples
        (-1 when explicit draws were given).
    n_samples : int
    draws : (n_samples, n_cases) ndarray of int
        Indices of the cases (sorted case ids) drawn in each sample.
    """

    samples: pd.DataFrame
    rank_distribution: pd.DataFrame
    ranks: np.ndarray
    teams: tuple[str, ...]
    seed: int
    n_samples: int
    draws: np.ndarray

    def ranks_table(self) -> pd.DataFrame:
        """Long table ``sample, team, rank``: every team's rank in every sample."""
        return pd.DataFrame({
            "sample": np.repeat(np.arange(1, self.n_samples + 1), len(self.teams)),
            "team": np.tile(self.teams, self.n_samples),
            "rank": self.ranks.ravel().astype(int),
        })

    def summary(self) -> pd.DataFrame:
        """Mean, median, Q1 and Q3 of Kendall's tau, overall and per metric."""
        columns = [c for c in self.samples.columns if c.startswith("kendall_tau")]
        described = self.samples[columns].agg(["mean", "median"]).T
        described["q1"] = self.samples[columns].quantile(0.25)
        described["q3"] = self.samples[columns].quantile(0.75)
        return described.rename_axis("tau").reset_index()


def bootstrap_stability(
    results: pd.DataFrame | ResultsMatrix,
    protocol: str | Protocol | None = None,
    *,
    n_samples: int = 1000,
    seed: int | None = None,
    draws: np.ndarray | None = None,
    copies: str = "separate",
) -> BootstrapResult:
    """Ranking stability under resampling of the cases.

    Each sample draws ``n_cases`` cases with replacement (the same draws for
    every team), recomputes the full ranking, and compares it with the
    ranking on all cases by Kendall's tau-b; also for each metric's ranking
    alone (teams ordered by their mean rank in that metric).

    A case drawn k times enters a rank-then-aggregate ranking in one of two
    ways (``copies``):

    ``separate`` (default)
        Each draw is its own pseudo-case: the teams are ranked within it, so
        the case contributes k times its ranks (1 + b, b teams strictly better).
    ``joint`` (challengeR's ``bootstrap``)
        The k copies keep their case id and are ranked together, ties at the
        minimum: each team's k entries get rank 1 + k * b, so a case drawn
        twice weighs four times its ranks. Use it to reproduce a stability
        analysis made with challengeR.

    Aggregate-then-rank schemes average values before ranking, where the two
    readings agree.

    Parameters
    ----------
    results : pandas.DataFrame or ResultsMatrix
    protocol : str or Protocol
    n_samples : int
        Number of bootstrap samples (the paper: 1000).
    seed : int, optional
        Seed of ``numpy.random.default_rng``; drawn from the operating system
        when None and recorded in the result either way.
    draws : (n_samples, n_cases) array of int, optional
        Explicit samples: the indices (into the sorted case ids) drawn for each
        sample. Overrides ``n_samples`` and ``seed`` (then recorded as -1).
    copies : {"separate", "joint"}
        How the copies of a case drawn more than once are ranked (see above).

    Returns
    -------
    BootstrapResult

    Examples
    --------
    >>> from flare_eval import example_paths
    >>> table = pd.read_csv(example_paths().results)
    >>> complete = table[table.team != "teamL"]  # teamL lacks a case: that would warn
    >>> result = bootstrap_stability(complete, "flare22", n_samples=200, seed=1)
    >>> bool(result.samples["kendall_tau"].median() > 0.5)
    True
    """
    matrix = _as_matrix(results, protocol)
    if copies not in BOOTSTRAP_COPIES:
        raise ValueError(f"copies must be one of {BOOTSTRAP_COPIES}, got {copies!r}")
    n_cases = len(matrix.cases)
    if draws is None:
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**32))
        draws = np.random.default_rng(seed).integers(0, n_cases, size=(n_samples, n_cases))
    else:
        draws = np.asarray(draws)
        if draws.ndim != 2 or draws.shape[1] != n_cases or draws.min() < 0 or draws.max() >= n_cases:
            raise ValueError(f"draws must be an (n_samples, {n_cases}) array of case indices in [0, {n_cases})")
        n_samples, seed = draws.shape[0], -1
    counts = np.zeros((n_samples, n_cases), dtype=np.float64)
    np.add.at(counts, (np.repeat(np.arange(n_samples), n_cases), draws.ravel()), 1.0)
    # Jointly ranked, a case drawn k times adds k entries of rank 1 + k(r - 1): up to a term equal for every team,
    # k^2 times its ranks.
    rank_weights = counts**2 if copies == "joint" else counts

    ranked = matrix.scheme.resampled(matrix, counts, rank_weights)
    full_rank, sample_ranks = ranked.full, ranked.samples
    samples = pd.DataFrame({
        "sample": np.arange(1, n_samples + 1),
        "kendall_tau": kendall_tau_b(full_rank, sample_ranks),
    })
    for m, metric in enumerate(matrix.metrics):  # each metric's own ranking under the same scheme
        samples[f"kendall_tau_{metric.name}"] = kendall_tau_b(ranked.full_per_metric[m], ranked.samples_per_metric[m])

    distribution = pd.DataFrame({
        "team": matrix.teams,
        "rank": full_rank.astype(int),
        "median_rank": np.median(sample_ranks, axis=0),
        "rank_2.5": np.percentile(sample_ranks, 2.5, axis=0),
        "rank_97.5": np.percentile(sample_ranks, 97.5, axis=0),
        "share_first": (sample_ranks == 1).mean(axis=0),
    }).sort_values(["rank", "team"], ignore_index=True)
    return BootstrapResult(samples, distribution, sample_ranks, matrix.teams, int(seed), int(n_samples), draws)

"""Rank-then-aggregate ranking, bootstrap stability and significance tests. Pure computation, no I/O.

The scheme of the FLARE22 paper ("Ranking scheme"): for every case and every
metric the teams are ranked (ties at the minimum rank); a team's score is the
weighted mean of all its ranks, ``sum(w_m * rank) / (n_cases * sum(w_m))``;
the final ranking orders the scores (ties at the minimum again).

Stability follows challengeR's bootstrap without its two bugs: each bootstrap
sample draws ``n_cases`` cases with replacement (the same draws for every team)
and a case drawn twice counts twice as its own pseudo-case. Because rank-then-
aggregate ranks teams *within* a case, a pseudo-case's ranks are its case's
ranks, so a sample's scores are ``counts @ case_scores``: the whole bootstrap is
one matrix product.

Significance: for each metric and each ordered pair of teams, a one-sided
paired Wilcoxon signed-rank test on the cases both teams have, with the
normal approximation and continuity correction of R's
``wilcox.test(paired=TRUE, exact=FALSE)`` (zero differences dropped), and
Holm's adjustment over all ordered pairs of one metric.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ._text import preview
from .defaults import DEFAULT_SEED
from .errors import FlareEvalError, FlareEvalWarning
from .protocol import Protocol, RankingMetric, load_protocol

__all__ = [
    "ResultsTableError",
    "RankingWarning",
    "ResultsMatrix",
    "prepare_results",
    "rank",
    "case_ranks",
    "BootstrapResult",
    "bootstrap_stability",
    "significance",
    "best_versus_rest",
    "kendall_tau_b",
    "holm_adjust",
    "paired_wilcoxon",
    "RANKING_METHODS",
    "ranking_methods",
    "rank_per_region",
    "ranking_methods_agreement",
    "ADJUST_METHODS",
    "DEFAULT_SEED",
]

ADJUST_METHODS = ("holm", "none")
#: Columns of `ranking_methods`: the official scheme first, then challengeR's alternatives.
RANKING_METHODS = ("rank_then_aggregate", "aggregate_mean_then_rank", "aggregate_median_then_rank",
                   "test_then_rank")
#: Columns of results.csv that describe a row and are not ranked.
ANNOTATION_COLUMNS = ("status",)


class ResultsTableError(FlareEvalError, ValueError):
    """The results table cannot be ranked; the message says which rows or columns and why."""


class RankingWarning(FlareEvalWarning):
    """Something in the results table was filled in or ignored (e.g. missing cases got worst values)."""


@dataclass(frozen=True)
class ResultsMatrix:
    """Validated results as arrays.

    Attributes
    ----------
    teams : tuple of str
        Team names, sorted.
    cases : tuple of str
        Case ids, sorted.
    metrics : tuple of RankingMetric
        The protocol's ranking metrics.
    values : (n_metrics, n_cases, n_teams) ndarray of float64
        Metric values, worst values filled in where a team had none.
    observed : (n_metrics, n_cases, n_teams) ndarray of bool
        Whether each value was in the table (False where it was filled in).
    scheme : str
        The protocol's ranking scheme (see `flare_eval.protocol.RANKING_SCHEMES`).
    tie_break : (n_cases, n_teams) ndarray or None
        Values of the protocol's tie-break column (higher is better; missing: 0).
    warnings : tuple of str
        What `prepare_results` warned about this table (filled-in values,
        ignored columns), kept with it: pass the matrix to `rank`,
        `bootstrap_stability`, `significance` and `ranking_methods` and each
        warning is given once.
    """

    teams: tuple[str, ...]
    cases: tuple[str, ...]
    metrics: tuple[RankingMetric, ...]
    values: np.ndarray
    observed: np.ndarray
    scheme: str = "rank_then_aggregate"
    tie_break: np.ndarray | None = None
    warnings: tuple[str, ...] = ()


def prepare_results(results: pd.DataFrame, protocol: str | Protocol) -> ResultsMatrix:
    """Check a results table and arrange it for ranking.

    Parameters
    ----------
    results : pandas.DataFrame
        Columns ``team, case`` and one column per ranking metric of the
        protocol (FLARE22: ``DSC, NSD, Time, AUC_GPU, AUC_CPU``); one row per
        team and case.
    protocol : str or Protocol

    Returns
    -------
    ResultsMatrix

    Raises
    ------
    ResultsTableError
        For a missing column, a column that looks like a misspelt metric name,
        duplicated (team, case) rows, non-numeric values, values outside a
        metric's valid range (e.g. a negative time or DSC = 7), or fewer than
        two teams.

    Warns
    -----
    RankingWarning
        When a team has no row for a case or an empty value (the metric's worst
        value is used), and when columns are ignored.
    """
    protocol = load_protocol(protocol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RankingWarning)
        matrix = _prepare(results, protocol)
    told = _TOLD.setdefault(_table_key(results, protocol), set())
    messages = []
    for warning in caught:
        if not issubclass(warning.category, RankingWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            continue
        messages.append(str(warning.message))
        if str(warning.message) not in told:  # the same table, prepared again by the next function: said once
            told.add(str(warning.message))
            warnings.warn(str(warning.message), RankingWarning, stacklevel=_caller_level())
    while len(_TOLD) > 64:
        _TOLD.pop(next(iter(_TOLD)))
    return replace(matrix, warnings=tuple(messages))


def _as_matrix(results: pd.DataFrame | ResultsMatrix, protocol: str | Protocol | None) -> ResultsMatrix:
    """A prepared matrix as it is; a table prepared under its protocol, which it must be given."""
    if isinstance(results, ResultsMatrix):
        return results
    if protocol is None:
        raise TypeError("a results table is ranked under a protocol: pass protocol= (a preset name such as "
                        "'flare22', a JSON path or a Protocol), or a ResultsMatrix from prepare_results")
    return prepare_results(results, protocol)


#: The warnings already given per results table (by content and protocol), so that each is given once.
_TOLD: dict[tuple, set[str]] = {}


def _table_key(results: pd.DataFrame, protocol: Protocol) -> tuple:
    content = int(pd.util.hash_pandas_object(results, index=False).sum()) if len(results) else 0
    return content, tuple(map(str, results.columns)), protocol.name, protocol.source


def _caller_level() -> int:
    """The stack level of the first frame outside this module: warnings point at the user's line."""
    import sys

    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    return level


def _prepare(results: pd.DataFrame, protocol: Protocol) -> ResultsMatrix:
    metrics = protocol.ranking_metrics
    if not metrics:
        raise ResultsTableError(f"protocol {protocol.name!r} defines no ranking metrics")
    names = [m.name for m in metrics]
    _check_columns(results, names, extra=[protocol.tie_break] if protocol.tie_break else [])
    if "team" in results and pd.api.types.is_numeric_dtype(results["team"]):
        warnings.warn("team ids are numbers here: ids with leading zeros (001) have lost them; read the CSV with "
                      "flare_eval.io.read_table or pd.read_csv(..., dtype={'team': str})", RankingWarning,
                      stacklevel=2)
    table = results.copy()
    table["team"] = table["team"].astype(str).str.strip()
    table["case"] = table["case"].astype(str).str.strip()
    duplicated = table[table.duplicated(["team", "case"], keep=False)]
    if len(duplicated):
        pairs = sorted(set(zip(duplicated["team"], duplicated["case"])))
        shown = ", ".join(f"({t}, {c})" for t, c in pairs[:5])
        raise ResultsTableError(f"duplicated (team, case) rows: {shown}{' ...' if len(pairs) > 5 else ''}")
    for metric in metrics:
        table[metric.name] = _numeric_column(table, metric.name)
        _check_range(table, metric)
    teams = tuple(sorted(table["team"].unique()))
    if len(teams) < 2:
        raise ResultsTableError(f"ranking needs at least two teams, the table has {list(teams)}")
    cases = tuple(sorted(table["case"].unique()))

    full = pd.MultiIndex.from_product([cases, teams], names=["case", "team"])
    grid = table.set_index(["case", "team"])[names].reindex(full)
    absent_rows = grid.index[grid.isna().all(axis=1)]
    # A copy: with one metric, to_numpy() can be a read-only view of the table.
    values = np.array(grid.to_numpy(dtype=np.float64).reshape(len(cases), len(teams), len(names)).transpose(2, 0, 1))
    observed = ~np.isnan(values)
    team_cases = table.groupby("team")["case"].agg(list)
    for team in teams:
        missing = [case for case, t in absent_rows if t == team]
        if missing:
            warnings.warn(f"team {team!r} has no row for {len(missing)} case(s) ({preview(missing)}); "
                          f"they get the worst value of every metric{_case_id_hint(missing, team_cases[team])}",
                          RankingWarning, stacklevel=3)
    present = np.ones(values.shape[1:], bool)
    present[[cases.index(c) for c, _ in absent_rows], [teams.index(t) for _, t in absent_rows]] = False
    for m, metric in enumerate(metrics):
        empty = ~observed[m] & present
        for t in np.flatnonzero(empty.any(axis=0)):
            which = [cases[c] for c in np.flatnonzero(empty[:, t])]
            warnings.warn(f"team {teams[t]!r} has no {metric.name} for {len(which)} case(s) ({preview(which)}); "
                          f"they get the worst value {metric.worst:g}", RankingWarning, stacklevel=3)
        values[m][~observed[m]] = metric.worst
    tie_break = None
    if protocol.tie_break:
        column = _numeric_column(table, protocol.tie_break)
        tie_break = (table.assign(_tb=column).set_index(["case", "team"])["_tb"].reindex(full)
                     .to_numpy(dtype=np.float64).reshape(len(cases), len(teams)))
        tie_break = np.nan_to_num(tie_break, nan=0.0)
    return ResultsMatrix(teams, cases, metrics, values, observed, protocol.ranking_scheme, tie_break)


def _check_columns(results: pd.DataFrame, names: list[str], extra: list[str] = ()) -> None:
    columns = [str(c) for c in results.columns]
    required = ["team", "case", *names, *extra]
    unknown = [c for c in columns if c not in required and c not in ANNOTATION_COLUMNS]
    for column in unknown:
        close = difflib.get_close_matches(column, names, n=1, cutoff=0.6)
        lowered = [n for n in names if n.lower() == column.strip().lower()]
        guess = lowered or close
        if guess:
            raise ResultsTableError(
                f"column {column!r} looks like a misspelling of metric {guess[0]!r}; "
                f"metric columns must be named exactly {names}"
            )
    missing = [c for c in required if c not in columns]
    if missing:
        raise ResultsTableError(f"missing column(s) {missing}; the table has {columns}, expected {required}")
    if unknown:
        warnings.warn(f"ignoring column(s) {unknown} that are not ranking metrics", RankingWarning, stacklevel=3)


def _numeric_column(table: pd.DataFrame, name: str) -> pd.Series:
    raw = table[name]
    numbers = pd.to_numeric(raw, errors="coerce")
    bad = numbers.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
    if bad.any():
        rows = table.loc[bad, ["team", "case"]].head(3).itertuples(index=False)
        examples = ", ".join(f"({t}, {c}): {raw[i]!r}" for (t, c), i in zip(rows, table.index[bad][:3]))
        raise ResultsTableError(f"column {name!r} has {int(bad.sum())} non-numeric value(s), e.g. {examples}")
    infinite = np.isinf(numbers)
    if infinite.any():
        raise ResultsTableError(f"column {name!r} has {int(infinite.sum())} infinite value(s)")
    return numbers


def _check_range(table: pd.DataFrame, metric: RankingMetric) -> None:
    values = table[metric.name]
    outside = values.notna() & ~values.map(metric.contains)
    if outside.any():
        low = "-inf" if metric.minimum is None else f"{metric.minimum:g}"
        high = "inf" if metric.maximum is None else f"{metric.maximum:g}"
        rows = table.loc[outside, ["team", "case", metric.name]].head(3).itertuples(index=False)
        examples = ", ".join(f"team {t!r} case {c!r}: {v:g}" for t, c, v in rows)
        raise ResultsTableError(f"metric {metric.name!r} has {int(outside.sum())} value(s) outside its valid "
                                f"range [{low}, {high}], e.g. {examples}")


def _canonical_case_id(case: str) -> str:
    """A case id without letter case or zero padding: ``Case_001`` and ``case_1`` become equal."""
    return re.sub(r"\d+", lambda digits: str(int(digits.group())), case.strip().lower())


def _case_id_hint(missing: list[str], own: list[str]) -> str:
    """A hint when a team's own case ids look like the ones it lacks, spelt differently."""
    own_by_form = {_canonical_case_id(c): c for c in own}
    pairs = [(own_by_form[_canonical_case_id(c)], c) for c in missing if _canonical_case_id(c) in own_by_form]
    if not pairs:
        return ""
    shown = preview([f"{theirs!r} looks like {expected!r}" for theirs, expected in pairs])
    return f"; its case ids differ only in letter case or zero padding ({shown}): check the spelling"


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


def _case_ranks(matrix: ResultsMatrix) -> np.ndarray:
    """(n_metrics, n_cases, n_teams) ranks of the teams within each case and metric."""
    return _min_ranks(matrix.values, _directions(matrix.metrics))


def _rank_scores(scores: np.ndarray) -> np.ndarray:
    """Final ranks (1 = best, ties at minimum) from scores where lower is better; along the last axis."""
    return _min_ranks(scores[None], np.array([False]))[0]


def rank(results: pd.DataFrame | ResultsMatrix, protocol: str | Protocol | None = None) -> pd.DataFrame:
    """Rank teams by rank-then-aggregate.

    Parameters
    ----------
    results : pandas.DataFrame or ResultsMatrix
        ``team, case`` and one column per ranking metric (see `prepare_results`).
    protocol : str or Protocol
        Gives the metrics' directions, weights and worst values.

    Returns
    -------
    pandas.DataFrame
        ``team, rank, score`` and ``<metric>_mean_rank`` for each metric,
        sorted by rank then team. ``score`` is the weighted mean rank
        (lower is better).

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
    if matrix.scheme == "aggregate_then_rank":
        counts = np.ones((1, len(matrix.cases)))
        final, scores, metric_ranks = _aggregate_then_rank(matrix, counts)
        table = pd.DataFrame({"team": matrix.teams, "rank": final[0].astype(int), "score": scores[0]})
        for m, metric in enumerate(matrix.metrics):
            table[f"{metric.name}_mean"] = matrix.values[m].mean(axis=0)
            table[f"{metric.name}_rank"] = metric_ranks[0, m].astype(int)
        if matrix.tie_break is not None:
            table["tie_break_mean"] = matrix.tie_break.mean(axis=0)
        return table.sort_values(["rank", "team"], ignore_index=True)
    ranks = _case_ranks(matrix)
    weights = _weights(matrix.metrics)
    scores = np.tensordot(weights, ranks.sum(axis=1), axes=1) / (len(matrix.cases) * weights.sum())
    table = pd.DataFrame({"team": matrix.teams, "rank": _rank_scores(scores).astype(int), "score": scores})
    for m, metric in enumerate(matrix.metrics):
        table[f"{metric.name}_mean_rank"] = ranks[m].mean(axis=0)
    return table.sort_values(["rank", "team"], ignore_index=True)


def _aggregate_then_rank(matrix: ResultsMatrix, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """KiTS23's scheme for each row of case ``counts`` (B, C): final ranks, mean ranks and per-metric ranks.

    Per metric, each team's mean over the (drawn) cases is ranked (ties at the
    minimum, in the metric's direction); the weighted mean of those ranks is
    ranked again; teams still tied are ordered by the mean of the tie-break
    column (higher first), ties remaining at the minimum.
    """
    weights = counts / counts.sum(axis=1, keepdims=True)  # (B, C)
    means = np.einsum("bc,mct->bmt", weights, matrix.values)  # (B, M, T)
    metric_ranks = _min_ranks(means.transpose(1, 0, 2), _directions(matrix.metrics)).transpose(1, 0, 2)
    metric_weights = _weights(matrix.metrics)
    scores = np.einsum("m,bmt->bt", metric_weights, metric_ranks) / metric_weights.sum()
    if matrix.tie_break is None:
        return _rank_scores(scores), scores, metric_ranks
    tie = weights @ matrix.tie_break  # (B, T)
    ahead = (scores[:, None, :] < scores[:, :, None]) | (
        (scores[:, None, :] == scores[:, :, None]) & (tie[:, None, :] > tie[:, :, None]))
    return (ahead.sum(axis=-1) + 1).astype(np.float64), scores, metric_ranks


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


#: Most array elements one chunk of the ranking code holds at once (per temporary array): with 8-byte values
#: 32 MiB, so that memory stays bounded however many teams, cases and samples there are.
CHUNK_ELEMENTS = 2**22


def _chunks(n_rows: int, elements_per_row: int) -> list[slice]:
    """Slices of ``range(n_rows)`` whose rows hold at most `CHUNK_ELEMENTS` elements together (at least one row)."""
    step = max(1, CHUNK_ELEMENTS // max(1, elements_per_row))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


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

    ranks = _case_ranks(matrix)  # (M, C, T)
    if matrix.scheme == "aggregate_then_rank":
        full_rank = _aggregate_then_rank(matrix, np.ones((1, n_cases)))[0][0]
        sample_ranks = _aggregate_then_rank(matrix, counts)[0]
    else:
        weights = _weights(matrix.metrics)
        weighted = np.tensordot(weights, ranks, axes=1)  # (C, T)
        full_scores = weighted.sum(axis=0)
        sample_scores = rank_weights @ weighted  # (B, T): common factors and terms do not change ranks
        full_rank = _rank_scores(full_scores)
        sample_ranks = _rank_scores(sample_scores)
    samples = pd.DataFrame({
        "sample": np.arange(1, n_samples + 1),
        "kendall_tau": kendall_tau_b(full_rank, sample_ranks),
    })
    for m, metric in enumerate(matrix.metrics):
        if matrix.scheme == "aggregate_then_rank":  # each metric's own ranking under the same scheme
            metric_full = _aggregate_then_rank(matrix, np.ones((1, n_cases)))[2][0, m]
            metric_samples = _aggregate_then_rank(matrix, counts)[2][:, m]
        else:
            metric_full = _rank_scores(ranks[m].sum(axis=0))
            metric_samples = _rank_scores(rank_weights @ ranks[m])
        samples[f"kendall_tau_{metric.name}"] = kendall_tau_b(metric_full, metric_samples)

    distribution = pd.DataFrame({
        "team": matrix.teams,
        "rank": full_rank.astype(int),
        "median_rank": np.median(sample_ranks, axis=0),
        "rank_2.5": np.percentile(sample_ranks, 2.5, axis=0),
        "rank_97.5": np.percentile(sample_ranks, 97.5, axis=0),
        "share_first": (sample_ranks == 1).mean(axis=0),
    }).sort_values(["rank", "team"], ignore_index=True)
    return BootstrapResult(samples, distribution, sample_ranks, matrix.teams, int(seed), int(n_samples), draws)


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


def ranking_methods(
    results: pd.DataFrame | ResultsMatrix,
    protocol: str | Protocol | None = None,
    *,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The teams' ranks under the official scheme and under challengeR's other ranking methods.

    Each method ranks the teams per metric, then combines the metrics like
    the official scheme: the weighted mean of the per-metric ranks with the
    protocol's weights, ranked again (ties at the minimum).

    * ``official``: the protocol's own ranking (`rank`: rank-then-aggregate
      for FLARE and BraTS, aggregate-then-rank with its tie-break for KiTS23),
      the one every method is compared with.
    * ``rank_then_aggregate``: per metric, the mean of the per-case ranks.
    * ``aggregate_mean_then_rank`` and ``aggregate_median_then_rank``: each
      team's mean (median) over the cases, missing values filled with the
      metric's worst value first, ranked in the metric's direction.
    * ``test_then_rank``: the number of teams a team is significantly better
      than (`paired_wilcoxon`, one-sided, unadjusted, ``p <= alpha``, on the
      cases both teams have: challengeR's ``testThenRank`` defaults), ranked
      with more wins first.

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
    official = rank(matrix).set_index("team")["rank"]
    directions = _directions(matrix.metrics)
    per_metric = {
        "rank_then_aggregate": _case_ranks(matrix).mean(axis=1),
        "aggregate_mean_then_rank": _min_ranks(matrix.values.mean(axis=1), directions),
        "aggregate_median_then_rank": _min_ranks(np.median(matrix.values, axis=1), directions),
        "test_then_rank": _test_then_rank_per_metric(matrix, alpha),
    }
    weights = _weights(matrix.metrics)
    table = pd.DataFrame({"team": matrix.teams})
    table["official"] = official.reindex(list(matrix.teams)).to_numpy().astype(int)
    for method, ranks in per_metric.items():  # ranks: (n_metrics, n_teams)
        table[method] = _rank_scores(weights @ ranks).astype(int)
    return table.sort_values(["official", "team"], ignore_index=True)


def rank_per_region(scores: pd.DataFrame, protocol: str | Protocol) -> pd.DataFrame:
    """Each team's rank in each region (or FLARE organ) alone, and their consensus: challengeR's multi-task view.

    Within each region, the teams are ranked by rank-then-aggregate on the protocol's accuracy metrics of
    that region (FLARE: the organ's DSC and NSD, equal weights; BraTS: the region's lesion-wise Dice and
    HD95). The consensus is the mean of a team's ranks over the regions, ranked (ties at the minimum).

    Parameters
    ----------
    scores : pandas.DataFrame
        Long scores with ``team``, ``case``, the organ (``label, organ``) or ``region`` columns and the metrics.
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


def _test_then_rank_per_metric(matrix: ResultsMatrix, alpha: float) -> np.ndarray:
    """(n_metrics, n_teams) ranks by the number of significant one-sided wins (more is better)."""
    wins = np.zeros((len(matrix.metrics), len(matrix.teams)))
    for m, (_, first, _, _, p) in enumerate(_pairwise_tests(matrix)):
        np.add.at(wins[m], first, _is_significant(p, alpha))
    return _min_ranks(wins, np.ones(len(matrix.metrics), bool))


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

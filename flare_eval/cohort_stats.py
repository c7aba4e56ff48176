"""Cohort and subgroup analyses, paired comparisons, review lists: pure computation on tables, no I/O.

The analyses of the FLARE22 paper beyond the leaderboard: accuracy per cohort
and per subgroup (sex, age group, scanner manufacturer) with a test across the
groups; two versions of an algorithm compared case by case (the paper's
Fig. 2a: with and without unlabeled data); cases sent back for annotation
review when an organ's DSC is at or below a threshold.

Inputs are long scores (``team, case, label, organ, DSC, NSD`` for FLARE's
organs, ``team, case, region, <metrics>`` for the region presets, as written by
``score --teams`` or ``collect``; the metric columns are named by the caller)
and a case metadata table (``case`` plus any columns). Nothing is dropped silently: cases without metadata fall in a
``(missing)`` group, and every mismatch is reported in a `CohortWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._text import preview
from .errors import FlareEvalWarning

__all__ = [
    "CohortWarning",
    "MISSING_GROUP",
    "DEFAULT_AGE_BINS",
    "case_means",
    "unit_columns",
    "attach_metadata",
    "bin_numeric",
    "subgroup_table",
    "Comparison",
    "compare_teams",
    "review_cases",
]

#: Group of the cases whose metadata value is missing.
MISSING_GROUP = "(missing)"
#: The paper's age groups: 0-50, 51-70, over 70.
DEFAULT_AGE_BINS = (50, 70)
#: Below this many cases a subgroup's statistics say little; a warning says so.
SMALL_GROUP = 5


class CohortWarning(FlareEvalWarning):
    """Metadata and scores do not match everywhere, or a subgroup is too small to say much."""


def unit_columns(scores: pd.DataFrame) -> list[str]:
    """The columns naming what a row of long scores scored in its case: its layout's keys (``label, organ``, ...)."""
    from .protocol import layout_of_table

    return list(layout_of_table(scores.columns).key_columns)


def _check_metrics(scores: pd.DataFrame, metrics: Sequence[str]) -> None:
    missing = [m for m in metrics if m not in scores]
    if missing:
        shown = [c for c in scores.columns if c not in ("team", "case", "status", "message", *unit_columns(scores))]
        raise ValueError(f"the scores have no {', '.join(map(repr, missing))} column: metrics here are {shown}")


def case_means(scores: pd.DataFrame, metrics: Sequence[str] = ("DSC", "NSD")) -> pd.DataFrame:
    """Per team and case, each metric's mean over the organs (or regions): ``team, case, <metrics>``."""
    if "team" not in scores:
        raise ValueError("scores need a 'team' column (from `score --teams` or `collect`)")
    _check_metrics(scores, metrics)
    return scores.groupby(["team", "case"], sort=True)[list(metrics)].mean().reset_index()


def bin_numeric(values: pd.Series, edges: Sequence[float]) -> pd.Series:
    """Bin a numeric column into groups ``0-50, 51-70, >70`` style (right-closed intervals).

    Parameters
    ----------
    values : pandas.Series
        Numbers (e.g. ages); missing values become `MISSING_GROUP`.
    edges : sequence of float
        Increasing inner edges; ``(50, 70)`` gives ``<=50``, ``51-70`` (i.e.
        ``(50, 70]``) and ``>70``.

    Examples
    --------
    >>> bin_numeric(pd.Series([34, 50, 51, 70, 88, None]), (50, 70)).tolist()
    ['<=50', '<=50', '51-70', '51-70', '>70', '(missing)']
    """
    edges = [float(e) for e in edges]
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"bin edges must be increasing numbers, got {list(edges)}")
    numbers = pd.to_numeric(values, errors="coerce")

    def text(edge: float) -> str:
        return f"{edge:g}"

    labels = [f"<={text(edges[0])}"]
    labels += [f"{text(a + 1) if float(a).is_integer() else '>' + text(a)}-{text(b)}" for a, b in zip(edges, edges[1:])]
    labels += [f">{text(edges[-1])}"]
    index = np.searchsorted(np.asarray(edges), numbers.to_numpy(dtype=float), side="left")
    binned = pd.Series([labels[i] for i in index], index=values.index, dtype=object)
    binned[numbers.isna()] = MISSING_GROUP
    return binned


def attach_metadata(
    per_case: pd.DataFrame, metadata: pd.DataFrame, *, bins: dict[str, Sequence[float]] | None = None
) -> pd.DataFrame:
    """Join metadata to per-case rows; report every mismatch.

    Parameters
    ----------
    per_case : pandas.DataFrame
        Rows with a ``case`` column (e.g. `case_means`).
    metadata : pandas.DataFrame
        ``case`` plus metadata columns, one row per case.
    bins : dict, optional
        Numeric columns to bin, with their inner edges (see `bin_numeric`).

    Returns
    -------
    pandas.DataFrame
        ``per_case`` with the metadata columns; missing values are `MISSING_GROUP`.

    Raises
    ------
    ValueError
        If the metadata has no ``case`` column or repeats a case.

    Warns
    -----
    CohortWarning
        For metadata cases without scores, scored cases without metadata and
        missing values.
    """
    if "case" not in metadata:
        raise ValueError(f"the metadata table needs a 'case' column; it has {list(metadata.columns)}")
    metadata = metadata.copy()
    metadata["case"] = metadata["case"].astype(str)
    repeated = metadata["case"][metadata["case"].duplicated()].unique().tolist()
    if repeated:
        raise ValueError(f"the metadata table lists case(s) {repeated[:5]} more than once")
    scored = set(per_case["case"].astype(str))
    unknown = sorted(set(metadata["case"]) - scored)
    if unknown:
        warnings.warn(f"{len(unknown)} metadata case(s) have no scores: {preview(unknown)}", CohortWarning,
                      stacklevel=2)
    without = sorted(scored - set(metadata["case"]))
    if without:
        warnings.warn(f"{len(without)} scored case(s) have no metadata, grouped as {MISSING_GROUP}: "
                      f"{preview(without)}", CohortWarning, stacklevel=2)
    columns = [c for c in metadata.columns if c != "case"]
    for column in columns:
        empty = metadata["case"][metadata[column].isna()].tolist()
        if empty:
            warnings.warn(f"metadata column {column!r} is empty for {len(empty)} case(s), grouped as "
                          f"{MISSING_GROUP}: {preview(empty)}", CohortWarning, stacklevel=2)
    for column, edges in (bins or {}).items():
        if column not in metadata:
            raise ValueError(f"cannot bin {column!r}: the metadata has no such column ({list(metadata.columns)})")
        metadata[column] = bin_numeric(metadata[column], edges)
    joined = per_case.assign(case=per_case["case"].astype(str)).merge(metadata, on="case", how="left")
    for column in columns:
        joined[column] = joined[column].astype(object).where(joined[column].notna(), MISSING_GROUP).astype(str)
    return joined


def subgroup_table(joined: pd.DataFrame, column: str, metrics: Sequence[str] = ("DSC", "NSD")) -> pd.DataFrame:
    """Per team and subgroup of ``column``: case count, median and IQR of each metric, and a test across groups.

    The test compares the groups' distributions of the metric within each team:
    Mann-Whitney U (two-sided) for two groups, Kruskal-Wallis for more;
    the `MISSING_GROUP` does not take part. NaN when fewer than two groups have cases.

    Returns
    -------
    pandas.DataFrame
        ``column, team, group, n`` and ``<metric>_median, <metric>_q1,
        <metric>_q3, <metric>_test, <metric>_p`` per metric, plus
        ``small_group`` (fewer than 5 cases).

    Warns
    -----
    CohortWarning
        For each subgroup with fewer than 5 cases.
    """
    from scipy import stats

    if column not in joined:
        raise ValueError(f"no metadata column {column!r}; columns: {list(joined.columns)}")
    rows = []
    for team, team_rows in joined.groupby("team", sort=True):
        groups = {g: rows_g for g, rows_g in team_rows.groupby(column, sort=True)}
        tests = {}
        for metric in metrics:
            samples = [g[metric].dropna().to_numpy(float) for name, g in groups.items() if name != MISSING_GROUP]
            samples = [s for s in samples if s.size]
            if len(samples) < 2:
                tests[metric] = ("none", np.nan)
            elif len(samples) == 2:
                tests[metric] = ("mann-whitney", float(stats.mannwhitneyu(*samples, alternative="two-sided").pvalue))
            else:
                tests[metric] = ("kruskal-wallis", _kruskal_p(samples))
        for name, group in groups.items():
            row = {"column": column, "team": team, "group": name, "n": len(group)}
            for metric in metrics:
                values = group[metric].dropna()
                row[f"{metric}_median"] = values.median()
                row[f"{metric}_q1"] = values.quantile(0.25)
                row[f"{metric}_q3"] = values.quantile(0.75)
                row[f"{metric}_test"], row[f"{metric}_p"] = tests[metric]
            row["small_group"] = len(group) < SMALL_GROUP
            rows.append(row)
    table = pd.DataFrame(rows)
    small = table[table["small_group"]]
    for group in small["group"].unique():
        counts = small[small["group"] == group]["n"].unique().tolist()
        warnings.warn(f"subgroup {column}={group} has only {max(counts)} case(s): too few to say much",
                      CohortWarning, stacklevel=2)
    return table


def _kruskal_p(samples: list[np.ndarray]) -> float:
    from scipy import stats

    try:
        return float(stats.kruskal(*samples).pvalue)
    except ValueError:  # all values identical: no evidence of a difference
        return 1.0


@dataclass(frozen=True)
class Comparison:
    """Outcome of `compare_teams`.

    Attributes
    ----------
    summary : pandas.DataFrame
        Per organ and overall (``organ = "mean"``): ``n_cases, mean_a, mean_b,
        mean_difference, ci_low, ci_high, t_p, wilcoxon_p`` for the metric.
    differences : pandas.DataFrame
        Per case: ``case, organ, value_a, value_b, difference`` (a - b).
    seed : int
    n_samples : int
    """

    summary: pd.DataFrame
    differences: pd.DataFrame
    seed: int
    n_samples: int


def compare_teams(
    scores: pd.DataFrame,
    team_a: str,
    team_b: str,
    *,
    metric: str = "DSC",
    n_samples: int = 2000,
    seed: int | None = None,
    confidence: float = 0.95,
) -> Comparison:
    """Two teams (or two versions of one algorithm) on the cases both have.

    For each organ and for the per-case mean over organs: the mean of the
    per-case differences ``a - b`` with a percentile bootstrap confidence
    interval (cases resampled with replacement), a paired t-test
    (``scipy.stats.ttest_rel``) and a Wilcoxon signed-rank test
    (``scipy.stats.wilcoxon``, two-sided); NaN where every difference is zero.

    Raises
    ------
    ValueError
        If a team is not in the scores or they share no case.
    """
    from scipy import stats

    teams = set(scores["team"].astype(str))
    for team in (team_a, team_b):
        if team not in teams:
            raise ValueError(f"team {team!r} is not in the scores; teams: {sorted(teams)}")
    _check_metrics(scores, [metric])
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**32))
    rng = np.random.default_rng(seed)
    units = unit_columns(scores)
    unit = units[-1]  # organ, or region
    wide = scores.pivot_table(index=["case", *units], columns="team", values=metric)[[team_a, team_b]]
    wide = wide.dropna().reset_index()
    if wide.empty:
        raise ValueError(f"teams {team_a!r} and {team_b!r} share no scored case")
    means = wide.groupby("case")[[team_a, team_b]].mean().reset_index().assign(**{unit: "mean"})
    for column in units[:-1]:
        means[column] = 10**9  # the mean comes after every organ (a key sorted before the name)
    table = pd.concat([wide, means], ignore_index=True)
    differences = table.assign(difference=table[team_a] - table[team_b]).rename(
        columns={team_a: "value_a", team_b: "value_b"})
    rows = []
    alpha = (1 - confidence) / 2
    for key, group in differences.groupby(units, sort=True):
        organ = key[-1] if isinstance(key, tuple) else key
        d = group["difference"].to_numpy(float)
        boot = rng.choice(d, size=(n_samples, d.size), replace=True).mean(axis=1)
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            t_p = float(stats.ttest_rel(group["value_a"], group["value_b"]).pvalue) if d.size > 1 else np.nan
            w_p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else np.nan
        rows.append({unit: organ, "n_cases": d.size, "mean_a": group["value_a"].mean(),
                     "mean_b": group["value_b"].mean(), "mean_difference": d.mean(),
                     "ci_low": float(np.quantile(boot, alpha)), "ci_high": float(np.quantile(boot, 1 - alpha)),
                     "t_p": t_p, "wilcoxon_p": w_p})
    summary = pd.DataFrame(rows).assign(metric=metric, team_a=team_a, team_b=team_b)
    summary = summary[["metric", "team_a", "team_b", *[c for c in summary.columns
                                                       if c not in ("metric", "team_a", "team_b")]]]
    return Comparison(summary, differences[["case", unit, "value_a", "value_b", "difference"]],
                      int(seed), int(n_samples))


def review_cases(
    scores: pd.DataFrame, *, threshold: float = 0.75, reference: str | None = None, metric: str = "DSC"
) -> pd.DataFrame:
    """Cases with an organ whose DSC is at or below ``threshold``, worst first: a list for annotators.

    Parameters
    ----------
    scores : pandas.DataFrame
        Long scores with a ``team`` column.
    threshold : float
        The paper sent cases with DSC <= 0.75 back to senior radiologists.
    metric : str
        The overlap column of the scores (FLARE: ``DSC``; KiTS23: ``Dice``).
    reference : str, optional
        The team whose predictions are the reference; default: the median DSC
        over all teams, organ by organ, of the scored values only (a missing
        or invalid prediction's penalty zero is left out, and counted in the
        ``reference`` column's text).

    Returns
    -------
    pandas.DataFrame
        ``case, label, organ, DSC, reference, teams_at_or_below, reviewed``
        (``case, region, <metric>, ...`` for region scores; an empty column
        for the annotator), sorted by the metric, then case.
    """
    _check_metrics(scores, [metric])
    units = unit_columns(scores)
    if reference is not None:
        teams = set(scores["team"].astype(str))
        if reference not in teams:
            raise ValueError(f"reference team {reference!r} is not in the scores; teams: {sorted(teams)}")
        chosen = scores[scores["team"] == reference][["case", *units, metric]]
        described = reference
    else:
        from .scoring import SCORED_STATUSES

        # A penalty zero (no prediction, an invalid one) says nothing about the annotation: left out of the median.
        scored = scores[scores["status"].isin(SCORED_STATUSES)] if "status" in scores else scores
        chosen = scored.groupby(["case", *units], sort=True)[metric].median().reset_index()
        left_out = len(scores) - len(scored)
        described = "median of all teams" + (f" ({left_out} unscored values left out)" if left_out else "")
        scores = scored
    counts = (scores.assign(low=scores[metric] <= threshold)
              .groupby(["case", *units])["low"].sum().rename("teams_at_or_below").reset_index())
    flagged = chosen[chosen[metric] <= threshold].merge(counts, on=["case", *units], how="left")
    flagged = flagged.assign(reference=described, reviewed="")
    columns = ["case", *units, metric, "reference", "teams_at_or_below", "reviewed"]
    return flagged[columns].sort_values([metric, "case", units[0]], ignore_index=True)

"""The results table checked and arranged as arrays for ranking: `prepare_results` and `ResultsMatrix`. Pure."""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .._text import preview
from ..errors import FlareEvalError, FlareEvalWarning
from ..protocol import Protocol, RankingMetric, load_protocol

__all__ = ["ResultsTableError", "RankingWarning", "ResultsMatrix", "prepare_results", "ANNOTATION_COLUMNS"]

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
    scheme : RankingScheme
        The protocol's ranking scheme (see :mod:`flare_eval.ranking.schemes`).
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
    scheme: object = None
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
    """The stack level of the first frame outside this package: warnings point at the user's line."""
    import sys

    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(__package__ + "."):
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
    from .schemes import scheme_of

    return ResultsMatrix(teams, cases, metrics, values, observed, scheme_of(protocol), tie_break)


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

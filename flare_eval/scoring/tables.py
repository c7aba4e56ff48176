"""Score tables: the columns of ``scores.csv``, its summary and the official wide layout. Pure, no I/O.

Every table is laid out as the protocol's `flare_eval.protocol.ScoreLayout`
says (FLARE: ``label, organ`` columns, a wide summary with a mean row, the
official table's ``<organ>_<metric>`` columns with 4 decimals); the code is the
same for every protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import Protocol, load_protocol

if TYPE_CHECKING:  # pandas is imported where tables are built: scoring workers never need it
    import pandas as pd

__all__ = ["score_columns", "summarize_scores", "official_table"]

_STATISTICS = ("mean", "median", "q1", "q3")


def score_columns(protocol: Protocol) -> list[str]:
    """Columns of ``scores.csv`` for ``protocol`` (without ``team``).

    ``case``, the layout's region keys, the score columns, ``status``, the
    descriptive columns (FLARE's voxel counts) and ``message``.

    Examples
    --------
    >>> score_columns(load_protocol("kits23"))
    ['case', 'region', 'Dice', 'SD', 'status', 'message']
    """
    return ["case", *protocol.layout.key_columns, *protocol.score_columns, "status",
            *protocol.descriptive_columns, "message"]


def sort_keys(*, teams: bool) -> list[str]:
    """Rows sort by team and case; within a case the regions keep the protocol's order (sort stably)."""
    return ["team"] * teams + ["case"]


def summarize_scores(scores: pd.DataFrame, protocol: str | Protocol) -> pd.DataFrame:
    """Summary of every score column over cases, per region (per team when there is a ``team`` column).

    Parameters
    ----------
    scores : pandas.DataFrame
        Long scores as returned by `flare_eval.score_folder` or `flare_eval.score_teams`.
    protocol : str or Protocol

    Returns
    -------
    pandas.DataFrame
        With the layout's ``wide_summary`` (FLARE): one row per organ plus
        ``mean`` (the per-case mean over organs), with ``n`` and mean, median,
        Q1 and Q3 of each score column (``DSC_mean``, ...). Otherwise one row
        per region and metric: ``region, metric, n, mean, median, q1, q3``.
        NaN values (autoPET's Dice of two empty masks) are left out.
    """
    import pandas as pd

    protocol = load_protocol(protocol)
    teams = ["team"] if "team" in scores else []
    name = protocol.layout.name_column
    columns = [c for c in protocol.score_columns if c in scores]
    table = scores[[*teams, "case", name, *columns]]
    order = {region.name: i for i, region in enumerate(protocol.regions)}
    if protocol.layout.wide_summary:
        means = table.groupby([*teams, "case"], sort=True)[columns].mean().reset_index().assign(**{name: "mean"})
        table = pd.concat([table, means[[*teams, "case", name, *columns]]], ignore_index=True)
        order["mean"] = len(order)
    long = table.melt(id_vars=[*teams, "case", name], value_vars=columns, var_name="metric",
                      value_name="value").dropna(subset=["value"])
    long["value"] = long["value"].astype(float)
    grouped = long.groupby([*teams, name, "metric"], sort=False)["value"]
    summary = pd.DataFrame({"n": grouped.count(), "mean": grouped.mean(), "median": grouped.median(),
                            "q1": grouped.quantile(0.25), "q3": grouped.quantile(0.75)}).reset_index()
    metric_order = {m: i for i, m in enumerate(columns)}
    summary = summary.assign(_r=summary[name].map(order), _m=summary["metric"].map(metric_order))
    summary = summary.sort_values([*teams, "_r", "_m"]).drop(columns=["_r", "_m"]).reset_index(drop=True)
    if not protocol.layout.wide_summary:
        return summary
    return _wide_summary(summary, [*teams, name], columns)


def _wide_summary(summary: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    """One row per region: ``n`` (of the first score column), then each column's statistics."""
    wide = summary[summary["metric"] == columns[0]][[*keys, "n"]]
    for metric in columns:
        part = summary[summary["metric"] == metric][[*keys, *_STATISTICS]]
        wide = wide.merge(part.rename(columns={s: f"{metric}_{s}" for s in _STATISTICS}), on=keys, how="left")
    return wide.reset_index(drop=True)


def official_table(scores: pd.DataFrame, protocol: str | Protocol) -> pd.DataFrame:
    """Scores in the protocol's official wide layout: one row per case, a column per region and score.

    ``Name`` is the case as the layout writes it (FLARE: ``<case>.nii.gz``);
    with several teams a ``Team`` column comes first. Columns are
    ``<region>_<score>``, grouped by score (FLARE: every organ's DSC, then
    every NSD) or by region as the layout says, rounded to its decimals
    (FLARE: 4; other protocols unrounded unless the protocol rounds its scores).
    """
    import pandas as pd

    protocol = load_protocol(protocol)
    layout = protocol.layout
    index = ["team", "case"] if "team" in scores else ["case"]
    wide = scores.pivot(index=index, columns=layout.name_column, values=list(protocol.score_columns))
    table = pd.DataFrame({"Name": [layout.official_name.replace("{case}", str(case))
                                   for case in wide.index.get_level_values("case")]})
    if "team" in scores:
        table.insert(0, "Team", wide.index.get_level_values("team"))
    pairs = [(region.name, column) for region in protocol.regions for metric in region.metrics
             if not metric.descriptive for column in metric.columns]
    if layout.official_by_metric:
        position = {column: i for i, column in enumerate(protocol.score_columns)}
        pairs.sort(key=lambda pair: position[pair[1]])
    for region, column in pairs:
        values = wide[(column, region)].to_numpy()
        table[f"{region}_{column}"] = values if layout.official_decimals is None else values.round(
            layout.official_decimals)
    return table

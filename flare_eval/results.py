"""Assembling ``results.csv`` (one row per team and case) from scores and resources. Pure, no I/O.

This is the one place where penalties are applied: a case whose container
timed out, crashed, left no prediction or an invalid one, or whose submission
could not be run at all, gets the protocol's worst value of every ranking
metric (FLARE22: DSC=0, NSD=0, Time=3600, AUC_GPU=29491200, AUC_CPU=360000),
whatever was measured.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import STATUS_NO_RUN
from .protocol import Protocol, load_protocol

__all__ = ["assemble_results", "region_results", "result_columns", "penalized", "PENALIZED_STATUSES",
           "RESOURCE_METRICS", "STATUS_NO_RUN"]

#: Container statuses that get the worst value of every metric. Every status but ``ok`` and ``no_run`` does
#: (see `penalized`), so a status added later can never slip through unpenalised; these are the known ones.
PENALIZED_STATUSES = ("timeout", "crashed", "no_output", "invalid_prediction", "invalid_submission",
                      "engine_error", "stopped_after_failures")
_UNPENALIZED_STATUSES = ("ok", STATUS_NO_RUN)


def penalized(statuses: pd.Series) -> pd.Series:
    """Whether each container status gets the worst values: every status but ``ok`` and ``no_run``."""
    return ~statuses.astype(object).fillna(STATUS_NO_RUN).isin(_UNPENALIZED_STATUSES)
#: Ranking metrics read from ``resources.csv`` (its column), not from the scores.
RESOURCE_METRICS = {"Time": "time_s", "AUC_GPU": "auc_gpu_mib_s", "AUC_CPU": "auc_cpu_pct_s"}


def result_columns(protocol: Protocol) -> list[str]:
    """Columns of ``results.csv``: team, case, each ranking metric, the tie-break column if any, status."""
    return ["team", "case", *(m.name for m in protocol.ranking_metrics), *([protocol.tie_break] * bool(
        protocol.tie_break)), "status"]


def assemble_results(scores: pd.DataFrame, resources: pd.DataFrame | None, protocol: str | Protocol) -> pd.DataFrame:
    """One row per team and case with the protocol's ranking metrics.

    Parameters
    ----------
    scores : pandas.DataFrame
        Long scores (``team, case, <region keys>, <scores>, ...``) as written by ``score``.
    resources : pandas.DataFrame or None
        Rows of ``resources.csv`` (``team, case, time_s, auc_gpu_mib_s,
        auc_cpu_pct_s, status, ...``); the last row of a (team, case) counts.
    protocol : str or Protocol

    Returns
    -------
    pandas.DataFrame
        `result_columns` (FLARE: ``team, case, DSC, NSD, Time, AUC_GPU,
        AUC_CPU, status``): a metric made from scores is the case's mean over
        the regions (see `region_results`), a resource metric the container's
        measurement; ``status`` is the container's (``no_run`` when there is no
        resources row, whose resource metrics are then left empty for the
        ranking to fill).

    Raises
    ------
    ValueError
        If a ranking metric is neither a score column nor a resource measurement.
    """
    protocol = load_protocol(protocol)
    measured = [m.name for m in protocol.ranking_metrics if m.source not in protocol.score_columns]
    unknown = [name for name in measured if name not in RESOURCE_METRICS]
    if unknown:
        raise ValueError(f"protocol {protocol.name}: ranking metric(s) {unknown} are neither score columns "
                         f"{list(protocol.score_columns)} nor resource measurements {list(RESOURCE_METRICS)}")
    table = region_results(scores, protocol)
    if resources is not None and len(resources):
        latest = resources.drop_duplicates(["team", "case"], keep="last")
        columns = ["team", "case", *(RESOURCE_METRICS[name] for name in measured), "status"]
        table = table.merge(latest[columns], on=["team", "case"], how="outer")
        table = table.rename(columns={RESOURCE_METRICS[name]: name for name in measured})
    else:
        for name in measured:
            table[name] = np.nan
        table["status"] = np.nan
    return _apply_penalties(table, protocol)[result_columns(protocol)]


def region_results(scores: pd.DataFrame, protocol: str | Protocol) -> pd.DataFrame:
    """The ranking metrics made from scores: one row per team and case.

    Each is the case's mean over the protocol's regions that have the score
    column (FLARE: DSC and NSD averaged over its organs; KiTS23: Dice and SD
    over its three regions), or one region's value where the metric names a
    region (BraTS: ``LesionWise_Dice_WT``); a tie-break column named
    ``<score>_<region>`` (KiTS23: ``Dice_tumor``) is that region's value.
    """
    protocol = load_protocol(protocol)
    keys = ["team", "case"] if "team" in scores else ["case"]
    name = protocol.layout.name_column
    scores = _protocol_rows(scores, protocol)
    table = scores[keys].drop_duplicates().sort_values(keys, ignore_index=True)
    chosen = [(m.name, m.source, m.region) for m in protocol.ranking_metrics if m.source in protocol.score_columns]
    if protocol.tie_break:
        chosen.append((protocol.tie_break, *protocol.tie_break_parts()))
    for column, source, region in chosen:
        if region is None:  # the case's mean over the regions that have the column
            values = scores.groupby(keys, sort=True)[source].mean().rename(column)
        else:
            values = scores[scores[name] == region].set_index(keys)[source].rename(column)
        table = table.merge(values.reset_index(), on=keys, how="left")
    return table


def _protocol_rows(scores: pd.DataFrame, protocol: Protocol) -> pd.DataFrame:
    """The rows of the protocol's regions, found by whichever of the layout's key columns the table has."""
    known = [column for column in protocol.layout.key_columns if column in scores]
    if not known:
        raise ValueError(f"scores have none of the columns {list(protocol.layout.key_columns)} that name the "
                         f"{protocol.layout.unit}s of protocol {protocol.name}: scores of another protocol?")
    wanted = {tuple(protocol.layout.keys(region)[column] for column in known) for region in protocol.regions}
    return scores[[key in wanted for key in zip(*(scores[column] for column in known))]]


def _apply_penalties(table: pd.DataFrame, protocol: Protocol) -> pd.DataFrame:
    """Cases without a run get status ``no_run``; failed ones the protocol's worst value of every metric."""
    table["status"] = table["status"].astype(object).fillna(STATUS_NO_RUN)
    failed = penalized(table["status"])
    for metric in protocol.ranking_metrics:
        if metric.name in table:
            table.loc[failed, metric.name] = metric.worst
    return table.sort_values(["team", "case"], ignore_index=True)

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

__all__ = ["assemble_results", "region_results", "penalized", "PENALIZED_STATUSES", "RESULT_COLUMNS", "STATUS_NO_RUN"]

#: Container statuses that get the worst value of every metric. Every status but ``ok`` and ``no_run`` does
#: (see `penalized`), so a status added later can never slip through unpenalised; these are the known ones.
PENALIZED_STATUSES = ("timeout", "crashed", "no_output", "invalid_prediction", "invalid_submission",
                      "engine_error", "stopped_after_failures")
_UNPENALIZED_STATUSES = ("ok", STATUS_NO_RUN)


def penalized(statuses: pd.Series) -> pd.Series:
    """Whether each container status gets the worst values: every status but ``ok`` and ``no_run``."""
    return ~statuses.astype(object).fillna(STATUS_NO_RUN).isin(_UNPENALIZED_STATUSES)
RESULT_COLUMNS = ["team", "case", "DSC", "NSD", "Time", "AUC_GPU", "AUC_CPU", "status"]
_RESOURCE_METRICS = {"Time": "time_s", "AUC_GPU": "auc_gpu_mib_s", "AUC_CPU": "auc_cpu_pct_s"}


def assemble_results(
    scores: pd.DataFrame, resources: pd.DataFrame | None, protocol: str | Protocol = "flare22"
) -> pd.DataFrame:
    """One row per team and case with the five ranking metrics.

    Parameters
    ----------
    scores : pandas.DataFrame
        Long scores (``team, case, label, DSC, NSD, ...``) as written by ``score``.
    resources : pandas.DataFrame or None
        Rows of ``resources.csv`` (``team, case, time_s, auc_gpu_mib_s,
        auc_cpu_pct_s, status, ...``); the last row of a (team, case) counts.
    protocol : str or Protocol

    Returns
    -------
    pandas.DataFrame
        ``team, case, DSC, NSD, Time, AUC_GPU, AUC_CPU, status``: DSC and NSD
        are the case's mean over the protocol's organs; ``status`` is the
        container's (``no_run`` when there is no resources row, whose
        resource metrics are then left empty for the ranking to fill).
    """
    protocol = load_protocol(protocol)
    if protocol.regions:
        return _region_results_with_status(scores, resources, protocol)
    labels = set(protocol.labels)
    organ_scores = scores[scores["label"].isin(labels)]
    table = organ_scores.groupby(["team", "case"], sort=True)[["DSC", "NSD"]].mean().reset_index()
    if resources is not None and len(resources):
        latest = resources.drop_duplicates(["team", "case"], keep="last")
        columns = ["team", "case", *_RESOURCE_METRICS.values(), "status"]
        table = table.merge(latest[columns], on=["team", "case"], how="outer")
        table = table.rename(columns={v: k for k, v in _RESOURCE_METRICS.items()})
    else:
        for metric in _RESOURCE_METRICS:
            table[metric] = np.nan
        table["status"] = np.nan
    return _apply_penalties(table, protocol)[RESULT_COLUMNS]


def region_results(scores: pd.DataFrame, protocol: str | Protocol) -> pd.DataFrame:
    """Results of a region protocol (KiTS23, BraTS, ...): one row per team and case.

    Each ranking metric is the case's mean over the regions that have it
    (KiTS23: Dice and SD averaged over its three regions), or one region's
    value where the metric names a region (BraTS: ``LesionWise_Dice_WT``); a
    tie-break column named ``<metric>_<region>`` (KiTS23: ``Dice_tumor``) is
    that region's value.
    """
    protocol = load_protocol(protocol)
    keys = ["team", "case"] if "team" in scores else ["case"]
    table = scores[keys].drop_duplicates().sort_values(keys, ignore_index=True)
    chosen = [(m.name, m.source, m.region) for m in protocol.ranking_metrics]
    if protocol.tie_break:
        chosen.append((protocol.tie_break, *protocol.tie_break_parts()))
    for name, source, region in chosen:
        if region is None:  # the case's mean over the regions that have the column
            values = scores.groupby(keys, sort=True)[source].mean().rename(name)
        else:
            values = scores[scores["region"] == region].set_index(keys)[source].rename(name)
        table = table.merge(values.reset_index(), on=keys, how="left")
    return table


def _region_results_with_status(scores: pd.DataFrame, resources: pd.DataFrame | None,
                                protocol: Protocol) -> pd.DataFrame:
    table = region_results(scores, protocol)
    if resources is not None and len(resources):
        latest = resources.drop_duplicates(["team", "case"], keep="last")[["team", "case", "status"]]
        table = table.merge(latest, on=["team", "case"], how="outer")
    else:
        table["status"] = np.nan
    return _apply_penalties(table, protocol)


def _apply_penalties(table: pd.DataFrame, protocol: Protocol) -> pd.DataFrame:
    """Cases without a run get status ``no_run``; failed ones the protocol's worst value of every metric."""
    table["status"] = table["status"].astype(object).fillna(STATUS_NO_RUN)
    failed = penalized(table["status"])
    for metric in protocol.ranking_metrics:
        if metric.name in table:
            table.loc[failed, metric.name] = metric.worst
    return table.sort_values(["team", "case"], ignore_index=True)

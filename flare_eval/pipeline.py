"""File-level steps that read and write the CSV tables of the data flow.

Each function here is one arrow of the data flow in the README: it reads its
input tables, calls the pure computation (:mod:`flare_eval.ranking`, ...) and
writes its output tables atomically. The CLI calls these.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ._version import __version__
from .io import read_table, write_table
from .protocol import Protocol, load_protocol
from .ranking import (
    BootstrapResult,
    RankingWarning,
    best_versus_rest,
    bootstrap_stability,
    prepare_results,
    rank,
    significance,
)

__all__ = ["RankingOutputs", "rank_results"]


@dataclass(frozen=True)
class RankingOutputs:
    """Tables computed and written by `rank_results` (``folder`` holds the CSV files)."""

    ranking: pd.DataFrame
    bootstrap: BootstrapResult
    significance: pd.DataFrame
    best_versus_rest: pd.DataFrame
    folder: Path


def rank_results(
    results_csv: str | Path,
    out_dir: str | Path,
    protocol: str | Protocol = "flare22",
    *,
    n_samples: int = 1000,
    seed: int | None = None,
    adjust: str = "holm",
    alpha: float = 0.05,
) -> RankingOutputs:
    """Rank the teams of a ``results.csv`` and write the ranking tables.

    Writes to ``out_dir``: ``ranking.csv`` (`flare_eval.ranking.rank`),
    ``bootstrap.csv`` and ``rank_distribution.csv``
    (`flare_eval.ranking.bootstrap_stability`), ``significance.csv``
    (`flare_eval.ranking.significance`), ``best_vs_rest.csv``
    (`flare_eval.ranking.best_versus_rest` on DSC) and ``settings.json``
    (protocol, seed, number of samples, adjustment, alpha, version) so that
    the run can be reproduced.

    Warnings about filled-in values name the results file.
    """
    protocol = load_protocol(protocol)
    results_csv, out_dir = Path(results_csv), Path(out_dir)
    table = read_table(results_csv, role="results table")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RankingWarning)
        matrix = prepare_results(table, protocol)
    for warning in caught:
        warnings.warn(f"{results_csv}: {warning.message}", RankingWarning, stacklevel=2)

    ranking = rank(matrix)
    bootstrap = bootstrap_stability(matrix, n_samples=n_samples, seed=seed)
    tests = significance(matrix, adjust=adjust, alpha=alpha)
    paper = best_versus_rest(matrix, metric=matrix.metrics[0].name, adjust=adjust, alpha=alpha)
    write_table(ranking, out_dir / "ranking.csv")
    write_table(bootstrap.samples, out_dir / "bootstrap.csv")
    write_table(bootstrap.rank_distribution, out_dir / "rank_distribution.csv")
    write_table(tests, out_dir / "significance.csv")
    write_table(paper, out_dir / "best_vs_rest.csv")
    settings = {
        "results": str(results_csv),
        "protocol": protocol.name,
        "protocol_source": protocol.source,
        "teams": len(matrix.teams),
        "cases": len(matrix.cases),
        "bootstrap_samples": bootstrap.n_samples,
        "seed": bootstrap.seed,
        "adjust": adjust,
        "alpha": alpha,
        "flare_eval_version": __version__,
    }
    (out_dir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return RankingOutputs(ranking, bootstrap, tests, paper, out_dir)

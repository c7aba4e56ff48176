"""Ranking: the results table as arrays, the protocol's scheme, bootstrap stability and significance. Pure.

=================  ==================================================================================
module             what it holds
=================  ==================================================================================
``matrix``         `prepare_results`: the results table checked (columns, ranges, duplicates) and
                   arranged as arrays, missing values filled with the worst value (`ResultsMatrix`)
``schemes``        ranking schemes as objects (`RankThenAggregate`, `AggregateThenRank`,
                   `TestThenRank`), `rank`, `case_ranks`, `ranking_methods`, `rank_per_region`
``bootstrap``      `bootstrap_stability`: Kendall's tau of the ranking over bootstrap samples
``significance``   `significance`, `best_versus_rest`: paired Wilcoxon tests as R's, Holm's adjustment
``arrays``         rank arithmetic with ties at the minimum, `kendall_tau_b`, bounded chunks
=================  ==================================================================================

The scheme of the FLARE22 paper ("Ranking scheme"): for every case and every
metric the teams are ranked (ties at the minimum rank); a team's score is the
weighted mean of all its ranks, ``sum(w_m * rank) / (n_cases * sum(w_m))``;
the final ranking orders the scores (ties at the minimum again). Other
protocols name their own scheme (KiTS23: aggregate, then rank, with a
tie-break).

Every array the code holds at once is bounded (`flare_eval.ranking.arrays.CHUNK_ELEMENTS`
elements per temporary), so memory stays bounded however many teams, cases and
bootstrap samples there are.
"""

from ..defaults import DEFAULT_SEED
from .arrays import kendall_tau_b
from .bootstrap import BOOTSTRAP_COPIES, BootstrapResult, bootstrap_stability
from .matrix import ANNOTATION_COLUMNS, RankingWarning, ResultsMatrix, ResultsTableError, prepare_results
from .schemes import (
    RANKING_METHODS,
    AggregateThenRank,
    RankingScheme,
    RankThenAggregate,
    TestThenRank,
    case_ranks,
    rank,
    rank_per_region,
    ranking_methods,
    ranking_methods_agreement,
    scheme_of,
)
from .significance import ADJUST_METHODS, best_versus_rest, holm_adjust, paired_wilcoxon, significance

__all__ = [
    "ResultsTableError",
    "RankingWarning",
    "ResultsMatrix",
    "prepare_results",
    "rank",
    "case_ranks",
    "RankingScheme",
    "RankThenAggregate",
    "AggregateThenRank",
    "TestThenRank",
    "scheme_of",
    "BootstrapResult",
    "bootstrap_stability",
    "BOOTSTRAP_COPIES",
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
    "ANNOTATION_COLUMNS",
    "DEFAULT_SEED",
]

"""flare-eval: evaluate and rank segmentation algorithms the way the FLARE challenges did.

The public API, re-exported here, covers each step of the data flow:

* protocols: `load_protocol`, `available_protocols`, `Protocol` (every challenge is `Region` s scored
  with `RegionMetric` s: FLARE's organs, KiTS23, BraTS 2023, FLARE24, autoPET alike);
* metrics on arrays: `dice_coefficient`, `surface_distances`, `normalized_surface_dice`;
* reading label maps: `read_label_map`, `read_header` (the header alone, before trusting a file), `pair_cases`;
* scoring: `score_label_maps` (every region of a protocol on two arrays), `score_case`, `score_folder`,
  `score_teams`, `score` (writes the output tables), locally or on a Dask cluster (``scheduler=``),
  `summarize_scores`, `official_table`;
* ranking: `rank`, `bootstrap_stability`, `significance` (`paired_wilcoxon`, `holm_adjust`),
  `best_versus_rest`, `ranking_methods` (challengeR's other methods, `ranking_methods_agreement`),
  `prepare_results`, and `rank_results` (reads ``results.csv``, writes the ranking tables);
* containers: `run_containers` (with `ContainerLimits`, `ContainerInterface`),
  `collect_results` (scores + resources -> ``results.csv``, penalties applied; `assemble_results`,
  `region_results` on tables),
  `evaluate` (the whole chain);
* report and quantification: `report` (HTML page; the figures are in
  :mod:`flare_eval.reporting.plots` for notebooks), `quantify` (organ volumes against ground truth);
* cohort analysis: `cohorts` (subgroups and cohorts), `compare` (two teams case by case),
  `review` (cases for annotation review); the statistics are in :mod:`flare_eval.cohort_stats`;
* example data: `example_paths`.
"""

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

# The public API is imported on first use (PEP 562), so that `flare-eval score` loads neither the Docker SDK
# nor the report's plotting code; static tools and IDEs read the imports below.
if TYPE_CHECKING:
    from ._examples import ExamplePaths, example_paths
    from .errors import FlareEvalError, FlareEvalWarning
    from .harness import ContainerError, ContainerInterface, ContainerLimits, Submission, run_containers
    from .io import InvalidLabelMapError, LabelMap, pair_cases, read_header, read_label_map, read_scores
    from .metrics import SurfaceDistances, dice_coefficient, normalized_surface_dice, surface_distances
    from .pipeline import (
        CohortOutputs,
        EvaluationOutputs,
        QuantifyOutputs,
        RankingOutputs,
        cohorts,
        collect_results,
        compare,
        evaluate,
        quantify,
        rank_results,
        report,
        review,
    )
    from .protocol import Protocol, Region, RegionMetric, available_protocols, load_protocol
    from .ranking import (
        BootstrapResult,
        RankingWarning,
        ResultsTableError,
        best_versus_rest,
        bootstrap_stability,
        case_ranks,
        holm_adjust,
        kendall_tau_b,
        paired_wilcoxon,
        prepare_results,
        rank,
        ranking_methods,
        ranking_methods_agreement,
        significance,
    )
    from .results import assemble_results, region_results
    from .scoring import (
        official_table,
        score,
        score_case,
        score_folder,
        score_label_maps,
        score_teams,
        summarize_scores,
    )

#: Where each public name lives; ``flare_eval.<name>`` imports its module on first use.
_SOURCES = {
    "._examples": ("ExamplePaths", "example_paths"),
    ".errors": ("FlareEvalError", "FlareEvalWarning"),
    ".harness": ("ContainerError", "ContainerInterface", "ContainerLimits", "Submission", "run_containers"),
    ".io": ("InvalidLabelMapError", "LabelMap", "pair_cases", "read_header", "read_label_map", "read_scores"),
    ".metrics": ("SurfaceDistances", "dice_coefficient", "normalized_surface_dice", "surface_distances"),
    ".pipeline": ("CohortOutputs", "EvaluationOutputs", "QuantifyOutputs", "RankingOutputs", "cohorts",
                  "collect_results", "compare", "evaluate", "quantify", "rank_results", "report", "review"),
    ".protocol": ("Protocol", "Region", "RegionMetric", "available_protocols", "load_protocol"),
    ".ranking": ("BootstrapResult", "RankingWarning", "ResultsTableError", "best_versus_rest",
                 "bootstrap_stability", "case_ranks", "holm_adjust", "kendall_tau_b", "paired_wilcoxon",
                 "prepare_results", "rank", "ranking_methods", "ranking_methods_agreement", "significance"),
    ".results": ("assemble_results", "region_results"),
    ".scoring": ("official_table", "score", "score_case", "score_folder", "score_label_maps", "score_teams",
                 "summarize_scores"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "__version__",
    "ExamplePaths",
    "example_paths",
    "InvalidLabelMapError",
    "LabelMap",
    "pair_cases",
    "read_header",
    "read_label_map",
    "SurfaceDistances",
    "dice_coefficient",
    "normalized_surface_dice",
    "surface_distances",
    "Protocol",
    "Region",
    "RegionMetric",
    "available_protocols",
    "load_protocol",
    "FlareEvalError",
    "FlareEvalWarning",
    "official_table",
    "score",
    "score_case",
    "score_folder",
    "score_teams",
    "summarize_scores",
    "RankingOutputs",
    "rank_results",
    "EvaluationOutputs",
    "QuantifyOutputs",
    "CohortOutputs",
    "cohorts",
    "compare",
    "review",
    "read_scores",
    "quantify",
    "report",
    "case_ranks",
    "collect_results",
    "evaluate",
    "assemble_results",
    "region_results",
    "score_label_maps",
    "ContainerError",
    "ContainerInterface",
    "ContainerLimits",
    "Submission",
    "run_containers",
    "BootstrapResult",
    "RankingWarning",
    "ResultsTableError",
    "best_versus_rest",
    "bootstrap_stability",
    "holm_adjust",
    "kendall_tau_b",
    "paired_wilcoxon",
    "prepare_results",
    "rank",
    "ranking_methods",
    "ranking_methods_agreement",
    "significance",
]

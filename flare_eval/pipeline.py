"""File-level steps that read and write the CSV tables of the data flow.

Each function here is one arrow of the data flow in the README: it reads its
input tables, calls the pure computation (:mod:`flare_eval.ranking`, ...) and
writes its output tables atomically. The CLI calls these.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ._text import preview, progress_bar
from ._version import __version__
from .errors import FlareEvalWarning
from .io import hold_folder, read_resources, read_scores, read_table, write_settings, write_table
from .protocol import Protocol, resolve_protocol
from .ranking import (
    DEFAULT_SEED,
    BootstrapResult,
    RankingWarning,
    best_versus_rest,
    bootstrap_stability,
    prepare_results,
    rank,
    ranking_methods,
    ranking_methods_agreement,
    significance,
)
from .results import assemble_results

__all__ = [
    "RankingOutputs",
    "rank_results",
    "collect_results",
    "EvaluationOutputs",
    "evaluate",
    "QuantifyOutputs",
    "quantify",
    "report",
    "CohortOutputs",
    "cohorts",
    "compare",
    "review",
]


@dataclass(frozen=True)
class RankingOutputs:
    """Tables computed and written by `rank_results` (``folder`` holds the CSV files)."""

    ranking: pd.DataFrame
    bootstrap: BootstrapResult
    significance: pd.DataFrame
    best_versus_rest: pd.DataFrame
    methods: pd.DataFrame
    methods_agreement: pd.DataFrame
    folder: Path


def accuracy_metrics(protocol: Protocol) -> list[str]:
    """The columns of ``scores.csv`` that the protocol ranks (FLARE: DSC, NSD; BraTS: LesionWise_Dice, ...).

    Each ranking metric made from a score column counts once, in the protocol's order; Time and the AUCs
    come from the runs, not the scores.
    """
    columns = set(protocol.score_columns)
    chosen = [m.source for m in protocol.ranking_metrics if m.source in columns]
    return list(dict.fromkeys(chosen)) or list(protocol.score_columns)


def rank_results(
    results_csv: str | Path,
    out_dir: str | Path,
    protocol: str | Protocol | None = None,
    *,
    n_samples: int = 1000,
    seed: int | None = DEFAULT_SEED,
    adjust: str = "holm",
    alpha: float = 0.05,
    bootstrap_copies: str = "separate",
) -> RankingOutputs:
    """Rank the teams of a ``results.csv`` and write the ranking tables.

    Writes to ``out_dir``: ``ranking.csv`` (`flare_eval.ranking.rank`),
    ``bootstrap.csv``, ``rank_distribution.csv`` and ``bootstrap_ranks.csv``
    (every team's rank in every sample)
    (`flare_eval.ranking.bootstrap_stability`), ``significance.csv``
    (`flare_eval.ranking.significance`), ``best_vs_rest.csv``
    (`flare_eval.ranking.best_versus_rest` on DSC), ``ranking_methods.csv``
    and ``ranking_methods_tau.csv`` (`flare_eval.ranking.ranking_methods` and
    its agreement with the official ranking) and ``settings.json``
    (protocol, seed, number of samples, adjustment, alpha, version) so that
    the run can be reproduced. The seed defaults to the fixed
    `flare_eval.ranking.DEFAULT_SEED` (None draws one, recorded either way).
    ``bootstrap_copies`` is `flare_eval.ranking.bootstrap_stability`'s
    ``copies`` (``joint`` reproduces challengeR's bootstrap).

    ``protocol`` defaults to the one recorded beside ``results_csv`` (see
    `resolve_protocol`). Warnings about filled-in values name the results file.
    """
    results_csv, out_dir = Path(results_csv), Path(out_dir)
    protocol = resolve_protocol(protocol, results_csv)
    table = read_table(results_csv, role="results table")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RankingWarning)
        matrix = prepare_results(table, protocol)
    for warning in caught:
        warnings.warn(f"{results_csv}: {warning.message}", RankingWarning, stacklevel=2)

    ranking = rank(matrix)
    bootstrap = bootstrap_stability(matrix, n_samples=n_samples, seed=seed, copies=bootstrap_copies)
    tests = significance(matrix, adjust=adjust, alpha=alpha)
    paper = best_versus_rest(matrix, metric=matrix.metrics[0].name, adjust=adjust, alpha=alpha)
    methods = ranking_methods(matrix, alpha=alpha)
    agreement = ranking_methods_agreement(methods)
    write_table(ranking, out_dir / "ranking.csv")
    write_table(bootstrap.samples, out_dir / "bootstrap.csv")
    write_table(bootstrap.rank_distribution, out_dir / "rank_distribution.csv")
    write_table(bootstrap.ranks_table(), out_dir / "bootstrap_ranks.csv")
    write_table(tests, out_dir / "significance.csv")
    write_table(paper, out_dir / "best_vs_rest.csv")
    write_table(methods, out_dir / "ranking_methods.csv")
    write_table(agreement, out_dir / "ranking_methods_tau.csv")
    settings = {
        "results": str(results_csv),
        **protocol.record(),
        "teams": len(matrix.teams),
        "cases": len(matrix.cases),
        "bootstrap_samples": bootstrap.n_samples,
        "bootstrap_copies": bootstrap_copies,
        "seed": bootstrap.seed,
        "adjust": adjust,
        "alpha": alpha,
        "flare_eval_version": __version__,
    }
    write_settings(settings, out_dir / "settings.json")
    return RankingOutputs(ranking, bootstrap, tests, paper, methods, agreement, out_dir)


class CollectWarning(FlareEvalWarning):
    """Something about the collected results deserves attention (e.g. GPU memory not measured)."""


def collect_results(
    runs_dir: str | Path,
    labels_dir: str | Path,
    out_csv: str | Path | None = None,
    protocol: str | Protocol | None = None,
    *,
    workers: int | None = None,
    progress: bool | None = None,
    scheduler=None,
    ship: str = "auto",
    warn_unmeasured: bool = True,
) -> pd.DataFrame:
    """Score every team's predictions and gather ``results.csv`` for ranking.

    For each team folder of ``runs_dir`` (see :mod:`flare_eval.harness.runner`),
    scores ``predictions/`` against ``labels_dir`` (writing the team's
    ``scores.csv``, ``scores_official.csv`` and ``summary.csv`` beside them),
    then joins the team's ``resources.csv`` and applies the penalties (see
    :mod:`flare_eval.results`). A team folder that holds label maps itself is
    a predictions-only submission: its cases get status ``no_run`` and no
    resource metrics (a region preset ranks them on accuracy alone). Writes ``out_csv`` (default
    ``runs_dir/results.csv``). ``scheduler`` and ``ship`` score on a Dask
    cluster (see :func:`flare_eval.score_folder`). One `CollectWarning` says
    which teams' cases ran without GPU measurement (``warn_unmeasured=False``
    when that was asked for, as with ``--gpus none``). ``protocol`` defaults
    to the one recorded in the runs folder or beside ``out_csv`` (see `resolve_protocol`).
    While a run of containers writes ``runs_dir``, collecting from it is refused
    (`~flare_eval.errors.FolderInUseError`), and vice versa.
    """
    from .scoring import FlareEvalWarning, score

    runs_dir = Path(runs_dir)
    protocol = resolve_protocol(protocol, runs_dir, Path(out_csv).parent if out_csv is not None else None)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs folder {runs_dir} does not exist or is not a folder")
    with hold_folder(runs_dir, "collect"):  # run-containers still writing it is refused, and vice versa
        team_dirs = sorted(p for p in runs_dir.iterdir() if not p.name.startswith(".") and (
            (p / "predictions").is_dir() or (p / "resources.csv").exists() or _holds_label_maps(p)))
        if not team_dirs:
            raise ValueError(f"runs folder {runs_dir} holds no team folders (with predictions/, resources.csv or label "
                             "maps)")
        scores = []
        # Every team is scored into a staging folder first: a run that cannot score anything (the wrong labels
        # folder, the wrong protocol) fails before it replaces any team's earlier tables.
        staging = Path(tempfile.mkdtemp(prefix=".collect-", dir=runs_dir))
        (staging / ".none").mkdir()  # the predictions of a team that has none
        try:
            for team_dir in team_dirs:
                # A team folder of predictions alone (a predictions-only challenge) is its own predictions folder.
                predictions = team_dir / "predictions" if not _holds_label_maps(team_dir) else team_dir
                with warnings.catch_warnings():
                    # Missing predictions are expected here: their status comes from resources.csv.
                    warnings.simplefilter("ignore", FlareEvalWarning)
                    team_scores, _ = score(predictions if predictions.is_dir() else staging / ".none", labels_dir,
                                           staging / team_dir.name, protocol, workers=workers, progress=progress,
                                           force=True, scheduler=scheduler, ship=ship)
                scores.append(team_scores.assign(team=team_dir.name))
            scores = pd.concat(scores, ignore_index=True)
            _refuse_if_nothing_scored(scores, labels_dir)
            for team_dir in team_dirs:
                for produced in sorted((staging / team_dir.name).iterdir()):
                    os.replace(produced, team_dir / produced.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _warn_absent_labels(scores, protocol, labels_dir)
        resources = read_resources(runs_dir)
        if not resources.empty and warn_unmeasured:
            _warn_unmeasured_gpu(resources)
        results = assemble_results(scores, None if resources.empty else resources, protocol)
        out_csv = Path(out_csv) if out_csv else runs_dir / "results.csv"
        write_table(results, out_csv)
        write_settings({**protocol.record(), "results": str(out_csv), "labels": str(labels_dir),
                        "flare_eval_version": __version__}, out_csv.parent / "settings.json", merge=True)
        return results


def _holds_label_maps(folder: Path) -> bool:
    from .io import case_id

    return folder.is_dir() and any(case_id(p) is not None for p in folder.iterdir() if p.is_file())


def _refuse_if_nothing_scored(scores: pd.DataFrame, labels_dir: Path) -> None:
    """Predictions were there, yet not one case could be scored: the inputs are wrong, not the teams."""
    from .scoring import SCORED_STATUSES, STATUS_MISSING

    present = scores[scores["status"] != STATUS_MISSING]
    if len(present) and not present["status"].isin(SCORED_STATUSES).any():
        example = present.iloc[0]
        raise ValueError(f"not one prediction could be scored against {labels_dir} (e.g. team {example['team']}, "
                         f"case {example['case']}: {example['status']}: {example['message']}); nothing was "
                         "replaced: check the labels folder and the protocol")


def _warn_absent_labels(scores: pd.DataFrame, protocol: Protocol, labels_dir: Path) -> None:
    """A protocol region that no ground truth of the run holds is the likely sign of the wrong protocol.

    Known from the scores' ground-truth voxel counts, where the protocol counts voxels (FLARE's).
    """
    from .scoring import SCORED_STATUSES

    name = protocol.layout.name_column
    if "gt_voxels" not in scores or name not in scores:
        return
    scored = scores[scores["status"].isin(SCORED_STATUSES)]
    if scored.empty:
        return
    present = scored.groupby(name)["gt_voxels"].sum()
    absent = [region for region in protocol.regions if present.get(region.name, 0) == 0]
    if absent:
        named = preview([f"{' '.join(map(str, r.labels))} {r.name}" for r in absent])
        warnings.warn(f"{len(absent)} of the {len(protocol.regions)} {protocol.layout.unit}s of protocol "
                      f"{protocol.name} never occur in any ground truth of {labels_dir} ({named}): "
                      "is this the right --protocol?", CollectWarning, stacklevel=3)


def _warn_unmeasured_gpu(resources: pd.DataFrame) -> None:
    """One warning for all the cases that ran without GPU measurement (cases that never ran do not count)."""
    ran = resources[resources["status"] != "invalid_submission"]
    unmeasured = ran[ran["gpu_measured"].astype(str).str.lower() != "true"]
    if len(unmeasured):
        teams = sorted(unmeasured["team"].unique())
        warnings.warn(f"GPU memory was not measured (no GPU) for {len(unmeasured)} case(s) of {len(teams)} team(s) "
                      f"({preview(teams)}); their AUC_GPU is 0", CollectWarning, stacklevel=3)


@dataclass(frozen=True)
class EvaluationOutputs:
    """Everything `evaluate` produced; ``ranking`` is None with fewer than two teams.

    ``cases_without_input`` lists ground-truth cases that have no input image
    (no team could run them; each team scores 0 there as ``missing``).
    """

    resources: pd.DataFrame
    results: pd.DataFrame
    ranking: RankingOutputs | None
    folder: Path
    cases_without_input: tuple[str, ...] = ()


def evaluate(
    submissions,
    inputs_dir: str | Path,
    labels_dir: str | Path,
    out_dir: str | Path,
    protocol: str | Protocol | None = None,
    *,
    gpus: str | int | None = "auto",
    limits=None,
    interface=None,
    force: bool = False,
    progress: bool | None = None,
    n_samples: int = 1000,
    seed: int | None = DEFAULT_SEED,
    scheduler=None,
    ship: str = "auto",
    keep_images: bool = False,
) -> EvaluationOutputs:
    """The organizer's whole chain: run the containers, score, collect ``results.csv``, rank.

    Writes ``out_dir/runs/`` (see :func:`flare_eval.run_containers`),
    ``out_dir/results.csv`` and, with two teams or more, ``out_dir/ranking/``.
    Rerunning resumes every step. With ``scheduler``, containers and scoring
    run on that Dask cluster (see :func:`flare_eval.run_containers`).
    ``protocol`` defaults to the one an earlier run of ``out_dir`` recorded.
    """
    from .harness.runner import find_cases, run_containers
    from .io import pair_cases

    out_dir = Path(out_dir)
    protocol = resolve_protocol(protocol, out_dir / "runs", out_dir)
    inputs = find_cases(inputs_dir)
    without_input = tuple(p.case for p in pair_cases(labels_dir, labels_dir).pairs if p.case not in inputs)
    if without_input:
        warnings.warn(f"{labels_dir}: {len(without_input)} ground-truth case(s) have no input image in {inputs_dir} "
                      f"({preview(list(without_input))}); no team can be run on them", CollectWarning, stacklevel=2)
    resources = run_containers(submissions, inputs_dir, out_dir / "runs", protocol, gpus=gpus, limits=limits,
                               interface=interface, force=force, progress=progress, scheduler=scheduler, ship=ship,
                               keep_images=keep_images)
    results = collect_results(out_dir / "runs", labels_dir, out_dir / "results.csv", protocol, progress=progress,
                              scheduler=scheduler, ship=ship, warn_unmeasured=gpus not in (None, "none"))
    ranking = None
    if results["team"].nunique() >= 2:
        ranking = rank_results(out_dir / "results.csv", out_dir / "ranking", protocol, n_samples=n_samples, seed=seed)
    return EvaluationOutputs(resources, results, ranking, out_dir, without_input)


@dataclass(frozen=True)
class QuantifyOutputs:
    """Tables of `quantify`; ``agreement`` and ``summary`` compare with ground truth when it was given."""

    volumes: pd.DataFrame
    agreement: pd.DataFrame | None
    summary: pd.DataFrame
    folder: Path | None


def quantify(
    pred_dir: str | Path,
    gt_dir: str | Path | None,
    out_dir: str | Path | None = None,
    protocol: str | Protocol | None = None,
    *,
    progress: bool | None = None,
) -> QuantifyOutputs:
    """Organ volumes (and tubular organ diameters) of every label map, against ground truth if given.

    The arguments come in the order of `flare_eval.score` and of the CLI:
    predictions, ground truth (None for volumes alone), output folder.

    Writes ``out_dir/volumes.csv`` (``case, label, organ, source, volume_ml,
    diameter_mm``; ``source`` is ``prediction`` or ``ground_truth``),
    ``out_dir/volume_summary.csv`` (median, Q1, Q3 per organ and source) and,
    with ground truth, ``out_dir/agreement.csv`` (see
    :func:`flare_eval.volumes.volume_agreement`); with ``out_dir`` None (in a
    notebook) it writes nothing and returns the tables. Cases without a
    prediction are reported in a warning and left out of the agreement.
    ``protocol`` defaults to ``flare22`` (label maps record none).
    """
    from .cohort_stats import unit_columns
    from .execution import run_bounded
    from .io import LABEL_MAP_SUFFIXES, case_id, pair_cases
    from .volumes import median_iqr_table, paired_volumes, volume_agreement

    protocol = resolve_protocol(protocol)
    pred_dir, out_dir = Path(pred_dir), None if out_dir is None else Path(out_dir)
    if gt_dir is not None:
        pairing = pair_cases(pred_dir, gt_dir)
        jobs = [(p.case, "ground_truth", p.gt_path) for p in pairing.pairs]
        jobs += [(p.case, "prediction", p.pred_path) for p in pairing.pairs if p.pred_path is not None]
        missing = [p.case for p in pairing.pairs if p.pred_path is None]
        if missing:
            warnings.warn(f"{pred_dir}: no prediction for {len(missing)} case(s): {', '.join(missing[:5])}",
                          UserWarning, stacklevel=2)
    else:
        if not pred_dir.is_dir():
            raise FileNotFoundError(f"prediction folder {pred_dir} does not exist or is not a folder")
        jobs = [(case_id(p), "prediction", p) for p in sorted(pred_dir.iterdir())
                if case_id(p) and (p.is_file() or p.is_symlink())]
        if not jobs:
            raise ValueError(f"prediction folder {pred_dir} holds no label maps ({', '.join(LABEL_MAP_SUFFIXES)})")
    frames = []
    bar = progress_bar(len(jobs), desc="measuring", unit="map", show=progress)
    # Every file is read in a bounded, disposable worker (a prediction is untrusted); one that cannot be read
    # is named in a warning and left out, the others are measured.
    tasks = [(case, source, path, protocol) for case, source, path in jobs]
    try:
        for outcome in run_bounded(_measure_file, tasks, workers=min(len(tasks), os.cpu_count() or 1) or 1,
                                   limits=protocol.scoring_limits, on_failure=_measure_failed):
            bar.update(1)
            if isinstance(outcome, str):
                warnings.warn(outcome, UserWarning, stacklevel=2)
            else:
                frames.append(outcome)
    finally:
        bar.close()
    if not frames:
        raise ValueError(f"no label map of {pred_dir} could be measured (see the warnings)")
    volumes = pd.concat(frames, ignore_index=True)
    units = unit_columns(volumes)
    volumes = volumes[["case", *units, "source", "volume_ml", "diameter_mm"]]
    summary = median_iqr_table(volumes, "volume_ml", by=(*units, "source"))
    agreement = None if gt_dir is None else volume_agreement(paired_volumes(volumes))
    if out_dir is not None:
        if agreement is not None:
            write_table(agreement, out_dir / "agreement.csv")
        write_table(volumes, out_dir / "volumes.csv")
        write_table(summary, out_dir / "volume_summary.csv")
        write_settings({**protocol.record(), "predictions": str(pred_dir),
                        "ground_truth": None if gt_dir is None else str(gt_dir), "flare_eval_version": __version__},
                       out_dir / "settings.json")
    return QuantifyOutputs(volumes, agreement, summary, out_dir)


def _measure_file(case: str, source: str, path: Path, protocol: Protocol) -> pd.DataFrame | str:
    """Worker task of `quantify`: one label map's volumes, or why it could not be read."""
    from .geometry import superior_axis
    from .io import InvalidLabelMapError, read_label_map
    from .volumes import measure_label_map

    try:
        label_map = read_label_map(path, follow_link=source == "ground_truth")
    except InvalidLabelMapError as exc:
        if source == "ground_truth":
            raise
        return f"left out of the volumes: {exc}"
    axis, _ = superior_axis(label_map.affine)
    return measure_label_map(label_map.array, label_map.spacing_mm, protocol, axis=axis).assign(case=case,
                                                                                               source=source)


def _measure_failed(arguments: tuple, failure) -> str:
    return f"left out of the volumes: measuring {arguments[2]} failed: {failure}"


def report(
    source: str | Path,
    out_dir: str | Path,
    protocol: str | Protocol | None = None,
    *,
    ranking_dir: str | Path | None = None,
    runs_dir: str | Path | None = None,
    quantify_dir: str | Path | None = None,
    cohorts_dir: str | Path | None = None,
    compare_dir: str | Path | None = None,
    team: str | None = None,
    case: str | None = None,
    pdf: bool = False,
    title: str = "Evaluation report",
    display_names: dict[str, str] | None = None,
    include_logs: bool = False,
    single_file: bool = False,
    paper: str = "letter",
) -> Path:
    """Build the HTML report of ``source`` (a results.csv or an ``evaluate`` folder) in ``out_dir``.

    See :func:`flare_eval.reporting.build_report` (also for ``title``, ``display_names``,
    ``include_logs``, ``single_file`` and ``paper``); returns the path of ``index.html``. With ``pdf``,
    also ``out_dir/report.pdf``, the page printed by headless Chromium. ``protocol`` defaults to the one
    recorded in ``source``, its ranking or its runs (see `resolve_protocol`).
    """
    from .reporting import build_report, find_report_inputs
    from .reporting.html import print_pdf

    inputs = find_report_inputs(source, ranking_dir=ranking_dir, runs_dir=runs_dir, quantify_dir=quantify_dir,
                                cohorts_dir=cohorts_dir, compare_dir=compare_dir)
    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    protocol = resolve_protocol(protocol, folder, ranking_dir or folder / "ranking", runs_dir or folder / "runs")
    index = build_report(inputs, out_dir, protocol, team=team, case=case, title=title, display_names=display_names,
                         include_logs=include_logs, single_file=single_file, paper=paper)
    if pdf:
        print_pdf(index, Path(out_dir) / "report.pdf")
    return index


@dataclass(frozen=True)
class CohortOutputs:
    """Tables of `cohorts`: per-case rows with metadata, and subgroup summaries overall and per organ."""

    case_metrics: pd.DataFrame
    subgroups: pd.DataFrame
    organ_subgroups: pd.DataFrame
    folder: Path


def cohorts(
    scores_source: str | Path,
    metadata_csv: str | Path,
    out_dir: str | Path,
    *,
    columns: list[str] | None = None,
    bins: dict[str, list[float]] | None = None,
    protocol: str | Protocol | None = None,
) -> CohortOutputs:
    """Accuracy per cohort and subgroup, per team.

    Writes ``case_metrics.csv`` (per team and case, with the metadata),
    ``subgroups.csv`` and ``organ_subgroups.csv`` to ``out_dir``.

    Parameters
    ----------
    scores_source : path
        See :func:`flare_eval.io.read_scores`.
    metadata_csv : path
        ``case`` plus metadata columns.
    columns : list of str, optional
        Metadata columns to analyse (default: all).
    bins : dict, optional
        Numeric columns to bin and their inner edges; ``age`` is binned at the
        paper's 50 and 70 unless given.

    protocol : str or Protocol, optional
        Default: the one recorded beside the scores (see `resolve_protocol`).

    See :mod:`flare_eval.cohort_stats` for the statistics.
    """
    from .cohort_stats import (
        DEFAULT_AGE_BINS,
        CohortWarning,
        attach_metadata,
        case_means,
        subgroup_table,
        unit_columns,
    )

    protocol = resolve_protocol(protocol, scores_source)
    scores = read_scores(scores_source)
    metrics = accuracy_metrics(protocol)
    units = unit_columns(scores)
    metadata = read_table(metadata_csv, role="metadata table")
    bins = dict(bins or {})
    if "age" in metadata and "age" not in bins and pd.api.types.is_numeric_dtype(metadata["age"]):
        bins["age"] = list(DEFAULT_AGE_BINS)
    if "case" not in metadata:
        raise ValueError(f"metadata {metadata_csv} has no 'case' column; columns: {list(metadata.columns)}")
    score_cases, metadata_cases = set(scores["case"].astype(str)), set(metadata["case"].astype(str))
    if not score_cases & metadata_cases:
        raise ValueError(f"metadata {metadata_csv} matches no case of the scores: its case ids look like "
                         f"{preview(sorted(metadata_cases), 3)}, the scores' like {preview(sorted(score_cases), 3)}")
    columns = columns or [c for c in metadata.columns if c != "case"]
    missing = [c for c in columns if c not in metadata]
    if missing:
        raise ValueError(f"metadata {metadata_csv} has no column(s) {missing}; columns: {list(metadata.columns)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CohortWarning)
        per_case = attach_metadata(case_means(scores, metrics), metadata, bins=bins)
        subgroups = pd.concat([subgroup_table(per_case, c, metrics) for c in columns], ignore_index=True)
    with warnings.catch_warnings():
        # The per-organ tables repeat the mismatches and small groups reported above.
        warnings.simplefilter("ignore", CohortWarning)
        organ_rows = attach_metadata(scores[["team", "case", *units, *metrics]], metadata, bins=bins)
        organ_tables = [subgroup_table(rows, c, metrics).assign(**dict(zip(units, key if isinstance(key, tuple)
                                                                            else (key,))))
                        for key, rows in organ_rows.groupby(units, sort=True)
                        for c in columns]
    for warning in caught:
        warnings.warn(f"{metadata_csv}: {warning.message}", CohortWarning, stacklevel=2)
    out_dir = Path(out_dir)
    organ_subgroups = pd.concat(organ_tables, ignore_index=True)
    write_table(per_case, out_dir / "case_metrics.csv")
    write_table(subgroups, out_dir / "subgroups.csv")
    write_table(organ_subgroups, out_dir / "organ_subgroups.csv")
    return CohortOutputs(per_case, subgroups, organ_subgroups, out_dir)


def compare(
    scores_source: str | Path,
    team_a: str,
    team_b: str,
    out_dir: str | Path,
    *,
    metric: str | None = None,
    n_samples: int = 2000,
    seed: int | None = DEFAULT_SEED,
    protocol: str | Protocol | None = None,
):
    """Compare two teams case by case; writes ``comparison.csv`` and ``differences.csv``.

    See :func:`flare_eval.cohort_stats.compare_teams`; returns its `Comparison`.
    """
    from .cohort_stats import compare_teams

    metric = metric or accuracy_metrics(resolve_protocol(protocol, scores_source))[0]
    comparison = compare_teams(read_scores(scores_source), team_a, team_b, metric=metric, n_samples=n_samples,
                               seed=seed)
    out_dir = Path(out_dir)
    write_table(comparison.summary.assign(seed=comparison.seed, n_samples=comparison.n_samples),
                out_dir / "comparison.csv")
    write_table(comparison.differences, out_dir / "differences.csv")
    return comparison


def review(
    scores_source: str | Path, out_csv: str | Path, *, threshold: float = 0.75, reference: str | None = None,
    protocol: str | Protocol | None = None, metric: str | None = None,
) -> pd.DataFrame:
    """Write the annotation review list (see :func:`flare_eval.cohort_stats.review_cases`) to ``out_csv``.

    ``metric`` defaults to the protocol's first accuracy metric (FLARE: DSC; KiTS23: Dice).
    """
    from .cohort_stats import review_cases

    metric = metric or accuracy_metrics(resolve_protocol(protocol, scores_source))[0]
    table = review_cases(read_scores(scores_source), threshold=threshold, reference=reference, metric=metric)
    write_table(table, out_csv)
    return table

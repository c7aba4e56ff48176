"""The report page: finds the tables of the earlier steps, draws the figures, writes ``index.html``.

The page is self-contained: it references its figures in ``figures/`` beside it
(PNG shown, SVG linked), uses no network, and opens from disk. Sections whose
inputs are absent are left out with a note saying which step produces them.
"""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from .._version import __version__
from ..io import read_scores, read_table
from ..protocol import Protocol, load_protocol
from . import plots

__all__ = ["ReportInputs", "find_report_inputs", "build_report"]


@dataclass(frozen=True)
class ReportInputs:
    """Where the report's tables are; None where a step's output was not found."""

    results_csv: Path | None = None
    ranking_dir: Path | None = None
    runs_dir: Path | None = None
    quantify_dir: Path | None = None
    cohorts_dir: Path | None = None
    compare_dir: Path | None = None


def find_report_inputs(
    source: str | Path,
    *,
    ranking_dir: str | Path | None = None,
    runs_dir: str | Path | None = None,
    quantify_dir: str | Path | None = None,
    cohorts_dir: str | Path | None = None,
    compare_dir: str | Path | None = None,
) -> ReportInputs:
    """Locate the tables under ``source``: a ``results.csv`` file, or a folder written by ``evaluate``.

    A folder may hold ``results.csv``, ``ranking/``, ``runs/`` (or be a runs
    folder itself: ``<team>/scores.csv``), ``quantify/``, ``cohorts/`` and
    ``compare/``. Explicit folders override what is found.

    Raises
    ------
    FileNotFoundError
        If ``source`` does not exist.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist: give a results.csv or a folder written by evaluate")
    base = source.parent if source.is_file() else source
    results = source if source.is_file() else (base / "results.csv" if (base / "results.csv").is_file() else None)

    def folder(explicit, default: Path, marker: str) -> Path | None:
        if explicit is not None:
            return Path(explicit)
        return default if (default / marker).exists() else None

    runs = folder(runs_dir, base / "runs", ".")
    if runs is None and any(base.glob("*/scores.csv")):
        runs = base
    return ReportInputs(
        results_csv=results,
        ranking_dir=folder(ranking_dir, base / "ranking", "ranking.csv"),
        runs_dir=runs,
        quantify_dir=folder(quantify_dir, base / "quantify", "volumes.csv"),
        cohorts_dir=folder(cohorts_dir, base / "cohorts", "case_metrics.csv"),
        compare_dir=folder(compare_dir, base / "compare", "differences.csv"),
    )


@dataclass
class _Page:
    out_dir: Path
    sections: list[str] = field(default_factory=list)

    def figure(self, name: str, figure: Figure, caption: str) -> str:
        folder = self.out_dir / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / f"{name}.png", dpi=100)
        figure.savefig(folder / f"{name}.svg")
        return (f'<figure><img src="figures/{name}.png" alt="{html.escape(caption)}">'
                f'<figcaption>{html.escape(caption)} (<a href="figures/{name}.svg">SVG</a>)</figcaption></figure>')

    def section(self, title: str, body: str) -> None:
        self.sections.append(f"<section><h2>{html.escape(title)}</h2>{body}</section>")

    def missing(self, title: str, why: str) -> None:
        self.section(title, f'<p class="note">Not shown: {html.escape(why)}</p>')


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.{digits}f}", classes="table", border=0)


def build_report(
    inputs: ReportInputs,
    out_dir: str | Path,
    protocol: str | Protocol = "flare22",
    *,
    team: str | None = None,
    case: str | None = None,
    top: int = 3,
) -> Path:
    """Draw the figures and write ``out_dir/index.html``; return its path.

    Parameters
    ----------
    inputs : ReportInputs
        See `find_report_inputs`.
    out_dir : path
        Report folder (``index.html`` and ``figures/``).
    protocol : str or Protocol
    team, case : str, optional
        The run whose resource time line is shown (default: the best team's first case).
    top : int
        How many top teams the radar chart shows (plus the best team per metric).
    """
    from ..ranking import case_ranks, rank

    protocol = load_protocol(protocol)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = _Page(out_dir)
    metric_names = [m.name for m in protocol.ranking_metrics]

    results = read_table(inputs.results_csv, role="results table") if inputs.results_csv else None
    ranking = None
    if inputs.ranking_dir is not None:
        ranking = read_table(inputs.ranking_dir / "ranking.csv", role="ranking table")
    elif results is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranking = rank(results, protocol)
    team_order = ranking["team"].tolist() if ranking is not None else None
    known = set(results["team"]) if results is not None else set(team_order or [])
    if team is not None and known and team not in known:
        raise ValueError(f"--team {team!r} is not a team of this evaluation; teams: {', '.join(sorted(known))}")

    # Leaderboard
    if ranking is not None:
        board = ranking.copy()
        if results is not None:
            medians = results.groupby("team").agg(median_DSC=("DSC", "median"), median_NSD=("NSD", "median"),
                                                   median_Time_s=("Time", "median"))
            board = board.merge(medians, left_on="team", right_index=True, how="left")
        note = "" if inputs.ranking_dir else '<p class="note">Computed from results.csv (no ranking/ folder).</p>'
        page.section("Leaderboard", note + _table(board))
    else:
        page.missing("Leaderboard", "no results.csv or ranking/ found (run `flare-eval collect` and `rank`)")

    # Accuracy against time
    if results is not None:
        page.section("Accuracy and efficiency",
                     page.figure("accuracy_time", plots.accuracy_time_figure(results, ranking),
                                 "Median DSC against median running time per team"))
    else:
        page.missing("Accuracy and efficiency", "no results.csv")

    # Radar
    if ranking is not None and all(f"{m}_mean_rank" in ranking for m in metric_names):
        chosen = list(ranking["team"].head(top))
        for metric in ("DSC", "Time", "AUC_CPU"):
            if f"{metric}_mean_rank" in ranking:
                best = ranking.sort_values(f"{metric}_mean_rank")["team"].iloc[0]
                if best not in chosen:
                    chosen.append(best)
        page.section("Strengths of the top teams",
                     page.figure("radar", plots.radar_figure(ranking, metric_names, chosen),
                                 "Teams surpassed by each of the top teams on each metric"))

    # Stability and significance
    if inputs.ranking_dir is not None:
        body = []
        ranks_csv = inputs.ranking_dir / "bootstrap_ranks.csv"
        if ranks_csv.exists():
            long = read_table(ranks_csv, role="bootstrap ranks")
            wide = long.pivot(index="sample", columns="team", values="rank")
            teams = list(wide.columns)
            full = ranking.set_index("team").loc[teams, "rank"].to_numpy()
            body.append(page.figure("rank_blobs", plots.rank_blob_figure(wide.to_numpy(), teams, full),
                                    "Bootstrap rank distribution per team"))
        if (inputs.ranking_dir / "bootstrap.csv").exists():
            samples = read_table(inputs.ranking_dir / "bootstrap.csv", role="bootstrap table")
            body.append(page.figure("kendall_tau", plots.tau_violin_figure(samples),
                                    "Kendall's tau between bootstrap and full rankings"))
        page.section("Ranking stability", "".join(body) or '<p class="note">No bootstrap tables.</p>')
        if (inputs.ranking_dir / "significance.csv").exists():
            tests = read_table(inputs.ranking_dir / "significance.csv", role="significance table")
            page.section("Significance", page.figure("significance", plots.significance_figure(tests, team_order),
                                                     "One-sided paired Wilcoxon tests, adjusted"))
    else:
        page.missing("Ranking stability and significance", "no ranking/ folder (run `flare-eval rank`)")

    if results is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_case = case_ranks(results, protocol)
        page.section("Ranks per case", page.figure("rank_heatmap", plots.rank_heatmap_figure(per_case, team_order),
                                                   "Number of cases at each rank"))

    # Per-organ accuracy
    if inputs.runs_dir is not None and any(inputs.runs_dir.glob("*/scores.csv")):
        scores = read_scores(inputs.runs_dir)
        order = [t for t in (team_order or []) if t in set(scores["team"])] or sorted(scores["team"].unique())
        page.section("Accuracy per organ", "".join(
            page.figure(f"organs_{metric}", plots.organ_scores_figure(scores, metric, order),
                        f"{metric} per organ across teams") for metric in ("DSC", "NSD")))
    else:
        page.missing("Accuracy per organ", "no runs/<team>/scores.csv (run `flare-eval collect`)")

    # Resources over time
    sample_files = sorted(inputs.runs_dir.glob("*/samples/*.csv")) if inputs.runs_dir else []
    if sample_files:
        chosen_team = team or next((t for t in (team_order or []) if (inputs.runs_dir / t / "samples").is_dir()),
                                   sample_files[0].parent.parent.name)
        folder = inputs.runs_dir / chosen_team / "samples"
        files = sorted(folder.glob("*.csv"))
        if case:
            chosen = folder / f"{case}.csv" if (folder / f"{case}.csv").exists() else None
        else:
            chosen = files[0] if files else None
        if chosen is None:
            page.missing("Resources over time", f"no samples for team {chosen_team!r}, case {case!r}")
        else:
            samples = read_table(chosen, role="samples")
            page.section("Resources over time", page.figure(
                "resources", plots.resource_timeline_figure(samples, title=f"{chosen_team}, {chosen.stem}",
                                                            allowance_mib=protocol.gpu_allowance_mib),
                f"GPU memory and CPU utilization of {chosen_team} on {chosen.stem}"))
    else:
        page.missing("Resources over time", "no runs/<team>/samples/ (run `flare-eval run-containers`)")

    # Volumes
    if inputs.quantify_dir is not None and (inputs.quantify_dir / "agreement.csv").exists():
        volumes = read_table(inputs.quantify_dir / "volumes.csv", role="volumes table")
        agreement = read_table(inputs.quantify_dir / "agreement.csv", role="agreement table")
        page.section("Organ volumes", page.figure(
            "volumes", plots.volume_agreement_figure(volumes, agreement),
            "Predicted against ground-truth organ volumes") + _table(agreement))
    else:
        page.missing("Organ volumes", "no quantify/ folder with ground truth (run `flare-eval quantify`)")

    # Cohorts, subgroups and paired comparisons
    if inputs.cohorts_dir is not None and (inputs.cohorts_dir / "case_metrics.csv").exists():
        per_case = read_table(inputs.cohorts_dir / "case_metrics.csv", role="cohort table")
        columns = [c for c in per_case.columns if c not in ("team", "case", "DSC", "NSD")]
        shown = [t for t in (team_order or []) if t in set(per_case["team"])] or sorted(per_case["team"].unique())
        shown = shown[:6]
        page.section("Cohorts and subgroups", "".join(
            page.figure(f"subgroups_{i}", plots.subgroup_figure(per_case, column, "DSC", shown),
                        f"Case mean DSC by {column}") for i, column in enumerate(columns)))
    else:
        page.missing("Cohorts and subgroups", "no cohorts/ folder (run `flare-eval cohorts`)")
    if inputs.compare_dir is not None and (inputs.compare_dir / "comparison.csv").exists():
        summary = read_table(inputs.compare_dir / "comparison.csv", role="comparison table")
        differences = read_table(inputs.compare_dir / "differences.csv", role="differences table")
        first = summary.iloc[0]
        page.section("Paired comparison", page.figure(
            "paired_differences",
            plots.paired_difference_figure(differences, team_a=first.team_a, team_b=first.team_b,
                                           metric=first.metric),
            f"{first.metric} of {first.team_a} minus {first.team_b}, case by case") + _table(summary, 4))
    else:
        page.missing("Paired comparison", "no compare/ folder (run `flare-eval compare`)")

    index = out_dir / "index.html"
    index.write_text(_page_html(page, protocol), encoding="utf-8")
    return index


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
figure { margin: 1em 0; overflow-x: auto; } figure img { max-width: none; }
figcaption { font-size: .9em; color: #555; } .note { color: #777; font-style: italic; }
table.table { border-collapse: collapse; font-size: .85em; }
table.table td, table.table th { padding: .2em .6em; border-bottom: 1px solid #eee; text-align: right; }
"""

# Records on the page how many figures loaded; the browser test reads it.
_LOAD_CHECK = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-figures-loaded', loaded + '/' + images.length);
});
"""


def _page_html(page: _Page, protocol: Protocol) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>flare-eval report</title><style>{_STYLE}</style><script>{_LOAD_CHECK}</script></head><body>"
        f"<h1>Evaluation report</h1><p>Protocol {html.escape(protocol.name)}: {html.escape(protocol.description)}"
        f" Made with flare-eval {__version__}.</p>"
        + "".join(page.sections)
        + "</body></html>\n"
    )

"""The report page: finds the tables of the earlier steps, draws the figures, writes ``index.html``.

The page is self-contained: it references its figures in ``figures/`` beside it
(PNG shown, SVG linked), uses no network, and opens from disk. Sections whose
inputs are absent are left out with a note saying which step produces them.
"""

from __future__ import annotations

import datetime
import html
import shutil
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from .._version import __version__
from ..errors import FlareEvalWarning
from ..io import read_resources, read_scores, read_settings, read_table, write_table
from ..layout import log_path
from ..protocol import Protocol, load_protocol
from . import plots

__all__ = ["ReportInputs", "find_report_inputs", "build_report", "print_pdf", "readable_columns"]

#: Column names of the tables as a reader of the report should see them.
_HEADERS = {
    "team": "team", "rank": "rank", "score": "score (weighted mean rank)", "case": "case", "status": "status",
    "exit_code": "exit code", "time_s": "time (s)", "median_DSC": "median DSC", "median_NSD": "median NSD",
    "median_Time_s": "median time (s)", "failed_cases": "failed cases", "log": "log",
    "median_time_s": "median time (s)", "max_gpu_mib": "max GPU memory (MiB)",
    "median_auc_gpu_mib_s": "median AUC_GPU (MiB s)", "median_auc_cpu_pct_s": "median AUC_CPU (% s)",
    "method": "method", "kendall_tau": "Kendall's tau to the official ranking", "image_id": "image ID",
}


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
    ValueError
        If it holds neither a results table nor runs: nothing to report.
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
    if results is None and runs is None:
        raise ValueError(f"{source} holds no results.csv and no runs (<team>/scores.csv): give a results.csv or "
                         "a folder written by evaluate or collect")
    return ReportInputs(
        results_csv=results,
        ranking_dir=folder(ranking_dir, base / "ranking", "ranking.csv"),
        runs_dir=runs,
        quantify_dir=folder(quantify_dir, base / "quantify", "volumes.csv"),
        cohorts_dir=folder(cohorts_dir, base / "cohorts", "case_metrics.csv"),
        compare_dir=folder(compare_dir, base / "compare", "differences.csv"),
    )


class ReportWarning(FlareEvalWarning):
    """Something the report found in its sources that a reader of the page must know."""


def _disagreements(results: pd.DataFrame | None, scores: pd.DataFrame | None, resources: pd.DataFrame,
                   protocol: Protocol) -> list[str]:
    """How results.csv, the teams' scores.csv and the runs differ: teams, cases, and the values themselves.

    results.csv is recomputed from the scores and resources (one path, `flare_eval.results.assemble_results`);
    a value that differs means one of them was rewritten after the other (a collect run with other labels).
    """
    from ..results import assemble_results

    if results is None or scores is None:
        return []
    found = []
    result_teams, score_teams = set(results["team"]), set(scores["team"])
    run_teams = set(resources["team"]) if not resources.empty else score_teams
    for name, teams in (("scores.csv", score_teams), ("the runs folder", run_teams)):
        if teams != result_teams:
            found.append(f"results.csv has teams {sorted(result_teams)[:8]}, {name} {sorted(teams)[:8]}")
    try:
        recomputed = assemble_results(scores, None if resources.empty else resources, protocol)
    except (KeyError, ValueError) as exc:
        return [*found, f"results.csv cannot be recomputed from the teams' scores.csv ({exc})"]
    keys = ["team", "case"]
    merged = results.merge(recomputed, on=keys, how="outer", suffixes=("", "_recomputed"), indicator=True)
    for side, where in (("left_only", "results.csv only"), ("right_only", "the scores only")):
        pairs = merged[merged["_merge"] == side]
        if len(pairs):
            found.append(f"{len(pairs)} (team, case) pair(s) in {where}, e.g. {pairs.iloc[0]['team']} "
                         f"{pairs.iloc[0]['case']}")
    both = merged[merged["_merge"] == "both"]
    for metric in protocol.ranking_metrics:
        if metric.name in results and f"{metric.name}_recomputed" in both:
            a, b = both[metric.name].astype(float), both[f"{metric.name}_recomputed"].astype(float)
            differ = ~(((a - b).abs() <= 1e-9) | (a.isna() & b.isna()))
            if differ.any():
                first = both[differ].iloc[0]
                found.append(f"{metric.name} differs in {int(differ.sum())} (team, case) pair(s) between "
                             f"results.csv and the teams' scores.csv (e.g. {first['team']} {first['case']}: "
                             f"{first[metric.name]:.4g} against {first[f'{metric.name}_recomputed']:.4g})")
    return found


@dataclass
class _Page:
    out_dir: Path
    sections: list[str] = field(default_factory=list)
    titles: list[tuple[str, str]] = field(default_factory=list)
    single_file: bool = False

    def figure(self, name: str, figure: Figure, caption: str, data: str | None = None) -> str:
        """A figure as PNG (150 dpi) and SVG; ``data``: the CSV behind it, linked under its caption."""
        import base64

        folder = self.out_dir / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / f"{name}.png", dpi=FIGURE_DPI)
        # The layout is settled by the first drawing; drawing the SVG need not compute it again.
        figure.set_layout_engine("none")
        figure.savefig(folder / f"{name}.svg")
        source = f"figures/{name}.png"
        links = [f'<a href="figures/{name}.svg">SVG</a>']
        if self.single_file:
            source = "data:image/png;base64," + base64.b64encode((folder / f"{name}.png").read_bytes()).decode()
            links = []
        if data and not self.single_file:
            links.append(f'<a href="{html.escape(data)}">data</a>')
        linked = f" ({', '.join(links)})" if links else ""
        return (f'<figure><img src="{source}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}{linked}</figcaption></figure>")

    def section(self, title: str, body: str) -> None:
        number = len(self.titles) + 1
        anchor = f"s{number}-" + "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")[:40]
        self.titles.append((anchor, f"{number}. {title}"))
        heading = f"<h2>{number}. {html.escape(title)}</h2>"
        first, rest = _first_block(body)
        # The heading and the section's first block print on one page: a heading is never a page's last line.
        self.sections.append(f'<section id="{anchor}"><div class="keep">{heading}{first}</div>{rest}</section>')

    def contents(self) -> str:
        """The table of contents: one link to each numbered section."""
        items = "".join(f'<li><a href="#{anchor}">{html.escape(title)}</a></li>' for anchor, title in self.titles)
        return f'<nav class="toc"><h2>Contents</h2><ol>{items}</ol></nav>'

    def missing(self, title: str, why: str) -> None:
        self.section(title, f'<p class="note">Not shown: {html.escape(why)}</p>')


def _first_block(body: str) -> tuple[str, str]:
    """``body`` split after its first top-level element (a paragraph, figure, table, list or division).

    The page's own markup never nests an element in one of its own kind at the top, so the first closing
    tag of the kind ends it.
    """
    for tag in ("figure", "p", "div", "table", "ul", "h3"):
        if body.startswith(f"<{tag}"):
            end = body.find(f"</{tag}>")
            if end >= 0:
                end += len(f"</{tag}>")
                return body[:end], body[end:]
    return "", body


def readable_columns(columns) -> list[str]:
    """Headers a reader understands: ``DSC_mean_rank`` becomes ``mean rank, DSC``, ``p_value`` ``p-value``.

    Examples
    --------
    >>> readable_columns(["team", "DSC_mean_rank", "p_adjusted", "NSD_q1"])
    ['team', 'mean rank, DSC', 'p-value (adjusted)', 'NSD_q1']
    """
    out = []
    for column in map(str, columns):
        if column in _HEADERS:
            out.append(_HEADERS[column])
        elif column.endswith("_mean_rank"):
            out.append(f"mean rank, {column[: -len('_mean_rank')]}")
        elif column == "tie_break_mean":
            out.append("tie-break (mean)")
        elif column.endswith("_mean"):
            out.append(f"mean {column[: -len('_mean')]}")
        elif column.endswith("_rank"):
            out.append(f"rank of the mean, {column[: -len('_rank')]}")
        elif column in ("p_value", "p"):
            out.append("p-value")
        elif column == "p_adjusted":
            out.append("p-value (adjusted)")
        else:
            out.append(column)
    return out


def _format_number(value: float, digits: int, p_value: bool) -> str:
    if p_value and value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.1e}"  # never "0.0000" for a small p-value
    return f"{value:.{digits}f}"


def _table(frame: pd.DataFrame, digits: int = 3, escape: bool = True) -> str:
    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            is_p = str(column).startswith("p_") or str(column) in ("p", "p_value") or str(column).endswith("_p")
            shown[column] = [("" if pd.isna(v) else _format_number(v, digits, is_p)) for v in shown[column]]
    shown.columns = readable_columns(shown.columns)
    return '<div class="scroll">' + shown.to_html(index=False, classes="table", border=0, escape=escape) + "</div>"


def build_report(
    inputs: ReportInputs,
    out_dir: str | Path,
    protocol: str | Protocol = "flare22",
    *,
    team: str | None = None,
    case: str | None = None,
    top: int = 3,
    title: str = "Evaluation report",
    display_names: dict[str, str] | None = None,
    include_logs: bool = False,
    single_file: bool = False,
    paper: str = "letter",
) -> Path:
    """Draw the figures and write ``out_dir/index.html``; return its path.

    Parameters
    ----------
    inputs : ReportInputs
        See `find_report_inputs`.
    out_dir : path
        Report folder (``index.html``, ``figures/``, and ``data/``: the tables behind the figures, team
        names as shown).
    protocol : str or Protocol
    team, case : str, optional
        The run whose resource time line is shown (default: the best team's first case).
    top : int
        How many top teams the radar chart shows (plus the best team per metric).
    title : str
        The page's title and heading.
    display_names : dict, optional
        Team -> the name shown everywhere on the page and in ``data/`` (to anonymise, or to spell teams
        properly); teams not named keep their own.
    include_logs : bool
        Copy the logs of the failed cases into ``out_dir/logs/`` and link them; without it the failure table
        names each log's path in the runs folder and links nothing outside the report folder.
    single_file : bool
        Embed the figures in ``index.html`` (one file to mail or upload).
    paper : {"letter", "a4"}
        Paper size when the page is printed (``--pdf``).
    """
    from ..ranking import case_ranks, kendall_tau_b, rank

    protocol = load_protocol(protocol)
    if paper not in PAPER_SIZES:
        raise ValueError(f"paper must be one of {sorted(PAPER_SIZES)}, got {paper!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = _Page(out_dir, single_file=single_file)
    metric_names = [m.name for m in protocol.ranking_metrics]
    names = _Names(display_names or {})

    def read(path: Path, role: str) -> pd.DataFrame:
        return names.shown_table(read_table(path, role=role))

    results = read(inputs.results_csv, "results table") if inputs.results_csv else None
    ranking = None
    if inputs.ranking_dir is not None:
        ranking = read(inputs.ranking_dir / "ranking.csv", "ranking table")
    elif results is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranking = rank(results, protocol)
    team_order = ranking["team"].tolist() if ranking is not None else None
    known = set(results["team"]) if results is not None else set(team_order or [])
    team = names.shown(team) if team is not None else None
    if team is not None and known and team not in known:
        raise ValueError(f"--team {team!r} is not a team of this evaluation; teams: {', '.join(sorted(known))}")

    resources = names.shown_table(read_resources(inputs.runs_dir)) if inputs.runs_dir is not None else pd.DataFrame()
    ranking_settings = read_settings(inputs.ranking_dir / "settings.json") if inputs.ranking_dir else {}
    run_settings = read_settings(inputs.runs_dir / "settings.json") if inputs.runs_dir else {}
    page.section("Run facts", _run_facts(protocol, results, resources, ranking_settings, run_settings))
    scores = None
    if inputs.runs_dir is not None and any(inputs.runs_dir.glob("*/scores.csv")):
        scores = names.shown_table(read_scores(inputs.runs_dir))
    behind = {"results.csv": results, "ranking.csv": ranking, "scores.csv": scores,
              "resources.csv": resources if not resources.empty else None}
    for name in ("bootstrap_ranks.csv", "bootstrap.csv", "significance.csv", "ranking_methods.csv"):
        if inputs.ranking_dir is not None and (inputs.ranking_dir / name).exists():
            behind[name] = read(inputs.ranking_dir / name, name)
    data = _publish_tables(out_dir, behind)
    disagreements = _disagreements(results, scores, resources, protocol)
    if disagreements:
        for line in disagreements:
            warnings.warn(f"the report's sources disagree: {line}", ReportWarning, stacklevel=2)
        page.section("Sources that disagree", "<p>The tables this report is made from do not describe the same "
                     "evaluation; rerun <code>flare-eval collect</code> (and <code>rank</code>) before publishing:"
                     "</p><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in disagreements) + "</ul>")

    # Leaderboard
    if ranking is not None:
        board = ranking.copy()
        if results is not None:
            shown = [m for m in ("DSC", "NSD", "Time") if m in results] or metric_names[:3]
            medians = results.groupby("team")[shown].median().add_prefix("median_")
            medians = medians.rename(columns={"median_Time": "median_Time_s"})
            board = board.merge(medians, left_on="team", right_index=True, how="left")
            if "status" in results:
                failed = results[~results["status"].isin(["ok", "no_run"])].groupby("team").size()
                board["failed_cases"] = board["team"].map(failed).fillna(0).astype(int)
        note = "" if inputs.ranking_dir else '<p class="note">Computed from results.csv (no ranking/ folder).</p>'
        page.section("Leaderboard", note + _table(board))
        page.section("How this ranking was computed", _method(protocol, ranking_settings))
    else:
        page.missing("Leaderboard", "no results.csv or ranking/ found (run `flare-eval collect` and `rank`)")

    # Failures
    page.section("Failures", _failures(results, resources, inputs.runs_dir, out_dir, protocol, names, include_logs))

    # Accuracy against time
    if results is not None and {"DSC", "Time"} <= set(results.columns):
        page.section("Accuracy and efficiency",
                     page.figure("accuracy_time", plots.accuracy_time_figure(results, ranking),
                                 "Median DSC against median running time per team", data.get("results.csv")))
    elif results is None:
        page.missing("Accuracy and efficiency", "no results.csv")

    # Radar (a polygon needs three metrics; with two it would be a line)
    if ranking is not None and len(metric_names) >= 3 and all(f"{m}_mean_rank" in ranking for m in metric_names):
        chosen = list(ranking["team"].head(top))
        for metric in ("DSC", "Time", "AUC_CPU"):
            if f"{metric}_mean_rank" in ranking:
                best = ranking.sort_values(f"{metric}_mean_rank")["team"].iloc[0]
                if best not in chosen:
                    chosen.append(best)
        page.section("Strengths of the top teams",
                     page.figure("radar", plots.radar_figure(ranking, metric_names, chosen),
                                 "Teams surpassed by each of the top teams on each metric", data.get("ranking.csv")))

    # Case values: dot-and-box and podium plots
    if results is not None and ranking is not None:
        order = ranking.sort_values(["rank", "team"])["team"].tolist()
        penalty_note = (" Hollow red markers are values a penalty filled in: the case timed out, crashed or left no "
                        "or an invalid prediction, and got the protocol's worst value.")
        page.section("Case values per team", "".join(
            page.figure(f"dots_{metric.name}", plots.dot_box_figure(results, metric.name, order),
                        f"{metric.name} of every case, teams by final rank." + penalty_note, data.get("results.csv"))
            for metric in protocol.ranking_metrics if metric.name in results))
        page.section("Podium", "".join(
            page.figure(f"podium_{metric.name}",
                        plots.podium_figure(results, ranking, metric.name, higher_is_better=metric.higher_is_better),
                        f"Podium of {metric.name}: each team's cases at its place, one line per case." + penalty_note,
                        data.get("results.csv"))
            for metric in protocol.ranking_metrics[:2] if metric.name in results))

    # Stability and significance
    if inputs.ranking_dir is not None:
        body = []
        ranks_csv = inputs.ranking_dir / "bootstrap_ranks.csv"
        if ranks_csv.exists():
            long = read(ranks_csv, "bootstrap ranks")
            wide = long.pivot(index="sample", columns="team", values="rank")
            teams = list(wide.columns)
            full = ranking.set_index("team").loc[teams, "rank"].to_numpy()
            body.append(page.figure("rank_blobs", plots.rank_blob_figure(wide.to_numpy(), teams, full),
                                    "Bootstrap rank distribution per team", data.get("bootstrap_ranks.csv")))
            body.append(page.figure("rank_frequency",
                                    plots.rank_frequency_figure(wide.to_numpy(), teams, team_order or teams),
                                    "Stacked frequency of each team's ranks over the bootstrap samples",
                                    data.get("bootstrap_ranks.csv")))
        if (inputs.ranking_dir / "bootstrap.csv").exists():
            samples = read(inputs.ranking_dir / "bootstrap.csv", "bootstrap table")
            body.append(page.figure("kendall_tau", plots.tau_violin_figure(samples),
                                    "Kendall's tau between bootstrap and full rankings", data.get("bootstrap.csv")))
        page.section("Ranking stability", "".join(body) or '<p class="note">No bootstrap tables.</p>')
        methods_csv = inputs.ranking_dir / "ranking_methods.csv"
        if methods_csv.exists() and (inputs.ranking_dir / "ranking_methods_tau.csv").exists():
            methods = read(methods_csv, "ranking methods table")
            agreement = read(inputs.ranking_dir / "ranking_methods_tau.csv", "ranking methods tau")
            others = ", ".join(c.replace("_", "-") for c in methods.columns
                               if c not in ("team", "official", protocol.ranking_scheme))
            page.section(f"The ranking under other methods: {others}", page.figure(
                "ranking_methods", plots.ranking_methods_figure(methods, agreement),
                "Each team's final rank under each method (challengeR's definitions, combined over the metrics "
                "with the protocol's weights)", data.get("ranking_methods.csv")) + _table(agreement))
        else:
            page.missing("The ranking under other methods", "no ranking/ranking_methods.csv (rerun `flare-eval rank`)")
        if (inputs.ranking_dir / "significance.csv").exists():
            tests = read(inputs.ranking_dir / "significance.csv", "significance table")
            page.section("Significance", page.figure("significance", plots.significance_figure(tests, team_order),
                                                     "One-sided paired Wilcoxon tests, adjusted",
                                                     data.get("significance.csv")))
    else:
        page.missing("Ranking stability and significance", "no ranking/ folder (run `flare-eval rank`)")

    if results is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_case = case_ranks(results, protocol)
        page.section("Ranks per case", page.figure("rank_heatmap", plots.rank_heatmap_figure(per_case, team_order),
                                                   "Number of cases at each rank", data.get("results.csv")))

    # Per-organ accuracy (per region for the region protocols: KiTS23, BraTS, ...), and a ranking per each
    if scores is not None:
        from ..pipeline import accuracy_metrics
        from ..ranking import rank_per_region

        unit = protocol.layout.unit
        # The figures and tables take an ``organ`` name and a ``label`` to order by: the region's, in protocol order.
        position = {r.name: i for i, r in enumerate(protocol.regions)}
        region_names = scores[protocol.layout.name_column]
        view = scores.assign(organ=region_names, label=region_names.map(position))
        order = [t for t in (team_order or []) if t in set(scores["team"])] or sorted(scores["team"].unique())
        metrics = accuracy_metrics(protocol)[:2]
        page.section(f"Accuracy per {unit}", "".join(
            page.figure(f"organs_{metric}", plots.organ_scores_figure(view, metric, order),
                        f"{metric} per {unit} across teams", data.get("scores.csv")) for metric in metrics)
            + "".join(f"<h3>{metric} per {unit}: mean &plusmn; sd (median)</h3>"
                      + _table(_organ_summary(view, metric, order)).replace("<th>organ</th>", f"<th>{unit}</th>")
                      for metric in metrics))
        per_region = rank_per_region(scores, protocol)
        units = [c for c in per_region.columns if c not in ("team", "consensus")]
        shown = per_region[["team", "consensus", *units]]
        agreement = pd.DataFrame({"method": ["consensus", *units], "kendall_tau": [
            kendall_tau_b(shown["consensus"].to_numpy(), shown[c].to_numpy()) for c in ["consensus", *units]]})
        page.section(f"Rankings per {unit} and their consensus", (
            f"<p>Each {unit} ranked on its own (rank-then-aggregate on {', '.join(metrics)} of that {unit}); "
            f"the consensus is the mean of a team's ranks over the {unit}s, ranked. Kendall's tau under each "
            f"{unit} compares its ranking with the consensus.</p>")
            + page.figure("ranks_per_region", plots.ranking_methods_figure(
                shown, agreement, title=f"Ranks per {unit} (Kendall's tau to the consensus)"),
                f"Each team's rank in each {unit}, joined per team")
            + (page.figure("region_dendrogram", plots.region_dendrogram_figure(shown),
                           f"The {unit}s clustered by how alike they rank the teams (1 - Kendall's tau, average "
                           "linkage): those that hang together reward the same teams")
               if len(units) >= 3 and len(shown) >= 3 else "")
            + _table(shown))
    else:
        page.missing("Accuracy per organ", "no runs/<team>/scores.csv (run `flare-eval collect`)")

    # Resources per team, and the top teams' curves on one case (no sections at all when only predictions were
    # handed in: there was nothing to measure)
    predictions_only = resources.empty and (results is None or set(results.get("status", ["no_run"])) <= {"no_run"})
    if predictions_only:
        pass
    elif not resources.empty:
        page.section("Resources per team", _table(_resource_summary(resources), 1)
                     + _top_team_curves(page, inputs.runs_dir, team_order, resources, case, protocol, names))
    else:
        page.missing("Resources per team", "no runs/<team>/resources.csv (run `flare-eval run-containers`)")

    # Resources over time
    sample_files = sorted(inputs.runs_dir.glob("*/samples/*.csv")) if inputs.runs_dir else []
    if predictions_only:
        pass
    elif sample_files:
        chosen_team = team or next((t for t in (team_order or [])
                                    if (inputs.runs_dir / names.folder(t) / "samples").is_dir()),
                                   names.shown(sample_files[0].parent.parent.name))
        folder = inputs.runs_dir / names.folder(chosen_team) / "samples"
        files = sorted(folder.glob("*.csv"))
        if case:
            chosen = folder / f"{case}.csv" if (folder / f"{case}.csv").exists() else None
        else:
            chosen = files[0] if files else None
        if chosen is None:
            page.missing("Resources over time", f"no samples for team {chosen_team!r}, case {case!r}")
        else:
            samples = read(chosen, "samples")
            page.section("Resources over time", page.figure(
                "resources", plots.resource_timeline_figure(samples, title=f"{chosen_team}, {chosen.stem}",
                                                            allowance_mib=protocol.gpu_allowance_mib),
                f"GPU memory and CPU utilization of {chosen_team} on {chosen.stem}"))
    else:
        page.missing("Resources over time", "no runs/<team>/samples/ (run `flare-eval run-containers`)")

    # Volumes
    if inputs.quantify_dir is not None and (inputs.quantify_dir / "agreement.csv").exists():
        volumes = read(inputs.quantify_dir / "volumes.csv", "volumes table")
        agreement = read(inputs.quantify_dir / "agreement.csv", "agreement table")
        measured = read_settings(inputs.quantify_dir / "settings.json").get("predictions")
        whose = f" of the predictions in {Path(measured).name}" if measured else ""
        if measured and Path(measured).name in names.display:  # a team's folder, shown under its display name
            whose = f" of {names.shown(Path(measured).name)}'s predictions"
        elif measured and Path(measured).name == "predictions" and Path(measured).parent.name:
            whose = f" of {names.shown(Path(measured).parent.name)}'s predictions"
        page.section(f"{protocol.layout.unit.capitalize()} volumes", page.figure(
            "volumes", plots.volume_agreement_figure(volumes, agreement),
            f"Predicted against ground-truth volumes{whose}") + _table(agreement))
    else:
        page.missing(f"{protocol.layout.unit.capitalize()} volumes",
                     "no quantify/ folder with ground truth (run `flare-eval quantify`)")

    # Cohorts, subgroups and paired comparisons
    if inputs.cohorts_dir is not None and (inputs.cohorts_dir / "case_metrics.csv").exists():
        from ..pipeline import accuracy_metrics

        per_case = read(inputs.cohorts_dir / "case_metrics.csv", "cohort table")
        metric = accuracy_metrics(protocol)[0]
        columns = [c for c in per_case.columns if c not in ("team", "case", *protocol.score_columns)]
        shown = [t for t in (team_order or []) if t in set(per_case["team"])] or sorted(per_case["team"].unique())
        shown = shown[:6]
        page.section("Cohorts and subgroups", "".join(
            page.figure(f"subgroups_{i}", plots.subgroup_figure(per_case, column, metric, shown),
                        f"Case mean {metric} by {column}") for i, column in enumerate(columns)))
    else:
        page.missing("Cohorts and subgroups", "no cohorts/ folder (run `flare-eval cohorts`)")
    if inputs.compare_dir is not None and (inputs.compare_dir / "comparison.csv").exists():
        summary = read(inputs.compare_dir / "comparison.csv", "comparison table")
        differences = read(inputs.compare_dir / "differences.csv", "differences table")
        first = summary.iloc[0]
        page.section("Paired comparison", page.figure(
            "paired_differences",
            plots.paired_difference_figure(differences, team_a=first.team_a, team_b=first.team_b,
                                           metric=first.metric),
            f"{first.metric} of {first.team_a} minus {first.team_b}, case by case") + _table(summary, 4))
    else:
        page.missing("Paired comparison", "no compare/ folder (run `flare-eval compare`)")

    index = out_dir / "index.html"
    index.write_text(_page_html(page, title, paper), encoding="utf-8")
    return index


class _Names:
    """Team names as the page shows them (`build_report`'s ``display_names``) and the folders they came from."""

    def __init__(self, display_names: dict[str, str]) -> None:
        self.display = {str(k): str(v) for k, v in display_names.items()}
        self.original = {v: k for k, v in self.display.items()}
        if len(self.original) != len(self.display):
            raise ValueError("display names must be distinct: two teams would be shown under one name")

    def shown(self, team: str) -> str:
        return self.display.get(team, team)

    def folder(self, shown: str) -> str:
        return self.original.get(shown, shown)

    def shown_table(self, table: pd.DataFrame) -> pd.DataFrame:
        if not self.display or table is None or table.empty:
            return table
        table = table.copy()
        for column in ("team", "team_a", "team_b"):
            if column in table:
                table[column] = table[column].astype(str).map(self.shown)
        renamed = {c: self.shown(c) for c in table.columns if c in self.display}  # wide tables: a column per team
        return table.rename(columns=renamed)


def _publish_tables(out_dir: Path, tables: dict[str, pd.DataFrame | None]) -> dict[str, str]:
    """Write the tables behind the figures into ``out_dir/data/`` (names as shown); their links by file name."""
    links = {}
    for name, table in tables.items():
        if table is not None:
            write_table(table, out_dir / "data" / name)
            links[name] = f"data/{name}"
    return links


def _run_facts(protocol: Protocol, results: pd.DataFrame | None, resources: pd.DataFrame, ranking_settings: dict,
               run_settings: dict) -> str:
    """What a reader needs to trust and reproduce the numbers, from what each step recorded."""
    facts = [("challenge", f"{protocol.name}: {protocol.description}"),
             ("report made", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z (UTC%z)"))]
    if results is not None:
        facts.append(("teams and cases", f"{results['team'].nunique()} teams, {results['case'].nunique()} cases"))
    if not resources.empty and "started_at" in resources:
        started = resources["started_at"].dropna().astype(str)
        started = started[started != ""]
        if len(started):
            facts.append(("containers ran", f"{started.min()[:19]} to {started.max()[:19]} (UTC)"))
    limits = run_settings.get("limits") or {}
    if limits.get("timeout_s") is not None:  # the limit in force, as the run recorded it
        facts.append(("time limit", f"{float(limits['timeout_s']):g} s per case (in force in this run); GPU memory "
                                    f"allowance {protocol.gpu_allowance_mib:g} MiB ({protocol.gpu_memory} reading)"))
    elif not resources.empty:
        facts.append(("time limit", f"{protocol.time_limit_s:g} s per case: the protocol's value (the run recorded "
                                    "no limit); GPU memory allowance "
                                    f"{protocol.gpu_allowance_mib:g} MiB ({protocol.gpu_memory} reading)"))
    if limits.get("max_consecutive_failures"):
        facts.append(("fail fast", f"a team whose first {limits['max_consecutive_failures']} cases all timed out or "
                                   "crashed was not run further"))
    facts.append(("penalty values", _penalty_values(protocol)))
    if ranking_settings:
        facts.append(("bootstrap", f"{ranking_settings.get('bootstrap_samples')} samples, seed "
                                   f"{ranking_settings.get('seed')}; significance: {ranking_settings.get('adjust')} "
                                   f"adjustment, alpha {ranking_settings.get('alpha')}"))
    machine = run_settings.get("machine", {})
    if machine:
        memory = machine.get("memory_bytes")
        facts.append(("machine", f"{machine.get('cpu_model') or 'CPU unknown'}, {machine.get('n_cpus')} cores"
                                 + (f", {memory / 1024**3:.0f} GiB memory" if memory else "")))
    if not resources.empty:
        gpus = []
        if {"gpu_measured", "gpu_name", "gpu_driver"} <= set(resources.columns):
            measured = resources[resources["gpu_measured"].astype(str).str.lower() == "true"]
            gpus = sorted({f"{n}, driver {d}" for n, d in zip(measured["gpu_name"], measured["gpu_driver"])
                           if isinstance(n, str) and n})
        facts.append(("GPU", "; ".join(gpus) if gpus else "GPU not measured"))
    if limits:
        facts.append(("container limits", f"memory {limits.get('memory')}, no network, no capabilities, "
                                          f"{limits.get('pids_limit')} processes, "
                                          f"{limits.get('open_files')} open files"))
    facts.append(("flare-eval", f"version {__version__}"))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    return f'<table class="facts">{rows}</table>'


def _method(protocol: Protocol, ranking_settings: dict) -> str:
    """How the leaderboard was computed, from the protocol's scheme and what `rank` recorded: enough to redo it."""
    metrics = protocol.ranking_metrics
    rows = "".join(
        f"<tr><td>{html.escape(m.name)}</td><td>{'higher' if m.higher_is_better else 'lower'}</td>"
        f"<td>{m.weight:g}</td><td>{html.escape(_number(m.worst))}</td></tr>" for m in metrics)
    weights = ('<table class="table"><tr><th>metric</th><th>better</th><th>weight</th><th>value of a missing or '
               f"failed case</th></tr>{rows}</table>")
    if protocol.ranking_scheme == "aggregate_then_rank":
        statistic = protocol.ranking_statistic
        scheme = (f"<p><b>Aggregate, then rank.</b> For each metric, each team's {statistic} over the cases is "
                  "ranked (1 = best, tied teams share the smallest rank); the weighted mean of a team's ranks "
                  "<i>s = &Sigma; w<sub>m</sub> r<sub>m</sub> / &Sigma; w<sub>m</sub></i> is ranked again"
                  + (f", teams still tied ordered by their {statistic} {html.escape(protocol.tie_break)} (higher "
                     "first)" if protocol.tie_break else "") + ".</p>")
    else:
        scheme = ("<p><b>Rank, then aggregate.</b> Within each case, the teams are ranked on each metric (1 = best; "
                  "tied teams share the smallest rank, R's <code>ties.method = \"min\"</code>). A team's score is "
                  "its weighted mean rank over all cases and metrics, <i>s = &Sigma;<sub>c,m</sub> w<sub>m</sub> "
                  "r<sub>c,m</sub> / (n<sub>cases</sub> &Sigma; w<sub>m</sub>)</i>, lower is better; the final "
                  "ranks order the scores, ties at the smallest rank.</p>")
    missing = ("<p><b>Missing and failed cases.</b> A case a team has no value for, and every case whose container "
               "timed out, crashed, left no or an invalid prediction, or whose submission could not run, gets the "
               "value in the last column for every metric, and is ranked with it.</p>")
    stability = ""
    if ranking_settings:
        copies = ranking_settings.get("bootstrap_copies", "separate")
        reading = ("the copies of a case drawn k times are ranked together (challengeR's bootstrap)"
                   if copies == "joint" else "each draw of a case counts as a case of its own")
        stability = (f"<p><b>Stability.</b> {ranking_settings.get('bootstrap_samples')} bootstrap samples (seed "
                     f"{ranking_settings.get('seed')}): the cases drawn with replacement, the same draws for every "
                     f"team; {reading}; each sample's ranking compared with the full one by Kendall's tau-b.</p>"
                     "<p><b>Significance.</b> For each metric and ordered pair of teams, a one-sided paired "
                     "Wilcoxon signed-rank test on the cases both teams have values for (filled-in values left "
                     "out), zero differences dropped, normal approximation with continuity correction (R's "
                     "<code>wilcox.test(paired = TRUE, exact = FALSE)</code>); p-values adjusted by "
                     f"{html.escape(str(ranking_settings.get('adjust')))} over the pairs of a metric; significant at "
                     f"alpha {ranking_settings.get('alpha')}.</p>")
    return scheme + weights + missing + stability


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


def _penalty_values(protocol: Protocol) -> str:
    """``DSC = 0, ..., AUC_GPU = 29491200``: whole numbers in full, never in exponent notation."""
    return ", ".join(f"{m.name} = {m.worst:.0f}" if float(m.worst).is_integer() else f"{m.name} = {m.worst:g}"
                     for m in protocol.ranking_metrics)


def _failures(results: pd.DataFrame | None, resources: pd.DataFrame, runs_dir: Path | None, out_dir: Path,
              protocol: Protocol, names: _Names | None = None, include_logs: bool = False) -> str:
    """Every case that did not end ok, with a link to its log."""
    frames = []
    if not resources.empty:
        latest = resources.drop_duplicates(["team", "case"], keep="last")
        frames.append(latest[latest["status"] != "ok"][["team", "case", "status", "exit_code", "time_s"]])
    if results is not None and "status" in results:
        # Statuses in results.csv without a run recorded here (a table assembled elsewhere).
        listed = results[~results["status"].isin(["ok", "no_run"])][["team", "case", "status"]]
        if not resources.empty:
            known = pd.MultiIndex.from_frame(resources[["team", "case"]].astype(str))
            listed = listed[~pd.MultiIndex.from_frame(listed[["team", "case"]].astype(str)).isin(known)]
        frames.append(listed)
    if not frames:
        return '<p class="note">No case statuses recorded (no runs/ folder).</p>'
    failed = pd.concat(frames, ignore_index=True)
    if failed.empty and resources.empty:
        return ('<p class="note">No container runs are recorded: the predictions were scored as they were '
                "handed in (status no_run); a missing prediction scores as missing in the accuracy tables.</p>")
    if failed.empty:
        return "<p>Every case of every team ended ok.</p>"
    failed = failed.sort_values(["team", "case"], ignore_index=True)
    shown = failed.copy()
    for column in ("team", "case", "status"):  # a team chose these names; the table below is not escaped for us
        shown[column] = shown[column].astype(str).map(html.escape)
    names = names or _Names({})
    if runs_dir is not None:
        links = []
        for row in failed.itertuples():
            folder = names.folder(row.team)
            log = log_path(runs_dir / folder, row.case)
            if not log.exists():
                links.append("")
            elif include_logs:
                # Only a copy inside the report folder is linked: the page can be published on its own.
                copy = out_dir / "logs" / f"{row.team}-{row.case}.log"
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, copy)
                links.append(f'<a href="logs/{html.escape(copy.name)}">log</a>')
            elif folder != row.team:  # a team shown under another name: its folder would give it away
                links.append(html.escape(f"logs/{row.case}.log in the team's runs folder"))
            else:
                links.append(html.escape(f"{folder}/logs/{row.case}.log in the runs folder"))
        shown["log"] = links
    if "exit_code" in shown:
        shown["exit_code"] = [("" if pd.isna(v) else str(int(v))) for v in shown["exit_code"]]
    worst = _penalty_values(protocol)
    return (f"<p>{len(failed)} case(s) did not end ok; each got the protocol's worst values ({html.escape(worst)}) "
            "in the ranking, and is drawn as a hollow marker in the figures of case values.</p>"
            + _table(shown, 1, escape=False))


def _organ_summary(scores: pd.DataFrame, metric: str, team_order: list[str]) -> pd.DataFrame:
    """Organs (or regions) as rows, teams as columns, each cell ``mean ± sd (median)`` of the metric over the cases."""
    stats = scores.groupby(["label", "team"])[metric].agg(["mean", "std", "median"])
    codes = dict(zip(scores["label"], scores["organ"]))
    table = {"organ": [codes.get(label, str(label)) for label in sorted(scores["label"].unique())]}
    for team in team_order:
        cells = []
        for label in sorted(scores["label"].unique()):
            if (label, team) in stats.index:
                mean, sd, median = stats.loc[(label, team)]
                cells.append(f"{mean:.3f} ± {0.0 if pd.isna(sd) else sd:.3f} ({median:.3f})")
            else:
                cells.append("")
        table[team] = cells
    return pd.DataFrame(table)


def _resource_summary(resources: pd.DataFrame) -> pd.DataFrame:
    """Per team: median time, max GPU memory, median AUC_GPU and AUC_CPU over its cases (the measured ones)."""
    latest = resources.drop_duplicates(["team", "case"], keep="last")
    grouped = latest.groupby("team")
    table = pd.DataFrame({
        "median_time_s": grouped["time_s"].median(),
        "max_gpu_mib": grouped["max_gpu_mib"].max(),
        "median_auc_gpu_mib_s": grouped["auc_gpu_mib_s"].median(),
        "median_auc_cpu_pct_s": grouped["auc_cpu_pct_s"].median(),
    })
    if "image_id" in latest:
        # The image that was measured, as the engine identifies it (the first 12 hex digits, as docker prints).
        ids = latest["image_id"].fillna("").astype(str).str.removeprefix("sha256:").str[:12]
        table["image_id"] = ids.groupby(latest["team"]).agg(lambda v: ", ".join(sorted(set(v) - {""})))
    return table.rename_axis("team").reset_index()


def _top_team_curves(page: _Page, runs_dir: Path, team_order: list[str] | None, resources: pd.DataFrame,
                     case: str | None, protocol: Protocol, names: _Names | None = None, top: int = 5) -> str:
    """The paper's resource figure: GPU memory and CPU of the top teams on one case, overlaid."""
    names = names or _Names({})

    def samples_of(team: str) -> Path:
        return runs_dir / names.folder(team) / "samples"

    teams = [t for t in (team_order or sorted(resources["team"].unique())) if samples_of(t).is_dir()]
    teams = teams[:top]
    if not teams:
        return ""
    shared = set.intersection(*({p.stem for p in samples_of(t).glob("*.csv")} for t in teams))
    chosen = case if case in shared else (sorted(shared)[0] if shared else None)
    if chosen is None:
        return '<p class="note">The top teams share no case with samples.</p>'
    samples = {t: read_table(samples_of(t) / f"{chosen}.csv", role="samples") for t in teams}
    return page.figure("gpu_curves", plots.gpu_curves_figure(samples, case=chosen,
                                                             allowance_mib=protocol.gpu_allowance_mib),
                       f"GPU memory and CPU of the top {len(teams)} teams on case {chosen}")


def print_pdf(index: str | Path, pdf: str | Path) -> Path:
    """Print the report page to ``pdf`` with headless Chromium (no LaTeX), every figure included.

    Raises
    ------
    FileNotFoundError
        If Chromium is not installed.
    RuntimeError
        If Chromium fails to print.
    """
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise FileNotFoundError("--pdf prints the page with Chromium, which is not installed (Debian: chromium)")
    index, pdf = Path(index).resolve(), Path(pdf).resolve()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="flare-eval-chromium-") as profile:
        result = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
             "--no-pdf-header-footer", "--virtual-time-budget=10000", f"--print-to-pdf={pdf}", index.as_uri()],
            capture_output=True, text=True, timeout=300)
    if result.returncode != 0 or not pdf.exists():
        raise RuntimeError(f"Chromium could not print {index} to {pdf}: {result.stderr.strip()[-500:]}")
    return pdf


_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
figure { margin: 1em 0; overflow-x: auto; } figure img { max-width: none; }
figcaption { font-size: .9em; color: #555; } .note { color: #777; font-style: italic; }
table.table { border-collapse: collapse; font-size: .85em; }
table.table td, table.table th { padding: .2em .6em; border-bottom: 1px solid #eee; text-align: right; }
table.facts th { text-align: left; padding-right: 1em; vertical-align: top; } .scroll { overflow-x: auto; }
h3 { font-size: 1em; margin-top: 1.5em; }
nav.toc ol { list-style: none; padding-left: 0; columns: 2; } nav.toc li { margin: .1em 0; }
.keep { break-inside: avoid; page-break-inside: avoid; }
@media print { figure img { max-width: 100%; } .scroll { overflow: visible; } section { break-inside: auto; }
  h2, h3 { break-after: avoid; page-break-after: avoid; } figure, tr { break-inside: avoid; }
  body { font-size: 10pt; } table.table { font-size: 8pt; } }
"""
#: Resolution of the PNG figures (SVG beside each).
FIGURE_DPI = 150
#: Paper sizes of the PDF, CSS names.
PAPER_SIZES = {"letter": "letter", "a4": "A4"}

# Records on the page how many figures loaded; the browser test reads it.
_LOAD_CHECK = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-figures-loaded', loaded + '/' + images.length);
});
"""


def _page_html(page: _Page, title: str, paper: str) -> str:
    size = f"@page {{ size: {PAPER_SIZES[paper]}; margin: 15mm; }}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}{size}</style><script>{_LOAD_CHECK}</script></head>"
        f"<body><h1>{html.escape(title)}</h1>"
        + page.contents()
        + "".join(page.sections)
        + "</body></html>\n"
    )

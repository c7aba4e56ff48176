"""The report's figures: matplotlib, one function per figure, each returning a ``Figure``.

Every function takes the tidy tables the other steps write and does no I/O, so
the figures work in a notebook as well as in the report. Sizes, font sizes and
label density adapt to the number of teams (3 or 48 alike).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = [
    "organ_scores_figure",
    "accuracy_time_figure",
    "radar_figure",
    "rank_blob_figure",
    "tau_violin_figure",
    "significance_figure",
    "rank_heatmap_figure",
    "resource_timeline_figure",
    "volume_agreement_figure",
    "subgroup_figure",
    "paired_difference_figure",
    "podium_figure",
    "case_places",
    "dot_box_figure",
    "ranking_methods_figure",
    "rank_frequency_figure",
    "region_dendrogram_figure",
    "gpu_curves_figure",
    "natural_order",
]


#: Units of the resource metrics, for axis labels.
UNITS = {"Time": "s", "AUC_GPU": "MiB s", "AUC_CPU": "% s", "time_s": "s"}


def _team_font_size(n_teams: int) -> float:
    return float(np.clip(11 - n_teams / 8, 6, 10))


def _team_axis_inches(n_teams: int) -> float:
    """Width of an axis holding one column per team, in inches."""
    return max(3.0, 0.22 * n_teams + 1.0)


def organ_scores_figure(scores: pd.DataFrame, metric: str, team_order: Sequence[str]) -> Figure:
    """Dot-and-box plot of one metric per organ (or region) across teams (the paper's Fig. 3).

    Parameters
    ----------
    scores : pandas.DataFrame
        Long scores with ``team, case, organ, label`` and ``metric`` (a region protocol's scores with
        ``organ`` the region's name and ``label`` its position in the protocol).
    metric : str
    team_order : sequence of str
        Teams left to right (e.g. by final rank).
    """
    organs = scores.sort_values("label")["organ"].drop_duplicates().tolist()
    n_teams = len(team_order)
    columns = 1 if n_teams > 12 else min(4, len(organs))
    rows = int(np.ceil(len(organs) / columns))
    width = columns * _team_axis_inches(n_teams)
    figure = Figure(figsize=(width, 2.4 * rows + 0.6), layout="constrained")
    rng = np.random.default_rng(0)
    size = _team_font_size(n_teams)
    for index, organ in enumerate(organs):
        axis = figure.add_subplot(rows, columns, index + 1)
        subset = scores[scores["organ"] == organ]
        data = [subset.loc[subset["team"] == team, metric].to_numpy(float) for team in team_order]
        positions = np.arange(1, n_teams + 1)
        axis.boxplot(data, positions=positions, widths=0.6, showfliers=False,
                     medianprops={"color": "black"}, boxprops={"color": "0.4"})
        for position, values in zip(positions, data):
            axis.scatter(position + rng.uniform(-0.18, 0.18, values.size), values, s=6, alpha=0.5, color="tab:blue")
        axis.set_title(organ, fontsize=10, wrap=True)
        if np.nanmin(scores[metric], initial=0) >= 0 and np.nanmax(scores[metric], initial=0) <= 1:
            axis.set_ylim(-0.02, 1.02)  # overlap metrics on one scale; distances keep their own
        axis.set_xticks(positions, team_order, rotation=90, fontsize=size)
        axis.set_ylabel(metric, fontsize=9)
    figure.suptitle(f"{metric} per organ and team", wrap=True)
    return figure


def accuracy_time_figure(results: pd.DataFrame, ranking: pd.DataFrame | None = None, *, label_top: int = 14) -> Figure:
    """Median DSC against median running time per team; circle area ~ median AUC_GPU (the paper's Fig. 2b)."""
    per_team = results.groupby("team").agg(DSC=("DSC", "median"), Time=("Time", "median"),
                                            AUC_GPU=("AUC_GPU", "median")).reset_index()
    if ranking is not None:
        order = ranking["team"].tolist()
    else:
        order = per_team.sort_values("DSC", ascending=False)["team"].tolist()
    figure = Figure(figsize=(7.5, 5.5), layout="constrained")
    axis = figure.add_subplot()
    gpu = per_team["AUC_GPU"].to_numpy(float)
    measured = bool(np.nanmax(gpu, initial=0) > 0)
    # Circle area encodes AUC_GPU only when there is something to encode: without a GPU every team is 0.
    area = 30 + 600 * gpu / np.nanmax(gpu) if measured else np.full(gpu.shape, 60.0)
    axis.scatter(per_team["Time"], per_team["DSC"], s=area, alpha=0.45, color="tab:orange", edgecolor="k")
    if (per_team["Time"] > 0).all() and per_team["Time"].max() / per_team["Time"].min() > 20:
        axis.set_xscale("log")
    labelled = per_team[per_team["team"].isin(order[:label_top])]
    for (team, x, y), (dx, dy) in zip(labelled[["team", "Time", "DSC"]].itertuples(index=False),
                                      _label_offsets(axis, labelled["Time"], labelled["DSC"])):
        axis.annotate(team, (x, y), fontsize=8, xytext=(dx, dy), textcoords="offset points",
                      arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.5} if dy != 4 else None)
    axis.set_xlabel("median running time (s)")
    axis.set_ylabel("median DSC")
    if measured:
        top = float(np.nanmax(gpu))
        for share in (0.25, 1.0):  # a size legend: what two circle areas stand for
            axis.scatter([], [], s=30 + 600 * share, alpha=0.45, color="tab:orange", edgecolor="k",
                         label=f"{share * top:.3g} MiB s")
        axis.legend(title="median AUC_GPU", fontsize=7, title_fontsize=7, labelspacing=1.5, borderpad=1,
                    loc="best")  # where it hides the fewest points
        axis.set_title("Accuracy against running time (circle area: median AUC_GPU)", wrap=True)
    else:
        axis.set_title("Accuracy against running time (GPU memory not measured)", wrap=True)
    return figure


def _label_offsets(axis, xs, ys, *, height_pt: float = 10.0, width_pt: float = 60.0) -> list[tuple[float, float]]:
    """Offsets (points) for labels beside points so that no two labels overlap: each moves down until free.

    Points are placed top to bottom; labels of teams whose points coincide (tied teams) stack instead of
    overprinting.
    """
    figure = axis.figure
    to_points = 72.0 / figure.dpi
    pixels = axis.transData.transform(np.column_stack([np.asarray(xs, float), np.asarray(ys, float)]))
    placed: list[tuple[float, float]] = []
    offsets = [(4.0, 4.0)] * len(pixels)
    for index in np.argsort(-pixels[:, 1], kind="stable"):
        x, y = pixels[index] * to_points
        dy = 4.0
        for _ in range(40):
            if all(abs((x + 4) - px) >= width_pt or abs((y + dy) - py) >= height_pt for px, py in placed):
                break
            dy -= height_pt
        placed.append((x + 4, y + dy))
        offsets[index] = (4.0, dy)
    return offsets


def radar_figure(ranking: pd.DataFrame, metrics: Sequence[str], teams: Sequence[str]) -> Figure:
    """Number of teams each of ``teams`` surpasses on each metric (the paper's Fig. 2c).

    A team surpasses another on a metric when its mean rank there is strictly lower.
    """
    angles = np.linspace(0, 2 * np.pi, len(metrics), endpoint=False)
    closed = np.concatenate([angles, angles[:1]])
    figure = Figure(figsize=(6.5, 6.5), layout="constrained")
    axis = figure.add_subplot(projection="polar")
    n_teams = len(ranking)
    for team in teams:
        row = ranking[ranking["team"] == team].iloc[0]
        surpassed = [int((ranking[f"{m}_mean_rank"] > row[f"{m}_mean_rank"]).sum()) for m in metrics]
        values = np.array(surpassed + surpassed[:1], dtype=float)
        axis.plot(closed, values, label=team)
        axis.fill(closed, values, alpha=0.1)
    axis.set_xticks(angles, list(metrics))
    axis.set_ylim(0, max(n_teams - 1, 1))
    axis.set_title("Teams surpassed on each metric", wrap=True)
    axis.legend(loc="upper right", bbox_to_anchor=(1.25, 1.1), fontsize=8)
    return figure


def _bootstrap_arrays(result) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Ranks, teams and full ranks (in the teams' order) of a `flare_eval.ranking.BootstrapResult`."""
    full = result.rank_distribution.set_index("team").loc[list(result.teams), "rank"].to_numpy()
    return result.ranks, list(result.teams), full


def rank_blob_figure(ranks, teams: Sequence[str] | None = None, full_rank: Sequence[int] | None = None) -> Figure:
    """Bootstrap rank distributions (challengeR's blob plot).

    Bubble area: share of samples in which the team has that rank; black
    line: 2.5-97.5% interval; cross: median rank.

    Parameters
    ----------
    ranks : (n_samples, n_teams) ndarray or BootstrapResult
        Rank of each team (columns in ``teams`` order) in each sample; or what
        `flare_eval.bootstrap_stability` returns, which brings teams and ranks.
    teams, full_rank : optional
        Needed with an array: the teams and their ranks on all cases.

    Examples
    --------
    >>> import flare_eval as fe, pandas as pd
    >>> table = pd.read_csv(fe.example_paths().results)
    >>> boot = fe.bootstrap_stability(table[table.team != "teamL"], "flare22", n_samples=50, seed=1)
    >>> rank_blob_figure(boot).axes[0].get_title()
    'Ranking stability over 50 bootstrap samples'
    """
    if teams is None:
        ranks, teams, full_rank = _bootstrap_arrays(ranks)
    order = np.argsort(np.asarray(full_rank), kind="stable")
    n_teams = len(teams)
    figure = Figure(figsize=(_team_axis_inches(n_teams) + 1, max(3.5, 0.12 * n_teams + 3)), layout="constrained")
    axis = figure.add_subplot()
    for x, t in enumerate(order, start=1):
        values, counts = np.unique(ranks[:, t], return_counts=True)
        share = counts / ranks.shape[0]
        axis.scatter(np.full(values.size, x), values, s=400 * share * (10 / max(n_teams, 10)), color="tab:blue",
                     alpha=0.6, edgecolor="none")
        low, high = np.percentile(ranks[:, t], [2.5, 97.5])
        axis.vlines(x, low, high, color="black", linewidth=1)
        axis.scatter([x], [np.median(ranks[:, t])], marker="x", color="black", s=20)
    axis.plot([1, n_teams], [1, n_teams], color="0.7", linewidth=0.8, zorder=0)
    axis.set_xticks(np.arange(1, n_teams + 1), [teams[t] for t in order], rotation=90,
                    fontsize=_team_font_size(n_teams))
    axis.set_ylabel("rank in bootstrap samples")
    axis.yaxis.get_major_locator().set_params(integer=True)  # ranks are whole numbers
    axis.invert_yaxis()
    axis.set_title(f"Ranking stability over {ranks.shape[0]} bootstrap samples", wrap=True)
    return figure


def tau_violin_figure(samples: pd.DataFrame) -> Figure:
    """Kendall's tau of the bootstrap rankings against the full ranking (the paper's Fig. 2d)."""
    columns = [c for c in samples.columns if c.startswith("kendall_tau")]
    names = ["overall" if c == "kendall_tau" else c[len("kendall_tau_"):] for c in columns]
    data = [samples[c].dropna().to_numpy(float) for c in columns]
    figure = Figure(figsize=(1.3 * len(columns) + 2, 4), layout="constrained")
    axis = figure.add_subplot()
    keep = [i for i, d in enumerate(data) if d.size]
    if keep:
        axis.violinplot([data[i] for i in keep], positions=[i + 1 for i in keep], showmedians=True)
    axis.set_xticks(np.arange(1, len(columns) + 1), names)
    axis.set_ylabel("Kendall's tau")
    axis.set_ylim(min(0.0, *(d.min() for d in data if d.size)) if keep else 0, 1.02)
    axis.set_title("Agreement of bootstrap rankings with the full ranking", wrap=True)
    return figure


def significance_figure(significance: pd.DataFrame, team_order: Sequence[str]) -> Figure:
    """Significance maps: for each metric, is the row team significantly better than the column team?"""
    metrics = significance["metric"].drop_duplicates().tolist()
    n_teams = len(team_order)
    index = {team: i for i, team in enumerate(team_order)}
    side = max(3.0, 0.16 * n_teams + 1.5)
    columns = min(len(metrics), 3 if n_teams <= 16 else 1)
    rows = int(np.ceil(len(metrics) / columns))
    figure = Figure(figsize=(side * columns, side * rows), layout="constrained")
    size = _team_font_size(n_teams) * (0.8 if n_teams > 24 else 1)
    for k, metric in enumerate(metrics):
        grid = np.full((n_teams, n_teams), np.nan)
        subset = significance[significance["metric"] == metric]
        for row in subset.itertuples():
            grid[index[row.team_a], index[row.team_b]] = 1.0 if row.significant else 0.0
        axis = figure.add_subplot(rows, columns, k + 1)
        axis.imshow(grid, cmap="Blues", vmin=-0.3, vmax=1.0, interpolation="nearest")
        axis.set_xticks(range(n_teams), team_order, rotation=90, fontsize=size)
        axis.set_yticks(range(n_teams), team_order, fontsize=size)
        axis.set_title(metric, fontsize=10, wrap=True)
    from matplotlib import colormaps
    from matplotlib.patches import Patch

    blues = colormaps["Blues"]
    figure.legend(handles=[Patch(color=blues(1.0), label="row team significantly better"),
                           Patch(color=blues(0.3 / 1.3), label="not significantly better"),
                           Patch(facecolor="white", edgecolor="grey", label="same team / not tested")],
                  loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    figure.suptitle("Row team against column team, one-sided paired Wilcoxon, adjusted", wrap=True)
    return figure


def rank_heatmap_figure(case_ranks: pd.DataFrame, team_order: Sequence[str]) -> Figure:
    """How many cases each team had at each rank (challengeR's ranking heatmap).

    Parameters
    ----------
    case_ranks : pandas.DataFrame
        ``team, case, rank`` (see :func:`flare_eval.ranking.case_ranks`).
    """
    n_teams = len(team_order)
    counts = pd.crosstab(case_ranks["team"], case_ranks["rank"]).reindex(index=list(team_order), fill_value=0)
    counts = counts.reindex(columns=range(1, n_teams + 1), fill_value=0)
    side = max(3.5, 0.16 * n_teams + 2)
    figure = Figure(figsize=(side + 1, side), layout="constrained")
    axis = figure.add_subplot()
    image = axis.imshow(counts.to_numpy(), cmap="viridis", aspect="auto", interpolation="nearest")
    size = _team_font_size(n_teams)
    axis.set_yticks(range(n_teams), team_order, fontsize=size)
    step = max(1, n_teams // 16)
    axis.set_xticks(range(0, n_teams, step), [str(r) for r in range(1, n_teams + 1, step)], fontsize=size)
    axis.set_xlabel("rank within a case")
    figure.colorbar(image, ax=axis, label="cases")
    axis.set_title("Cases at each rank", wrap=True)
    return figure


def resource_timeline_figure(samples: pd.DataFrame, *, title: str, allowance_mib: float = 2048.0) -> Figure:
    """GPU memory and CPU utilization over one case's run, from the 0.1 s samples."""
    figure = Figure(figsize=(8, 3.5), layout="constrained")
    cpu_axis = figure.add_subplot()
    cpu_axis.plot(samples["time_s"], samples["cpu_pct"], color="tab:red", label="CPU (% of machine)")
    cpu_axis.set_xlabel("time since start (s)")
    cpu_axis.set_ylabel("CPU utilization (%)", color="tab:red")
    cpu_axis.set_ylim(0, max(5.0, float(samples["cpu_pct"].max()) * 1.1))
    gpu = samples["gpu_mib"]
    if gpu.notna().any():
        gpu_axis = cpu_axis.twinx()
        gpu_axis.plot(samples["time_s"], gpu, color="tab:green", label="GPU memory (MiB)")
        gpu_axis.axhline(allowance_mib, color="tab:green", linestyle=":", linewidth=1)
        gpu_axis.set_ylabel("GPU memory (MiB)", color="tab:green")
    else:
        cpu_axis.text(0.99, 0.95, "GPU not measured", transform=cpu_axis.transAxes, ha="right", va="top")
    cpu_axis.set_title(title, wrap=True)
    return figure


def volume_agreement_figure(volumes: pd.DataFrame, agreement: pd.DataFrame) -> Figure:
    """Predicted against ground-truth volume, with Pearson's r per organ or region (the paper's Fig. 4f)."""
    from ..protocol import layout_of_table
    from ..volumes import paired_volumes

    wide = paired_volumes(volumes)
    layout = layout_of_table(wide.columns)
    name = layout.name_column
    figure = Figure(figsize=(7, 6), layout="constrained")
    axis = figure.add_subplot()
    r_by_unit = dict(zip(agreement[name], agreement["pearson_r"]))
    order = wide.sort_values(list(layout.key_columns), kind="stable")[name].unique()
    colors = dict(zip(order, _colors(len(order))))
    for unit, group in wide.groupby(name, sort=False):
        r = r_by_unit.get(unit, np.nan)
        label = f"{unit} (r={r:.3f})" if np.isfinite(r) else unit
        axis.scatter(group["volume_ml_gt"], group["volume_ml_pred"], s=18, color=colors[unit], label=label,
                     alpha=0.8)
    positive = wide[["volume_ml_gt", "volume_ml_pred"]].to_numpy(float)
    positive = positive[positive > 0]
    if positive.size:
        low, high = positive.min() * 0.8, positive.max() * 1.2
        axis.plot([low, high], [low, high], color="0.5", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_yscale("log")
    axis.set_xlabel("ground-truth volume (mL)")
    axis.set_ylabel("predicted volume (mL)")
    axis.legend(fontsize=7, ncol=2)
    axis.set_title(f"{layout.unit.capitalize()} volumes: prediction against ground truth", wrap=True)
    return figure


#: Okabe and Ito's palette, told apart with every common colour-vision deficiency.
_OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def _colors(n: int) -> list:
    """Distinct colours for ``n`` teams: colour-blind safe up to 8, then matplotlib's tab10 and tab20."""
    from matplotlib import colormaps

    if n <= len(_OKABE_ITO):
        return _OKABE_ITO[:n]
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def subgroup_figure(case_metrics: pd.DataFrame, column: str, metric: str, teams: Sequence[str]) -> Figure:
    """Box plots of a metric per subgroup of ``column`` for each team (the paper's Fig. 4a, 4c-e)."""
    groups = natural_order(case_metrics[column].astype(str).unique())
    n_groups, n_teams = len(groups), len(teams)
    width = max(5.0, 0.5 * n_groups * n_teams + 2)
    figure = Figure(figsize=(min(width, 30), 4.2), layout="constrained")
    axis = figure.add_subplot()
    colors = _colors(n_teams)
    step = 0.8 / max(n_teams, 1)
    for t, team in enumerate(teams):
        rows = case_metrics[case_metrics["team"] == team]
        data = [rows.loc[rows[column].astype(str) == g, metric].to_numpy(float) for g in groups]
        positions = np.arange(n_groups) - 0.4 + step * (t + 0.5)
        keep = [i for i, d in enumerate(data) if d.size]
        if not keep:
            continue
        boxes = axis.boxplot([data[i] for i in keep], positions=positions[keep], widths=step * 0.85,
                             patch_artist=True, showfliers=False, medianprops={"color": "black"})
        for patch in boxes["boxes"]:
            patch.set_facecolor(colors[t])
            patch.set_alpha(0.7)
        axis.plot([], [], color=colors[t], linewidth=6, label=team)
    counts = case_metrics.drop_duplicates(["case"]).groupby(column)["case"].count() if "case" in case_metrics \
        else pd.Series(dtype=int)
    axis.set_xticks(range(n_groups), [f"{g}\n(n={counts.get(g, 0)})" for g in groups], fontsize=8)
    axis.set_ylabel(f"case mean {metric}")
    axis.set_title(f"{metric} by {column}", wrap=True)
    axis.legend(fontsize=7, ncol=min(n_teams, 4))
    return figure


def paired_difference_figure(differences: pd.DataFrame, *, team_a: str, team_b: str, metric: str) -> Figure:
    """Per-case differences between two teams per organ (or region) and overall (the paper's Fig. 2a)."""
    from ..protocol import layout_of_table

    name = layout_of_table(differences.columns).name_column
    organs = differences[name].drop_duplicates().tolist()
    organs = [o for o in organs if o != "mean"] + (["mean"] if "mean" in organs else [])
    data = [differences.loc[differences[name] == o, "difference"].to_numpy(float) for o in organs]
    figure = Figure(figsize=(max(6.0, 0.55 * len(organs) + 2), 4), layout="constrained")
    axis = figure.add_subplot()
    axis.axhline(0, color="0.5", linewidth=0.8)
    axis.boxplot(data, positions=range(1, len(organs) + 1), showfliers=False, medianprops={"color": "black"})
    rng = np.random.default_rng(0)
    for position, values in enumerate(data, start=1):
        axis.scatter(position + rng.uniform(-0.15, 0.15, values.size), values, s=6, alpha=0.5, color="tab:purple")
    axis.set_xticks(range(1, len(organs) + 1), organs, rotation=45, ha="right", fontsize=8)
    axis.set_ylabel(f"{metric}: {team_a} - {team_b}")
    axis.set_title(f"Case by case: {team_a} against {team_b}", wrap=True)
    return figure


def natural_order(labels) -> list[str]:
    """Group labels in the order a reader expects: numeric ranges by value, text alphabetically, missing last.

    Examples
    --------
    >>> natural_order(["51-70", "<=50", ">70", "(missing)"])
    ['<=50', '51-70', '>70', '(missing)']
    >>> natural_order(["M", "F"])
    ['F', 'M']
    """
    import re

    def key(label: str):
        if label.startswith("(") and label.endswith(")"):
            return (2, 0.0, 0, label)
        number = re.search(r"-?\d+(?:\.\d+)?", label)
        if number is None:
            return (1, 0.0, 0, label)
        # "<=50" comes before "50-60" and ">70" after "51-70": a bound's side breaks ties.
        side = -1 if label.lstrip().startswith("<") else (1 if label.lstrip().startswith(">") else 0)
        return (0, float(number.group()), side, label)

    return sorted((str(label) for label in labels), key=key)


def _penalized(results: pd.DataFrame) -> pd.Series:
    """Rows whose values a penalty filled in (a case that timed out, crashed, left no or an invalid output)."""
    from ..results import penalized

    if "status" not in results:
        return pd.Series(False, index=results.index)
    return penalized(results["status"])


def dot_box_figure(results: pd.DataFrame, metric: str, team_order: Sequence[str], *, ax=None) -> Figure:
    """Each team's case values of one metric: a box and every case as a dot (challengeR's dot-and-box plot).

    Values a penalty filled in are hollow markers. ``ax``: draw on this axis instead of a new figure.
    """
    n_teams = len(team_order)
    if ax is None:
        figure = Figure(figsize=(_team_axis_inches(n_teams) + 1.5, 4.2), layout="constrained")
        ax = figure.add_subplot()
    figure = ax.figure
    penalized = _penalized(results)
    rng = np.random.default_rng(0)
    data = []
    for t, team in enumerate(team_order):
        rows = results["team"] == team
        values = results.loc[rows, metric].to_numpy(float)
        data.append(values[np.isfinite(values)])
        jitter = rng.uniform(-0.18, 0.18, values.size)
        marked = penalized[rows].to_numpy()
        ax.scatter(t + jitter[~marked], values[~marked], s=8, color="tab:blue", alpha=0.6, linewidths=0)
        ax.scatter(t + jitter[marked], values[marked], s=22, facecolors="none", edgecolors="tab:red",
                   linewidths=1.0, label="penalty value (the case failed)" if marked.any() else None)
    ax.boxplot(data, positions=range(n_teams), widths=0.6, showfliers=False, medianprops={"color": "black"})
    ax.set_xticks(range(n_teams), team_order, rotation=90, fontsize=_team_font_size(n_teams))
    ax.set_ylabel(f"{metric} ({UNITS[metric]})" if metric in UNITS else metric)
    ax.set_title(f"{metric} of every case, per team", wrap=True)
    measured = results.loc[~penalized, metric].to_numpy(float)
    measured = measured[np.isfinite(measured) & (measured > 0)]
    if metric in UNITS and measured.size and penalized.any():
        # Resources span decades, and a penalty (3600 s, 2.9e7 MiB s) would flatten every real value to 0 on a
        # linear axis: a log axis, the penalties counted in the legend.
        ax.set_yscale("log")
        n_failed = int(penalized[results["team"].isin(team_order)].sum())
        handles, labels = ax.get_legend_handles_labels()
        labels = [f"penalty value: {n_failed} failed case(s)" if "penalty" in label else label for label in labels]
        ax.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), fontsize=8,
                  loc="lower right")
        return figure
    if penalized.any():
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    return figure


def case_places(results: pd.DataFrame, metric: str, *, higher_is_better: bool = True) -> pd.DataFrame:
    """Each team's place in each case on one metric: ``case, team, value, place`` (1 = best, ties at the minimum).

    The places of challengeR's podium, and the per-case ranks of rank-then-aggregate.
    """
    table = results[["case", "team", metric]].rename(columns={metric: "value"}).dropna(subset=["value"])
    places = table.groupby("case")["value"].rank(method="min", ascending=not higher_is_better)
    return table.assign(place=places.astype(int)).sort_values(["case", "place", "team"], ignore_index=True)


def podium_figure(results: pd.DataFrame, ranking: pd.DataFrame, metric: str, *, higher_is_better: bool = True,
                  ax=None) -> Figure:
    """challengeR's podium: in each case, every team's value at the place it took there; below, how often.

    The upper panel has one column per podium place (1 = best in the case, ties sharing the smaller place);
    each case's values stand at their places and are joined by a grey line, each team in its colour, so a
    team that wins most cases shows as its colour massed at place 1. The lower panel stacks, per place, how
    many cases each team took it in. The legend gives each team's final rank, ties shown as ties. Penalty
    values are hollow red markers. ``ax`` (the upper panel) is drawn alone when given.
    """
    order = ranking.sort_values(["rank", "team"])["team"].tolist()
    final = dict(zip(ranking["team"], ranking["rank"]))
    n_teams = len(order)
    places = case_places(results, metric, higher_is_better=higher_is_better)
    bars = None
    if ax is None:
        figure = Figure(figsize=(max(5.0, 0.5 * n_teams + 3.5), 6.5), layout="constrained")
        ax, bars = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    figure = ax.figure
    colors = dict(zip(order, _colors(n_teams)))
    for _, case in places.groupby("case", sort=False):
        ax.plot(case["place"], case["value"], color="grey", alpha=0.25, linewidth=0.7, zorder=1)
    penalized = _penalized(results)
    failed = set(zip(results.loc[penalized, "case"], results.loc[penalized, "team"]))
    hollow = np.array([(c, t) in failed for c, t in zip(places["case"], places["team"])], bool)
    for team in order:
        mine = (places["team"] == team).to_numpy()
        ax.scatter(places["place"][mine & ~hollow], places["value"][mine & ~hollow], s=14, color=colors[team],
                   zorder=3, label=f"{final.get(team, '?')}. {team}")
    if hollow.any():
        ax.scatter(places["place"][hollow], places["value"][hollow], s=26, facecolors="none", edgecolors="tab:red",
                   zorder=4, label="penalty value (the case failed)")
    ax.set_ylabel(f"{metric} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.set_title(f"Podium: {metric}, each case's values at the places the teams took in it", wrap=True)
    ax.legend(fontsize=7, ncol=max(1, n_teams // 16 + 1), loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="final rank. team", title_fontsize=7)
    if bars is not None:
        counts = places.pivot_table(index="place", columns="team", values="case", aggfunc="count", fill_value=0)
        counts = counts.reindex(index=range(1, n_teams + 1), columns=order, fill_value=0)
        bottom = np.zeros(n_teams)
        for team in order:
            bars.bar(counts.index, counts[team], bottom=bottom, color=colors[team], width=0.8)
            bottom += counts[team].to_numpy()
        bars.set_ylabel("cases")
        bars.set_xlabel("place in the case (1 = best)")
        bars.set_xticks(range(1, n_teams + 1))
        bars.yaxis.get_major_locator().set_params(integer=True)
    else:
        ax.set_xlabel("place in the case (1 = best)")
        ax.set_xticks(range(1, n_teams + 1))
    return figure


def ranking_methods_figure(methods: pd.DataFrame, agreement: pd.DataFrame | None = None, *, ax=None,
                           title: str = "The ranking under other methods (Kendall's tau to the official ranking)",
                           ) -> Figure:
    """Each team's final rank under each ranking method, joined per team, with Kendall's tau to the official one.

    Parameters
    ----------
    methods : pandas.DataFrame
        ``team`` and one rank column per method (``ranking_methods.csv``).
    agreement : pandas.DataFrame, optional
        ``method, kendall_tau`` (``ranking_methods_tau.csv``); computed from
        ``methods`` when not given.

    Examples
    --------
    >>> import flare_eval as fe, pandas as pd
    >>> table = pd.read_csv(fe.example_paths().results)
    >>> methods = fe.ranking_methods(table[table.team != "teamL"], "flare22")
    >>> len(ranking_methods_figure(methods).axes)
    1
    """
    if agreement is None:
        from ..ranking import ranking_methods_agreement

        agreement = ranking_methods_agreement(methods)
    columns = [c for c in methods.columns if c != "team"]  # the official ranking first
    n_teams = len(methods)
    if ax is None:
        figure = Figure(figsize=(1.9 * len(columns) + 3, max(4.0, 0.16 * n_teams + 2.5)), layout="constrained")
        ax = figure.add_subplot()
    figure = ax.figure
    tau = dict(zip(agreement["method"], agreement["kendall_tau"]))
    colors = _colors(n_teams)
    ordered = methods.sort_values(columns[0])
    for i, row in enumerate(ordered.itertuples(index=False)):
        ranks = [getattr(row, c) for c in columns]
        ax.plot(range(len(columns)), ranks, marker="o", color=colors[i], linewidth=1, markersize=3)
        ax.annotate(row.team, (len(columns) - 1, ranks[-1]), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=_team_font_size(n_teams))
    labels = [f"{c.replace('_', '-')}\ntau = {tau.get(c, float('nan')):.2f}" for c in columns]
    ax.set_xticks(range(len(columns)), labels, fontsize=8)
    ax.set_xlim(-0.3, len(columns) - 0.4)
    ax.invert_yaxis()
    ax.set_ylabel("final rank")
    ax.set_title(title, wrap=True)
    return figure


def region_dendrogram_figure(per_region: pd.DataFrame) -> Figure:
    """challengeR's dendrogram of tasks: regions (or organs) clustered by how alike they rank the teams.

    The distance of two regions is ``1 - tau`` (Kendall's tau-b between their rankings of the teams); the
    clusters join by average linkage. Regions that rank the teams alike hang together.

    Parameters
    ----------
    per_region : pandas.DataFrame
        ``team`` and one column of ranks per region (as `flare_eval.ranking.rank_per_region` returns;
        a ``consensus`` column is left out).
    """
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    from ..ranking import kendall_tau_b

    regions = [c for c in per_region.columns if c not in ("team", "consensus")]
    ranks = per_region[regions].to_numpy(float)
    distance = np.zeros((len(regions), len(regions)))
    for i in range(len(regions)):
        for j in range(i + 1, len(regions)):
            tau = kendall_tau_b(ranks[:, i], ranks[:, j])
            distance[i, j] = distance[j, i] = 1.0 - (0.0 if np.isnan(tau) else tau)
    figure = Figure(figsize=(max(4.0, 0.5 * len(regions) + 2.5), 3.8), layout="constrained")
    axis = figure.add_subplot()
    dendrogram(linkage(squareform(distance, checks=False), method="average"), labels=regions, ax=axis,
               leaf_rotation=90, color_threshold=0, above_threshold_color="0.3")
    axis.set_ylabel("1 - Kendall's tau")
    axis.set_title("Regions clustered by how alike they rank the teams", wrap=True)
    return figure


def rank_frequency_figure(ranks, teams: Sequence[str] | None = None, team_order: Sequence[str] | None = None, *,
                          ax=None) -> Figure:
    """Stacked frequency of each team's ranks over the bootstrap samples.

    Parameters
    ----------
    ranks : (n_samples, n_teams) ndarray or BootstrapResult
        Every team's rank in every sample, columns in ``teams`` order; or what
        `flare_eval.bootstrap_stability` returns.
    teams, team_order : optional
        With an array: its columns' teams, and the order to draw them in
        (default: by rank on all cases).
    """
    if teams is None:
        ranks, teams, full = _bootstrap_arrays(ranks)
        team_order = team_order or [teams[i] for i in np.argsort(full, kind="stable")]
    team_order = team_order or list(teams)
    n_teams = len(team_order)
    if ax is None:
        figure = Figure(figsize=(_team_axis_inches(n_teams) + 2.5, 4.2), layout="constrained")
        ax = figure.add_subplot()
    figure = ax.figure
    column = {team: i for i, team in enumerate(teams)}
    shares = np.array([[np.mean(ranks[:, column[team]] == r) for r in range(1, n_teams + 1)] for team in team_order])
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    bottom = np.zeros(n_teams)
    for r in range(n_teams):
        ax.bar(range(n_teams), shares[:, r], bottom=bottom, color=cmap(r / max(n_teams - 1, 1)), width=0.8,
               label=f"rank {r + 1}" if n_teams <= 12 else None)
        bottom += shares[:, r]
    ax.set_xticks(range(n_teams), team_order, rotation=90, fontsize=_team_font_size(n_teams))
    ax.set_ylabel("share of bootstrap samples")
    ax.set_ylim(0, 1)
    ax.set_title("How often each team took each rank", wrap=True)
    if n_teams <= 12:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        figure.colorbar(ScalarMappable(Normalize(1, n_teams), cmap), ax=ax, label="rank")
    return figure


def gpu_curves_figure(samples: dict[str, pd.DataFrame], *, case: str, allowance_mib: float = 2048.0) -> Figure:
    """GPU memory (left) and CPU utilization (right) over one case for several teams, overlaid (the paper's Fig. 5).

    Parameters
    ----------
    samples : dict of team -> pandas.DataFrame
        Each team's 0.1 s samples of the case (``time_s, cpu_pct, gpu_mib``).
    """
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    gpu_axis, cpu_axis = figure.subplots(1, 2)
    colors = _colors(len(samples))
    measured = False
    for color, (team, table) in zip(colors, samples.items()):
        if table["gpu_mib"].notna().any():
            measured = True
            gpu_axis.plot(table["time_s"], table["gpu_mib"], color=color, label=team)
        cpu_axis.plot(table["time_s"], table["cpu_pct"], color=color, label=team)
    if measured:
        gpu_axis.axhline(allowance_mib, color="black", linestyle=":", linewidth=1,
                         label=f"allowance {allowance_mib:g} MiB")
        gpu_axis.legend(fontsize=8)
    else:
        gpu_axis.text(0.5, 0.5, "GPU not measured", transform=gpu_axis.transAxes, ha="center", va="center")
    gpu_axis.set_xlabel("time since start (s)")
    gpu_axis.set_ylabel("GPU memory (MiB)")
    gpu_axis.set_title(f"GPU memory, case {case}", wrap=True)
    cpu_axis.set_xlabel("time since start (s)")
    cpu_axis.set_ylabel("CPU utilization (% of machine)")
    cpu_axis.set_title(f"CPU, case {case}", wrap=True)
    cpu_axis.legend(fontsize=8)
    return figure

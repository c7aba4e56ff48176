"""The report: figures from tables, the page, and the page in a real headless browser."""

import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import flare_eval as fe
from flare_eval.cli import main
from flare_eval.reporting import plots
from flare_eval.reporting.html import build_report, find_report_inputs

ARTIFACTS = __import__("conftest").REPO / "test-artifacts"
# The evaluation fixture joins the bundled made-up results.csv (50 cases) with runs scored on the three bundled
# cases, so its sources disagree on purpose; the check that says so is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore::flare_eval.reporting.html.ReportWarning")


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """A folder shaped like `evaluate`'s output, built from the bundled examples (no containers)."""
    folder = tmp_path_factory.mktemp("evaluation")
    paths = fe.example_paths()
    results = pd.read_csv(paths.results)
    results = results[results.team.isin(["teamA", "teamB", "teamC"])]
    results.to_csv(folder / "results.csv", index=False)
    fe.rank_results(folder / "results.csv", folder / "ranking", n_samples=100, seed=4)
    for team in ("teamA", "teamB", "teamC"):
        fe.score(paths.predictions / team, paths.labels, folder / "runs" / team, workers=1, progress=False)
    times = np.arange(1, 31) * 0.1
    for k, team in enumerate(("teamA", "teamB", "teamC")):
        samples = folder / "runs" / team / "samples"
        samples.mkdir()
        pd.DataFrame({"time_s": times, "cpu_time_s": np.cumsum(np.full(30, 0.04)), "cpu_pct": 40.0 + 10 * k,
                      "gpu_mib": 1000 + (100 + 50 * k) * times}).to_csv(samples / "case_0001.csv", index=False)
        rows = pd.DataFrame({"team": team, "case": ["case_0001", "case_0002"], "time_s": [3.0, 4.0],
                             "auc_gpu_mib_s": 0.0, "auc_cpu_pct_s": [120.0, 130.0], "max_gpu_mib": [1300.0, 1400.0],
                             "gpu_measured": False, "exit_code": [0, 3 if team == "teamC" else 0],
                             "status": ["ok", "crashed" if team == "teamC" else "ok"], "started_at": ""})
        rows.to_csv(folder / "runs" / team / "resources.csv", index=False)
    (folder / "runs" / "teamC" / "logs").mkdir()
    (folder / "runs" / "teamC" / "logs" / "case_0002.log").write_text("boom\n")
    fe.quantify(paths.predictions / "teamA", paths.labels, folder / "quantify", progress=False)
    with pytest.warns(UserWarning):
        fe.cohorts(paths.cohort_scores, paths.metadata, folder / "cohorts")
    fe.compare(paths.cohort_scores, "teamA", "teamA-nounlabeled", folder / "compare", seed=1)
    return folder


SECTIONS = ("Run facts", "Leaderboard", "Failures", "Accuracy and efficiency", "Strengths of the top teams",
            "Case values per team", "Podium", "Ranking stability",
            "The ranking under other methods: aggregate-mean-then-rank, aggregate-median-then-rank, test-then-rank",
            "Significance", "Ranks per case", "Accuracy per organ", "Rankings per organ and their consensus",
            "Resources per team", "Resources over time",
            "Organ volumes", "Cohorts and subgroups", "Paired comparison")
# leaderboard-side 10 + dot-and-box 5 + podium 2 + rank frequency + methods + top-team curves
# + one per metadata column (4) + the paired differences + the ranks per organ and their dendrogram
N_FIGURES = 27


@pytest.fixture(scope="module")
def default_report(evaluation, tmp_path_factory):
    """The report with default options, drawn once through the command line (a report takes tens of seconds)."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("report")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["report", str(evaluation), "--out", str(folder), "--team", "teamA", "--case", "case_0001"]) == 0
    assert str(folder / "index.html") in printed.getvalue()
    return folder / "index.html"


def test_report_has_every_section_and_figure(default_report):
    tmp_path = default_report.parent
    text = default_report.read_text()
    for title in SECTIONS:
        assert re.search(rf"<h2>\d+\. {re.escape(title)}", text), title
    assert "Not shown" not in text
    images = re.findall(r'<img src="(figures/[^"]+\.png)"', text)
    assert len(images) == N_FIGURES
    assert re.search(r"teamC</td>\s*<td>case_0002</td>\s*<td>crashed</td>", text)  # the failure
    assert "teamC/logs/case_0002.log in the runs folder" in text  # its log, named, not linked outside the folder
    assert not re.search(r'href="(\.\./|/)', text)
    assert "AUC_GPU = 29491200" in text
    assert "GPU not measured" in text and "penalty values" in text and "seed 4" in text
    for image in images:
        assert (tmp_path / image).stat().st_size > 1000
        assert (tmp_path / image.replace(".png", ".svg")).exists()
    assert "http" not in text.replace('lang="en"', "")  # nothing fetched from the network


def test_absent_inputs_become_notes(evaluation, tmp_path):
    index = build_report(find_report_inputs(evaluation / "results.csv", runs_dir=tmp_path / "none"), tmp_path / "r")
    text = index.read_text()
    assert re.search(r"<h2>\d+\. Leaderboard</h2>", text)
    assert "Computed from results.csv (no ranking/ folder)" not in text
    only_results = tmp_path / "only"
    only_results.mkdir()
    shutil.copy(evaluation / "results.csv", only_results / "results.csv")
    text = build_report(find_report_inputs(only_results / "results.csv"), tmp_path / "r2").read_text()
    assert "Computed from results.csv" in text
    assert "Not shown: no ranking/ folder" in text and "Not shown: no quantify/ folder" in text


def test_report_cli_refuses_a_missing_evaluation(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err


def chromium_or_skip():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("FLARE_EVAL_REQUIRE_BROWSER") == "1":
            pytest.fail("FLARE_EVAL_REQUIRE_BROWSER=1 but chromium is not installed")
        pytest.skip("chromium not installed")
    return browser


def test_every_figure_loads_in_headless_chromium(default_report, tmp_path):
    browser = chromium_or_skip()
    index = default_report
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--virtual-time-budget=10000", "--dump-dom", index.as_uri()],
                         capture_output=True, text=True, timeout=120)
    loaded = re.search(r'data-figures-loaded="(\d+)/(\d+)"', dom.stdout)
    assert loaded, dom.stderr[-2000:]
    assert loaded.group(1) == loaded.group(2) == str(N_FIGURES)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    subprocess.run([*flags, "--window-size=1400,3000", f"--screenshot={shot}", index.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000


def tick_labels_overlap(figure: Figure) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    for axis in figure.axes:
        boxes = [t.get_window_extent(renderer) for t in axis.get_xticklabels() if t.get_text()]
        for left, right in zip(boxes, boxes[1:]):
            if left.x1 > right.x0 + 0.5:
                return True
    return False


def test_figures_stay_readable_with_48_teams():
    import sys

    sys.path.insert(0, str(__import__("conftest").REPO / "benchmarks"))
    from bench_ranking import synthetic_results

    results = synthetic_results(48, 20)
    ranking = fe.rank(results, "flare22")
    boot = fe.bootstrap_stability(results, "flare22", n_samples=50, seed=0)
    order = ranking.team.tolist()
    blob = plots.rank_blob_figure(boot.ranks, boot.teams, boot.rank_distribution.set_index("team")
                                  .loc[list(boot.teams), "rank"].to_numpy())
    assert not tick_labels_overlap(blob)
    assert blob.get_size_inches()[0] > plots.rank_blob_figure(boot.ranks[:, :3], boot.teams[:3], [1, 2, 3]) \
        .get_size_inches()[0]
    scores = pd.DataFrame([{"team": t, "case": c, "label": 1, "organ": "Liver", "DSC": 0.9, "NSD": 0.9}
                           for t in order for c in range(3)])
    assert not tick_labels_overlap(plots.organ_scores_figure(scores, "DSC", order))
    heatmap = plots.rank_heatmap_figure(fe.case_ranks(results, "flare22"), order)
    assert isinstance(heatmap, Figure)
    significance = fe.significance(results[results.team.isin(order[:10])], "flare22")
    assert not tick_labels_overlap(plots.significance_figure(significance, order[:10]))


def titles_fit(figure: Figure) -> bool:
    """Every axis title and the figure's title lie inside the figure once drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    width, height = figure.bbox.width, figure.bbox.height
    texts = [axis.title for axis in figure.axes] + ([figure._suptitle] if figure._suptitle else [])
    for text in texts:
        if not text.get_text():
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            return False
    return True


@pytest.mark.parametrize("n_teams", [2, 3, 48])
def test_titles_are_never_clipped(n_teams):
    import sys

    sys.path.insert(0, str(__import__("conftest").REPO / "benchmarks"))
    from bench_ranking import synthetic_results

    results = synthetic_results(n_teams, 12)
    results["status"] = "ok"
    ranking = fe.rank(results, "flare22")
    order = ranking.team.tolist()
    boot = fe.bootstrap_stability(results, "flare22", n_samples=30, seed=0)
    methods = fe.ranking_methods(results, "flare22")
    figures = [
        plots.rank_blob_figure(boot.ranks, boot.teams, list(range(1, n_teams + 1))),
        plots.rank_frequency_figure(boot.ranks, boot.teams, order),
        plots.tau_violin_figure(boot.samples),
        plots.dot_box_figure(results, "DSC", order),
        plots.podium_figure(results, ranking, "DSC"),
        plots.ranking_methods_figure(methods, fe.ranking_methods_agreement(methods)),
        plots.rank_heatmap_figure(fe.case_ranks(results, "flare22"), order),
        plots.accuracy_time_figure(results, ranking),
        plots.significance_figure(fe.significance(results, "flare22"), order),
    ]
    for figure in figures:
        assert titles_fit(figure), [a.title.get_text() for a in figure.axes]


def test_subgroups_in_natural_order():
    assert plots.natural_order(["51-70", "<=50", ">70", "(missing)"]) == ["<=50", "51-70", ">70", "(missing)"]
    assert plots.natural_order(["10-20", "2-9", "100+"]) == ["2-9", "10-20", "100+"]


def test_the_report_says_when_its_sources_disagree(examples, tmp_path):
    """collect, rank, then scores rewritten by a later collect with other labels: the page must not hide it."""
    import warnings

    from flare_eval.reporting.html import ReportWarning

    runs = tmp_path / "runs"
    for team in ("teamA", "teamB", "teamC"):
        shutil.copytree(examples.runs / team, runs / team)
        shutil.copytree(examples.predictions / team, runs / team / "predictions")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fe.collect_results(runs, examples.labels, tmp_path / "results.csv", progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ReportWarning)
            build_report(find_report_inputs(tmp_path), tmp_path / "consistent")
    assert "Sources that disagree" not in (tmp_path / "consistent" / "index.html").read_text()
    scores = pd.read_csv(runs / "teamA" / "scores.csv")
    scores["DSC"] = 0.0
    scores.to_csv(runs / "teamA" / "scores.csv", index=False)
    with pytest.warns(ReportWarning, match=r"DSC differs in 3 \(team, case\) pair\(s\)"):
        build_report(find_report_inputs(tmp_path), tmp_path / "report")
    text = (tmp_path / "report" / "index.html").read_text()
    assert "Sources that disagree" in text and "rerun <code>flare-eval collect</code>" in text


def test_publishing_options_title_names_contents_logs_single_file(evaluation, tmp_path):
    names = {"teamA": "Alpha Lab", "teamB": "Team 2", "teamC": "Anonymous C", "teamA-nounlabeled": "Alpha v0"}
    index = build_report(find_report_inputs(evaluation), tmp_path / "r", title="FLARE22 final results",
                         display_names=names, include_logs=True)
    text = index.read_text()
    assert "<title>FLARE22 final results</title>" in text and "<h1>FLARE22 final results</h1>" in text
    for original, shown in names.items():
        assert shown in text and original not in text, original
    data = pd.read_csv(tmp_path / "r" / "data" / "results.csv")
    assert set(data.team) == {"Alpha Lab", "Team 2", "Anonymous C"}
    # Every section has an anchor the table of contents links to, and a number.
    anchors = re.findall(r'<section id="([^"]+)"><div class="keep"><h2>(\d+)\. ', text)
    assert len(anchors) >= 15 and [int(n) for _, n in anchors] == list(range(1, len(anchors) + 1))
    for anchor, _ in anchors:
        assert f'href="#{anchor}"' in text
    # The failed case's log is copied in and linked there; nothing links outside the report folder.
    assert '<a href="logs/Anonymous C-case_0002.log">log</a>' in text
    assert (tmp_path / "r" / "logs" / "Anonymous C-case_0002.log").read_text() == "boom\n"
    assert not re.search(r'href="(\.\./|/)', text)
    assert "How this ranking was computed" in text and "Rank, then aggregate" in text
    single = build_report(find_report_inputs(evaluation), tmp_path / "s", single_file=True, paper="a4")
    text = single.read_text()
    assert 'src="figures/' not in text and text.count('src="data:image/png;base64,') == N_FIGURES
    assert "size: A4" in text


def test_podium_places_are_the_per_case_ranks_and_labels_show_tied_ranks():
    from flare_eval.protocol import load_protocol
    from flare_eval.ranking import prepare_results
    from flare_eval.ranking.arrays import _case_ranks

    results = pd.read_csv(fe.example_paths().results, dtype={"team": str, "case": str})
    results = results[results.team.isin(["teamA", "teamB", "teamC", "teamD"])]
    matrix = prepare_results(results, "flare22")
    dsc = load_protocol("flare22").ranking_metrics[0]
    places = plots.case_places(results, "DSC", higher_is_better=dsc.higher_is_better)
    expected = _case_ranks(matrix)[0]  # the DSC ranks of rank-then-aggregate, (cases, teams)
    got = places.pivot(index="case", columns="team", values="place").loc[list(matrix.cases), list(matrix.teams)]
    np.testing.assert_array_equal(got.to_numpy(), expected)
    tied = fe.rank(results, "flare22").assign(rank=[1, 1, 3, 4])
    figure = plots.podium_figure(results, tied, "DSC")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels[:2] == [f"1. {tied.team.iloc[0]}", f"1. {tied.team.iloc[1]}"] and labels[2].startswith("3. ")
    counts = sum(patch.get_height() for patch in figure.axes[1].patches)
    assert counts == len(places)  # every team's every case is counted at its place


def test_resource_figures_use_log_axes_and_count_penalties():
    results = pd.read_csv(fe.example_paths().results, dtype={"team": str, "case": str})
    results = results[results.team.isin(["teamA", "teamB", "teamC"])].copy()
    results["status"] = "ok"
    failed = results.index[:4]
    results.loc[failed, "status"] = "timeout"
    results.loc[failed, "Time"] = 3600
    figure = plots.dot_box_figure(results, "Time", ["teamA", "teamB", "teamC"])
    axis = figure.axes[0]
    assert axis.get_yscale() == "log" and axis.get_ylabel() == "Time (s)"
    assert "penalty value: 4 failed case(s)" in [t.get_text() for t in axis.get_legend().get_texts()]


def test_rankings_per_region_and_their_consensus():
    from flare_eval.ranking import rank_per_region

    rows = []
    dice = {"A": (0.9, 0.5, 0.5), "B": (0.8, 0.8, 0.6), "C": (0.7, 0.7, 0.9)}
    for team, values in dice.items():
        for case in ("1", "2"):
            for region, value in zip(("kidney_and_mass", "mass", "tumor"), values):
                rows.append({"team": team, "case": case, "region": region, "Dice": value, "SD": value})
    table = rank_per_region(pd.DataFrame(rows), "kits23").set_index("team")
    # kidney_and_mass: A B C; mass: B C A; tumor: C B A -> means A 7/3, B 5/3, C 2 -> consensus B, C, A
    assert table.loc[["A", "B", "C"], "kidney_and_mass"].tolist() == [1, 2, 3]
    assert table.loc[["A", "B", "C"], "mass"].tolist() == [3, 1, 2]
    assert table["consensus"].to_dict() == {"B": 1, "C": 2, "A": 3}


def test_accuracy_time_bubbles_have_a_size_legend_only_when_gpu_memory_was_measured():
    results = pd.read_csv(fe.example_paths().results, dtype={"team": str, "case": str})
    legend = plots.accuracy_time_figure(results).axes[0].get_legend()
    assert legend is not None and legend.get_title().get_text() == "median AUC_GPU"
    unmeasured = plots.accuracy_time_figure(results.assign(AUC_GPU=0.0)).axes[0]
    assert unmeasured.get_legend() is None and "not measured" in unmeasured.get_title()
    sizes = unmeasured.collections[0].get_sizes()
    assert len(set(sizes)) == 1  # no size encoding without a measurement


def test_labels_of_tied_teams_do_not_overprint():
    results = pd.read_csv(fe.example_paths().results, dtype={"team": str, "case": str})
    twin = results[results.team == "teamA"].assign(team="teamA-twin")  # the very same values
    figure = plots.accuracy_time_figure(pd.concat([results, twin]))
    offsets = {text.get_text(): text.xyann for text in figure.axes[0].texts}
    assert offsets["teamA"] != offsets["teamA-twin"]


def test_regions_that_rank_alike_hang_together_in_the_dendrogram():
    per_region = pd.DataFrame({"team": list("abcde"), "r1": [1, 2, 3, 4, 5], "r2": [1, 2, 3, 5, 4],
                               "r3": [5, 4, 3, 2, 1], "consensus": [1, 2, 3, 4, 5]})
    figure = plots.region_dendrogram_figure(per_region)
    leaves = [label.get_text() for label in figure.axes[0].get_xticklabels()]
    assert sorted(leaves) == ["r1", "r2", "r3"] and abs(leaves.index("r1") - leaves.index("r2")) == 1

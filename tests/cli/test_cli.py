"""The flare-eval command, called in-process."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import write_nifti

from flare_eval import __version__
from flare_eval.cli import main
from flare_eval.ranking import DEFAULT_SEED


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    help_text = capsys.readouterr().out
    compact = "".join(help_text.split())  # argparse wraps lines, also at hyphens
    assert "flare21,flare22,flare22-grand-challenge,flare23" in compact
    assert "--slice-range" in help_text


def test_score_examples(examples, tmp_path, capsys):
    code = main(["score", str(examples.predictions / "teamA"), str(examples.labels), "--out", str(tmp_path),
                 "--workers", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Liver" in out and "DSC_median" in out and "mean" in out
    assert {p.name for p in tmp_path.iterdir()} == {"scores.csv", "scores_official.csv", "summary.csv",
                                                     "settings.json"}
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert list(scores.columns[:6]) == ["case", "label", "organ", "DSC", "NSD", "status"]


def test_missing_prediction_exits_1_and_says_so(examples, tmp_path, capsys):
    code = main(["score", str(examples.predictions / "teamC"), str(examples.labels), "--out", str(tmp_path),
                 "--workers", "1", "--no-progress"])
    assert code == 1
    assert "problem: case_0002: missing" in capsys.readouterr().err


def test_bad_ground_truth_exits_2_naming_the_file(tmp_path, capsys):
    write_nifti(tmp_path / "pred" / "a.nii.gz", [[[0]]])
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "a.nii.gz").write_bytes(b"")
    code = main(["score", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert "a.nii.gz: file is empty" in capsys.readouterr().err


def test_bad_protocol_and_workers_exit_2(examples, tmp_path, capsys):
    base = ["score", str(examples.predictions / "teamA"), str(examples.labels), "--out", str(tmp_path)]
    assert main([*base, "--protocol", "flare99"]) == 2
    assert "unknown protocol 'flare99'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([*base, "--workers", "0"])
    assert info.value.code == 2


def test_inclusive_slice_range_flag_changes_tubular_organs_only(examples, tmp_path):
    args = [str(examples.predictions / "teamB"), str(examples.labels), "--workers", "1", "--no-progress"]
    main(["score", *args, "--out", str(tmp_path / "a")])
    main(["score", *args, "--out", str(tmp_path / "b"), "--slice-range", "inclusive"])
    a, b = pd.read_csv(tmp_path / "a" / "scores.csv"), pd.read_csv(tmp_path / "b" / "scores.csv")
    changed = set(a.loc[(a.DSC - b.DSC).abs() > 0, "label"])
    assert changed and changed <= {5, 6, 10}


def test_protocols_command(capsys):
    assert main(["protocols"]) == 0
    assert "flare22:" in capsys.readouterr().out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "flare-eval"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and __version__ in result.stdout


def test_rank_examples(examples, tmp_path, capsys):
    code = main(["rank", str(examples.results), "--out", str(tmp_path), "--samples", "100", "--seed", "3"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "warning: " in err and "results.csv: team 'teamL' has no row for 1 case" in err
    assert "teamA" in out and "kendall_tau" in out and "significantly better" in out
    expected = {"ranking.csv", "bootstrap.csv", "rank_distribution.csv", "bootstrap_ranks.csv", "significance.csv",
                "best_vs_rest.csv", "ranking_methods.csv", "ranking_methods_tau.csv", "settings.json"}
    assert {p.name for p in tmp_path.iterdir()} == expected
    assert "aggregate_median_then_rank" in out and "test_then_rank" in out
    methods = pd.read_csv(tmp_path / "ranking_methods.csv")
    assert list(methods.columns) == ["team", "official", "rank_then_aggregate", "aggregate_mean_then_rank",
                                     "aggregate_median_then_rank", "test_then_rank"]
    ranking = pd.read_csv(tmp_path / "ranking.csv")
    assert list(ranking.columns[:3]) == ["team", "rank", "score"] and ranking["rank"].is_monotonic_increasing
    assert len(pd.read_csv(tmp_path / "bootstrap.csv")) == 100
    settings = __import__("json").loads((tmp_path / "settings.json").read_text())
    assert settings["seed"] == 3 and settings["bootstrap_samples"] == 100
    first = pd.read_csv(tmp_path / "bootstrap.csv")
    main(["rank", str(examples.results), "--out", str(tmp_path / "again"), "--samples", "100", "--seed", "3"])
    pd.testing.assert_frame_equal(first, pd.read_csv(tmp_path / "again" / "bootstrap.csv"))


def test_rank_default_seed_is_fixed_and_recorded(examples, tmp_path):
    for name in ("one", "two"):
        main(["rank", str(examples.results), "--out", str(tmp_path / name), "--samples", "20"])
    settings = __import__("json").loads((tmp_path / "one" / "settings.json").read_text())
    assert settings["seed"] == DEFAULT_SEED
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "one" / "bootstrap.csv"),
                                  pd.read_csv(tmp_path / "two" / "bootstrap.csv"))


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("team,case,DCS,NSD,Time,AUC_GPU,AUC_CPU\na,1,1,1,1,1,1\nb,1,1,1,1,1,1\n", "misspelling of metric 'DSC'"),
        ("team,case,DSC,NSD,Time,AUC_GPU,AUC_CPU\na,1,1,1,1,1,1\n", "at least two teams"),
        ("team,case,DSC,NSD,Time,AUC_GPU,AUC_CPU\na,1,x,1,1,1,1\nb,1,1,1,1,1,1\n", "non-numeric"),
        ("team,case,DSC,NSD,Time,AUC_GPU,AUC_CPU\na,1,1,1,1,1,1\na,1,1,1,1,1,1\n", "duplicated"),
        ("", "is empty"),
        ("team,case,DSC,NSD,Time,AUC_GPU,AUC_CPU\na,1,1,1,-100,1,1\nb,1,1,1,1,1,1\n",
         "'Time' has 1 value(s) outside its valid range [0, inf], e.g. team 'a' case '1': -100"),
    ],
)
def test_rank_bad_tables_exit_2(tmp_path, capsys, content, pattern):
    path = tmp_path / "results.csv"
    path.write_text(content)
    assert main(["rank", str(path), "--out", str(tmp_path / "out")]) == 2
    assert pattern in capsys.readouterr().err


def test_rank_missing_file_exits_2(tmp_path, capsys):
    assert main(["rank", str(tmp_path / "nope.csv"), "--out", str(tmp_path)]) == 2
    assert "nope.csv does not exist" in capsys.readouterr().err


def test_disk_full_is_one_line_naming_the_folder(examples, tmp_path, capsys, monkeypatch):
    import errno

    import flare_eval.pipeline as pipeline

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "ranking.csv"))

    monkeypatch.setattr(pipeline, "rank_results", full)
    code = main(["rank", str(examples.results), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"no space left on the disk of {tmp_path / 'out'}" in err and "Traceback" not in err


@pytest.mark.parametrize("code", ["EACCES", "EROFS"])
def test_a_place_this_user_may_not_write_is_bad_input_naming_it(code, examples, tmp_path, capsys, monkeypatch):
    """Not an internal error: the folder is another user's, or on a read-only mount (root here ignores modes, so the
    refusal is raised where the pipeline would meet it)."""
    import errno

    import flare_eval.pipeline as pipeline

    def refused(*args, **kwargs):
        raise PermissionError(getattr(errno, code), os.strerror(getattr(errno, code)), str(tmp_path / "out"))

    monkeypatch.setattr(pipeline, "rank_results", refused)
    exit_code = main(["rank", str(examples.results), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_code == 2 and len(err.strip().splitlines()) == 1 and "internal error" not in err
    assert f"error: {tmp_path / 'out'}: {os.strerror(getattr(errno, code))}" in err


def test_python_dash_m_works_like_the_command():
    result = subprocess.run([sys.executable, "-m", "flare_eval", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and __version__ in result.stdout


def test_option_errors_name_the_option(examples, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["rank", str(examples.results), "--out", str(tmp_path), "--seed", "-1"])
    assert info.value.code == 2 and "argument --seed: must be 0 or more, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", "a", "b", "--out", str(tmp_path), "--workers", "0"])
    assert "argument --workers: must be at least 1, got 0" in capsys.readouterr().err


def test_score_on_a_folder_of_teams_hints_at_teams(examples, tmp_path, capsys):
    code = main(["score", str(examples.predictions), str(examples.labels), "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean --teams" in err and "teamA" in err


def test_replacing_earlier_outputs_is_noted(examples, tmp_path, capsys):
    args = ["rank", str(examples.results), "--out", str(tmp_path), "--samples", "10"]
    main(args)
    assert "replacing" not in capsys.readouterr().err
    main(args)
    assert f"note: replacing the earlier outputs in {tmp_path}" in capsys.readouterr().err


def test_report_with_an_unknown_team_exits_2_naming_the_teams(examples, tmp_path, capsys):
    code = main(["report", str(examples.results), "--out", str(tmp_path), "--team", "nobody"])
    err = capsys.readouterr().err
    assert code == 2 and "--team 'nobody' is not a team" in err and "teamA" in err


def test_cohorts_whose_metadata_matches_no_case_exit_2(examples, tmp_path, capsys):
    metadata = tmp_path / "meta.csv"
    metadata.write_text("case,sex\nX1,F\nX2,M\n")
    code = main(["cohorts", str(examples.cohort_scores), "--metadata", str(metadata), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "matches no case of the scores" in err and "X1" in err


def test_quantify_takes_predictions_ground_truth_then_output(examples, tmp_path):
    from flare_eval import quantify

    outputs = quantify(examples.predictions / "teamA", examples.labels, tmp_path / "q", progress=False)
    assert (tmp_path / "q" / "volumes.csv").is_file() and outputs.agreement is not None
    assert not (examples.labels / "volumes.csv").exists()


def test_score_loads_neither_docker_nor_plotting_code(examples, tmp_path):
    code = (
        "import sys; from flare_eval.cli import main; "
        f"main(['score', {str(examples.predictions / 'teamA')!r}, {str(examples.labels)!r}, '--out', "
        f"{str(tmp_path)!r}, '--workers', '1', '--no-progress']); "
        "print(sorted(m for m in ('docker', 'matplotlib', 'distributed', 'requests') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


# The organizer's night of the deadline: wrong arguments never damage results, exit codes mean what they say ---

@pytest.fixture
def demo_runs(examples, tmp_path):
    """The bundled teams' runs folder with their predictions, as `make demo` lays it out."""
    import shutil

    runs = tmp_path / "runs"
    for team in ("teamA", "teamB", "teamC"):
        shutil.copytree(examples.runs / team, runs / team)
        shutil.copytree(examples.predictions / team, runs / team / "predictions")
    return runs


def test_collect_with_images_as_labels_exits_2_and_replaces_nothing(demo_runs, examples, tmp_path, capsys):
    assert main(["collect", str(demo_runs), "--labels", str(examples.labels), "--no-progress", "--quiet"]) == 1
    before = {path: path.read_bytes() for path in sorted(demo_runs.glob("*/scores.csv"))}
    images = tmp_path / "imagesTs"
    for label in sorted(examples.labels.glob("*.nii.gz")):
        reference = nib.load(label)
        ct = np.full(reference.shape, -1000, np.int16)  # air, as a CT holds it
        write_nifti(images / label.name, ct, reference.header.get_zooms()[:3], affine=reference.affine)
    code = main(["collect", str(demo_runs), "--labels", str(images), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "holds negative values (down to -1000)" in err and "an image, not a label map" in err
    assert {path: path.read_bytes() for path in sorted(demo_runs.glob("*/scores.csv"))} == before
    assert not list(demo_runs.glob(".collect-*"))


def test_collect_exits_1_with_failed_cases_and_lists_them(demo_runs, examples, capsys):
    code = main(["collect", str(demo_runs), "--labels", str(examples.labels), "--no-progress"])
    results = pd.read_csv(demo_runs / "results.csv", dtype={"team": str, "case": str})
    failed = results[~results.status.isin(["ok", "no_run"])]
    assert len(failed) and code == 1
    err = capsys.readouterr().err
    for row in failed.itertuples():
        assert f"{row.team} {row.case}: {row.status}" in err


def test_the_wrong_protocol_is_named_when_its_labels_never_occur(tmp_path, capsys):
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:5, 2:5, 2:5] = 1
    labels[5:7, 5:7, 5:7] = 2
    write_nifti(tmp_path / "gt" / "c.nii.gz", labels)
    write_nifti(tmp_path / "pred" / "c.nii.gz", labels)
    for team in ("a", "b"):
        write_nifti(tmp_path / "runs" / team / "predictions" / "c.nii.gz", labels)
    with pytest.warns(UserWarning, match=r"11 of the 13 organs of protocol flare22 never occur .* right --protocol"):
        from flare_eval import collect_results

        collect_results(tmp_path / "runs", tmp_path / "gt", progress=False)


def test_an_internal_error_exits_3_with_one_line_and_a_traceback_file(monkeypatch, capsys, tmp_path):
    import flare_eval.cli as cli

    def broken(args):
        raise KeyError("label")

    monkeypatch.setattr(cli, "_protocols", broken)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert main(["protocols"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: KeyError: 'label'" in err and "Traceback" not in err
    written = list(tmp_path.glob("flare-eval-protocols-*.traceback.txt"))
    assert len(written) == 1 and "Traceback" in written[0].read_text() and str(written[0]) in err


def test_a_closed_stdout_pipe_ends_quietly(examples, tmp_path):
    command = (f"{sys.executable} -m flare_eval rank {examples.results} --out {tmp_path / 'r'} --samples 50 "
               "2>err.txt | head -1")
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    err = (tmp_path / "err.txt").read_text()
    assert result.stdout.strip() and "Traceback" not in err and "BrokenPipe" not in err


def test_report_of_a_folder_with_nothing_to_report_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "report")]) == 2
    assert "holds no results.csv and no runs" in capsys.readouterr().err
    assert not (tmp_path / "report" / "index.html").exists()


def test_score_of_folders_without_a_case_in_common_exits_2(examples, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(next(examples.labels.glob("*.nii.gz")), other / "unrelated_case.nii.gz")
    code = main(["score", str(other), str(examples.labels), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2 and "has a ground-truth case" in capsys.readouterr().err


def test_scoring_a_case_from_files_needs_neither_pandas_nor_scipy_ndimage(examples):
    """Workers return rows: pandas, a third of a command's start-up, is loaded by the caller while they score.

    scipy.ndimage (another third) is loaded only for the distances that the offset scan leaves, which a
    prediction near its ground truth never has; DeepMind's surfel table comes without their metrics module.
    """
    case = sorted(examples.labels.glob("*.nii.gz"))[0]
    code = ("import sys; from flare_eval.io import CasePair; from flare_eval.protocol import load_protocol; "
            "from flare_eval.scoring.case import _score_case_task; from flare_eval.scoring.prediction import _Options; "
            f"team, rows, _ = _score_case_task(None, CasePair('c', {str(case)!r}, "
            f"{str(examples.predictions / 'teamA' / case.name)!r}), load_protocol('flare22'), _Options(False, False)); "
            "print(len(rows), rows[0]['status'], 'pandas' in sys.modules, 'scipy.ndimage' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["13", "ok", "False", "False"]


def test_building_the_command_line_imports_neither_pandas_nor_scipy():
    """--help and argument errors come before any heavy import (a command pays for what it uses)."""
    code = ("import sys; from flare_eval.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('pandas', 'scipy', 'matplotlib', 'docker') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_only_the_command_entry_point_skips_the_last_collection():
    """The script's entry point freezes the collector as the process ends; `main`, called from Python, does not."""
    code = ("import gc, sys; from flare_eval.cli import command, main; main(['protocols']); "
            "in_process = gc.get_freeze_count(); sys.argv = ['flare-eval', 'protocols']; code = command(); "
            "print(in_process, code, gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-3:] == ["0", "0", "True"]


def test_a_progress_bar_is_drawn_only_where_it_is_shown(examples):
    """A bar that is not shown costs nothing: tqdm (a tenth of a small command's start-up) is not imported."""
    def run(progress: bool) -> subprocess.CompletedProcess:
        code = ("import sys; from flare_eval import score_folder; "
                f"scores = score_folder({str(examples.predictions / 'teamA')!r}, {str(examples.labels)!r}, "
                f"workers=1, progress={progress}); print(len(scores), 'tqdm' in sys.modules)")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    n_rows = 13 * len(list(examples.labels.glob("*.nii.gz")))
    hidden, shown = run(False), run(True)
    assert hidden.stdout.split() == [str(n_rows), "False"] and "scoring" not in hidden.stderr
    assert shown.stdout.split() == [str(n_rows), "True"] and "scoring: 100%" in shown.stderr


@pytest.mark.parametrize("argv", [
    ["score", "pred", "gt", "--out", "{file}"],
    ["rank", "results.csv", "--out", "{file}"],
    ["run-containers", "submissions", "--inputs", "inputs", "--out", "{file}"],
    ["evaluate", "submissions", "--inputs", "inputs", "--labels", "labels", "--out", "{file}"],
    ["report", "--out", "{file}"],
    ["quantify", "pred", "--out", "{file}"],
    ["cohorts", "scores.csv", "--metadata", "metadata.csv", "--out", "{file}"],
    ["compare", "scores.csv", "teamA", "teamB", "--out", "{file}"],
    ["score", "pred", "gt", "--out", "{file}/sub"],
    ["review", "scores.csv", "--out", "{folder}"],
    ["collect", "runs", "--labels", "labels", "--out", "{folder}"],
    ["review", "scores.csv", "--out", "{file}/review.csv"],
], ids=lambda argv: f"{argv[0]}-{argv[-1].strip('{}').replace('}', '')}")
def test_an_output_of_the_wrong_kind_is_bad_input_not_a_bug(argv, tmp_path, capsys):
    """``--out results.csv`` where a folder is written (or a folder where a file is): exit 2 naming it, no
    traceback file, nothing written."""
    (tmp_path / "file.csv").write_text("a,b\n1,2\n")
    (tmp_path / "folder").mkdir()
    argv = [part.format(file=tmp_path / "file.csv", folder=tmp_path / "folder") for part in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "argument --out" in err and ("is a file, not a folder" in err or "is a folder: give the file" in err)
    assert "internal error" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.csv", "folder"]
    assert (tmp_path / "file.csv").read_text() == "a,b\n1,2\n" and not any((tmp_path / "folder").iterdir())


def test_an_output_folder_among_the_team_folders_is_refused_before_it_becomes_a_team(examples, tmp_path, capsys):
    teams = tmp_path / "teams"
    shutil.copytree(examples.predictions, teams)
    code = main(["score", str(teams), str(examples.labels), "--teams", "--out", str(teams / "results"),
                 "--no-progress"])
    assert code == 2 and "whose folders are the teams" in capsys.readouterr().err
    assert not (teams / "results").exists()
    assert main(["score", str(teams), str(examples.labels), "--teams", "--out", str(teams / "teamA" / "results"),
                 "--no-progress"]) == 1  # inside a team's folder it is no team (teamC misses a case)
    assert set(pd.read_csv(teams / "teamA" / "results" / "scores.csv").team) == {"teamA", "teamB", "teamC"}

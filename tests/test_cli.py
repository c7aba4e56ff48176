"""The flare-eval command, called in-process."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_nifti

from flare_eval import __version__
from flare_eval.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    help_text = capsys.readouterr().out
    assert "flare21, flare22, flare23" in help_text and "--slice-range" in help_text


def test_score_examples(examples, tmp_path, capsys):
    code = main(["score", str(examples.predictions / "teamA"), str(examples.labels), "--out", str(tmp_path),
                 "--workers", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Liver" in out and "DSC_median" in out and "mean" in out
    assert {p.name for p in tmp_path.iterdir()} == {"scores.csv", "scores_official.csv", "summary.csv"}
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert list(scores.columns[:6]) == ["case", "label", "organ", "DSC", "NSD", "status"]


def test_missing_prediction_exits_1_and_says_so(examples, tmp_path, capsys):
    code = main(["score", str(examples.predictions / "teamC"), str(examples.labels), "--out", str(tmp_path),
                 "--workers", "1", "--no-progress"])
    assert code == 1
    assert "case_0002: missing" in capsys.readouterr().err


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
    assert main([*base, "--workers", "0"]) == 2


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

"""The example scripts run and say what they should."""

import runpy

from conftest import REPO


def test_score_example_runs(capsys):
    runpy.run_path(str(REPO / "examples" / "score_example.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "teamA: mean DSC" in out and "teamC" in out and "missing: 1" in out
    assert "Liver" in out

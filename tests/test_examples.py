"""The example scripts run and say what they should."""

import runpy

from conftest import REPO


def test_score_example_runs(capsys):
    runpy.run_path(str(REPO / "examples" / "score_example.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "teamA: mean DSC" in out and "teamC" in out and "missing: 1" in out
    assert "Liver" in out


def test_readme_python_example_runs_when_pasted(tmp_path, monkeypatch):
    import re
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### Python API\n\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the example table lacks a case for one team, on purpose
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "quantify" / "agreement.csv").is_file()


def test_every_public_name_resolves_lazily():
    import flare_eval as fe

    assert sorted(fe.__all__) == sorted(["__version__", *fe._MODULE_OF])
    for name in fe.__all__:
        assert getattr(fe, name) is not None, name
    assert "score_label_maps" in dir(fe)

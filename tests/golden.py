"""Golden outputs: every bundled preset family scored, collected and ranked, frozen before a refactoring.

``python tests/golden.py`` writes them into ``tests/golden/<preset>/``; tests/scoring/test_golden.py recomputes them
and compares value by value. Regenerate only on purpose, naming in the commit what changed and why.
"""

import shutil
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
#: The preset families and the tables frozen for each.
PRESETS = ("flare22", "flare21", "flare23", "flare22-grand-challenge", "kits23", "brats2023-gli", "flare24-t1",
           "autopet2022")
TABLES = ("scores.csv", "scores_official.csv", "summary.csv", "results.csv", "ranking.csv", "rank_distribution.csv",
          "significance.csv")


def bundled_teams(preset: str, folder: Path) -> tuple[Path, Path]:
    """The bundled predictions of ``preset``'s two teams copied to ``folder/teams``; that folder and the labels."""
    import flare_eval as fe

    paths = fe.example_paths()
    if preset.startswith("flare2") and preset != "flare24-t1":
        source, labels = paths.predictions, paths.labels
    else:
        source, labels = paths.challenges / preset / "predictions", paths.challenges / preset / "labels"
    teams = folder / "teams"
    for team in ("teamA", "teamB"):
        shutil.copytree(source / team, teams / team)
    return teams, labels


def produce(preset: str, folder: Path) -> dict[str, Path]:
    """Score, collect and rank the bundled cases of ``preset`` (two teams) in ``folder``; the tables by name."""
    import flare_eval as fe

    teams, labels = bundled_teams(preset, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fe.collect_results(teams, labels, folder / "results.csv", preset, workers=1, progress=False)
        fe.rank_results(folder / "results.csv", folder / "ranking", preset, n_samples=50, seed=2022)
    found = {"results.csv": folder / "results.csv"}
    for name in ("scores.csv", "scores_official.csv", "summary.csv"):
        found[name] = teams / "teamA" / name
    for name in ("ranking.csv", "rank_distribution.csv", "significance.csv"):
        found[name] = folder / "ranking" / name
    return found


def main() -> None:
    for preset in PRESETS:
        with tempfile.TemporaryDirectory() as tmp:
            tables = produce(preset, Path(tmp))
            target = GOLDEN / preset
            target.mkdir(parents=True, exist_ok=True)
            for name in TABLES:
                shutil.copyfile(tables[name], target / name)
        print(f"{preset}: written", file=sys.stderr)


if __name__ == "__main__":
    main()

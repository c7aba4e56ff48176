"""Locations of the bundled example data."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["ExamplePaths", "example_paths"]


@dataclass(frozen=True)
class ExamplePaths:
    """Folders and files of the bundled example data.

    Attributes
    ----------
    labels : Path
        Ground-truth label maps (``case_0001.nii.gz`` ...).
    predictions : Path
        One folder of predictions per made-up team (``teamA``, ``teamB``, ``teamC``).
    results : Path
        A realistic ``results.csv`` of several teams, the input of ranking.
    cohort_scores : Path
        Long scores of three teams and ``teamA-nounlabeled`` on 40 cases of four cohorts.
    metadata : Path
        Case metadata for them: ``case, cohort, sex, age, manufacturer``.
    runs : Path
        Made-up container records of the teams of ``predictions`` (``<team>/resources.csv`` and
        ``<team>/samples/``, as `run_containers` writes them): with the predictions, one coherent evaluation.
    challenges : Path
        Small made-up cases for other challenges' presets: ``<preset>/labels`` and
        ``<preset>/predictions/<team>`` for ``kits23``, ``brats2023-gli``, ``flare24-t1`` and ``autopet2022``.
    """

    labels: Path
    predictions: Path
    results: Path
    cohort_scores: Path
    metadata: Path
    runs: Path
    challenges: Path


def example_paths() -> ExamplePaths:
    """Paths of the example data shipped with the package.

    Examples
    --------
    >>> paths = example_paths()
    >>> sorted(p.name for p in paths.labels.iterdir() if p.name.endswith(".nii.gz"))
    ['case_0001.nii.gz', 'case_0002.nii.gz', 'case_0003.nii.gz']
    """
    root = Path(str(resources.files("flare_eval.example_data")))
    return ExamplePaths(labels=root / "labels", predictions=root / "predictions", results=root / "results.csv",
                        cohort_scores=root / "cohort_scores.csv", metadata=root / "metadata.csv", runs=root / "runs",
                        challenges=root / "challenges")

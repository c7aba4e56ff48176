"""Score the bundled example predictions with the Python API.

Run: ``python examples/score_example.py``. Prints each team's mean DSC and NSD
and the per-organ summary of one team.
"""

import warnings

import flare_eval as fe

paths = fe.example_paths()
teams = sorted(p.name for p in paths.predictions.iterdir() if p.is_dir())

for team in teams:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fe.FlareEvalWarning)
        scores = fe.score_folder(paths.predictions / team, paths.labels, workers=1, progress=False)
    statuses = ", ".join(f"{s}: {n}" for s, n in scores.drop_duplicates("case")["status"].value_counts().items())
    print(f"{team}: mean DSC {scores.DSC.mean():.4f}, mean NSD {scores.NSD.mean():.4f} (cases {statuses})")

summary = fe.summarize_scores(fe.score_folder(paths.predictions / "teamA", paths.labels, workers=1, progress=False),
                             "flare22")
print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

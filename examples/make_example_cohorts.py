"""Rebuild ``examples/data/cohort_scores.csv`` and ``examples/data/metadata.csv`` (deterministic).

Long scores of three made-up teams and of ``teamA-nounlabeled`` (teamA trained
without the unlabeled data, a few DSC points worse, as in the paper's Fig. 2a)
on 40 cases from four cohorts, with case metadata: cohort, sex, age and scanner
manufacturer. External cohorts are a little harder, as in the paper. The
metadata lacks one case, leaves two ages empty and lists one case that was
never scored, so that the reports of mismatches can be seen.
Run: ``python examples/make_example_cohorts.py``.
"""

from pathlib import Path

import numpy as np
import pandas as pd

rng = np.random.default_rng(22)
organs = ["Liver", "RK", "Spleen", "Pancreas", "Aorta", "IVC", "RAG", "LAG", "Gallbladder", "Esophagus",
          "Stomach", "Duodenum", "LK"]
organ_level = np.array([0.97, 0.94, 0.95, 0.82, 0.93, 0.87, 0.78, 0.77, 0.84, 0.85, 0.90, 0.78, 0.94])
cohorts = {"internal": 0.0, "asia": -0.02, "europe": -0.03, "north-america": -0.04}
teams = {"teamA": 0.0, "teamA-nounlabeled": -0.05, "teamB": -0.02, "teamC": -0.04}
cases, meta = [], []
for i in range(40):
    case = f"FLARE22_Ts_{i + 1:04d}"
    cohort = list(cohorts)[i % 4]
    cases.append((case, cohort, rng.normal(0, 0.03)))
    meta.append({"case": case, "cohort": cohort, "sex": "F" if rng.random() < 0.45 else "M",
                 "age": int(rng.integers(25, 88)), "manufacturer": ["GE", "Siemens", "Philips", "Toshiba"][i % 4]})
rows = []
for team, shift in teams.items():
    for case, cohort, difficulty in cases:
        for label, (organ, level) in enumerate(zip(organs, organ_level), start=1):
            dsc = float(np.clip(level + shift + cohorts[cohort] + difficulty + rng.normal(0, 0.03), 0, 1))
            nsd = float(np.clip(dsc + rng.normal(0.02, 0.03), 0, 1))
            rows.append({"team": team, "case": case, "label": label, "organ": organ, "DSC": round(dsc, 4),
                         "NSD": round(nsd, 4), "status": "ok"})
metadata = pd.DataFrame(meta)
metadata["age"] = metadata["age"].astype("Int64")
metadata.loc[[3, 17], "age"] = pd.NA
metadata = metadata.drop(index=39)
metadata = pd.concat([metadata, pd.DataFrame([{"case": "FLARE22_Ts_0099", "cohort": "europe", "sex": "M",
                                               "age": 61, "manufacturer": "GE"}])])
folder = Path(__file__).parent / "data"
pd.DataFrame(rows).to_csv(folder / "cohort_scores.csv", index=False)
metadata.to_csv(folder / "metadata.csv", index=False)

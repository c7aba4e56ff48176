"""Rebuild ``examples/data/results.csv``: a realistic results table of 12 made-up teams.

Shaped after the FLARE22 paper: DSC around 0.75-0.92 and NSD a little below,
running times of 10-90 s, GPU memory areas above the 2048 MiB allowance of
0 to 100,000 MiB s, CPU areas of 500-6000 % s. One team got stuck on one case
(the protocol's worst values) and one team has no row for one case (the ranking
fills in worst values and warns). Deterministic: ``python examples/make_example_results.py``.
"""

from pathlib import Path

import numpy as np
import pandas as pd

rng = np.random.default_rng(2022)
teams = [f"team{chr(ord('A') + i)}" for i in range(12)]
cases = [f"FLARE22_Ts_{i:04d}" for i in range(1, 51)]
rows = []
for t, team in enumerate(teams):
    quality = 0.92 - 0.012 * t + rng.normal(0, 0.004)
    speed_s = rng.uniform(10, 90)
    gpu_mib = rng.uniform(0, 6000)
    cpu_pct = rng.uniform(20, 90)
    for case in cases:
        difficulty = rng.normal(0, 0.04)
        dsc = float(np.clip(quality + difficulty + rng.normal(0, 0.015), 0, 1))
        nsd = float(np.clip(dsc - 0.02 + rng.normal(0, 0.02), 0, 1))
        time_s = speed_s * rng.lognormal(0, 0.15)
        rows.append({
            "team": team, "case": case, "DSC": round(dsc, 4), "NSD": round(nsd, 4), "Time": round(time_s, 2),
            "AUC_GPU": round(gpu_mib * time_s * rng.uniform(0.5, 0.9), 1),
            "AUC_CPU": round(cpu_pct * time_s * rng.uniform(0.6, 1.0), 1),
        })
table = pd.DataFrame(rows)
stuck = (table.team == "teamK") & (table.case == "FLARE22_Ts_0007")
table.loc[stuck, ["DSC", "NSD", "Time", "AUC_GPU", "AUC_CPU"]] = [0.0, 0.0, 3600.0, 29491200.0, 360000.0]
table = table[~((table.team == "teamL") & (table.case == "FLARE22_Ts_0042"))]
table.to_csv(Path(__file__).parent / "data" / "results.csv", index=False)

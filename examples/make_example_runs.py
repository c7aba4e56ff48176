"""Rebuild ``examples/data/runs/``: the container records of the bundled teams, as `run-containers` writes them.

For each of the three example teams (whose predictions are in ``examples/data/predictions``) and each of the
three example cases: a ``resources.csv`` row and the 0.1 s samples of GPU memory and CPU. The measurements are
made up, shaped like the FLARE22 paper's (a model load, then inference; GPU memory rising above the 2048 MiB
allowance for a while), and consistent with the predictions: teamC left no prediction for ``case_0002``, so
that case is ``no_output``. With these records, `collect`, `rank` and `report` give one coherent evaluation of
the bundled data (``make demo``). Deterministic: ``python examples/make_example_runs.py``.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent / "data"
TEAMS = {  # seconds to load and to infer, peak GPU MiB, share of the 2-core machine while busy (%)
    "teamA": (4.0, 14.0, 3100.0, 45.0),
    "teamB": (6.0, 30.0, 5200.0, 70.0),
    "teamC": (3.0, 9.0, 1900.0, 40.0),
}
CASES = ["case_0001", "case_0002", "case_0003"]
ALLOWANCE_MIB = 2048.0
INTERVAL_S = 0.1


def curves(load_s: float, infer_s: float, peak_mib: float, busy_pct: float, rng) -> pd.DataFrame:
    times = np.arange(1, int((load_s + infer_s) / INTERVAL_S) + 2) * INTERVAL_S
    loading = times < load_s
    gpu = np.where(loading, 500 + 300 * times / load_s, peak_mib * (0.9 + 0.1 * rng.random(times.size)))
    gpu[times > load_s + infer_s] = 300.0
    cpu = np.where(loading, busy_pct * 0.5, busy_pct) * (0.9 + 0.2 * rng.random(times.size))
    cpu_time = np.cumsum(cpu / 100 * 2 * INTERVAL_S)  # % of a 2-core machine for 0.1 s each
    return pd.DataFrame({"time_s": times.round(3), "cpu_time_s": cpu_time.round(4), "cpu_pct": cpu.round(2),
                         "gpu_mib": gpu.round(1)})


def main() -> None:
    rng = np.random.default_rng(2022)
    for team, (load_s, infer_s, peak_mib, busy_pct) in TEAMS.items():
        folder = HERE / "runs" / team
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        rows = []
        for k, case in enumerate(CASES):
            samples = curves(load_s, infer_s * (0.8 + 0.2 * k), peak_mib, busy_pct, rng)
            samples.to_csv(folder / "samples" / f"{case}.csv", index=False)
            times = samples["time_s"].to_numpy()
            above = np.maximum(0.0, samples["gpu_mib"].to_numpy() - ALLOWANCE_MIB)
            has_prediction = (HERE / "predictions" / team / f"{case}.nii.gz").exists()
            rows.append({
                "team": team, "case": case, "time_s": round(float(times[-1]) + 0.4, 3),
                "engine_time_s": round(float(times[-1]), 3),
                "auc_gpu_mib_s": round(float(np.sum((above[1:] + above[:-1]) / 2 * np.diff(times))), 1),
                "auc_cpu_pct_s": round(float(100 * samples["cpu_time_s"].iloc[-1] / 2), 1),
                "max_gpu_mib": float(samples["gpu_mib"].max()), "max_cpu_pct": float(samples["cpu_pct"].max()),
                "gpu_measured": True, "gpu_mode": "per_process", "exit_code": 0,
                "status": "ok" if has_prediction else "no_output", "n_samples": len(samples),
                "image": f"{team}.tar.gz", "image_id": f"sha256:{team.encode().hex():0<64}", "host": "example",
                "worker": "", "n_cpus": 2, "gpu_name": "NVIDIA GeForce RTX 3090 (example)",
                "gpu_driver": "510.60.02", "started_at": f"2022-04-0{k + 1}T10:00:00Z",
            })
        pd.DataFrame(rows).to_csv(folder / "resources.csv", index=False)
    settings = {"protocol": "flare22", "limits": {"memory": "28g", "pids_limit": 4096, "open_files": 8192},
                "machine": {"host": "example", "cpu_model": "an example 2-core CPU", "n_cpus": 2,
                            "memory_bytes": 24 * 1024**3}, "note": "made-up records for the demo"}
    (HERE / "runs" / "settings.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""results.csv assembly and its penalties."""

import numpy as np
import pandas as pd
import pytest

from flare_eval import assemble_results


def scores_for(team, case, dsc, nsd):
    return pd.DataFrame({"team": team, "case": case, "label": range(1, 14), "DSC": dsc, "NSD": nsd})


def resources_row(team, case, status, time_s=10.0):
    return {"team": team, "case": case, "time_s": time_s, "auc_gpu_mib_s": 500.0, "auc_cpu_pct_s": 300.0,
            "status": status}


def test_penalties_for_stuck_crashed_and_silent_cases():
    scores = pd.concat([scores_for("t", c, 0.8, 0.9) for c in ("ok", "slow", "boom", "quiet", "unrun")])
    resources = pd.DataFrame([resources_row("t", "ok", "ok"), resources_row("t", "slow", "timeout"),
                              resources_row("t", "boom", "crashed"), resources_row("t", "quiet", "no_output")])
    results = assemble_results(scores, resources, "flare22").set_index("case")
    assert results.loc["ok", ["DSC", "NSD", "Time", "AUC_GPU", "AUC_CPU"]].tolist() == pytest.approx(
        [0.8, 0.9, 10.0, 500.0, 300.0])
    for case in ("slow", "boom", "quiet"):
        assert results.loc[case, ["DSC", "NSD", "Time", "AUC_GPU", "AUC_CPU"]].tolist() == [
            0.0, 0.0, 3600.0, 29491200.0, 360000.0]
    assert results.loc["unrun", "status"] == "no_run" and np.isnan(results.loc["unrun", "Time"])


def test_mean_over_protocol_organs_only_and_last_resources_row_counts():
    scores = scores_for("t", "c", np.linspace(0, 1, 13), 1.0)
    extra = pd.DataFrame({"team": ["t"], "case": ["c"], "label": [99], "DSC": [0.0], "NSD": [0.0]})
    resources = pd.DataFrame([resources_row("t", "c", "crashed"), resources_row("t", "c", "ok", 5.0)])
    results = assemble_results(pd.concat([scores, extra]), resources, "flare22")
    assert results.DSC.iloc[0] == pytest.approx(0.5)
    assert results.Time.iloc[0] == 5.0 and results.status.iloc[0] == "ok"

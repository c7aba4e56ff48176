"""The container harness on a real Docker engine, with tiny busybox submissions built locally.

Set FLARE_EVAL_REQUIRE_DOCKER=1 (CI does) to fail instead of skip when no engine answers.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from teams import TEAMS, build_team_archives, make_cases

import flare_eval as fe
from flare_eval import ContainerLimits, collect_results, run_containers
from flare_eval.cli import main
from flare_eval.harness.runner import HarnessWarning

# Most runs here ask for no GPU on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:GPU memory is not measured:UserWarning")

TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def workspace(engine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("harness")
    images, labels, answers = make_cases(folder)
    submissions = build_team_archives(engine, folder, answers)
    return folder, images, labels, submissions


@pytest.fixture(scope="module")
def all_teams(workspace):
    """Every team, the hanger with a short timeout, the others with one no busy machine reaches."""
    folder, images, labels, submissions = workspace
    hanger = [s for s in fe.harness.find_submissions(submissions) if s.team == "hanger"]
    others = [s for s in fe.harness.find_submissions(submissions) if s.team != "hanger"]
    with pytest.warns(HarnessWarning, match="no GPU found"):
        run_containers(others, images, folder / "runs", gpus="auto",
                       limits=ContainerLimits(timeout_s=300, memory="256m", shm_size="64m"), progress=False)
    with pytest.warns(HarnessWarning, match="no GPU found"):
        resources = run_containers(hanger, images, folder / "runs", gpus="auto",
                                   limits=ContainerLimits(timeout_s=TIMEOUT_S, memory="256m", shm_size="64m"),
                                   progress=False)
    return folder / "runs", resources.set_index(["team", "case"])


def flare_containers(engine, runs):
    """This test's containers: those of its runs folder (another evaluation may share the engine)."""
    return engine.containers.list(all=True, sparse=True, filters={"label": f"flare-eval.runs={runs.resolve()}"})


def test_statuses(all_teams):
    _, resources = all_teams
    status = resources["status"].groupby(level="team").agg(set).to_dict()
    assert status == {
        "good": {"ok"}, "burner": {"ok"}, "forker": {"ok"}, "sleeper": {"ok"}, "networker": {"ok"},
        "hanger": {"timeout"}, "crasher": {"crashed"}, "silent": {"no_output"},
        "linker": {"no_output"},
    }
    assert set(resources.xs("crasher", level="team")["exit_code"]) == {3}
    hanger = resources.xs("hanger", level="team")
    # Killed at the timeout; the margin above it covers creating and removing on a busy machine.
    assert (hanger["time_s"] >= TIMEOUT_S - 0.5).all() and (hanger["time_s"] < TIMEOUT_S + 30).all()


def test_predictions_logs_and_samples_are_written(all_teams, workspace):
    runs, _ = all_teams
    for case in ("case0", "case1"):
        assert (runs / "good" / "predictions" / f"{case}.nii.gz").is_file()
        samples = pd.read_csv(runs / "sleeper" / "samples" / f"{case}.csv")
        assert list(samples.columns) == ["time_s", "cpu_time_s", "cpu_pct", "gpu_mib"]
        assert len(samples) >= 12  # 1.5 s at 0.1 s
        gaps = np.diff(samples.time_s)
        assert np.median(gaps) == pytest.approx(0.1, abs=0.03)
    assert "boom" in (runs / "crasher" / "logs" / "case0.log").read_text()
    assert "killed after the 4.0 s timeout" in (runs / "hanger" / "logs" / "case0.log").read_text()


def test_only_the_expected_regular_file_is_kept(all_teams):
    runs, _ = all_teams
    assert not (runs / "linker" / "predictions").exists() or not any((runs / "linker" / "predictions").iterdir())
    log = (runs / "linker" / "logs" / "case0.log").read_text()
    assert "case0.nii.gz: a symbolic link, not a file" in log
    assert "wrong_name.nii.gz: unexpected name (expected case0.nii.gz)" in log
    assert "folder: not a regular file" in log


def test_no_network_and_read_only_inputs(all_teams):
    runs, _ = all_teams
    log = (runs / "networker" / "logs" / "case0.log").read_text()
    assert "NETWORK-UNREACHABLE" in log and "INPUTS-READ-ONLY" in log


def test_cpu_burner_uses_one_core_and_sleeper_almost_nothing(all_teams):
    runs, resources = all_teams
    # CPU time, not speed: the burner does a fixed amount of work on one thread, however busy the machine is.
    one_core_pct = 100.0 / (os.cpu_count() or 1)
    for case in ("case0", "case1"):
        burner = pd.read_csv(runs / "burner" / "samples" / f"{case}.csv")
        busy = burner.cpu_pct.iloc[1:-1]  # whole intervals while the loop runs
        assert busy.max() <= 1.3 * one_core_pct  # one thread never uses more than one core
        assert burner.cpu_time_s.iloc[-1] > 0.2  # seconds of CPU
        sleeper = pd.read_csv(runs / "sleeper" / "samples" / f"{case}.csv")
        assert sleeper.cpu_time_s.iloc[-1] < 0.1
        assert resources.loc[("burner", case)].auc_cpu_pct_s > 10 * resources.loc[("sleeper", case)].auc_cpu_pct_s


def test_cgroup_accounting_counts_short_lived_children(all_teams):
    _, resources = all_teams
    # 1500 processes that each live for about a millisecond: invisible to a 0.1 s process-tree walk.
    forker = resources.xs("forker", level="team")
    good = resources.xs("good", level="team")
    assert (forker.auc_cpu_pct_s > 5 * good.auc_cpu_pct_s).all()


def test_auc_equals_the_integral_of_the_samples(all_teams):
    runs, resources = all_teams
    n_cpus = os.cpu_count() or 1
    for team in ("burner", "sleeper", "good"):
        for case in ("case0", "case1"):
            samples = pd.read_csv(runs / team / "samples" / f"{case}.csv")
            integral = float(np.sum(samples.cpu_pct * np.diff(samples.time_s, prepend=0.0)))
            assert integral == pytest.approx(100 * samples.cpu_time_s.iloc[-1] / n_cpus)
            auc = resources.loc[(team, case)].auc_cpu_pct_s
            # The final reading after exit may add what the last interval did not see.
            assert integral - 1e-9 <= auc <= integral + 100 * 0.2
    assert (resources.auc_gpu_mib_s == 0).all() and not resources.gpu_measured.any()


def test_no_container_is_left(all_teams, engine):
    assert flare_containers(engine, all_teams[0]) == []


def test_rerun_skips_finished_cases_and_force_reruns(workspace, all_teams, engine):
    folder, images, labels, submissions = workspace
    runs, before = all_teams
    good_only = [s for s in __import__("flare_eval").harness.find_submissions(submissions) if s.team == "good"]
    again = run_containers(good_only, images, runs, gpus=None, progress=False)
    assert len(again[again.team == "good"]) == 2  # nothing added
    forced = run_containers(good_only, images, runs, gpus=None, force=True, progress=False)
    assert len(forced[forced.team == "good"]) == 4  # appended, the last row of a case counts


def test_collect_applies_penalties(all_teams, workspace):
    folder, images, labels, submissions = workspace
    runs, _ = all_teams
    with pytest.warns(UserWarning, match="GPU memory was not measured"):
        results = collect_results(runs, labels, folder / "results.csv", progress=False)
    results = results.set_index(["team", "case"])
    good = results.loc[("good", "case0")]
    assert 0.8 < good.DSC < 1 and good.Time < 60 and good.status == "ok"
    for team in ("hanger", "crasher", "silent", "linker"):
        row = results.loc[(team, "case0")]
        assert [row.DSC, row.NSD, row.Time, row.AUC_GPU, row.AUC_CPU] == [0, 0, 3600, 29491200, 360000]
    assert (runs / "good" / "scores.csv").is_file()


def test_killed_harness_resumes_without_losing_or_repeating(workspace, engine, tmp_path):
    folder, images, labels, submissions = workspace
    many = tmp_path / "inputs"
    many.mkdir()
    for i in range(4):
        os.link(images / "case0_0000.nii.gz", many / f"k{i}_0000.nii.gz")
    sleeper = [p for p in submissions.iterdir() if p.name.startswith("sleeper.")][0]
    subs = tmp_path / "subs"
    subs.mkdir()
    os.link(sleeper, subs / sleeper.name)
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "flare_eval.cli", "run-containers", str(subs), "--inputs", str(many),
               "--out", str(runs), "--gpus", "none", "--no-progress", "--command", "sh -c 'sleep 1.5; echo ok'"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    resources = runs / "sleeper" / "resources.csv"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (resources.exists() and len(resources.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    time.sleep(0.5)  # the next case is in flight
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = pd.read_csv(resources).case.tolist()
    assert 1 <= len(finished) < 4
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr  # sleeping without output: no_output
    rows = pd.read_csv(resources)
    assert sorted(rows.case) == ["k0", "k1", "k2", "k3"]  # each case once
    assert rows.case.tolist()[: len(finished)] == finished
    assert flare_containers(engine, runs) == []


def test_sigterm_removes_the_running_container(workspace, engine, tmp_path):
    folder, images, labels, submissions = workspace
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "flare_eval.cli", "run-containers", "--image", "t=flare-eval-test/hold",
               "--inputs", str(images), "--out", str(runs), "--gpus", "none", "--no-progress",
               "--command", "sleep 600"]
    hold = [p for p in submissions.iterdir() if p.name.startswith("hanger.")][0]
    with open(hold, "rb") as handle:
        image = engine.images.load(handle)[0]
    image.tag("flare-eval-test/hold", "latest")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120  # wide margins: a busy machine starts and stops containers slowly
    while time.monotonic() < deadline and not flare_containers(engine, runs):
        time.sleep(0.1)
    assert flare_containers(engine, runs), "the container never started"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=240)
    assert flare_containers(engine, runs) == []
    assert process.returncode != 0


def test_cli_evaluate_chain(workspace, tmp_path, capsys):
    folder, images, labels, submissions = workspace
    subs = tmp_path / "subs"
    subs.mkdir()
    for team in ("good", "sleeper", "crasher"):
        archive = [p for p in submissions.iterdir() if p.name.split(".")[0] == team][0]
        os.link(archive, subs / archive.name)
    code = main(["evaluate", str(subs), "--inputs", str(images), "--labels", str(labels), "--out", str(tmp_path / "o"),
                 "--gpus", "none", "--timeout", "20", "--no-progress", "--samples", "50", "--seed", "1"])
    out, err = capsys.readouterr()
    assert code == 1 and "crasher case0: crashed, exit code 3; log: " in err
    assert str(tmp_path / "o" / "runs" / "crasher" / "logs" / "case0.log") in err
    lines = out.strip().splitlines()
    assert len([line for line in lines if line.split()[:1] in (["good"], ["sleeper"], ["crasher"])]) <= 6
    ranking = pd.read_csv(tmp_path / "o" / "ranking" / "ranking.csv")
    assert ranking.team.iloc[-1] == "crasher"
    assert set(pd.read_csv(tmp_path / "o" / "results.csv").team) == {"good", "sleeper", "crasher"}
    assert "next: flare-eval report" in out
    # The same command again: nothing left to run, old failures summarised once, not listed as new; the report.
    code = main(["evaluate", str(subs), "--inputs", str(images), "--labels", str(labels), "--out", str(tmp_path / "o"),
                 "--gpus", "none", "--timeout", "20", "--no-progress", "--samples", "50", "--seed", "1", "--report"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "already finished" in err and "nothing left to run" in err
    assert "of earlier runs did not end ok (crashed)" in err and "crasher case0: crashed" not in err
    assert (tmp_path / "o" / "report" / "index.html").is_file() and "next:" not in out


def test_bad_archive_and_missing_engine_errors(engine, tmp_path, capsys, monkeypatch):
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "broken.tar").write_bytes(b"not a tar")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "c_0000.nii.gz").write_bytes(b"x")
    code = main(["run-containers", str(tmp_path / "subs"), "--inputs", str(tmp_path / "in"), "--out",
                 str(tmp_path / "runs"), "--gpus", "none", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "broken.tar: not a readable image archive" in err and "broken c: invalid_submission" in err
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    code = main(["run-containers", str(tmp_path / "subs"), "--inputs", str(tmp_path / "in"), "--out",
                 str(tmp_path / "runs"), "--gpus", "none", "--no-progress"])
    assert code == 2 and "no Docker engine answers" in capsys.readouterr().err


def test_grand_challenge_interface(engine, tmp_path):
    from teams import build_team_archives, make_cases

    images, labels, answers = make_cases(tmp_path)
    submissions = build_team_archives(engine, tmp_path, answers, grand_challenge=True)
    resources = run_containers(submissions, images, tmp_path / "runs", "flare22-grand-challenge", gpus=None,
                               progress=False)
    assert set(resources.status) == {"ok"}, (tmp_path / "runs" / "gc_good" / "logs" / "case0.log").read_text()
    predictions = tmp_path / "runs" / "gc_good" / "predictions"
    assert sorted(p.name for p in predictions.iterdir()) == ["case0.mha", "case1.mha"]
    with pytest.warns(UserWarning, match="GPU memory was not measured"):
        results = collect_results(tmp_path / "runs", labels, protocol="flare22-grand-challenge", progress=False)
    flare = run_containers([fe_submission(tmp_path, engine, answers)], images, tmp_path / "runs_flare",
                           gpus=None, progress=False)
    assert set(flare.status) == {"ok"}
    with pytest.warns(UserWarning):
        flare_results = collect_results(tmp_path / "runs_flare", labels, progress=False)
    # The same answers through either interface (.mha or .nii.gz) score the same.
    assert results.DSC.tolist() == flare_results.DSC.tolist() and (results.DSC > 0.8).all()


def fe_submission(folder, engine, answers):
    from teams import build_team_archives

    archives = build_team_archives(engine, folder / "flare", answers, teams=["good"])
    from flare_eval import Submission

    return Submission("good", archive=next(archives.iterdir()))


def test_protocol_time_limit_is_the_default_timeout(workspace, tmp_path):
    import json

    folder, images, labels, submissions = workspace
    protocol = tmp_path / "short.json"
    protocol.write_text(json.dumps({"extends": "flare22", "resources": {"gpu_allowance_mib": 2048,
                                                                       "time_limit_s": 2}}))
    hanger = [fe.Submission("hanger", archive=p) for p in submissions.iterdir() if p.name.startswith("hanger.")]
    resources = run_containers(hanger, images, tmp_path / "runs", protocol, gpus=None, progress=False)
    assert set(resources.status) == {"timeout"} and (resources.time_s < 10).all()


def test_all_team_behaviours_are_exercised():
    assert set(TEAMS) == {"good", "burner", "forker", "sleeper", "hanger", "crasher", "silent", "linker",
                          "networker"}


def test_time_is_the_wall_clock_of_the_whole_run_and_samples_end_within_it(workspace, tmp_path):
    from dataclasses import replace

    from flare_eval import load_protocol

    folder, images, labels, submissions = workspace
    sleeper = [fe.Submission("sleep3", archive=p) for p in submissions.iterdir() if p.name.startswith("sleeper.")]
    interface = replace(load_protocol("flare22").container, command=("sh", "-c", "sleep 3"))
    resources = run_containers(sleeper, images, tmp_path / "runs", gpus=None, interface=interface, progress=False)
    for row in resources.itertuples():
        assert 3.0 <= row.time_s < 5.0 + 10.0  # create, start, run and exit; generous on a busy machine
        # The engine stamps StartedAt a few ms after the process began (2.993 s seen for sleep 3).
        assert 3.0 - 0.1 <= row.engine_time_s <= row.time_s
        samples = pd.read_csv(tmp_path / "runs" / "sleep3" / "samples" / f"{row.case}.csv")
        assert samples.time_s.iloc[-1] <= row.time_s
        assert samples.time_s.iloc[-1] >= 3.0 - 0.2


def test_progress_bar_comes_after_warnings_and_ends_finished(workspace, tmp_path, capsys, monkeypatch):
    import sys
    import warnings

    folder, images, labels, submissions = workspace
    good = [s for s in fe.harness.find_submissions(submissions) if s.team == "good"]
    # As the CLI shows warnings: one line on stderr each.
    monkeypatch.setattr(warnings, "showwarning", lambda message, *a, **k: print(f"warning: {message}",
                                                                              file=sys.stderr))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        run_containers(good, images, tmp_path / "runs", gpus="auto", progress=True)
    err = capsys.readouterr().err
    bar = err.index("|")  # the first drawing of the bar
    assert err.index("no GPU found") < bar
    assert "finished" in err.rsplit("\r", 1)[-1] and "running good" not in err.rsplit("\r", 1)[-1]


def test_an_engine_that_stops_answering_while_loading_gives_engine_error_and_a_rerun_runs_them(workspace, tmp_path,
                                                                                               monkeypatch):
    """Not the team's fault: not invalid_submission (which a rerun keeps) but engine_error (which it runs again)."""
    import docker
    import requests

    folder, images, labels, submissions = workspace
    good = [s for s in fe.harness.find_submissions(submissions) if s.team == "good"]

    def connection_dropped(self, data, *args, **kwargs):
        raise requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected())")

    with monkeypatch.context() as patch:
        patch.setattr(docker.api.client.APIClient, "load_image", connection_dropped)
        resources = run_containers(good, images, tmp_path / "runs", gpus=None, progress=False)
    assert len(resources) == 2 and set(resources.status) == {"engine_error"}
    log = (tmp_path / "runs" / "good" / "logs" / "case0.log").read_text()
    assert "the engine stopped answering while loading" in log and "Connection aborted" in log
    resources = run_containers(good, images, tmp_path / "runs", gpus=None, progress=False)
    assert resources.attrs["skipped_cases"] == 0 and len(resources) == 4
    assert set(resources.drop_duplicates(["team", "case"], keep="last").status) == {"ok"}

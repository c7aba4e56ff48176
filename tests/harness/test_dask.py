"""Scoring and containers on a real Dask cluster: a scheduler and workers as separate processes."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from tasks import end_worker_if, fewest_alive_workers_seen, wait_for_file

import flare_eval as fe
from flare_eval.cli import main

distributed = pytest.importorskip("distributed")
DASK = str(Path(sys.executable).parent / "dask")
#: The cluster's processes import the tests' task modules (tests/tasks.py), as deployed ones import the code
#: they run. Their clients refresh their cached view of the cluster every 10 ms (default: 2 s), so that a read
#: racing a refresh happens in every run of these tests, not once in a hundred.
CLUSTER_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                         os.environ.get("PYTHONPATH")])),
               "DASK_DISTRIBUTED__CLIENT__SCHEDULER_INFO_INTERVAL": "10ms"}


def workers_of(client) -> dict[str, dict]:
    """The scheduler's workers by address, asked of it now (``scheduler_info()`` can race its own refresh)."""
    return client.sync(client.scheduler.identity)["workers"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A scheduler and worker processes on this machine (no nanny: killing a worker kills it)."""

    def __init__(self, folder: Path, **scheduler_environment: str):
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.folder = folder
        self.scheduler = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port",
                                           self.address.rsplit(":", 1)[1], "--no-dashboard"],
                                          stdout=subprocess.DEVNULL, stderr=open(folder / "scheduler.log", "w"),
                                          env={**CLUSTER_ENV, **scheduler_environment})
        self.workers: dict[str, subprocess.Popen] = {}

    def add_worker(self, name: str, **environment: str) -> None:
        self.workers[name] = subprocess.Popen(
            [DASK, "worker", self.address, "--nthreads", "1", "--no-nanny", "--resources", "GPU=1",
             "--no-dashboard", "--name", name],
            stdout=subprocess.DEVNULL, stderr=open(self.folder / f"{name}.log", "w"),
            env={**CLUSTER_ENV, "FLARE_EVAL_GPU": "none", **environment},
        )

    def client(self, n_workers: int):
        client = distributed.Client(self.address, timeout=60)
        client.wait_for_workers(n_workers, timeout=60)
        return client

    def kill(self, name: str) -> None:
        self.workers.pop(name).send_signal(signal.SIGKILL)

    def close(self) -> None:
        for process in self.workers.values():
            process.kill()  # a test cluster: no need for a graceful shutdown
        self.scheduler.terminate()
        for process in [*self.workers.values(), self.scheduler]:
            process.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(tmp_path)
    cluster.add_worker("w1")
    cluster.add_worker("w2")
    yield cluster
    cluster.close()


@pytest.fixture
def many_cases(examples, tmp_path):
    """40 cases (links to the bundled ones) for two teams, so that a run lasts long enough to kill a worker."""
    gt, pred_root = tmp_path / "gt", tmp_path / "pred"
    for team in ("teamA", "teamB"):
        (pred_root / team).mkdir(parents=True)
    gt.mkdir()
    for i in range(20):
        source = f"case_000{i % 3 + 1}.nii.gz"
        os.link(examples.labels / source, gt / f"c{i:02d}.nii.gz")
        for team in ("teamA", "teamB"):
            os.link(examples.predictions / team / source, pred_root / team / f"c{i:02d}.nii.gz")
    return pred_root, gt


def test_scoring_on_the_cluster_equals_local_row_for_row(cluster, examples):
    client = cluster.client(2)
    local = fe.score_folder(examples.predictions / "teamC", examples.labels, workers=1, progress=False)
    for ship in ("paths", "bytes", "auto"):
        remote = fe.score_folder(examples.predictions / "teamC", examples.labels, scheduler=client, ship=ship,
                                 progress=False)
        pd.testing.assert_frame_equal(remote, local)
    workers = {w["name"] for w in workers_of(client).values()}
    assert workers == {"w1", "w2"}
    client.close()


def test_the_callers_meanwhile_work_runs_once_while_the_cluster_works(cluster, tmp_path):
    """Tasks wait for a file that only the caller's ``meanwhile`` creates (run after a result, it never would)."""
    from flare_eval.execution import run_tasks

    flag, calls = tmp_path / "flag", []
    client = cluster.client(2)
    results = list(run_tasks(wait_for_file, [(str(flag),)] * 3, client=client,
                             meanwhile=lambda: (calls.append(1), flag.touch())))
    assert results == ["overlapped"] * 3 and calls == [1]
    assert list(run_tasks(wait_for_file, [], client=client, meanwhile=lambda: calls.append(1))) == [] \
        and calls == [1]
    client.close()


def test_many_teams_fan_out_as_one_batch_through_the_cli(cluster, examples, tmp_path, capsys):
    cluster.client(2).close()
    code = main(["score", str(examples.predictions), str(examples.labels), "--teams", "--out", str(tmp_path / "d"),
                 "--scheduler", cluster.address, "--no-progress"])
    assert code == 1  # teamC misses a case
    assert "problem: teamC case_0002: missing" in capsys.readouterr().err
    remote = pd.read_csv(tmp_path / "d" / "scores.csv", dtype={"case": str})
    local, _ = fe.score(examples.predictions, examples.labels, tmp_path / "l", teams=True, workers=1, progress=False)
    pd.testing.assert_frame_equal(remote, pd.read_csv(tmp_path / "l" / "scores.csv", dtype={"case": str}))
    assert list(remote.columns[:2]) == ["team", "case"] and set(remote.team) == {"teamA", "teamB", "teamC"}
    official = pd.read_csv(tmp_path / "d" / "scores_official.csv")
    assert list(official.columns[:2]) == ["Team", "Name"]


def test_a_worker_killed_mid_run_costs_nothing(cluster, many_cases, tmp_path):
    pred_root, gt = many_cases
    client = cluster.client(2)
    seen = []

    def on_case(rows):
        seen.append(rows)
        if len(seen) == 4:
            cluster.kill("w2")

    scores = fe.score_teams(pred_root, gt, scheduler=client, on_case=on_case, progress=False)
    cases = scores.drop_duplicates(["team", "case"])
    assert len(cases) == 40 and len(seen) == 40  # every case exactly once, nothing counted twice
    local = fe.score_teams(pred_root, gt, workers=1, progress=False)
    pd.testing.assert_frame_equal(scores, local)
    assert len(workers_of(client)) == 1
    client.close()


def test_a_task_that_ends_its_workers_fails_alone_and_the_others_finish(tmp_path):
    """The scheduler gives up on a task that ended the workers running it (here: the first); that is the task's
    failure (a scoring case's status), not the end of the run. One task at a time: with none allowed to fail, a
    task queued on the worker that died would be given up too."""
    from flare_eval.execution import TaskFailed, run_tasks

    cluster = Cluster(tmp_path, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
    try:
        cluster.add_worker("w1")
        cluster.add_worker("w2")
        client = cluster.client(2)
        results = list(run_tasks(end_worker_if, [(False, 1), (True, 2), (False, 3), (False, 4)], client=client,
                                 in_flight=1, on_failure=lambda arguments, failure: (failure.kind, arguments[1])))
        assert results == [1, ("died", 2), 3, 4]
        with pytest.raises(TaskFailed, match="its Dask workers died running it"):
            list(run_tasks(end_worker_if, [(True, 5)], client=client, in_flight=1))
        client.close()
    finally:
        cluster.close()


def test_unreachable_scheduler_is_a_clear_error(examples, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("flare_eval.execution.CONNECT_TIMEOUT_S", 3)  # nothing will ever answer on that port
    code = main(["score", str(examples.predictions / "teamA"), str(examples.labels), "--out", str(tmp_path),
                 "--scheduler", f"tcp://127.0.0.1:{free_port()}", "--no-progress"])
    assert code == 2 and "cannot connect to the Dask scheduler" in capsys.readouterr().err


# Containers on the cluster ---------------------------------------------------------------------

@pytest.fixture
def team_archives(engine, tmp_path):
    from teams import build_team_archives, make_cases

    images, labels, answers = make_cases(tmp_path, n_cases=3)
    return images, labels, build_team_archives(engine, tmp_path, answers, teams=["good", "sleeper"])


def overlapping(rows: pd.DataFrame) -> bool:
    # The engine's own start and lifetime of each container's process.
    rows = rows.assign(start=pd.to_datetime(rows.started_at)).sort_values("start")
    ends = rows.start + pd.to_timedelta(rows.engine_time_s, unit="s")
    return bool((rows.start.iloc[1:].to_numpy() < ends.iloc[:-1].to_numpy()).any())


@pytest.mark.parametrize("ship", ["paths", "bytes"])
def test_containers_on_two_gpu_workers(cluster, team_archives, engine, tmp_path, ship):
    images, labels, submissions = team_archives
    client = cluster.client(2)
    resources = fe.run_containers(submissions, images, tmp_path / "runs", scheduler=client, ship=ship,
                                  progress=False)
    assert len(resources) == 6 and set(resources.status) == {"ok"}
    assert set(resources.worker) == set(workers_of(client))  # both workers worked
    for _, rows in resources.groupby("worker"):
        assert not overlapping(rows)  # never two containers on one GPU at a time
    for team in ("good", "sleeper"):
        for case in ("case0", "case1", "case2"):
            assert (tmp_path / "runs" / team / "predictions" / f"{case}.nii.gz").is_file()
            assert (tmp_path / "runs" / team / "samples" / f"{case}.csv").is_file()
            assert (tmp_path / "runs" / team / "logs" / f"{case}.log").is_file()
    assert (resources.n_cpus == os.cpu_count()).all() and (resources.host == socket.gethostname()).all()
    client.close()


def test_a_worker_always_finds_every_live_worker_in_the_alive_list(cluster):
    """The list that decides which containers are orphans. A worker's ``scheduler_info()`` saw no workers when read
    just after a background refresh (a 6-case run once lost a running container to another worker that way)."""
    client = cluster.client(2)
    seen = client.gather(client.map(fewest_alive_workers_seen, [300, 300], pure=False))
    assert seen == [2, 2]
    client.close()


def test_orphans_are_removed_only_by_a_worker_in_the_alive_list(engine, tmp_path):
    from teams import IMAGE_CHANGES, _root_tar

    from flare_eval.harness.docker import LABEL, _remove_if_present, remove_orphaned_containers

    reference = "flare-eval-test/orphans:latest"
    (tmp_path / "answers").mkdir()
    engine.api.import_image_from_data(_root_tar("true\n", tmp_path / "answers"), repository=reference[:-7],
                                      tag="latest", changes=list(IMAGE_CHANGES))
    runs = str(tmp_path / "runs")
    names = {}
    for worker in ("tcp://w1", "tcp://w2"):
        names[worker] = engine.containers.create(reference, ["true"], labels={LABEL: "1", f"{LABEL}.runs": runs,
                                                                              f"{LABEL}.worker": worker}).name
    try:
        # Another worker removed the orphan between this one's listing and its removal: not an error.
        listed = engine.containers.list(all=True, filters={"label": [f"{LABEL}.runs={runs}",
                                                                     f"{LABEL}.worker=tcp://w2"]})
        engine.containers.get(names["tcp://w2"]).remove(force=True)
        assert [_remove_if_present(container) for container in listed] == [False]
        names["tcp://w2"] = engine.containers.create(reference, ["true"], labels={
            LABEL: "1", f"{LABEL}.runs": runs, f"{LABEL}.worker": "tcp://w2"}).name
        # A list without the caller is not the scheduler's: w2 may be alive and running a case.
        assert remove_orphaned_containers(engine, runs, set(), "tcp://w1") == []
        assert remove_orphaned_containers(engine, runs, {"tcp://w2"}, "tcp://w1") == []
        assert remove_orphaned_containers(engine, runs, {"tcp://w1"}, "tcp://w1") == [names["tcp://w2"]]
        left = engine.containers.list(all=True, filters={"label": f"{LABEL}.runs={runs}"})
        assert [container.name for container in left] == [names["tcp://w1"]]
    finally:
        for container in engine.containers.list(all=True, filters={"label": f"{LABEL}.runs={runs}"}):
            container.remove(force=True)


def test_worker_lost_mid_container_reruns_that_case_once(cluster, team_archives, engine, tmp_path):
    images, labels, submissions = team_archives
    sleeper = [fe.Submission("sleeper", archive=p) for p in submissions.iterdir() if p.name.startswith("sleeper")]
    client = cluster.client(2)
    w2 = next(a for a, w in workers_of(client).items() if w["name"] == "w2")

    def kill_when_w2_runs():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = engine.containers.list(filters={"label": f"flare-eval.worker={w2}"})
            if running:
                cluster.kill("w2")
                return
            time.sleep(0.05)

    import threading

    killer = threading.Thread(target=kill_when_w2_runs)
    killer.start()
    resources = fe.run_containers(sleeper, images, tmp_path / "runs", scheduler=client, progress=False)
    killer.join()
    assert sorted(resources.case) == ["case0", "case1", "case2"]  # each case once
    assert set(resources.status) == {"ok"}
    assert w2 not in set(resources.worker)
    label = f"flare-eval.runs={(tmp_path / 'runs').resolve()}"  # this run's: another may share the engine
    assert engine.containers.list(all=True, filters={"label": label}) == []
    client.close()


def test_a_worker_whose_engine_fails_gives_its_cases_engine_error_and_a_rerun_runs_them(team_archives, engine,
                                                                                         tmp_path):
    """Every case lands on the one worker, whose engine does not answer: a status per case, not the run's end."""
    images, labels, submissions = team_archives
    cluster = Cluster(tmp_path)
    try:
        cluster.add_worker("broken", DOCKER_HOST=f"unix://{tmp_path / 'no-engine.sock'}")
        client = cluster.client(1)
        resources = fe.run_containers(submissions, images, tmp_path / "runs", scheduler=client, progress=False)
        assert len(resources) == 6 and set(resources.status) == {"engine_error"}
        assert set(resources.worker) == set(workers_of(client))
        log = (tmp_path / "runs" / "good" / "logs" / "case0.log").read_text()
        assert "the Docker engine of worker" in log and "no Docker engine answers" in log
        # Mended, the same command runs those cases again (the team was never measured there), and only those.
        cluster.kill("broken")
        cluster.add_worker("mended")
        client.wait_for_workers(1, timeout=60)
        resources = fe.run_containers(submissions, images, tmp_path / "runs", scheduler=client, progress=False)
        assert resources.attrs["skipped_cases"] == 0 and len(resources.attrs["ran_now"]) == 6
        latest = resources.drop_duplicates(["team", "case"], keep="last")
        assert len(resources) == 12 and set(latest.status) == {"ok"}
        again = fe.run_containers(submissions, images, tmp_path / "runs", scheduler=client, progress=False)
        assert again.attrs["skipped_cases"] == 6 and len(again) == 12
        client.close()
    finally:
        cluster.close()


def test_a_container_case_whose_workers_kept_dying_is_an_engine_error_run_again_later():
    """The arguments' layout of `_case_on_worker` as `_workers_died` reads it."""
    import inspect

    from flare_eval.execution import TaskFailure
    from flare_eval.harness.cluster import _case_on_worker, _workers_died

    assert list(inspect.signature(_case_on_worker).parameters)[:3] == ["team", "source", "case"]
    source = ("archive_path", "sha256:" + "a" * 64, "/submissions/good.tar")
    outcome = _workers_died(("good", source, "case7", "case7_0000.nii.gz", None, None, None),
                            TaskFailure("died", "its Dask workers died running it (KilledWorker)"))
    assert (outcome.row["team"], outcome.row["case"], outcome.row["status"]) == ("good", "case7", "engine_error")
    assert outcome.row["image_id"] == source[1] and outcome.row["image"] == source[2]
    assert "its Dask workers died running it" in outcome.log and outcome.prediction is None

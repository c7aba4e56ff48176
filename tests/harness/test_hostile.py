"""Hostile and broken submissions on a real Docker engine: none may stop, hijack or exhaust an evaluation.

One busybox team per behaviour (tests/teams.py HOSTILE_TEAMS), all run in one harness call on one case,
beside the invalid archives that never run. Set FLARE_EVAL_REQUIRE_DOCKER=1 to fail instead of skip.
"""

import gzip
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from conftest import PEAK_RSS_KIB
from teams import (
    COPY_ANSWERS,
    HOSTILE_CHANGES,
    HOSTILE_ROOT_FILES,
    HOSTILE_TEAMS,
    bomb_bytes,
    build_archive,
    make_cases,
)

from flare_eval import ContainerLimits, collect_results, run_containers
from flare_eval.cli import main
from flare_eval.harness.runner import HarnessWarning
from flare_eval.io import write_label_map

# Most runs here ask for no GPU on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:GPU memory is not measured:UserWarning")

ORGANIZER_TAG = "flare-eval-test/organizer:latest"


@pytest.fixture(scope="module")
def hostile(engine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    images, labels, answers = make_cases(folder, n_cases=1)
    answers_dir = folder / "answers"
    for case, answer in answers.items():
        write_label_map(answer, np.diag([0.8, 0.8, 2.5, 1.0]), answers_dir / f"{case}.nii.gz")
    submissions = folder / "submissions"
    ids = {}
    for team, script in HOSTILE_TEAMS.items():
        tag = {"twin1": "nnunet:latest", "twin2": "nnunet:latest", "thief": ORGANIZER_TAG}.get(
            team, f"flare-eval-test/{team}:latest")
        ids[team] = build_archive(engine, script, answers_dir, submissions / f"{team}.tar", tag,
                                  changes=HOSTILE_CHANGES.get(team), root_files=HOSTILE_ROOT_FILES.get(team))
    # The organizer's own image holds the tag the thief's archive claims.
    organizer_id = build_archive(engine, "echo ORGANIZER\n", answers_dir, folder / "organizer.tar", ORGANIZER_TAG)
    with open(folder / "organizer.tar", "rb") as handle:
        engine.images.load(handle)
    # Archives whose manifest the engine would read otherwise than the check: a second manifest.json behind a
    # path that normalises to it (moving the organizer's tag), and a manifest nested deeper than any parser's stack.
    write_dotdot_archive(submissions / "thief.tar", submissions / "dotdot.tar", ORGANIZER_TAG, "z/../manifest.json")
    write_dotdot_archive(submissions / "thief.tar", submissions / "dupe.tar", ORGANIZER_TAG, "./manifest.json")
    write_nested_archive(submissions / "nested.tar")
    volumes_before = {v.id for v in engine.volumes.list()}
    (submissions / "empty.tar").write_bytes(b"")
    (submissions / "corrupt.tar.gz").write_bytes(gzip.compress(b"this is not a tar archive" * 100))
    (submissions / "...tar").write_bytes(b"x")
    (submissions / ".tar").write_bytes(b"x")
    runs = folder / "runs"
    limits = ContainerLimits(timeout_s=120, memory="256m", shm_size="64m", deadline_grace_s=30)
    with pytest.warns(HarnessWarning) as caught:
        resources = run_containers(submissions, images, runs, gpus=None, limits=limits, progress=False)
    yield {"folder": folder, "runs": runs, "resources": resources.set_index("team"), "ids": ids, "labels": labels,
           "images": images, "organizer_id": organizer_id, "warnings": [str(w.message) for w in caught],
           "answers_dir": answers_dir, "new_volumes": {v.id for v in engine.volumes.list()} - volumes_before}
    engine.images.remove(organizer_id, force=True)


def write_dotdot_archive(source, target, tag, entry):
    """``source`` with an extra ``entry`` (a path to manifest.json): the same image, claiming ``tag``."""
    with tarfile.open(source) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
    manifest[0]["RepoTags"] = [tag]
    data = json.dumps(manifest).encode()
    target.write_bytes(source.read_bytes())
    with tarfile.open(target, "a") as tar:
        info = tarfile.TarInfo(entry)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def write_nested_archive(target):
    data = b"[" * 100_000 + b"]" * 100_000
    with tarfile.open(target, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def log_of(hostile, team):
    return (hostile["runs"] / team / "logs" / "case0.log").read_text()


def test_every_valid_team_ran_and_each_failure_is_that_teams_status(hostile):
    status = hostile["resources"]["status"].to_dict()
    assert status == {
        "bomb": "invalid_prediction", "sparse": "invalid_prediction", "junk": "ok", "lockdir": "ok", "probe": "ok",
        "flood": "ok", "twin1": "ok", "twin2": "ok", "thief": "ok", "nouser": "crashed", "outfile": "crashed",
        "weirdname": "ok", "deeptree": "ok", "volume": "ok", "halfvalues": "invalid_prediction",
        "empty": "invalid_submission", "corrupt": "invalid_submission", "dotdot": "invalid_submission",
        "dupe": "invalid_submission", "nested": "invalid_submission",
    }
    assert "its header claims 2000x2000x2000 voxels" in log_of(hostile, "bomb")
    assert "more than the limit" in log_of(hostile, "sparse")
    assert "not a readable image archive" in log_of(hostile, "empty")


def test_bad_team_names_write_nothing_outside_the_runs_folder(hostile):
    folder = hostile["folder"]
    assert not (folder / "resources.csv").exists() and not (folder / "logs").exists()
    assert not (folder / "predictions").exists() and not (folder / "samples").exists()
    assert sum("team name '..' is not allowed" in w for w in hostile["warnings"]) == 1
    assert sum("team name '' is not allowed" in w for w in hostile["warnings"]) == 1
    assert hostile["resources"].attrs["rejected_submissions"]


def test_images_are_run_and_recorded_by_id_not_by_tag(hostile, engine):
    resources, ids = hostile["resources"], hostile["ids"]
    for team in ("twin1", "twin2", "thief", "probe"):
        assert resources.loc[team, "image_id"] == ids[team]
    assert "I-AM-TWIN1" in log_of(hostile, "twin1") and "I-AM-TWIN2" in log_of(hostile, "twin2")
    assert "I-AM-THIEF" in log_of(hostile, "thief")
    # The organizer's tag still names the organizer's image; the teams' images are gone.
    assert engine.images.get(ORGANIZER_TAG).id == hostile["organizer_id"]
    present = {image.id for image in engine.images.list(all=True)}
    assert not present & set(ids.values())


def test_containers_hold_no_capabilities_and_bounded_limits(hostile):
    log = log_of(hostile, "probe")
    assert "CapEff:\t0000000000000000" in log
    assert "MKNOD-DENIED" in log
    assert "NOFILE=8192" in log and "FSIZE=unlimited" not in log
    assert "PID1=/sbin/docker-init" in log or "PID1=/dev/init" in log  # an init reaps orphans


def test_logs_and_dropped_listings_are_bounded(hostile):
    flood = hostile["runs"] / "flood" / "logs" / "case0.log"
    assert flood.stat().st_size <= 1_100_000 and "FLOOD-END" in flood.read_text()
    junk = log_of(hostile, "junk")
    assert len(junk) < 10_000 and "more entries" in junk


def test_scratch_is_emptied_even_of_locked_folders(hostile):
    scratch = hostile["runs"] / ".scratch"
    assert not scratch.exists() or not any(scratch.iterdir())
    assert not (hostile["runs"] / "lockdir" / "predictions" / "locked").exists()


def test_collect_scores_a_bomb_without_allocating_for_it(hostile, tmp_path):
    """The bomb's claim is refused from its header: the scorer's peak memory stays small."""
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "case0.nii.gz").write_bytes(bomb_bytes())
    script = ("import flare_eval as fe; "
              f"s = fe.score_case({str(pred / 'case0.nii.gz')!r}, {str(hostile['labels'] / 'case0.nii.gz')!r}); "
              f"print(s.status.iloc[0], {PEAK_RSS_KIB})")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "geometry_mismatch"
    assert int(out[1]) < 400 * 1024  # KiB: the claim is 8 GB


def test_collect_penalizes_invalid_predictions_and_submissions(hostile):
    with pytest.warns(UserWarning):
        results = collect_results(hostile["runs"], hostile["labels"], progress=False).set_index("team")
    for team in ("bomb", "sparse", "empty", "corrupt"):
        row = results.loc[team]
        assert [row.DSC, row.Time, row.AUC_CPU] == [0, 3600, 360000], team
    assert results.loc["twin1", "DSC"] > 0.8


def test_resubmitted_archive_runs_again_and_old_rows_are_kept_aside(hostile, engine, tmp_path):
    subs = tmp_path / "subs"
    old_id = build_archive(engine, "echo FIRST\n" + COPY_ANSWERS, hostile["answers_dir"], subs / "team.tar",
                           "flare-eval-test/resubmit:latest")
    runs = tmp_path / "runs"
    first = run_containers(subs, hostile["images"], runs, gpus=None, progress=False)
    assert first.image_id.tolist() == [old_id]
    again = run_containers(subs, hostile["images"], runs, gpus=None, progress=False)
    assert len(again) == 1  # same image: nothing reruns
    new_id = build_archive(engine, "echo SECOND\n" + COPY_ANSWERS, hostile["answers_dir"], subs / "team.tar",
                           "flare-eval-test/resubmit:latest")
    with pytest.warns(HarnessWarning, match="every case runs again"):
        rerun = run_containers(subs, hostile["images"], runs, gpus=None, progress=False)
    assert rerun.image_id.tolist() == [new_id] and "SECOND" in (runs / "team" / "logs" / "case0.log").read_text()
    assert (runs / "team" / f"resources.superseded-{old_id.removeprefix('sha256:')[:12]}.csv").is_file()


def test_torn_last_row_is_dropped_and_that_case_reruns(hostile, engine, tmp_path):
    subs = tmp_path / "subs"
    build_archive(engine, COPY_ANSWERS, hostile["answers_dir"], subs / "team.tar", "flare-eval-test/torn:latest")
    runs = tmp_path / "runs"
    run_containers(subs, hostile["images"], runs, gpus=None, progress=False, keep_images=True)
    table = runs / "team" / "resources.csv"
    text = table.read_text()
    table.write_text(text + text.splitlines()[1][:40])  # a kill -9 in the middle of an append
    with pytest.warns(UserWarning, match=r"resources.csv: dropped an incomplete last line"):
        resources = run_containers(subs, hostile["images"], runs, gpus=None, progress=False)
    assert resources.case.tolist() == ["case0"] and set(resources.status) == {"ok"}


def test_symlinked_inputs_are_staged_as_files(hostile, engine, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    os.symlink(hostile["images"] / "case0_0000.nii.gz", inputs / "case0_0000.nii.gz")
    subs = tmp_path / "subs"
    build_archive(engine, COPY_ANSWERS, hostile["answers_dir"], subs / "team.tar", "flare-eval-test/links:latest")
    resources = run_containers(subs, inputs, tmp_path / "runs", gpus=None, progress=False)
    assert set(resources.status) == {"ok"}


def test_memory_above_the_host_is_refused_up_front(tmp_path, capsys):
    code = main(["run-containers", str(tmp_path), "--inputs", str(tmp_path), "--out", str(tmp_path / "r"),
                 "--memory", "100t"])
    assert code == 2 and "--memory 100t is more than this machine's" in capsys.readouterr().err
    code = main(["run-containers", str(tmp_path), "--inputs", str(tmp_path), "--out", str(tmp_path / "r"),
                 "--memory", "28"])
    assert code == 2 and "give a number with a unit" in capsys.readouterr().err


def test_interrupt_exits_130_with_one_line_and_watchdog_removes_orphans(hostile, engine, tmp_path):
    subs = tmp_path / "subs"
    hang_id = build_archive(engine, "sleep 600\n", hostile["answers_dir"], subs / "hang.tar",
                            "flare-eval-test/hang:latest")
    command = [sys.executable, "-m", "flare_eval.cli", "run-containers", str(subs), "--inputs",
               str(hostile["images"]), "--out", str(tmp_path / "runs"), "--gpus", "none", "--no-progress",
               "--keep-images"]

    def started(process, runs):
        label = {"label": f"flare-eval.runs={runs.resolve()}", "status": "running"}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not engine.containers.list(filters=label):
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.1)
        assert engine.containers.list(filters=label), "the container never started"

    # A shell's background job (CI started with &) ignores SIGINT, and a child inherits that: give the harness
    # the default disposition, as a terminal's Ctrl-C finds it.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started(process, tmp_path / "runs")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=240)  # wide: stopping a container on a busy engine can take a while
    assert process.returncode == 130
    assert err.strip().splitlines()[-1].startswith("flare-eval run-containers: interrupted")
    assert "Traceback" not in err
    # kill -9: nobody removes the container but its watchdog, at timeout + grace.
    script = ("import flare_eval as fe; fe.run_containers({subs!r}, {images!r}, {runs!r}, gpus=None, progress=False, "
              "keep_images=True, limits=fe.ContainerLimits(timeout_s=3, deadline_grace_s=2))").format(
        subs=str(subs), images=str(hostile["images"]), runs=str(tmp_path / "runs2"))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    started(process, tmp_path / "runs2")
    process.kill()
    process.wait()
    def ours():  # this run's containers only: another evaluation may share the engine
        label = f"flare-eval.runs={(tmp_path / 'runs2').resolve()}"
        return engine.containers.list(all=True, sparse=True, filters={"label": label})

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and ours():
        time.sleep(0.5)
    assert ours() == []
    engine.images.remove(hang_id, force=True)  # kept, under flare-eval's own tag, not the archive's


def test_settings_record_the_limits_in_force(hostile):
    settings = json.loads((hostile["runs"] / "settings.json").read_text())
    assert settings["limits"]["memory"] == "256m" and settings["limits"]["open_files"] == 8192
    assert settings["machine"]["n_cpus"] == os.cpu_count()


def test_peak_memory_of_this_process_stayed_small():
    # The sparse 1.5 GB output was never read.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 1_400_000  # KiB


def test_no_container_is_left(hostile, engine):
    label = f"flare-eval.runs={hostile['runs'].resolve()}"
    assert engine.containers.list(all=True, sparse=True, filters={"label": label}) == []


def test_a_ground_truth_case_without_input_exits_1(hostile, engine, tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("case0.nii.gz", "lost.nii.gz"):
        os.link(hostile["labels"] / "case0.nii.gz", labels / name)
    subs = tmp_path / "subs"
    build_archive(engine, COPY_ANSWERS, hostile["answers_dir"], subs / "team.tar", "flare-eval-test/lost:latest")
    code = main(["evaluate", str(subs), "--inputs", str(hostile["images"]), "--labels", str(labels), "--out",
                 str(tmp_path / "out"), "--gpus", "none"])
    err = capsys.readouterr().err
    assert code == 1 and "1 ground-truth case(s) have no input image" in err and "(lost)" in err
    assert "[1/1] team case0: ok" in err  # without a terminal, a line per finished case


def test_a_non_root_harness_survives_files_it_cannot_remove(hostile, engine, tmp_path):
    """As a non-root member of the docker group, root-owned output of a container is reported, not fatal."""
    import grp
    import shutil
    import tempfile

    setpriv = shutil.which("setpriv")
    try:
        docker_gid = grp.getgrnam("docker").gr_gid
    except KeyError:
        docker_gid = None
    if os.geteuid() != 0 or setpriv is None or docker_gid is None:
        pytest.skip("needs root (to switch user), setpriv and a docker group to run the harness as another user")
    folder = tempfile.mkdtemp(prefix="flare-eval-nonroot-")
    try:
        os.chmod(folder, 0o777)
        subs = os.path.join(folder, "subs")
        os.makedirs(subs)
        build_archive(engine, HOSTILE_TEAMS["lockdir"], hostile["answers_dir"],
                      tmp_path / "lockdir.tar", "flare-eval-test/nonroot:latest")
        shutil.copy(tmp_path / "lockdir.tar", os.path.join(subs, "lockdir.tar"))
        inputs = os.path.join(folder, "inputs")
        shutil.copytree(hostile["images"], inputs)
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                os.chmod(os.path.join(root, name), 0o777)
        runs = os.path.join(folder, "runs")
        # Another user may not reach this interpreter (a venv of a Python under /root): the system interpreter
        # of the same version, with this environment's site folder added (editable install included), runs it.
        import site

        packages = [p for p in site.getsitepackages() if os.path.isdir(p)]
        script = (f"import site; [site.addsitedir(p) for p in {packages!r}]; import flare_eval as fe; "
                  f"fe.run_containers({subs!r}, {inputs!r}, {runs!r}, gpus=None, progress=False)")
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        python = shutil.which(version, path="/usr/bin:/usr/local/bin")
        if python is None:
            pytest.skip(f"no system {version} for another user to run")
        command = [setpriv, "--reuid=4242", "--regid=4242", f"--groups={docker_gid}", python, "-c", script]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "HOME": folder})
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        assert "could not remove" in result.stderr  # the root-owned folder, reported in one warning
        rows = open(os.path.join(runs, "lockdir", "resources.csv")).read()
        assert ",ok," in rows  # the case was recorded all the same
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # as root, everything goes


def test_images_the_engine_cannot_start_are_that_teams_crash(hostile):
    assert "could not create or start the container" in log_of(hostile, "nouser")
    assert "nosuchuser" in log_of(hostile, "nouser")
    assert "could not create or start the container" in log_of(hostile, "outfile")
    for team in ("nouser", "outfile"):
        assert np.isnan(hostile["resources"].loc[team, "exit_code"])


def test_archives_are_read_as_the_engine_reads_them(hostile, engine):
    assert "climbs with '..'" in log_of(hostile, "dotdot")
    assert "names 'manifest.json' a second time" in log_of(hostile, "dupe")
    assert "nests" in log_of(hostile, "nested") and "levels deep" in log_of(hostile, "nested")
    assert engine.images.get(ORGANIZER_TAG).id == hostile["organizer_id"]


def test_hostile_output_names_are_logged_as_one_escaped_line_each(hostile):
    log = log_of(hostile, "weirdname")
    assert "bad\\xffname: unexpected name" in log
    assert "x\\n[flare-eval] all fine: unexpected name" in log
    assert "\n[flare-eval] all fine" not in log


def test_deep_trees_and_volumes_leave_nothing_behind(hostile):
    scratch = hostile["runs"] / ".scratch"
    assert not scratch.exists() or not any(scratch.iterdir())
    assert "declares VOLUME /data" in log_of(hostile, "volume")
    assert hostile["new_volumes"] == set()


def test_a_container_that_exits_as_its_time_runs_out_is_a_timeout_not_a_crash(hostile, engine, tmp_path,
                                                                                monkeypatch):
    """The engine answers 409 to a kill of a container that has just exited; the case is recorded all the same."""
    import docker

    subs = tmp_path / "subs"
    build_archive(engine, "sleep 4\n" + COPY_ANSWERS, hostile["answers_dir"], subs / "late.tar",
                  "flare-eval-test/late:latest")
    kill = docker.models.containers.Container.kill
    refused = []

    def kill_after_exit(container, *args, **kwargs):
        container.wait(timeout=60)  # the exit races the kill; here the exit always wins
        try:
            return kill(container, *args, **kwargs)
        except docker.errors.APIError as exc:
            refused.append(exc.status_code)
            raise

    monkeypatch.setattr(docker.models.containers.Container, "kill", kill_after_exit)
    resources = run_containers(subs, hostile["images"], tmp_path / "runs", gpus=None, progress=False,
                               limits=ContainerLimits(timeout_s=2))
    assert refused == [409]
    assert resources.status.tolist() == ["timeout"]


def test_a_compression_bomb_archive_is_refused_before_it_is_inflated(tmp_path):
    """4 GiB of zeros in a few MB of gzip: refused once it has inflated a bounded amount, not read to the end."""
    from flare_eval.harness.docker import _ARCHIVE_RATIO_FROM_BYTES, InvalidSubmissionError, inspect_archive

    class Zeros(io.RawIOBase):
        def __init__(self, size):
            self.left = size

        def readable(self):
            return True

        def readinto(self, buffer):
            n = min(len(buffer), self.left)
            buffer[:n] = bytes(n)
            self.left -= n
            return n

    archive = tmp_path / "bomb.tar.gz"
    with gzip.open(archive, "wb", compresslevel=1) as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        for i in range(2):
            info = tarfile.TarInfo(f"layer{i}.tar")
            info.size = 2 * _ARCHIVE_RATIO_FROM_BYTES
            tar.addfile(info, io.BufferedReader(Zeros(info.size)))
    started = time.process_time()
    with pytest.raises(InvalidSubmissionError, match="inflates more than 100 times its size"):
        inspect_archive(archive)
    # CPU time, not wall time: far less than inflating the whole archive would take.
    assert time.process_time() - started < 60


def test_a_header_that_would_hang_simpleitk_is_refused_by_the_output_check(tmp_path):
    from flare_eval.harness.runner import keep_outputs

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "result.mha").write_bytes(b"ObjectType = Image\nNDims = -3\nDimSize = 4 4 4\nElementType = MET_UCHAR\n"
                                         b"ElementDataFile = LOCAL\n" + bytes(64))
    kept, dropped, refused = keep_outputs(outputs, "*.mha", tmp_path / "kept", "case.mha")
    assert kept is None and refused
    assert dropped == ["result.mha: MetaImage NDims = -3; label maps have 3"]


def test_fail_fast_stops_a_dead_team_after_its_first_failures(engine, tmp_path):
    images, labels, answers = make_cases(tmp_path, n_cases=3)
    answers_dir = tmp_path / "answers"
    for case, answer in answers.items():
        write_label_map(answer, np.diag([0.8, 0.8, 2.5, 1.0]), answers_dir / f"{case}.nii.gz")
    subs = tmp_path / "subs"
    build_archive(engine, "echo boom >&2\nexit 3\n", answers_dir, subs / "dead.tar", "flare-eval-test/dead:latest")
    build_archive(engine, COPY_ANSWERS, answers_dir, subs / "alive.tar", "flare-eval-test/alive:latest")
    with pytest.warns(HarnessWarning, match="team dead: its first 2 cases all timed out or crashed"):
        resources = run_containers(subs, images, tmp_path / "runs", gpus=None, progress=False,
                                   limits=ContainerLimits(max_consecutive_failures=2))
    statuses = resources.groupby("team")["status"].apply(list).to_dict()
    assert statuses == {"alive": ["ok", "ok", "ok"], "dead": ["crashed", "crashed", "stopped_after_failures"]}
    log = (tmp_path / "runs" / "dead" / "logs" / "case2.log").read_text()
    assert "first 2 cases all timed out or crashed" in log
    settings = json.loads((tmp_path / "runs" / "settings.json").read_text())
    assert settings["limits"]["max_consecutive_failures"] == 2
    with pytest.warns(UserWarning):
        results = collect_results(tmp_path / "runs", labels, progress=False).set_index(["team", "case"])
    assert results.loc[("dead", "case2"), "DSC"] == 0 and results.loc[("dead", "case2"), "Time"] == 3600


def test_kept_predictions_are_normalised_before_anything_reads_them(hostile):
    """A voxel of 0.5 is refused when the prediction is rewritten; the kept files are fresh, integer NIfTI."""
    import nibabel as nib

    assert "not whole numbers" in log_of(hostile, "halfvalues")
    assert not (hostile["runs"] / "halfvalues" / "predictions").exists() or \
        not any((hostile["runs"] / "halfvalues" / "predictions").iterdir())
    kept = nib.load(hostile["runs"] / "twin1" / "predictions" / "case0.nii.gz")
    assert np.issubdtype(kept.get_data_dtype(), np.integer)
    assert np.array_equal(np.asanyarray(kept.dataobj), np.asanyarray(
        nib.load(hostile["answers_dir"] / "case0.nii.gz").dataobj))

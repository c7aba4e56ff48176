"""One command at a time writes an output folder (`flare_eval.io.hold_folder`): score, run-containers, collect."""

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import flare_eval as fe
from flare_eval.cli import main
from flare_eval.errors import FolderInUseError
from flare_eval.io import FOLDER_LOCK_NAME, hold_folder

#: A process that holds a folder until a file appears: ``python -c HOLD FOLDER READY STOP``.
HOLD = ("import os, sys, time\n"
        "from flare_eval.io import hold_folder\n"
        "with hold_folder(sys.argv[1], 'score'):\n"
        "    open(sys.argv[2], 'w').close()\n"
        "    deadline = time.monotonic() + 300\n"
        "    while not os.path.exists(sys.argv[3]) and time.monotonic() < deadline:\n"
        "        time.sleep(0.02)\n")
#: Whether another process may hold the folder now: prints ``held`` or ``refused``.
PROBE = ("import sys\n"
         "from flare_eval.errors import FolderInUseError\n"
         "from flare_eval.io import hold_folder\n"
         "try:\n"
         "    with hold_folder(sys.argv[1], 'probe'):\n"
         "        print('held')\n"
         "except FolderInUseError:\n"
         "    print('refused')\n")


def another_process_may_hold(folder) -> bool:
    result = subprocess.run([sys.executable, "-c", PROBE, str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip() == "held"


@pytest.fixture
def holder(tmp_path):
    """Start a process holding ``tmp_path/out``; yields ``(process, stop_file)``."""
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out"), str(ready), str(stop)])
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.02)
    yield process, stop
    process.kill()
    process.wait()


def test_a_folder_held_by_another_process_is_refused_naming_it_until_it_ends(holder, tmp_path):
    process, stop = holder
    out = tmp_path / "out"
    with pytest.raises(FolderInUseError, match=rf"{out} is in use by flare-eval score, process {process.pid} on "):
        with hold_folder(out, "score"):
            pass
    stop.touch()
    assert process.wait(timeout=120) == 0
    assert not (out / FOLDER_LOCK_NAME).exists()  # the hold leaves nothing behind
    with hold_folder(out, "score"):
        assert not another_process_may_hold(out)
    assert another_process_may_hold(out)


def test_a_killed_holder_leaves_the_folder_free_at_once(holder, tmp_path):
    process, _ = holder
    out = tmp_path / "out"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / FOLDER_LOCK_NAME).exists()  # nobody removed it: the kernel dropped the lock
    with hold_folder(out, "score"):
        assert str(os.getpid()) in (out / FOLDER_LOCK_NAME).read_text()
    assert not (out / FOLDER_LOCK_NAME).exists()


def _try_to_hold(folder, answer):
    try:
        with hold_folder(folder, "score"):
            answer.write_text("held")
    except FolderInUseError:
        answer.write_text("refused")


def test_a_fork_of_the_holder_holds_nothing_and_its_end_keeps_the_hold(tmp_path):
    """Scoring workers are forks of the command: they inherit its table of holds and its descriptor, not its lock."""
    out, answer = tmp_path / "out", tmp_path / "answer"
    with hold_folder(out, "score"):
        child = multiprocessing.get_context("fork").Process(target=_try_to_hold, args=(out, answer))
        child.start()
        child.join(timeout=120)
        assert child.exitcode == 0 and answer.read_text() == "refused"
        assert not another_process_may_hold(out)  # the child's exit closed its copy of the descriptor


def test_a_step_may_hold_its_commands_folder_again_in_the_same_thread_only(tmp_path):
    out = tmp_path / "out"
    with hold_folder(out, "evaluate"):
        with hold_folder(out, "run-containers"):
            pass
        assert not another_process_may_hold(out)  # the inner hold did not release the folder
        failures = []

        def other_thread():
            try:
                with hold_folder(out, "score"):
                    pass
            except FolderInUseError as exc:
                failures.append(str(exc))

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert len(failures) == 1 and "another thread of this process" in failures[0]
    assert another_process_may_hold(out)


def test_score_into_a_folder_another_command_writes_exits_2_and_touches_nothing(holder, examples, tmp_path, capsys):
    process, _ = holder
    out = tmp_path / "out"
    code = main(["score", str(examples.predictions / "teamA"), str(examples.labels), "--out", str(out),
                 "--no-progress"])
    assert code == 2
    assert f"is in use by flare-eval score, process {process.pid}" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == [FOLDER_LOCK_NAME]


def test_run_containers_into_a_folder_another_command_writes_is_refused_before_the_engine(holder, tmp_path):
    out = tmp_path / "out"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "case1_0000.nii.gz").write_bytes(b"")
    with pytest.raises(FolderInUseError, match="is in use by flare-eval score"):
        fe.run_containers([], inputs, out)
    assert sorted(path.name for path in out.iterdir()) == [FOLDER_LOCK_NAME]  # no settings.json, no scratch


def test_a_lock_file_removed_between_its_opening_and_its_lock_is_not_trusted(tmp_path, monkeypatch):
    """The holder ends (and removes the file) just after another command opened it: the lock it then gets is on a
    file no one else can see, so it must lock the file at the path instead."""
    import flare_eval.io as io

    out = tmp_path / "out"
    out.mkdir()
    (out / FOLDER_LOCK_NAME).write_text("flare-eval score, process 1 on elsewhere\n")
    real_lock, calls = io._lock, []

    def holder_ends_first(descriptor, folder):
        calls.append(os.fstat(descriptor).st_ino)
        if len(calls) == 1:
            (out / FOLDER_LOCK_NAME).unlink()
        return real_lock(descriptor, folder)

    monkeypatch.setattr(io, "_lock", holder_ends_first)
    with hold_folder(out, "score"):
        assert len(calls) == 2 and calls[1] == (out / FOLDER_LOCK_NAME).stat().st_ino
        assert not another_process_may_hold(out)


def test_collect_from_a_runs_folder_another_command_writes_is_refused(holder, examples, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FolderInUseError, match="is in use by flare-eval score"):
        fe.collect_results(out, examples.labels, progress=False)
    assert sorted(path.name for path in out.iterdir()) == [FOLDER_LOCK_NAME]

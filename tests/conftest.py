"""Shared test helpers."""

import os
import sys
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: A token of this test session: the images it builds carry it (tests/teams.py), and only those are removed.
SESSION = os.environ.setdefault("FLARE_EVAL_TEST_SESSION", uuid.uuid4().hex[:12])
sys.path.insert(0, str(REPO / "benchmarks"))


#: Python expression for this process's peak resident memory in KiB. VmHWM starts afresh at exec, unlike
#: ru_maxrss, which a child inherits from the process that forked it.
PEAK_RSS_KIB = "int(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))"


def write_nifti(path, array, spacing_mm=(1.0, 1.0, 1.0), dtype=None, affine=None):
    """Write a label map with the given spacing (RAS diagonal affine unless ``affine`` is given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if affine is None:
        affine = np.diag([*spacing_mm, 1.0])
    array = np.asarray(array)
    if array.dtype == np.int64:
        array = array.astype(np.int32)
    image = nib.Nifti1Image(array, affine)
    if dtype is not None:
        image.set_data_dtype(dtype)
    nib.save(image, str(path))
    return path


@pytest.fixture(autouse=True)
def _each_test_is_told_afresh():
    """The ranking module gives each warning about a table once per process; every test is a new session."""
    from flare_eval.ranking import matrix

    matrix._TOLD.clear()


@pytest.fixture
def examples():
    from flare_eval import example_paths

    return example_paths()


@pytest.fixture(scope="session")
def engine():
    """A Docker client; skips without an engine, fails instead when FLARE_EVAL_REQUIRE_DOCKER=1 (CI)."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # any failure to reach the engine
        if os.environ.get("FLARE_EVAL_REQUIRE_DOCKER") == "1":
            pytest.fail(f"FLARE_EVAL_REQUIRE_DOCKER=1 but no Docker engine answers: {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    yield client
    # Remove every image this session built (all carry its token in the label of tests/teams.py), tagged or not.
    for image in client.images.list(all=True, filters={"label": f"flare-eval-test={SESSION}"}):
        try:
            client.images.remove(image.id, force=True)
        except docker.errors.APIError:
            pass


#: Modules whose every test starts a cluster, a browser or a kernel, and tests that draw whole reports.
_SLOW_MODULES = {"test_dask.py", "test_report_evaluation.py", "test_notebook.py", "test_report.py"}
_SLOW_TESTS = {"test_every_command_works_for_every_preset_and_reads_the_recorded_protocol",
               "test_a_new_challenge_written_as_json_only_is_scored_ranked_and_reported",
               "test_presets_collect_rank_and_report_the_bundled_examples",
               "test_a_predictions_only_challenge_from_team_folders_to_report",
               "test_a_case_past_the_protocols_scoring_limits_is_marked_and_the_run_goes_on",
               "test_non_editable_install_ships_presets_and_examples", "test_cohort_commands_on_the_examples",
               "test_matches_official_reference_on_bundled_examples"}


def pytest_collection_modifyitems(config, items):
    """Mark the tests that need the engine (``docker``) and the slow ones, so that
    ``pytest -m "not docker and not slow"`` is a fast tier (under a minute)."""
    for item in items:
        if "engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)
        if item.fspath.basename in _SLOW_MODULES or getattr(item, "originalname", item.name) in _SLOW_TESTS:
            item.add_marker(pytest.mark.slow)

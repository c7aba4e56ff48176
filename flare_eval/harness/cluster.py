"""Running the cases on a Dask cluster: one case per task, images loaded on the worker and removed after.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from .case import CaseOutcome, _CaseSettings, _engine_failed, _invalid_submission, _select_gpu, execute_case
from .docker import (
    ContainerError,
    EngineUnreachable,
    InvalidSubmissionError,
    docker_client,
    image_exists,
    remove_image,
    remove_orphaned_containers,
)
from .sampler import remove_idle_cgroups
from .submissions import Submission, _load_submission

#: Image IDs this worker process loaded from archives (IDs, never tags: two teams' tags cannot collide).
_LOADED_IMAGES: set[str] = set()


def _run_on_cluster(scheduler, ship, todo, cases, settings, gpus, record, keep_images: bool = False) -> None:
    from ..execution import SHIP_MODES, connect, run_tasks, workers_see_files

    if ship not in SHIP_MODES:
        raise ValueError(f"ship must be one of {SHIP_MODES}, got {ship!r}")
    client = connect(scheduler)
    try:
        if not todo:
            return
        if ship == "auto":
            ship = "paths" if workers_see_files(client, [cases[todo[0][1]]]) else "bytes"
        sources: dict[str, tuple] = {}
        for submission, _ in todo:
            if submission.team in sources:
                continue
            if submission.archive is None:
                sources[submission.team] = ("image", submission.image_id, submission.image)
            elif ship == "paths":
                sources[submission.team] = ("archive_path", submission.image_id, str(submission.archive.resolve()))
            else:
                data = client.scatter(submission.archive.read_bytes(), broadcast=True)
                sources[submission.team] = ("archive_bytes", submission.image_id, submission.archive.name, data)
        arguments = [(submission.team, sources[submission.team], case, cases[case].name,
                      str(cases[case].resolve()) if ship == "paths" else None, settings, gpus)
                     for submission, case in todo]

        def with_input_bytes(task: tuple) -> tuple:
            if ship == "paths":
                return task
            team, source, case, name, _, task_settings, task_gpus = task
            return team, source, case, name, cases[case].read_bytes(), task_settings, task_gpus

        for outcome in run_tasks(_case_on_worker, arguments, client=client, resources={"GPU": 1}, retries=1,
                                 prepare=with_input_bytes, on_failure=_workers_died):
            record(outcome)
        if not keep_images:
            # Best effort: a worker lost since its last case has nothing left to clean.
            client.run(_remove_loaded_images, on_error="ignore")
    finally:
        if client is not scheduler:
            client.close()


def _remove_loaded_images() -> int:
    """On a Dask worker: remove the images this worker process loaded from archives; return how many."""
    if not _LOADED_IMAGES:
        return 0
    try:
        engine = docker_client()
    except ContainerError:
        return 0  # the images stay on an engine that stopped answering; its cases say so
    removed = 0
    for image in sorted(_LOADED_IMAGES):
        remove_image(engine, image)
        removed += 1
    _LOADED_IMAGES.clear()
    return removed


def _workers_died(arguments: tuple, failure) -> CaseOutcome:
    """The outcome of a case whose Dask workers kept dying while it ran: ``engine_error``, run again on a rerun."""
    team, source, case = arguments[0], arguments[1], arguments[2]
    return _engine_failed(Submission(team, image=source[2]), case, str(failure), image_id=source[1])


def _alive_workers(client) -> set[str]:
    """The addresses of the workers the scheduler holds now, asked of the scheduler itself.

    Not ``client.scheduler_info()``: a worker's client refreshes that cached
    view in the background without the per-worker part, and a read that
    races the refresh sees no workers at all.
    """
    return set(client.sync(client.scheduler.identity)["workers"])


def _case_on_worker(team: str, source: tuple, case: str, input_name: str, input_data: str | bytes,
                    settings: _CaseSettings, gpus) -> CaseOutcome:
    """Dask task: one case on the worker's machine (engine, GPU); returns its outcome to the client.

    What the worker's engine fails to do becomes the case's status (``engine_error``, or
    ``invalid_submission`` for an archive it cannot load, as on one machine), never an error of the task:
    one worker's engine must not end every team's run.
    """
    import docker
    import requests
    from distributed import get_client, get_worker

    worker = get_worker()
    kind, image, reference = source[0], source[1], source[2]
    submission = Submission(team, image=reference)
    try:
        engine = docker_client()
    except ContainerError as exc:
        outcome = _engine_failed(submission, case, f"the Docker engine of worker {worker.address} on "
                                 f"{socket.gethostname()} failed: {exc}", image_id=image)
        outcome.row["worker"] = worker.address
        return outcome
    try:
        if remove_orphaned_containers(engine, settings.runs_label, _alive_workers(get_client()), worker.address):
            remove_idle_cgroups()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
        pass  # housekeeping: what is left is removed by the client at the end, or by its watchdog
    if kind != "image" and (image not in _LOADED_IMAGES or not image_exists(engine, image)):
        if kind == "archive_path":
            loaded = _load_submission(engine, Submission(team, archive=Path(source[2])))
        else:
            with tempfile.TemporaryDirectory(prefix="flare-eval-") as scratch:
                archive = Path(scratch) / source[2]
                archive.write_bytes(source[3])
                loaded = _load_submission(engine, Submission(team, archive=archive))
        if isinstance(loaded, InvalidSubmissionError):
            return _invalid_submission(submission, case, str(loaded))
        if isinstance(loaded, EngineUnreachable):
            return _engine_failed(submission, case, str(loaded), image_id=image)
        if loaded != image:
            return _invalid_submission(submission, case, f"the archive now holds image {loaded}, not {image}")
        _LOADED_IMAGES.add(image)
    gpu = _select_gpu(os.environ.get("FLARE_EVAL_GPU", gpus if gpus is not None else "none"))
    try:
        if isinstance(input_data, bytes):
            with tempfile.TemporaryDirectory(prefix="flare-eval-") as scratch:
                staged = Path(scratch) / input_name
                staged.write_bytes(input_data)
                return execute_case(engine, image, team, case, staged, settings, gpu, socket.gethostname(),
                                    worker.address, reference=reference)
        return execute_case(engine, image, team, case, Path(input_data), settings, gpu, socket.gethostname(),
                            worker.address, reference=reference)
    finally:
        if gpu is not None:
            gpu.close()

"""Running the cases on a Dask cluster: one case per task, images loaded on the worker and removed after.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from .case import CaseOutcome, _CaseSettings, _invalid_submission, _select_gpu, execute_case
from .docker import (
    InvalidSubmissionError,
    docker_client,
    image_exists,
    load_image_archive,
    remove_image,
    remove_orphaned_containers,
)
from .sampler import remove_idle_cgroups
from .submissions import Submission

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
                                 prepare=with_input_bytes):
            record(outcome)
        if not keep_images:
            client.run(_remove_loaded_images)
    finally:
        if client is not scheduler:
            client.close()


def _remove_loaded_images() -> int:
    """On a Dask worker: remove the images this worker process loaded from archives; return how many."""
    engine = docker_client()
    removed = 0
    for image in sorted(_LOADED_IMAGES):
        remove_image(engine, image)
        removed += 1
    _LOADED_IMAGES.clear()
    return removed


def _alive_workers(client) -> set[str]:
    """The addresses of the workers the scheduler holds now, asked of the scheduler itself.

    Not ``client.scheduler_info()``: a worker's client refreshes that cached
    view in the background without the per-worker part, and a read that
    races the refresh sees no workers at all.
    """
    return set(client.sync(client.scheduler.identity)["workers"])


def _case_on_worker(team: str, source: tuple, case: str, input_name: str, input_data: str | bytes,
                    settings: _CaseSettings, gpus) -> CaseOutcome:
    """Dask task: one case on the worker's machine (engine, GPU); returns its outcome to the client."""
    from distributed import get_client, get_worker

    worker = get_worker()
    engine = docker_client()
    if remove_orphaned_containers(engine, settings.runs_label, _alive_workers(get_client()), worker.address):
        remove_idle_cgroups()
    kind, image = source[0], source[1]
    reference = source[2]
    if kind != "image" and (image not in _LOADED_IMAGES or not image_exists(engine, image)):
        try:
            if kind == "archive_path":
                loaded = load_image_archive(engine, Path(source[2]), team=team)
            else:
                with tempfile.TemporaryDirectory(prefix="flare-eval-") as scratch:
                    archive = Path(scratch) / source[2]
                    archive.write_bytes(source[3])
                    loaded = load_image_archive(engine, archive, team=team)
        except InvalidSubmissionError as exc:
            return _invalid_submission(Submission(team, image=reference), case, str(exc))
        if loaded != image:
            return _invalid_submission(Submission(team, image=reference), case,
                                       f"the archive now holds image {loaded}, not {image}")
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

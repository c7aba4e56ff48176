"""Container lifecycle on a Docker engine through the Docker SDK for Python.

One case runs as: create a container (no network, memory/shm/pids limits,
never privileged, inputs read-only, a unique name, ``flare-eval`` labels, its
own cgroup parent), start it while sampling, wait with a timeout (kill when it
expires), read the exit state and the logs, and remove the container in every
case, also when the harness is interrupted.
"""

from __future__ import annotations

import calendar
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..protocol import ContainerInterface
from .sampler import CgroupCpu, NvmlGpu, ResourceSampler, cgroup_relative_path

if TYPE_CHECKING:
    import docker

__all__ = [
    "ContainerError",
    "ContainerLimits",
    "ContainerRun",
    "docker_client",
    "load_image_archive",
    "image_exists",
    "run_container",
    "remove_stale_containers",
    "remove_orphaned_containers",
    "LABEL",
]

LABEL = "flare-eval"
_LOG_LIMIT_BYTES = 1_000_000


class ContainerError(RuntimeError):
    """The Docker engine or an image cannot be used; the message says what to do."""


@dataclass(frozen=True)
class ContainerLimits:
    """Limits of every container.

    Attributes
    ----------
    memory : str
        Memory limit (Docker syntax: ``28g``); swap is not allowed beyond it.
    shm_size : str
        Size of ``/dev/shm``.
    pids_limit : int
        Most processes and threads at once.
    timeout_s : float or None
        Wall-clock limit of one case; the container is killed when it expires
        (None: the protocol's time limit, see :func:`flare_eval.run_containers`).
    """

    memory: str = "28g"
    shm_size: str = "8g"
    pids_limit: int = 4096
    timeout_s: float | None = None


@dataclass
class ContainerRun:
    """What happened to one container.

    ``times_s``, ``cpu_time_s`` and ``gpu_mib`` are the raw samples.
    ``total_cpu_s`` is the container's CPU time read after it exited.
    """

    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    time_s: float
    total_cpu_s: float
    logs: str
    times_s: list[float] = field(default_factory=list)
    cpu_time_s: list[float] = field(default_factory=list)
    gpu_mib: list[float] | None = None
    gpu_mode: str = "none"
    started_at: str = ""


def docker_client() -> docker.DockerClient:
    """A client for the local engine.

    Raises
    ------
    ContainerError
        If no engine answers (with what to do about it).
    """
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ContainerError(
            f"no Docker engine answers ({exc}); start one (e.g. `sudo dockerd &`) or set DOCKER_HOST"
        ) from exc
    return client


def load_image_archive(client: docker.DockerClient, archive: Path) -> str:
    """Load an image archive written by ``docker save`` (``.tar`` or ``.tar.gz``); return its reference.

    The image is identified from the archive's own manifest (its tag, else its
    id), not guessed from the file name.

    Raises
    ------
    ContainerError
        If the archive cannot be loaded or holds no image or several.
    """
    import docker

    try:
        with open(archive, "rb") as handle:
            images = client.images.load(handle)
    except (OSError, docker.errors.DockerException) as exc:
        raise ContainerError(f"{archive}: cannot be loaded as a Docker image archive ({exc})") from exc
    if len(images) != 1:
        found = [image.tags or image.id for image in images]
        raise ContainerError(f"{archive}: expected one image in the archive, found {len(images)}: {found}")
    image = images[0]
    return image.tags[0] if image.tags else image.id


def image_exists(client: docker.DockerClient, reference: str) -> bool:
    """Whether the engine already has ``reference``."""
    import docker

    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        return False
    return True


def remove_stale_containers(client: docker.DockerClient, runs_label: str) -> list[str]:
    """Remove containers left by an earlier, killed harness for the same runs folder; return their names."""
    stale = client.containers.list(all=True, filters={"label": f"{LABEL}.runs={runs_label}"})
    for container in stale:
        container.remove(force=True)
    return [container.name for container in stale]


def remove_orphaned_containers(client: docker.DockerClient, runs_label: str, alive_workers: set[str]) -> list[str]:
    """Remove containers of this run started by Dask workers that are gone; return their names."""
    removed = []
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}.runs={runs_label}"}):
        worker = container.labels.get(f"{LABEL}.worker", "")
        if worker and worker not in alive_workers:
            container.remove(force=True)
            removed.append(container.name)
    return removed


def _remove_by_name(client: docker.DockerClient, name: str) -> None:
    import docker

    try:
        client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass


def _container_name(team: str, case: str) -> str:
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"{team}-{case}")[:100]
    return f"flare-eval-{safe}-{secrets.token_hex(4)}"


def _engine_seconds(stamp: str) -> float | None:
    """Seconds since the epoch of the engine's RFC 3339 timestamps, which carry nanoseconds."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$", stamp or "")
    if not match or stamp.startswith("0001"):
        return None
    whole = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S"))
    return whole + (float(match.group(2)) if match.group(2) else 0.0)


def run_container(
    client: docker.DockerClient,
    image: str,
    *,
    team: str,
    case: str,
    input_dir: Path,
    output_dir: Path,
    interface: ContainerInterface,
    limits: ContainerLimits,
    gpu: NvmlGpu | None,
    runs_label: str,
    interval_s: float = 0.1,
    worker: str = "",
) -> ContainerRun:
    """Run one case in a fresh container and sample it until it exits.

    The container is removed before this returns or raises.
    """
    import docker
    import requests

    cgroup_driver = client.info().get("CgroupDriver", "cgroupfs")
    token = secrets.token_hex(6)
    parent = f"flare_eval-{token}.slice" if cgroup_driver == "systemd" else f"/flare-eval/{token}"
    cgroup = CgroupCpu(cgroup_relative_path(parent, cgroup_driver))
    device_requests = []
    if gpu is not None:
        device_requests = [docker.types.DeviceRequest(device_ids=[str(gpu.index)], capabilities=[["gpu"]])]
    name = _container_name(team, case)
    try:
        container = client.containers.create(
            image,
            command=list(interface.command) if interface.command is not None else None,
            name=name,
            labels={LABEL: "1", f"{LABEL}.team": team, f"{LABEL}.case": case, f"{LABEL}.runs": runs_label,
                    f"{LABEL}.worker": worker},
            network_mode="none",
            mem_limit=limits.memory,
            memswap_limit=limits.memory,
            shm_size=limits.shm_size,
            pids_limit=limits.pids_limit,
            privileged=False,
            security_opt=["no-new-privileges"],
            cgroup_parent=parent,
            device_requests=device_requests,
            volumes={
                str(input_dir): {"bind": interface.input_mount, "mode": "ro"},
                str(output_dir): {"bind": interface.output_mount, "mode": "rw"},
            },
            detach=True,
        )
    except docker.errors.ImageNotFound as exc:
        raise ContainerError(f"team {team}: image {image!r} not found on the engine") from exc
    except docker.errors.APIError as exc:
        raise ContainerError(f"team {team}, case {case}: the engine refused to create the container ({exc})") from exc
    except BaseException:
        # Interrupted while the engine was creating it: the container may exist without a handle.
        _remove_by_name(client, name)
        raise

    sampler = ResourceSampler(cpu=cgroup, gpu=gpu, interval_s=interval_s)
    timed_out = False
    try:
        start = sampler.start()
        container.start()
        try:
            container.wait(timeout=limits.timeout_s)
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            timed_out = True
            container.kill()
            container.wait(timeout=60)
        wall_s = time.monotonic() - start
        sampler.stop()
        total_cpu_s = cgroup.usage_s()
        container.reload()
        state = container.attrs["State"]
        started, finished = _engine_seconds(state.get("StartedAt", "")), _engine_seconds(state.get("FinishedAt", ""))
        time_s = finished - started if started and finished and finished >= started else wall_s
        logs = container.logs(stdout=True, stderr=True)[-_LOG_LIMIT_BYTES:].decode("utf-8", errors="replace")
        return ContainerRun(
            exit_code=state.get("ExitCode"),
            timed_out=timed_out,
            oom_killed=bool(state.get("OOMKilled")),
            time_s=time_s,
            total_cpu_s=total_cpu_s if total_cpu_s is not None else (sampler.cpu_time_s or [0.0])[-1],
            logs=logs,
            times_s=sampler.times_s,
            cpu_time_s=sampler.cpu_time_s,
            gpu_mib=sampler.gpu_mib if gpu is not None else None,
            gpu_mode=sampler.gpu_mode,
            started_at=state.get("StartedAt", "") if started else "",
        )
    finally:
        sampler.stop()
        _remove_by_name(client, name)
        cgroup.remove()

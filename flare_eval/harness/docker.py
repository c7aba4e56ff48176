"""Container lifecycle on a Docker engine through the Docker SDK for Python.

One case runs as: create a container (hardened: no network, no capabilities,
``no-new-privileges``, an init process, memory/shm/pids/open-file/file-size
limits, engine logs capped, never privileged, inputs read-only, a unique name,
``flare-eval`` labels, its own cgroup parent), start it while sampling, wait
with a timeout (kill when it expires), read the exit state and the tail of the
logs, and remove the container in every case, also when the harness is
interrupted. A detached watchdog process removes the container at its deadline
even if the harness itself is killed.

Images are identified by their ID (the sha256 digest of their configuration),
never by a tag that an archive can claim: see `inspect_archive` and
`load_image_archive`.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import secrets
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..protocol import ContainerInterface
from .sampler import CgroupCpu, NvmlGpu, ResourceSampler, cgroup_relative_path

if TYPE_CHECKING:
    import docker

__all__ = [
    "ContainerError",
    "InvalidSubmissionError",
    "ContainerLimits",
    "ContainerRun",
    "ArchiveInfo",
    "docker_client",
    "inspect_archive",
    "load_image_archive",
    "remove_image",
    "image_exists",
    "parse_memory_bytes",
    "host_memory_bytes",
    "run_container",
    "remove_stale_containers",
    "remove_orphaned_containers",
    "LABEL",
]

LABEL = "flare-eval"
#: Most bytes of a container's output kept in its log (the tail).
LOG_LIMIT_BYTES = 1_000_000
#: The engine keeps at most this much of a container's output (json-file driver, two files).
_ENGINE_LOG_FILE = "1m"
#: Largest manifest read from an image archive, and most members looked at.
_MANIFEST_MAX_BYTES = 1_000_000
_ARCHIVE_MAX_MEMBERS = 100_000
_MEMORY_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_ID = re.compile(r"^(?:blobs/sha256/|)([0-9a-f]{64})(?:\.json)?$")


class ContainerError(RuntimeError):
    """The Docker engine or an image cannot be used; the message says what to do."""


class InvalidSubmissionError(ContainerError):
    """A team's archive cannot be run (unreadable, not one image, a bad manifest); the team gets a status."""


def parse_memory_bytes(text: str, option: str = "--memory") -> int:
    """Bytes of a Docker memory size such as ``28g``, ``512m`` or ``1.5g``.

    Raises
    ------
    ValueError
        For a size without a unit (Docker would read ``28`` as 28 bytes) or a
        malformed one; the message names ``option`` and the accepted units.

    Examples
    --------
    >>> parse_memory_bytes("512m")
    536870912
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt])b?\s*", str(text).lower())
    if not match:
        raise ValueError(f"{option} {text!r}: give a number with a unit, b, k, m, g or t (e.g. 28g, 512m)")
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])


def host_memory_bytes() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class ContainerLimits:
    """Limits of every container; each default is part of the security model (README).

    Attributes
    ----------
    memory : str or None
        Memory limit (Docker syntax: ``28g``); swap is not allowed beyond it.
        None: FLARE's 28g, or the host's memory where it has less. A limit
        above the host's memory is refused (see `checked`).
    shm_size : str
        Size of ``/dev/shm``.
    pids_limit : int
        Most processes and threads at once.
    timeout_s : float or None
        Wall-clock limit of one case; the container is killed when it expires
        (None: the protocol's time limit, see :func:`flare_eval.run_containers`).
    open_files : int
        Most open files per process (``ulimit -n``).
    file_size_bytes : int
        Largest file a process may write (``ulimit -f``), anywhere in the
        container: a runaway writer gets SIGXFSZ instead of filling the disk.
    cpus : float or None
        CPU share (``--cpus``), None for no cap.
    cpuset_cpus : str or None
        CPUs the container may run on (``--cpuset-cpus``, e.g. ``0-7``).
    user : str or None
        User (``uid[:gid]``) the container runs as; None: the image's own.
    deadline_grace_s : float
        A detached watchdog removes the container this long after its
        timeout, even if the harness was killed meanwhile.
    """

    memory: str | None = None
    shm_size: str = "8g"
    pids_limit: int = 4096
    timeout_s: float | None = None
    open_files: int = 8192
    file_size_bytes: int = 16 * 1024**3
    cpus: float | None = None
    cpuset_cpus: str | None = None
    user: str | None = None
    deadline_grace_s: float = 60.0

    def checked(self) -> ContainerLimits:
        """These limits with the memory resolved and every value checked against this machine.

        Raises
        ------
        ValueError
            Naming the option, for a malformed size, a memory limit above the
            host's memory, or a non-positive limit.
        """
        host = host_memory_bytes()
        if self.memory is None:
            memory_bytes = min(28 * 1024**3, host)
        else:
            memory_bytes = parse_memory_bytes(self.memory)
            if memory_bytes > host:
                raise ValueError(f"--memory {self.memory} is more than this machine's {host / 1024**3:.1f} GiB: "
                                 "the limit would never apply; give at most that")
        if memory_bytes < 8 * 1024**2:
            raise ValueError(f"--memory {self.memory}: the engine needs at least 8m")
        parse_memory_bytes(self.shm_size, "--shm-size")
        for option, value in (("--pids-limit", self.pids_limit), ("open files", self.open_files),
                              ("file size", self.file_size_bytes)):
            if value < 1:
                raise ValueError(f"{option} must be positive, got {value}")
        if self.cpus is not None and not self.cpus > 0:
            raise ValueError(f"--cpus must be positive, got {self.cpus}")
        return replace(self, memory=f"{memory_bytes // 1024**2}m")


@dataclass(frozen=True)
class ArchiveInfo:
    """What an image archive's manifest says, read without loading it.

    Attributes
    ----------
    image_id : str
        ``sha256:<64 hex digits>``: the digest of the image's configuration,
        which is the ID the engine gives the image once loaded.
    tags : tuple of str
        The tags the archive asks for (never trusted, never used to run).
    """

    image_id: str
    tags: tuple[str, ...]


@dataclass
class ContainerRun:
    """What happened to one container.

    ``time_s`` is the protocol's running time: the wall clock from just
    before the container was created until its exit was seen (the official
    script timed the whole ``docker container run``). ``engine_time_s`` is the
    engine's start-to-exit time of the container's process. ``times_s``,
    ``cpu_time_s`` and ``gpu_mib`` are the raw samples, on the clock of
    ``time_s`` (none lies after it). ``total_cpu_s`` is the container's CPU
    time read after it exited.
    """

    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    time_s: float
    engine_time_s: float
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


def inspect_archive(archive: Path) -> ArchiveInfo:
    """Read an image archive's ``manifest.json`` (as ``docker save`` writes it) without loading the image.

    Reads are bounded: the archive is streamed, at most
    ``_ARCHIVE_MAX_MEMBERS`` entries are looked at and the manifest may hold
    at most ``_MANIFEST_MAX_BYTES``.

    Raises
    ------
    InvalidSubmissionError
        If the archive is unreadable, empty or corrupt, has no manifest or a
        malformed one, or holds no image or several.
    """
    manifest = None
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > _ARCHIVE_MAX_MEMBERS:
                    raise InvalidSubmissionError(f"{archive}: more than {_ARCHIVE_MAX_MEMBERS} entries")
                if member.name.lstrip("./") == "manifest.json" and member.isfile():
                    if member.size > _MANIFEST_MAX_BYTES:
                        raise InvalidSubmissionError(f"{archive}: manifest.json of {member.size} bytes is too large")
                    manifest = tar.extractfile(member).read(_MANIFEST_MAX_BYTES)
                tar.members = []  # a streamed archive needs no index; keep memory flat
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise InvalidSubmissionError(f"{archive}: not a readable image archive ({exc})") from exc
    if manifest is None:
        raise InvalidSubmissionError(f"{archive}: no manifest.json; write the archive with `docker save`")
    try:
        entries = json.loads(manifest)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidSubmissionError(f"{archive}: manifest.json is not valid JSON ({exc})") from exc
    if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
        found = len(entries) if isinstance(entries, list) else "a malformed manifest"
        raise InvalidSubmissionError(f"{archive}: expected exactly one image in the archive, found {found}")
    config, tags = entries[0].get("Config"), entries[0].get("RepoTags") or []
    match = _ID.match(config) if isinstance(config, str) else None
    if match is None:
        raise InvalidSubmissionError(f"{archive}: manifest.json names no image configuration ({config!r})")
    if not isinstance(tags, list) or not all(isinstance(t, str) and len(t) < 256 for t in tags) or len(tags) > 16:
        raise InvalidSubmissionError(f"{archive}: manifest.json has malformed RepoTags")
    return ArchiveInfo(image_id=f"sha256:{match.group(1)}", tags=tuple(tags))


def load_image_archive(client: docker.DockerClient, archive: Path, info: ArchiveInfo | None = None) -> str:
    """Load an image archive written by ``docker save``; return the image's ID (``sha256:...``).

    The archive's tags are not trusted: a tag that named another image before
    the load (the organizer's, another team's) is put back on that image, so no
    archive can move it. The caller runs the image by the returned ID.

    Raises
    ------
    InvalidSubmissionError
        If the archive is not a valid single-image archive (see
        `inspect_archive`), the engine refuses it, or the loaded image is not
        the one the manifest names.
    """
    import docker

    info = info or inspect_archive(archive)
    before = {}
    for tag in info.tags:
        try:
            before[tag] = client.images.get(tag).id
        except (docker.errors.ImageNotFound, docker.errors.APIError):
            pass
    try:
        with open(archive, "rb") as handle:
            for _ in client.api.load_image(handle):
                pass
    except (OSError, docker.errors.DockerException) as exc:
        raise InvalidSubmissionError(f"{archive}: the engine cannot load it as an image ({exc})") from exc
    finally:
        for tag, previous in before.items():
            if previous != info.image_id:
                repository, _, name = tag.rpartition(":")
                client.api.tag(previous, repository, name, force=True)
    if not image_exists(client, info.image_id):
        raise InvalidSubmissionError(f"{archive}: the engine did not load the image {info.image_id} its manifest names")
    return info.image_id


def remove_image(client: docker.DockerClient, image_id: str) -> None:
    """Remove an image by ID (with its tags); one that is in use or already gone is left as it is."""
    import docker

    try:
        client.images.remove(image_id, force=True, noprune=False)
    except docker.errors.APIError:  # ImageNotFound included
        pass


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


def _remove_by_name(client: docker.DockerClient, name: str, *, may_be_creating: bool = False,
                    patience_s: float = 10.0) -> None:
    """Remove a container, waiting out the engine's transient refusals (a container still being started).

    ``may_be_creating``: the harness was interrupted while the engine was
    creating the container, which may appear only after a moment.
    """
    import docker

    deadline = time.monotonic() + patience_s
    while True:
        try:
            client.containers.get(name).remove(force=True)
            return
        except docker.errors.NotFound:
            if not may_be_creating or time.monotonic() > deadline:
                return
        except docker.errors.APIError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


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
    gpu_memory: str = "container",
) -> ContainerRun:
    """Run one case in a fresh container and sample it until it exits.

    ``gpu_memory`` is the protocol's reading (``container`` or the official
    ``device_total``, see :mod:`flare_eval.harness.sampler`). The container is
    removed before this returns or raises.
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
    sampler = ResourceSampler(cpu=cgroup, gpu=gpu, interval_s=interval_s, gpu_memory=gpu_memory)
    timed_out = False
    watchdog = _start_watchdog(name, (limits.timeout_s or 0) + limits.deadline_grace_s)
    # The clock of time_s and of every sample starts before the container is created, as the official
    # script timed the whole `docker container run` (create, start, run, exit).
    start = sampler.start()
    creating = True  # until the engine has answered: interrupted then, the container may appear later
    try:
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
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                init=True,
                ulimits=[docker.types.Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
                         docker.types.Ulimit(name="fsize", soft=limits.file_size_bytes, hard=limits.file_size_bytes)],
                nano_cpus=int(limits.cpus * 1e9) if limits.cpus else None,
                cpuset_cpus=limits.cpuset_cpus,
                user=limits.user,
                log_config=docker.types.LogConfig(type="json-file",
                                                  config={"max-size": _ENGINE_LOG_FILE, "max-file": "2"}),
                cgroup_parent=parent,
                device_requests=device_requests,
                volumes={
                    str(input_dir): {"bind": interface.input_mount, "mode": "ro"},
                    str(output_dir): {"bind": interface.output_mount, "mode": "rw"},
                },
                detach=True,
            )
        except docker.errors.ImageNotFound as exc:
            creating = False
            raise ContainerError(f"team {team}: image {image!r} not found on the engine") from exc
        except docker.errors.APIError as exc:
            creating = False
            raise ContainerError(f"team {team}, case {case}: the engine refused to create the container ({exc})") \
                from exc
        creating = False
        container.start()
        try:
            container.wait(timeout=limits.timeout_s)
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            timed_out = True
            container.kill()
            container.wait(timeout=60)
        time_s = time.monotonic() - start
        sampler.stop()
        total_cpu_s = cgroup.usage_s()
        container.reload()
        state = container.attrs["State"]
        started, finished = _engine_seconds(state.get("StartedAt", "")), _engine_seconds(state.get("FinishedAt", ""))
        engine_time_s = finished - started if started and finished and finished >= started else float("nan")
        logs = _log_tail(container)
        # A reading taken after the exit was seen belongs to no one's run time.
        n_kept = max(1, sum(t <= time_s for t in sampler.times_s))
        return ContainerRun(
            exit_code=state.get("ExitCode"),
            timed_out=timed_out,
            oom_killed=bool(state.get("OOMKilled")),
            time_s=time_s,
            engine_time_s=engine_time_s,
            total_cpu_s=total_cpu_s if total_cpu_s is not None else (sampler.cpu_time_s or [0.0])[-1],
            logs=logs,
            times_s=sampler.times_s[:n_kept],
            cpu_time_s=sampler.cpu_time_s[:n_kept],
            gpu_mib=sampler.gpu_mib[:n_kept] if gpu is not None else None,
            gpu_mode=sampler.gpu_mode,
            started_at=state.get("StartedAt", "") if started else "",
        )
    finally:
        sampler.stop()
        # Also when interrupted while the engine was creating it: the container may exist without a handle.
        _remove_by_name(client, name, may_be_creating=creating)
        cgroup.remove()
        watchdog.kill()
        watchdog.wait()


def _log_tail(container) -> str:
    """The last `LOG_LIMIT_BYTES` of a container's output: the engine keeps little, and only a tail is fetched."""
    data = container.logs(stdout=True, stderr=True, tail=20_000)
    return data[-LOG_LIMIT_BYTES:].decode("utf-8", errors="replace")


def _start_watchdog(name: str, deadline_s: float) -> subprocess.Popen:
    """A detached process that removes container ``name`` after ``deadline_s``, should the harness die first.

    It runs a standalone script (no package import) in its own session, so a
    kill -9 of the harness, or of its process group, leaves it running.
    """
    script = Path(__file__).with_name("_watchdog.py")
    # Isolated (-I: its own folder, which holds this docker.py, must not shadow the Docker SDK), but with the
    # harness's own module path, so that it finds the SDK wherever it is installed.
    environment = {**os.environ, "FLARE_EVAL_WATCHDOG_PATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen([sys.executable, "-I", str(script), name, f"{deadline_s:.1f}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=environment)

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
import posixpath
import re
import secrets
import subprocess
import sys
import tarfile
import time
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..errors import FlareEvalError
from ..protocol import ContainerInterface
from .sampler import CgroupCpu, NvmlGpu, ResourceSampler, cgroup_relative_path

if TYPE_CHECKING:
    import docker

__all__ = [
    "ContainerError",
    "InvalidSubmissionError",
    "EngineUnreachable",
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
_MANIFEST_MAX_DEPTH = 32
_ARCHIVE_MAX_MEMBERS = 100_000
#: An archive may inflate at most this many times its size once it has inflated this much (image layers are
#: stored uncompressed inside the archive, so a whole archive compresses a few times, not a thousand).
_ARCHIVE_MAX_RATIO = 100
_ARCHIVE_RATIO_FROM_BYTES = 256 * 1024**2
_MEMORY_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_ID = re.compile(r"^(?:blobs/sha256/|)([0-9a-f]{64})(?:\.json)?$")


class ContainerError(FlareEvalError, RuntimeError):
    """The Docker engine or an image cannot be used; the message says what to do."""


class InvalidSubmissionError(ContainerError):
    """A team's archive cannot be run (unreadable, not one image, a bad manifest); the team gets a status."""


class EngineUnreachable(ContainerError):
    """The engine stopped answering (refused or dropped the connection, or timed out) while it worked for a team:
    the engine's failure, never the team's; its cases get ``engine_error`` and run again on a rerun."""


def _engine_unreachable_errors() -> tuple[type[Exception], ...]:
    import requests

    return (requests.exceptions.ConnectionError, requests.exceptions.Timeout)



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
    max_consecutive_failures : int or None
        Fail fast: a team whose first N cases all timed out or crashed is not
        run further; its remaining cases get status ``stopped_after_failures``
        (penalised). None: the protocol's ``resources.max_consecutive_failures``
        (FLARE: none, every case runs, as officially).
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
    max_consecutive_failures: int | None = None

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
        if self.max_consecutive_failures is not None and self.max_consecutive_failures < 1:
            raise ValueError(f"--max-consecutive-failures must be positive, got {self.max_consecutive_failures}")
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
    time read after it exited. ``start_error`` says why the engine could not
    create or start the container (the image's fault), ``engine_error`` why
    the engine failed while it ran; ``volumes`` lists the anonymous volumes
    the image declared (removed with the container).
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
    start_error: str = ""
    engine_error: str = ""
    volumes: list[str] = field(default_factory=list)


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

    The archive is read as the engine will read it: every entry's path is
    normalised, and an entry that is absolute, climbs out with ``..``, names
    a path a second time (after normalisation: ``z/../manifest.json`` is
    ``manifest.json``), is a device or pipe, or links outside the archive or
    onto its index files is refused. Reads are bounded: the archive is
    streamed once, at most ``_ARCHIVE_MAX_MEMBERS`` entries are looked at, it
    may inflate at most ``_ARCHIVE_MAX_RATIO`` times its size (past
    ``_ARCHIVE_RATIO_FROM_BYTES``), and the manifest may hold at most
    ``_MANIFEST_MAX_BYTES`` and nest at most ``_MANIFEST_MAX_DEPTH`` levels.

    Raises
    ------
    InvalidSubmissionError
        If the archive is unreadable, empty, corrupt or refused by the rules
        above, has no manifest or a malformed one, or holds no image or several.
    """
    manifest = None
    seen: set[str] = set()
    try:
        with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > _ARCHIVE_MAX_MEMBERS:
                    raise InvalidSubmissionError(f"{archive}: more than {_ARCHIVE_MAX_MEMBERS} entries")
                name = _archive_entry_name(archive, member, seen)
                inflated = member.offset_data + member.size
                if inflated > _ARCHIVE_RATIO_FROM_BYTES and inflated > _ARCHIVE_MAX_RATIO * max(raw.tell(), 1):
                    raise InvalidSubmissionError(f"{archive}: inflates more than {_ARCHIVE_MAX_RATIO} times its "
                                                 "size (a compression bomb?); not loaded")
                if name == "manifest.json" and member.isfile():
                    if member.size > _MANIFEST_MAX_BYTES:
                        raise InvalidSubmissionError(f"{archive}: manifest.json of {member.size} bytes is too large")
                    manifest = tar.extractfile(member).read(_MANIFEST_MAX_BYTES)
                tar.members = []  # a streamed archive needs no index; keep memory flat
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise InvalidSubmissionError(f"{archive}: not a readable image archive ({exc})") from exc
    if manifest is None:
        raise InvalidSubmissionError(f"{archive}: no manifest.json; write the archive with `docker save`")
    entries = _parse_manifest(archive, manifest)
    if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
        found = len(entries) if isinstance(entries, list) else "a malformed manifest"
        raise InvalidSubmissionError(f"{archive}: expected exactly one image in the archive, found {found}")
    config, tags = entries[0].get("Config"), entries[0].get("RepoTags") or []
    match = _ID.match(config) if isinstance(config, str) else None
    if match is None:
        raise InvalidSubmissionError(f"{archive}: manifest.json names no image configuration ({str(config)[:80]!r})")
    if not isinstance(tags, list) or not all(isinstance(t, str) and len(t) < 256 for t in tags) or len(tags) > 16:
        raise InvalidSubmissionError(f"{archive}: manifest.json has malformed RepoTags")
    return ArchiveInfo(image_id=f"sha256:{match.group(1)}", tags=tuple(tags))


#: Files of an image archive that tell the engine what to load: no link may point at them.
_ARCHIVE_INDEX_FILES = {"manifest.json", "index.json", "repositories", "oci-layout"}


def _archive_entry_name(archive: Path, member: tarfile.TarInfo, seen: set[str]) -> str:
    """The entry's normalised path, once the entry is known to be one the engine reads the same way."""
    raw = member.name
    parts = PurePosixPath(raw).parts
    if raw.startswith("/"):
        raise InvalidSubmissionError(f"{archive}: entry {raw[:100]!r} is an absolute path")
    if ".." in parts:
        raise InvalidSubmissionError(f"{archive}: entry {raw[:100]!r} climbs with '..' (docker save never writes one)")
    name = posixpath.normpath(raw)
    if name in seen:
        raise InvalidSubmissionError(f"{archive}: entry {raw[:100]!r} names {name!r} a second time")
    seen.add(name)
    if member.issym() or member.islnk():
        target = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target) if member.issym() else target)
        if target.startswith("/") or resolved.startswith("..") or resolved in _ARCHIVE_INDEX_FILES:
            raise InvalidSubmissionError(f"{archive}: link {raw[:100]!r} -> {target[:100]!r} leaves the image data")
    elif not (member.isfile() or member.isdir()):
        raise InvalidSubmissionError(f"{archive}: entry {raw[:100]!r} is a device or pipe, not image data")
    return name


def _parse_manifest(archive: Path, manifest: bytes):
    try:
        text = manifest.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidSubmissionError(f"{archive}: manifest.json is not UTF-8 text ({exc})") from exc
    depth = deepest = 0
    for character in text:  # bounded before json sees it: a deeply nested file exhausts the parser's stack
        if character in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif character in "]}":
            depth -= 1
    if deepest > _MANIFEST_MAX_DEPTH:
        raise InvalidSubmissionError(f"{archive}: manifest.json nests {deepest} levels deep, more than "
                                     f"{_MANIFEST_MAX_DEPTH}")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidSubmissionError(f"{archive}: manifest.json is not valid JSON ({str(exc)[:200]})") from exc


def load_image_archive(client: docker.DockerClient, archive: Path, info: ArchiveInfo | None = None,
                       team: str = "") -> str:
    """Load an image archive written by ``docker save``; return the image's ID (``sha256:...``).

    The archive's tags are not trusted: a tag that named another image before
    the load (the organizer's, another team's) is put back on that image, and
    the tags the archive brought are taken off again, so no archive can move
    or leave a tag; the image carries ``flare-eval-submission/<team>:<id>``
    instead while it is on the engine. What the engine reports it loaded is
    checked against the manifest: an archive that made the engine load any
    other image is refused. The caller runs the image by the returned ID.

    Raises
    ------
    InvalidSubmissionError
        If the archive is not a valid single-image archive (see
        `inspect_archive`), the engine refuses it, or what it loaded is not
        the one image the manifest names. An engine that stops answering
        raises the client's own ``ConnectionError`` or ``Timeout`` instead:
        the engine's failure, not the archive's.
    """
    import docker

    info = info or inspect_archive(archive)
    before = {}
    for tag in info.tags:
        try:
            before[tag] = client.images.get(tag).id
        except (docker.errors.ImageNotFound, docker.errors.APIError):
            pass
    loaded: set[str] = set()
    try:
        with open(archive, "rb") as handle:
            for event in client.api.load_image(handle):
                loaded.update(_loaded_references(event))
    except _engine_unreachable_errors():
        raise  # the engine's failure, not the archive's (see EngineUnreachable)
    except (OSError, docker.errors.DockerException) as exc:
        raise InvalidSubmissionError(f"{archive}: the engine cannot load it as an image ({exc})") from exc
    finally:
        _restore_tags(client, info, before)
    if not image_exists(client, info.image_id):
        raise InvalidSubmissionError(f"{archive}: the engine did not load the image {info.image_id} its manifest names")
    own = f"{SUBMISSION_REPOSITORY}/{re.sub(r'[^a-z0-9_.-]', '-', team.lower()) or 'team'}"
    client.api.tag(info.image_id, own, info.image_id.removeprefix("sha256:")[:12])
    for tag in info.tags:
        if tag not in before:
            _untag(client, tag)
    # The manifest's own tags were put back above; anything else the engine loaded is another image.
    others = {reference for reference in loaded - set(info.tags)
              if reference != info.image_id and _image_id_of(client, reference) not in (info.image_id, None)}
    if others:
        raise InvalidSubmissionError(f"{archive}: the engine also loaded {', '.join(sorted(others))[:300]}, which "
                                     f"the manifest does not name (only {info.image_id})")
    return info.image_id


#: Repository of the tags flare-eval puts on loaded submissions (never the archive's own).
SUBMISSION_REPOSITORY = "flare-eval-submission"


def _loaded_references(event) -> list[str]:
    """Image IDs and tags in one line of the engine's load progress ("Loaded image: ...")."""
    text = event.get("stream", "") if isinstance(event, dict) else ""
    references = []
    for line in str(text).splitlines():
        for prefix in ("Loaded image ID: ", "Loaded image: "):
            if line.startswith(prefix):
                references.append(line[len(prefix):].strip())
    return references


def _image_id_of(client: docker.DockerClient, reference: str) -> str | None:
    import docker

    try:
        return client.images.get(reference).id
    except docker.errors.DockerException:
        return None


def _restore_tags(client: docker.DockerClient, info: ArchiveInfo, before: dict[str, str]) -> None:
    import docker

    for tag, previous in before.items():
        if previous != info.image_id:
            repository, _, name = tag.rpartition(":")
            try:
                client.api.tag(previous, repository, name, force=True)
            except docker.errors.DockerException as exc:
                warnings.warn(f"could not put tag {tag} back on image {previous}: {exc}", RuntimeWarning,
                              stacklevel=3)


def _untag(client: docker.DockerClient, tag: str) -> None:
    """Take one tag off its image, leaving the image (it carries flare-eval's own tag)."""
    import docker

    try:
        client.api.remove_image(tag, noprune=True)
    except docker.errors.DockerException:
        pass


def remove_image(client: docker.DockerClient, image_id: str) -> None:
    """Remove an image by ID (with its tags); one that is in use or already gone is left as it is."""
    import docker
    import requests

    try:
        client.images.remove(image_id, force=True, noprune=False)
    except (docker.errors.DockerException, requests.exceptions.RequestException):  # ImageNotFound included
        pass


def image_exists(client: docker.DockerClient, reference: str) -> bool:
    """Whether the engine already has ``reference`` (False also when the engine cannot say)."""
    import docker
    import requests

    try:
        client.images.get(reference)
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return False
    return True


def remove_stale_containers(client: docker.DockerClient, runs_label: str) -> list[str]:
    """Remove containers left by an earlier, killed harness for the same runs folder; return their names."""
    stale = client.containers.list(all=True, filters={"label": f"{LABEL}.runs={runs_label}"})
    return [container.name for container in stale if _remove_if_present(container)]


def remove_orphaned_containers(client: docker.DockerClient, runs_label: str, alive_workers: set[str],
                               this_worker: str) -> list[str]:
    """Remove containers of this run started by Dask workers that are gone; return their names.

    ``alive_workers`` must be the scheduler's whole list: one without
    ``this_worker`` (the caller, alive by definition) is stale or partial,
    and nothing is removed, since the workers it leaves out may be running
    cases.
    """
    if this_worker not in alive_workers:
        return []
    removed = []
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}.runs={runs_label}"}):
        worker = container.labels.get(f"{LABEL}.worker", "")
        if worker and worker not in alive_workers and _remove_if_present(container):
            removed.append(container.name)
    return removed


def _remove_if_present(container) -> bool:
    """Remove a listed container and its anonymous volumes; False if it went meanwhile (its watchdog, another
    worker tidying up the same orphan)."""
    import docker

    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: its removal is already in progress
            raise
        return False
    return True


def _remove_by_name(client: docker.DockerClient, name: str, *, may_be_creating: bool = False,
                    patience_s: float = 10.0) -> None:
    """Remove a container and its anonymous volumes, waiting out the engine's transient refusals.

    ``may_be_creating``: the harness was interrupted while the engine was
    creating the container, which may appear only after a moment. An engine
    that keeps refusing is warned about, never raised: the watchdog removes
    the container at its deadline.
    """
    import docker
    import requests

    deadline = time.monotonic() + patience_s
    while True:
        try:
            client.containers.get(name).remove(force=True, v=True)
            return
        except docker.errors.NotFound:
            if not may_be_creating or time.monotonic() > deadline:
                return
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            if time.monotonic() > deadline:
                warnings.warn(f"container {name} could not be removed ({exc}); its watchdog removes it at its "
                              "deadline", RuntimeWarning, stacklevel=3)
                return
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

    engine_errors = (docker.errors.DockerException, requests.exceptions.RequestException)
    token = secrets.token_hex(6)
    try:
        cgroup_driver = client.info().get("CgroupDriver", "cgroupfs")
    except engine_errors as exc:
        return _failed_run(f"the engine did not answer before the container was created ({exc})", engine=True)
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
            creating = False
            volumes = _declared_volumes(container)
            container.start()
        except engine_errors as exc:
            creating = False
            # A team's image the engine cannot start (USER nosuchuser, a bad WORKDIR, a file where a mount
            # goes) is that case's failure; the message is the engine's.
            return _failed_run(f"the engine could not create or start the container: {_engine_message(exc)}",
                               time_s=time.monotonic() - start)
        try:
            try:
                container.wait(timeout=limits.timeout_s)
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                timed_out = True
                try:
                    container.kill()
                except docker.errors.APIError:
                    pass  # it exited just as the time ran out (409: not running); it still took the whole limit
                container.wait(timeout=60)
            time_s = time.monotonic() - start
            sampler.stop()
            total_cpu_s = cgroup.usage_s()
            container.reload()
            state = container.attrs["State"]
            logs = _log_tail(container)
        except engine_errors as exc:
            return _failed_run(f"the engine failed while the container ran: {_engine_message(exc)}", engine=True,
                               time_s=time.monotonic() - start, timed_out=timed_out)
        started, finished = _engine_seconds(state.get("StartedAt", "")), _engine_seconds(state.get("FinishedAt", ""))
        engine_time_s = finished - started if started and finished and finished >= started else float("nan")
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
            volumes=volumes,
        )
    finally:
        sampler.stop()
        # Also when interrupted while the engine was creating it: the container may exist without a handle.
        _remove_by_name(client, name, may_be_creating=creating)
        cgroup.remove()
        watchdog.kill()
        watchdog.wait()


def _failed_run(message: str, *, engine: bool = False, time_s: float = 0.0, timed_out: bool = False) -> ContainerRun:
    """The run of a container that the engine could not start (``engine`` False) or lost track of."""
    return ContainerRun(exit_code=None, timed_out=timed_out, oom_killed=False, time_s=time_s,
                        engine_time_s=float("nan"), total_cpu_s=0.0, logs="",
                        start_error="" if engine else message, engine_error=message if engine else "")


def _engine_message(exc: Exception) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text)[:2000]


def _declared_volumes(container) -> list[str]:
    """The paths the image declares with VOLUME: the engine makes an anonymous volume for each."""
    declared = (container.attrs.get("Config") or {}).get("Volumes") or {}
    return sorted(str(path) for path in declared)[:100]


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

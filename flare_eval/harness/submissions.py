"""Submissions: the teams' archives and images found, named, identified by digest and loaded.

Every submission is checked before any runs (team name, archive, manifest); one that fails gets
status ``invalid_submission`` on every case and the run goes on with the others.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import (
    HarnessWarning,
)
from ..io import (
    case_id,
    check_team_name,
)
from .docker import (
    ArchiveInfo,
    EngineUnreachable,
    InvalidSubmissionError,
    _engine_unreachable_errors,
    inspect_archive,
    load_image_archive,
)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CHANNEL = "_0000"


@dataclass(frozen=True)
class Submission:
    """One team's algorithm: an image archive to load, or an image the engine already has.

    ``image_id`` (``sha256:...``) is filled in by `run_containers` from the
    archive's manifest or the engine; containers run by it, never by a tag.
    """

    team: str
    archive: Path | None = None
    image: str | None = None
    image_id: str | None = None


def find_submissions(folder: str | Path) -> list[Submission]:
    """One `Submission` per image archive (``<team>.tar.gz``, ``.tgz`` or ``.tar``) in ``folder``.

    Team names come from the file names and are checked by `run_containers`
    (see `check_team_name`), so a badly named archive is reported, not lost.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.
    ValueError
        If it holds no archive.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"submissions folder {folder} does not exist or is not a folder")
    found = []
    for path in sorted(folder.iterdir()):
        for suffix in ARCHIVE_SUFFIXES:
            if path.name.endswith(suffix) and path.is_file():
                found.append(Submission(team=path.name[: -len(suffix)], archive=path))
                break
    if not found:
        raise ValueError(f"submissions folder {folder} holds no image archives ({', '.join(ARCHIVE_SUFFIXES)})")
    return found


def find_cases(inputs_dir: str | Path) -> dict[str, Path]:
    """Case id -> image file, for the images ``<case>_0000.<ext>`` of ``inputs_dir`` (any label-map format)."""
    inputs_dir = Path(inputs_dir)
    if not inputs_dir.is_dir():
        raise FileNotFoundError(f"inputs folder {inputs_dir} does not exist or is not a folder")
    cases: dict[str, Path] = {}
    for path in sorted(inputs_dir.iterdir()):
        stem = case_id(path)
        if stem is not None and stem.endswith(_CHANNEL) and len(stem) > len(_CHANNEL) and path.is_file():
            case = stem[: -len(_CHANNEL)]
            if case in cases:
                raise ValueError(f"inputs folder {inputs_dir} holds case {case!r} twice: {cases[case].name} and "
                                 f"{path.name}")
            cases[case] = path
    if not cases:
        raise ValueError(f"inputs folder {inputs_dir} holds no images named <case>{_CHANNEL}.nii.gz (or .mha, ...)")
    return cases


def _named_submissions(submissions: list[Submission]) -> tuple[list[Submission], list[str]]:
    """The submissions whose team names can name a folder, and a message for each of the others."""
    kept, rejected, seen = [], [], set()
    for submission in submissions:
        source = submission.archive or submission.image
        try:
            check_team_name(submission.team)
        except ValueError as exc:
            rejected.append(f"{source}: {exc}")
            continue
        if submission.team in seen:
            rejected.append(f"{source}: team {submission.team!r} appears twice")
            continue
        seen.add(submission.team)
        kept.append(submission)
    for message in rejected:
        warnings.warn(f"{message}; this submission is not run", HarnessWarning, stacklevel=3)
    return kept, rejected


@dataclass(frozen=True)
class _Identity:
    """The image a submission runs: its ID, and what its archive's manifest says."""

    image_id: str
    archive: ArchiveInfo | None = None


def _identify(engine, submission: Submission) -> _Identity | InvalidSubmissionError:
    """The submission's image ID, from its archive's manifest (nothing loaded yet) or from the engine."""
    import docker

    if submission.archive is not None:
        try:
            info = inspect_archive(submission.archive)
        except InvalidSubmissionError as exc:
            return exc
        return _Identity(info.image_id, info)
    try:
        return _Identity(engine.images.get(submission.image).id)
    except docker.errors.ImageNotFound:
        return InvalidSubmissionError(f"image {submission.image!r} is not loaded on the engine")
    except docker.errors.APIError as exc:
        return InvalidSubmissionError(f"image {submission.image!r}: {exc}")


def _load_submission(engine, submission: Submission, manifest: ArchiveInfo | None = None
                     ) -> str | InvalidSubmissionError | EngineUnreachable:
    """The image ID to run; an archive is loaded now (its tags are never trusted, see `load_image_archive`).

    What the engine refuses for this archive is the team's `InvalidSubmissionError`; an engine that stops
    answering meanwhile is `EngineUnreachable`, the engine's failure.

    ``manifest``, read when the submissions were checked, spares a second pass
    over the archive; an archive replaced since then loads another image,
    which `load_image_archive` refuses.
    """
    import docker
    import requests

    if submission.archive is None:
        return submission.image_id
    try:
        return load_image_archive(engine, submission.archive, manifest, team=submission.team)
    except _engine_unreachable_errors() as exc:
        return EngineUnreachable(f"the engine stopped answering while loading {submission.archive} ({exc})")
    except (InvalidSubmissionError, docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        error = exc if isinstance(exc, InvalidSubmissionError) else InvalidSubmissionError(
            f"{submission.archive}: the engine failed while loading it ({exc})")
        warnings.warn(f"team {submission.team}: invalid submission, not run: {error}", HarnessWarning, stacklevel=3)
        return error

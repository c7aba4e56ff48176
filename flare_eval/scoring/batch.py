"""Many cases: folders of predictions (one team's or many teams') scored in bounded workers, and ``score``.

Cases are independent tasks run by :func:`flare_eval.execution.run_tasks` in
local worker processes or on a Dask cluster; each finished case reaches the
caller at once (``on_case``), which is how `score` writes its partial table
and resumes an interrupted run.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._text import preview, progress_bar
from .._version import __version__
from ..errors import FlareEvalWarning
from ..io import (
    CasePair,
    append_rows,
    case_id,
    check_team_name,
    drop_torn_tail,
    hold_folder,
    pair_cases,
    read_table,
    write_settings,
    write_table,
)
from ..protocol import Protocol, load_protocol
from .case import _score_case_from_bytes, _score_case_task, _with_bytes, _worker_died
from .prediction import _Options
from .tables import official_table, score_columns, sort_keys, summarize_scores

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["score_folder", "score_teams", "team_folders", "score", "ScoreFiles"]


def _pandas():
    """pandas, imported on first use: about a third of a ``score`` command's start-up, so `_score_many` has it
    loaded while the workers score the first cases (which never need it)."""
    import pandas

    return pandas


def _refuse_folder_of_teams(pred_dir: Path) -> None:
    """A predictions folder that holds no label maps, only folders that do, is a folder of teams."""
    if not pred_dir.is_dir() or any(case_id(p) is not None for p in pred_dir.iterdir() if p.is_file()):
        return
    teams = sorted(p.name for p in pred_dir.iterdir()
                   if p.is_dir() and any(case_id(f) is not None for f in p.iterdir() if f.is_file()))
    if teams:
        raise ValueError(f"predictions folder {pred_dir} holds no label maps, but {len(teams)} folder(s) of them "
                         f"({preview(teams)}): did you mean --teams (one folder of predictions per team)?")


def _team_pairs(pred_dir: Path, gt_dir: Path, team: str | None) -> list[CasePair]:
    pairing = pair_cases(pred_dir, gt_dir)
    if team is None and pairing.extra_predictions and all(p.pred_path is None for p in pairing.pairs):
        # Not one case in common: the wrong folder (or another naming), not a team's missing predictions.
        raise ValueError(f"no prediction in {pred_dir} has a ground-truth case in {gt_dir}: e.g. prediction "
                         f"{pairing.extra_predictions[0].name!r}, ground truth {pairing.pairs[0].case!r}; check "
                         "the folders (predictions are named <case>.nii.gz or <case>_0000.nii.gz)")
    if pairing.extra_predictions:
        names = ", ".join(p.name for p in pairing.extra_predictions)
        warnings.warn(f"{pred_dir}: prediction files with no ground truth were not scored: {names}",
                      FlareEvalWarning, stacklevel=4)
    return pairing.pairs


def _score_many(
    jobs: list[tuple[str | None, CasePair]],
    protocol: Protocol,
    *,
    workers: int | None,
    options: _Options,
    progress: bool | None,
    on_case,
    scheduler,
    ship: str,
) -> pd.DataFrame:
    from ..execution import SHIP_MODES, connect, prepare_workers, run_tasks, workers_see_files

    if ship not in SHIP_MODES:
        raise ValueError(f"ship must be one of {SHIP_MODES}, got {ship!r}")
    base = score_columns(protocol)
    columns = base if jobs and jobs[0][0] is None else ["team", *base]
    arguments = [(team, pair, protocol, options) for team, pair in jobs]
    client, task, prepare = None, _score_case_task, None
    if scheduler is not None and jobs:
        client = connect(scheduler)
        prepare_workers(client)
        if ship == "auto":
            ship = "paths" if workers_see_files(client, [jobs[0][1].gt_path]) else "bytes"
        if ship == "bytes":
            task, prepare = _score_case_from_bytes, _with_bytes
    local_workers = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    frames = []
    bar = progress_bar(len(jobs), desc="scoring", unit="case", show=progress)
    try:
        for team, rows, messages in run_tasks(task, arguments, workers=local_workers, client=client,
                                              prepare=prepare, on_failure=_worker_died,
                                              limits=protocol.scoring_limits, meanwhile=_pandas):
            pd = _pandas()
            for message in messages:
                warnings.warn(message, FlareEvalWarning, stacklevel=4)
            frame = pd.DataFrame(rows, columns=base)
            if team is not None:
                frame.insert(0, "team", team)
            frames.append(frame)
            if on_case is not None:
                on_case(frame)
            bar.update(1)
    finally:
        bar.close()
        if client is not None and client is not scheduler:
            client.close()
    pd = _pandas()
    if not frames:
        return pd.DataFrame(columns=columns)
    keys = sort_keys(teams=columns != base)
    return pd.concat(frames, ignore_index=True).sort_values(keys, ignore_index=True, kind="stable")


def score_folder(
    pred_dir: str | Path,
    gt_dir: str | Path,
    protocol: str | Protocol = "flare22",
    *,
    workers: int | None = None,
    strict: bool = False,
    progress: bool | None = None,
    on_case: Callable[[pd.DataFrame], None] | None = None,
    skip_cases: Iterable[str] = (),
    scheduler=None,
    ship: str = "auto",
    resample: bool = False,
) -> pd.DataFrame:
    """Score every ground-truth case of a folder against its prediction.

    Parameters
    ----------
    pred_dir, gt_dir : path
        Folders of label maps (``.nii.gz``, ``.nii``, ``.mha``, ``.mhd``,
        ``.nrrd``); see :func:`flare_eval.io.pair_cases` for how files are paired.
    protocol : str or Protocol
        Preset name, JSON path or `Protocol`.
    workers : int, optional
        Local processes scoring cases in parallel (default: all cores). Each
        holds one case in memory at a time.
    strict : bool
        Stop at the first unreadable prediction or grid mismatch instead of
        scoring it 0.
    progress : bool, optional
        Show a progress bar (default: when stderr is a terminal).
    resample : bool
        Resample predictions on another physical grid to the ground truth's
        (nearest neighbour, status ``resampled``) instead of scoring them 0.
        Predictions on the same grid in another orientation are always
        reoriented exactly (status ``reoriented``).
    on_case : callable, optional
        Called as ``on_case(rows_dataframe)`` in the calling process as soon
        as each case is finished (used to write results incrementally).
    skip_cases : iterable of str
        Case ids not to score (e.g. already finished in an earlier run).
    scheduler : str or distributed.Client, optional
        Score on this Dask cluster instead of local processes (needs
        ``flare-eval[dask]``). Results are identical to a local run.
    ship : {"auto", "paths", "bytes"}
        How files reach Dask workers: as paths (shared file system), as bytes,
        or ``auto``: paths when every worker can read the ground truth's files.

    Returns
    -------
    pandas.DataFrame
        One row per case and region, sorted by case, the regions in protocol
        order, with the columns of :func:`flare_eval.scoring.score_columns`
        (FLARE: ``case, label, organ, DSC, NSD, status, gt_voxels,
        pred_voxels, message``).
        Extra prediction files are reported with a `FlareEvalWarning`.

    Raises
    ------
    InvalidLabelMapError
        If a ground-truth file cannot be read.

    Examples
    --------
    >>> from flare_eval import example_paths
    >>> paths = example_paths()
    >>> scores = score_folder(paths.predictions / "teamC", paths.labels, workers=1, progress=False)
    >>> sorted(scores["status"].unique())
    ['missing', 'ok']
    """
    protocol = load_protocol(protocol)
    skip = set(skip_cases)
    _refuse_folder_of_teams(Path(pred_dir))
    jobs = [(None, pair) for pair in _team_pairs(Path(pred_dir), Path(gt_dir), None) if pair.case not in skip]
    return _score_many(jobs, protocol, workers=workers, options=_Options(strict, resample), progress=progress,
                       on_case=on_case, scheduler=scheduler, ship=ship)


def team_folders(pred_root: str | Path) -> list[Path]:
    """The team folders of ``pred_root``: its sub-folders, sorted.

    A folder whose name is not a team name (`flare_eval.io.check_team_name`:
    one starting with ``=`` would be a formula in a spreadsheet) is left out
    with a warning.

    Raises
    ------
    FileNotFoundError
        If ``pred_root`` does not exist.
    ValueError
        If it has no sub-folders.
    """
    pred_root = Path(pred_root)
    if not pred_root.is_dir():
        raise FileNotFoundError(f"predictions folder {pred_root} does not exist or is not a folder")
    folders = []
    for folder in sorted(p for p in pred_root.iterdir() if p.is_dir()):
        try:
            check_team_name(folder.name)
        except ValueError as exc:
            warnings.warn(f"{folder}: left out: {exc}", FlareEvalWarning, stacklevel=2)
            continue
        folders.append(folder)
    if not folders:
        raise ValueError(f"{pred_root} has no team folders (one sub-folder of predictions per team)")
    return folders


def score_teams(
    pred_root: str | Path,
    gt_dir: str | Path,
    protocol: str | Protocol = "flare22",
    *,
    workers: int | None = None,
    strict: bool = False,
    progress: bool | None = None,
    on_case: Callable[[pd.DataFrame], None] | None = None,
    skip: Iterable[tuple[str, str]] = (),
    scheduler=None,
    ship: str = "auto",
    resample: bool = False,
) -> pd.DataFrame:
    """Score several teams at once: ``pred_root/<team>/`` against ``gt_dir``, as one batch of tasks.

    Parameters are those of `score_folder`; ``skip`` holds ``(team, case)``
    pairs already scored.

    Returns
    -------
    pandas.DataFrame
        As `score_folder`, with ``team`` as the first column.
    """
    protocol = load_protocol(protocol)
    done = set(skip)
    jobs = [(folder.name, pair) for folder in team_folders(pred_root)
            for pair in _team_pairs(folder, Path(gt_dir), folder.name) if (folder.name, pair.case) not in done]
    if not jobs:
        return _pandas().DataFrame(columns=["team", *score_columns(protocol)])
    return _score_many(jobs, protocol, workers=workers, options=_Options(strict, resample), progress=progress,
                       on_case=on_case, scheduler=scheduler, ship=ship)


@dataclass(frozen=True)
class ScoreFiles:
    """Files written by `score`."""

    scores: Path
    official: Path
    summary: Path


def score(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out_dir: str | Path,
    protocol: str | Protocol = "flare22",
    *,
    teams: bool = False,
    workers: int | None = None,
    strict: bool = False,
    progress: bool | None = None,
    force: bool = False,
    scheduler=None,
    ship: str = "auto",
    resample: bool = False,
) -> tuple[pd.DataFrame, ScoreFiles]:
    """Score a folder and write the result tables; resumes an interrupted run.

    Writes ``out_dir/scores.csv`` (long, unrounded), ``out_dir/scores_official.csv``
    (the official wide layout, 4 decimals) and ``out_dir/summary.csv`` (see
    `summarize_scores`), and ``out_dir/settings.json`` (the protocol, its
    scoring limits, the options and the version). While it runs, each finished case is appended to
    ``out_dir/scores.partial.csv``; a later call finds the cases there and does
    not score them again (unless ``force``), so an interrupted run loses at
    most the cases in flight.

    Parameters
    ----------
    pred_dir, gt_dir, out_dir : path
        Predictions, ground truth, output folder.
    protocol, workers, strict, progress, scheduler, ship, resample
        As for `score_folder`.
    teams : bool
        ``pred_dir`` holds one folder of predictions per team (see
        `score_teams`); the tables then start with a ``team`` column.
    force : bool
        Score every case again, ignoring an interrupted run's partial results.

    Returns
    -------
    scores : pandas.DataFrame
        As returned by `score_folder` (or `score_teams`).
    files : ScoreFiles
        Paths of the written tables.

    Raises
    ------
    FolderInUseError
        If another command is writing ``out_dir`` (see `flare_eval.io.hold_folder`).
    ValueError
        With ``teams``, if ``out_dir`` is a folder of ``pred_dir`` (it would be a team).
    """
    protocol = load_protocol(protocol)
    out_dir = Path(out_dir)
    if teams and out_dir.resolve().parent == Path(pred_dir).resolve():
        raise ValueError(f"output folder {out_dir} is a folder of {pred_dir}, whose folders are the teams: it would "
                         "be scored as a team with no predictions; write the outputs elsewhere")
    with hold_folder(out_dir, "score"):
        partial = out_dir / "scores.partial.csv"
        if force:
            partial.unlink(missing_ok=True)
        done = _finished_rows(partial, protocol, teams=teams) if partial.exists() else None
        common = dict(workers=workers, strict=strict, progress=progress, scheduler=scheduler, ship=ship,
                      resample=resample, on_case=lambda rows: append_rows(rows, partial))
        if teams:
            finished = set() if done is None else set(zip(done["team"], done["case"]))
            new = score_teams(pred_dir, gt_dir, protocol, skip=finished, **common)
        else:
            new = score_folder(pred_dir, gt_dir, protocol, skip_cases=set() if done is None else set(done["case"]),
                               **common)
        pd = _pandas()
        frames = [frame for frame in (done, new) if frame is not None and len(frame)]
        scores = pd.concat(frames, ignore_index=True) if frames else new
        scores = scores.sort_values(sort_keys(teams=teams), ignore_index=True, kind="stable")
        files = ScoreFiles(
            scores=write_table(scores, out_dir / "scores.csv"),
            official=write_table(official_table(scores, protocol), out_dir / "scores_official.csv"),
            summary=write_table(summarize_scores(scores, protocol), out_dir / "summary.csv"),
        )
        write_settings({**protocol.record(), "predictions": str(pred_dir),
                        "ground_truth": str(gt_dir), "teams": teams, "strict": strict, "resample": resample,
                        "scoring_limits": asdict(protocol.scoring_limits), "flare_eval_version": __version__},
                       out_dir / "settings.json")
        partial.unlink(missing_ok=True)
        return scores, files


def _finished_rows(partial: Path, protocol: Protocol, *, teams: bool) -> pd.DataFrame:
    """The complete cases of an interrupted run's ``scores.partial.csv`` (a case with some regions is not)."""
    drop_torn_tail(partial)
    done = read_table(partial, role="partial scores")
    done["message"] = done["message"].astype(object).fillna("")
    keys = ["team", "case"] if teams else ["case"]
    complete = done.groupby(keys)["case"].transform("size") == len(protocol.regions)
    return done[complete]

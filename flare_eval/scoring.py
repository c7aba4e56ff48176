"""Scoring predictions against ground truth: one case, one folder, many teams.

The policy for edge cases, in one place (FLARE22 official behaviour unless noted):

===============================  =====================  ==========================
situation (per organ)            DSC                    NSD
===============================  =====================  ==========================
GT empty, prediction empty       ``both_empty_score``   ``both_empty_score`` (1)
GT empty, prediction present     0                      0
GT present, prediction empty     0                      0
slice-range organ (5, 6, 10)     on the cut arrays      on the cut arrays
GT of such an organ on 1 slice   on that slice          on that slice (official
                                                        script crashes)
prediction file missing          0, status ``missing``  0
prediction on the same physical  scored after exact     scored; status
grid, other orientation          reorientation          ``reoriented``
prediction on another grid       0, status              0 (with ``resample``:
                                 ``geometry_mismatch``  nearest neighbour,
                                                        ``resampled``)
prediction unreadable/invalid    0, status              0
(a link, detached data, ...)     ``invalid_prediction``
scoring beyond the protocol's    0, status              0
``scoring_limits``               ``time_limit`` or
                                 ``memory_limit``
header claims another voxel      0, status              0; the data is never
count than the GT (a bomb)       ``geometry_mismatch``  read (with ``resample``:
                                                        read up to
                                                        `MAX_RESAMPLE_BYTES`,
                                                        else
                                                        ``invalid_prediction``)
label value not in protocol      treated as background, with a warning
===============================  =====================  ==========================
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics
from ._text import preview
from ._version import __version__
from .errors import (
    SCORED_STATUSES,
    STATUS_GEOMETRY_MISMATCH,
    STATUS_INVALID_PREDICTION,
    STATUS_MEMORY_LIMIT,
    STATUS_MISSING,
    STATUS_OK,
    STATUS_REORIENTED,
    STATUS_RESAMPLED,
    STATUS_TIME_LIMIT,
    FlareEvalWarning,
)
from .io import (
    CasePair,
    InvalidLabelMapError,
    LabelMap,
    append_rows,
    case_id,
    check_team_name,
    drop_torn_tail,
    pair_cases,
    read_header,
    read_label_map,
    read_table,
    write_settings,
    write_table,
)
from .protocol import Protocol, load_protocol

__all__ = [
    "OrganScore",
    "FlareEvalWarning",
    "score_case",
    "score_label_maps",
    "score_folder",
    "summarize_scores",
    "official_table",
    "score",
    "score_teams",
    "team_folders",
    "ScoreFiles",
    "STATUS_OK",
    "STATUS_REORIENTED",
    "STATUS_RESAMPLED",
    "SCORED_STATUSES",
    "STATUS_MISSING",
    "STATUS_GEOMETRY_MISMATCH",
    "STATUS_INVALID_PREDICTION",
    "STATUS_TIME_LIMIT",
    "STATUS_MEMORY_LIMIT",
    "MAX_RESAMPLE_BYTES",
]


#: Largest prediction (bytes once read) that ``resample`` reads when its grid differs from the ground truth's.
MAX_RESAMPLE_BYTES = 2 * 1024**3

SCORE_COLUMNS = ["case", "label", "organ", "DSC", "NSD", "status", "gt_voxels", "pred_voxels", "message"]


@dataclass(frozen=True)
class OrganScore:
    """DSC and NSD of one organ of one case.

    ``gt_voxels`` and ``pred_voxels`` count the voxels of the organ in the
    evaluated region (after the slice-range cut where it applies).
    """

    label: int
    organ: str
    DSC: float
    NSD: float
    status: str
    gt_voxels: int
    pred_voxels: int
    message: str = ""


def score_label_maps(
    gt: np.ndarray,
    pred: np.ndarray,
    spacing_mm: Sequence[float],
    protocol: str | Protocol = "flare22",
    *,
    superior: tuple[int, int] = (2, 1),
) -> list[OrganScore]:
    """Score every organ of the protocol on two label arrays of the same grid.

    Parameters
    ----------
    gt, pred : (I, J, K) ndarray of integers
        Ground-truth and predicted label maps.
    spacing_mm : sequence of 3 floats
        Voxel size of the ground truth along each array axis, in mm.
    protocol : str or Protocol
        Preset name, JSON path or `Protocol`.
    superior : (int, int)
        The array axis of the superior-inferior direction and +1 if indices
        increase towards superior, else -1 (see
        :func:`flare_eval.geometry.superior_axis`); the slice-range rule cuts
        along it. The default is RAS's third axis, as the official script.

    Returns
    -------
    list of OrganScore
        One per protocol organ, in protocol order.

    Warns
    -----
    FlareEvalWarning
        When a label map holds values that are not protocol labels; they are
        scored as background.
    """
    protocol = load_protocol(protocol)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred must have the same shape, got {gt.shape} and {pred.shape}")
    if gt.ndim != 3:
        raise ValueError(f"label maps must be 3D, got shape {gt.shape}")
    spacing = metrics._check_spacing(spacing_mm, 3)
    for name, labels in (("ground truth", gt), ("prediction", pred)):
        unknown = metrics._labels_outside(labels, protocol.labels)
        if unknown:
            warnings.warn(
                f"{name} holds values {unknown} that are not labels of protocol {protocol.name!r}; "
                "they are scored as background",
                FlareEvalWarning,
                stacklevel=2,
            )
    if superior[0] not in (0, 1, 2) or superior[1] not in (1, -1):
        raise ValueError(f"superior must be (axis in 0..2, +1 or -1), got {superior}")
    # One pass over each volume finds every organ's bounding box; all later work is on crops.
    gt_boxes, pred_boxes = _label_boxes(gt, protocol.labels), _label_boxes(pred, protocol.labels)
    return [_score_organ(gt, pred, organ.label, organ.code, organ.tolerance_mm, spacing, protocol, superior,
                         gt_boxes[organ.label], pred_boxes[organ.label])
            for organ in protocol.organs]


def _label_boxes(labels: np.ndarray, wanted: Sequence[int]) -> dict[int, tuple[slice, ...] | None]:
    """Bounding box of each wanted label (None where absent), from one pass over the array.

    Values above the largest wanted label, or below 1, are ignored, so a
    stray huge value allocates nothing.
    """
    from scipy import ndimage

    if labels.dtype.kind not in "iu" or labels.dtype.itemsize > 8:
        labels = labels.astype(np.int64)
    if labels.dtype == np.uint64:
        # find_objects works on signed integers; values beyond int64 are not labels anyway.
        labels = np.where(labels > np.iinfo(np.int64).max, 0, labels).astype(np.int64)
    if labels.flags.f_contiguous and not labels.flags.c_contiguous:
        # NIfTI arrays are Fortran-ordered: scanning the C-ordered transpose is five times faster.
        found = [None if box is None else box[::-1] for box in ndimage.find_objects(labels.T, max_label=max(wanted))]
    else:
        found = ndimage.find_objects(labels, max_label=max(wanted))
    return {label: found[label - 1] for label in wanted}


def _restrict_box(labels: np.ndarray, box: tuple[slice, ...] | None, axis: int, cut: slice,
                  label: int) -> tuple[slice, ...] | None:
    """The bounding box of ``label`` within ``box`` once indices along ``axis`` are limited to ``cut``."""
    if box is None:
        return None
    start, stop = max(box[axis].start, cut.start), min(box[axis].stop, cut.stop)
    if start >= stop:
        return None
    limited = list(box)
    limited[axis] = slice(start, stop)
    inner = metrics._mask_box(labels[tuple(limited)] == label)
    if inner is None:
        return None
    return tuple(slice(outer.start + part.start, outer.start + part.stop) for outer, part in zip(limited, inner))


def _score_organ(
    gt: np.ndarray,
    pred: np.ndarray,
    label: int,
    code: str,
    tolerance_mm: float,
    spacing: np.ndarray,
    protocol: Protocol,
    superior: tuple[int, int],
    gt_box: tuple[slice, ...] | None,
    pred_box: tuple[slice, ...] | None,
) -> OrganScore:
    if gt_box is None:
        score = protocol.both_empty_score if pred_box is None else 0.0
        pred_vx = 0 if pred_box is None else int(np.count_nonzero(pred[pred_box] == label))
        return OrganScore(label, code, score, score, STATUS_OK, 0, pred_vx)

    if protocol.slice_range_applies(label):
        axis, direction = superior
        first, stop = gt_box[axis].start, gt_box[axis].stop
        if protocol.slice_range.mode == "half_open" and stop - first > 1:
            # The official [z_min, z_max) on RAS images drops the most superior labelled slice.
            if direction > 0:
                stop -= 1
            else:
                first += 1
        gt_box = _restrict_box(gt, gt_box, axis, slice(first, stop), label)
        pred_box = _restrict_box(pred, pred_box, axis, slice(first, stop), label)

    box = metrics._union_of_boxes(gt_box, pred_box)
    gt_mask = gt[box] == label
    pred_mask = pred[box] == label
    gt_vx = int(np.count_nonzero(gt_mask))
    pred_vx = int(np.count_nonzero(pred_mask))
    dsc = metrics._dice_from_counts(int(np.count_nonzero(gt_mask & pred_mask)), gt_vx, pred_vx)
    if pred_vx == 0:
        nsd = 0.0
    else:
        nsd = metrics._surface_distances_of_crops(
            gt_mask, pred_mask, spacing, max_distance_mm=tolerance_mm
        ).surface_dice(tolerance_mm)
    return OrganScore(label, code, float(dsc), float(nsd), STATUS_OK, gt_vx, pred_vx)


def _failed_case(protocol: Protocol, status: str, message: str) -> list[OrganScore]:
    return [OrganScore(o.label, o.code, 0.0, 0.0, status, 0, 0, message) for o in protocol.organs]


def score_case(
    pred: str | Path | np.ndarray | LabelMap | None,
    gt: str | Path | np.ndarray | LabelMap,
    protocol: str | Protocol = "flare22",
    *,
    spacing_mm: Sequence[float] | None = None,
    strict: bool = False,
    resample: bool = False,
) -> pd.DataFrame:
    """Score one case: DSC and NSD of every protocol organ.

    Parameters
    ----------
    pred : path, ndarray, LabelMap or None
        The prediction. None means missing: every organ scores 0 with status
        ``missing``.
    gt : path, ndarray or LabelMap
        The ground truth. Its header gives the spacing.
    protocol : str or Protocol
        Preset name (``flare22``, ...), JSON path or `Protocol`.
    spacing_mm : sequence of 3 floats, optional
        Required when ``gt`` is a bare array (it has no header); not allowed
        otherwise.
    strict : bool
        Raise instead of scoring 0 when the prediction is unreadable or on
        another grid.
    resample : bool
        Resample a prediction on another grid (see `score_folder`).

    Returns
    -------
    pandas.DataFrame
        One row per organ: ``label, organ, DSC, NSD, status, gt_voxels,
        pred_voxels, message``.

    Raises
    ------
    InvalidLabelMapError
        If the ground truth cannot be read (always) or the prediction cannot
        (with ``strict=True``).
    ValueError
        If the grids differ and ``strict=True``, or ``spacing_mm`` is
        missing for an array ground truth.

    Examples
    --------
    >>> gt = np.zeros((10, 10, 10), np.uint8); gt[2:6, 2:6, 2:6] = 1
    >>> pred = gt.copy(); pred[2:6, 2:6, 5] = 0
    >>> row = score_case(pred, gt, spacing_mm=(1, 1, 1)).iloc[0]
    >>> row["organ"], round(float(row["DSC"]), 4), row["status"]
    ('Liver', 0.8571, 'ok')
    """
    protocol = load_protocol(protocol)
    gt_map = _as_label_map(gt, spacing_mm, "gt")
    if protocol.regions:
        rows = _score_region_pair(gt_map, pred, protocol, _Options(strict, resample), spacing_mm=spacing_mm)
        return pd.DataFrame(rows, columns=score_columns(protocol)[1:])
    scores = _score_pair(gt_map, pred, protocol, _Options(strict, resample), spacing_mm=spacing_mm)
    return pd.DataFrame([asdict(s) for s in scores], columns=SCORE_COLUMNS[1:])


def _as_label_map(image: str | Path | np.ndarray | LabelMap, spacing_mm, role: str) -> LabelMap:
    if isinstance(image, LabelMap):
        return image
    if isinstance(image, np.ndarray):
        if spacing_mm is None:
            raise ValueError(f"{role} is a bare array: pass spacing_mm (there is no header to read it from)")
        if not np.issubdtype(image.dtype, np.integer) and image.dtype != bool:
            raise TypeError(f"{role} must hold integer labels, got dtype {image.dtype}")
        spacing = tuple(float(s) for s in metrics._check_spacing(spacing_mm, 3))
        return LabelMap(image, spacing, np.diag([*spacing, 1.0]), None)
    return read_label_map(image)


@dataclass(frozen=True)
class _Options:
    """How predictions that are not plain matches are handled (travels with each task)."""

    strict: bool = False
    resample: bool = False


@dataclass(frozen=True)
class _Prediction:
    """A prediction brought onto the ground truth's grid, or why it could not be (``labels`` None)."""

    labels: np.ndarray | None
    status: str
    message: str
    label_map: LabelMap | None = None


def _load_prediction(
    gt_map: LabelMap, pred, options: _Options, spacing_mm: Sequence[float] | None = None
) -> _Prediction:
    """Check, read and, where the rules allow, reorient or resample a prediction onto the ground truth's grid.

    Raises only with ``options.strict``; otherwise a prediction that cannot be
    used comes back with ``labels`` None and its status and message.
    """
    from .geometry import match_grid, reorient, resample_nearest

    if pred is None:
        return _Prediction(None, STATUS_MISSING, "no prediction file for this case")
    try:
        refused = _refuse_by_header(pred, gt_map, options)
    except InvalidLabelMapError as exc:
        if options.strict:
            raise
        return _Prediction(None, STATUS_INVALID_PREDICTION, str(exc))
    if refused is not None:
        if options.strict:
            raise ValueError(refused[1])
        return _Prediction(None, *refused)
    try:
        pred_map = _as_label_map(pred, spacing_mm if spacing_mm is not None else gt_map.spacing_mm, "pred")
    except InvalidLabelMapError as exc:
        if options.strict:
            raise
        return _Prediction(None, STATUS_INVALID_PREDICTION, str(exc))
    match = match_grid(gt_map.array.shape, gt_map.affine, pred_map.array.shape, pred_map.affine)
    if match.kind == "reoriented":
        return _Prediction(reorient(pred_map.array, match), STATUS_REORIENTED,
                           f"prediction {pred_map.path} {match.description}", pred_map)
    if match.kind == "different":
        problem = f"prediction {pred_map.path} is not on the grid of ground truth {gt_map.path}: {match.description}"
        if not options.resample:
            if options.strict:
                raise ValueError(problem)
            return _Prediction(None, STATUS_GEOMETRY_MISMATCH, problem + " (--resample to resample it)", pred_map)
        labels = resample_nearest(pred_map.array, pred_map.affine, gt_map.array.shape, gt_map.affine)
        return _Prediction(labels, STATUS_RESAMPLED, problem + "; resampled with nearest-neighbour interpolation",
                           pred_map)
    return _Prediction(pred_map.array, STATUS_OK, "", pred_map)


def _score_pair(
    gt_map: LabelMap,
    pred: str | Path | np.ndarray | LabelMap | None,
    protocol: Protocol,
    options: _Options,
    *,
    spacing_mm: Sequence[float] | None = None,
) -> list[OrganScore]:
    from .geometry import superior_axis

    loaded = _load_prediction(gt_map, pred, options, spacing_mm)
    if loaded.labels is None:
        return _failed_case(protocol, loaded.status, loaded.message)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FlareEvalWarning)
        scores = score_label_maps(gt_map.array, loaded.labels, gt_map.spacing_mm, protocol,
                                  superior=superior_axis(gt_map.affine))
    for warning in caught:
        source = gt_map.path if str(warning.message).startswith("ground truth") else loaded.label_map.path
        warnings.warn(f"{source}: {warning.message}", FlareEvalWarning, stacklevel=3)
    if loaded.status != STATUS_OK:
        scores = [replace(s, status=loaded.status, message=loaded.message) for s in scores]
    return scores


def _score_region_pair(
    gt_map: LabelMap,
    pred: str | Path | np.ndarray | LabelMap | None,
    protocol: Protocol,
    options: _Options,
    *,
    spacing_mm: Sequence[float] | None = None,
) -> list[dict]:
    """Rows ``region, <metrics>, status, message`` of a region protocol; an unusable prediction scores as empty."""
    from .regions import score_regions

    loaded = _load_prediction(gt_map, pred, options, spacing_mm)
    labels = loaded.labels if loaded.labels is not None else np.zeros_like(gt_map.array)
    status, message = loaded.status, loaded.message
    if protocol.invalid_labels == "refuse" and loaded.labels is not None:
        outside = metrics._labels_outside(labels, protocol.labels)
        if outside:
            status = STATUS_INVALID_PREDICTION
            message = (f"prediction holds values {preview([str(v) for v in outside])} outside the protocol's labels "
                       f"{sorted({0, *protocol.labels})}; protocol {protocol.name} refuses it (scored as empty)")
            labels = np.zeros_like(gt_map.array)
    spacing = gt_map.spacing_mm
    if protocol.spacing_from == "prediction" and loaded.status == STATUS_OK and loaded.label_map is not None:
        # KiTS, BraTS and autoPET read the spacing from the prediction's header (on this grid, equal to within
        # the grid check's tolerance).
        spacing = loaded.label_map.spacing_mm
    rows = [{**row, "status": status, "message": message} for row in score_regions(gt_map.array, labels, spacing,
                                                                                  protocol)]
    return [_within_range(row, protocol) for row in rows]


def _within_range(row: dict, protocol: Protocol) -> dict:
    """A row whose values all lie in their ranking metric's range; any that does not marks the case invalid.

    No valid prediction can leave a range (Dice in [0, 1]); one that does found a hole in a metric's
    definition (raw values, say), and gets the metric's worst value instead of a rank.
    """
    wrong = [m for m in protocol.ranking_metrics
             if m.name in row and row[m.name] == row[m.name] and not m.contains(float(row[m.name]))]
    if not wrong:
        return row
    found = ", ".join(f"{m.name} = {row[m.name]:g} outside [{m.minimum}, {m.maximum}]" for m in wrong)
    return {**row, **{m.name: m.worst for m in wrong}, "status": STATUS_INVALID_PREDICTION,
            "message": f"{found}: scored the worst value; " + row.get("message", "")}


def score_columns(protocol: Protocol) -> list[str]:
    """Columns of ``scores.csv`` for ``protocol`` (without ``team``)."""
    if protocol.regions:
        return ["case", "region", *protocol.score_columns, "status", "message"]
    return list(SCORE_COLUMNS)


def _refuse_by_header(pred, gt_map: LabelMap, options: _Options) -> tuple[str, str] | None:
    """``(status, message)`` when a prediction file's header alone rules it out, before any data is read.

    A prediction on the ground truth's grid (in any orientation) has as many
    voxels; reading one that claims more would allocate what an untrusted header
    asks for.
    """
    if not isinstance(pred, (str, Path)):
        return None
    header = read_header(pred)
    expected = int(gt_map.array.size)
    if header.n_voxels == expected:
        return None
    problem = (f"prediction {header.path} is not on the grid of ground truth {gt_map.path}: shape "
               f"{header.shape} != {gt_map.array.shape} (from its header; the data was not read)")
    if not options.resample:
        return STATUS_GEOMETRY_MISMATCH, problem + " (--resample to resample it)"
    if header.n_bytes > MAX_RESAMPLE_BYTES:
        return (STATUS_INVALID_PREDICTION, f"{problem}; its {header.n_voxels} voxels of {header.dtype} would take "
                f"{header.n_bytes / 2**30:.1f} GiB, more than the {MAX_RESAMPLE_BYTES / 2**30:g} GiB that "
                "--resample reads")
    return None


def _score_case_task(team: str | None, pair: CasePair, protocol: Protocol, options: _Options):
    """Task: score one case from files; returns ``(team, rows, warning messages)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FlareEvalWarning)
        gt_map = read_label_map(pair.gt_path, follow_link=True)
        _check_ground_truth(gt_map, protocol)
        if protocol.regions:
            rows = [{"case": pair.case, **row} for row in _score_region_pair(gt_map, pair.pred_path, protocol, options)]
        else:
            rows = [{"case": pair.case, **asdict(s)} for s in _score_pair(gt_map, pair.pred_path, protocol, options)]
    return team, rows, [str(w.message) for w in caught]


#: A ground truth with more distinct values outside the protocol's labels than this is not a label map.
_MAX_FOREIGN_VALUES = 32


def _check_ground_truth(gt_map: LabelMap, protocol: Protocol) -> None:
    """Refuse a ground truth that is an image, not a label map (``--labels imagesTs/``, the wrong folder).

    Labels are never negative, and a label map holds a handful of values; a
    CT holds negative values, an MR image thousands of intensities.
    """
    low = int(gt_map.array.min())
    if low < 0:
        raise InvalidLabelMapError(f"{gt_map.path}: holds negative values (down to {low}): an image, not a label "
                                   "map? give the folder of ground-truth label maps")
    foreign = metrics._labels_outside(gt_map.array, protocol.labels)
    if len(foreign) > _MAX_FOREIGN_VALUES:
        raise InvalidLabelMapError(f"{gt_map.path}: holds {len(foreign)} distinct values outside the labels of "
                                   f"protocol {protocol.name} (e.g. {preview([str(v) for v in foreign])}): an "
                                   "image, not a label map? give the folder of ground-truth label maps, or the "
                                   "right --protocol")


def _score_case_from_bytes(team: str | None, pair: CasePair, gt_bytes: bytes, pred_bytes: bytes | None,
                           protocol: Protocol, options: _Options):
    """Task for workers that cannot see the files: the files travel as bytes, named as the originals."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="flare-eval-") as scratch:
        local_gt = Path(scratch) / "gt" / pair.gt_path.name
        local_gt.parent.mkdir()
        local_gt.write_bytes(gt_bytes)
        local_pred = None
        if pred_bytes is not None:
            local_pred = Path(scratch) / "pred" / pair.pred_path.name
            local_pred.parent.mkdir()
            local_pred.write_bytes(pred_bytes)
        try:
            team, rows, messages = _score_case_task(team, CasePair(pair.case, local_gt, local_pred), protocol, options)
        except InvalidLabelMapError as exc:
            raise InvalidLabelMapError(str(exc).replace(str(local_gt), str(pair.gt_path))) from None
    # Messages name the original files, as a local run would.
    replacements = [(str(local_gt), str(pair.gt_path))]
    if local_pred is not None:
        replacements.append((str(local_pred), str(pair.pred_path)))

    def original(text: str) -> str:
        for temporary, source in replacements:
            text = text.replace(temporary, source)
        return text

    for row in rows:
        row["message"] = original(row["message"])
    return team, rows, [original(m) for m in messages]


def _worker_died(arguments: tuple, failure):
    """The result of a case whose scoring exceeded a limit or died: 0 for every organ, the message naming the files."""
    team, pair, protocol = arguments[0], arguments[1], arguments[-2]
    status = {"time": STATUS_TIME_LIMIT, "memory": STATUS_MEMORY_LIMIT}.get(failure.kind, STATUS_INVALID_PREDICTION)
    message = f"scoring {pair.pred_path} against {pair.gt_path} failed: {failure}"
    if protocol.regions:
        rows = [{"case": pair.case, "region": region.name, "status": status, "message": message}
                for region in protocol.regions]
    else:
        rows = [{"case": pair.case, **asdict(s)} for s in _failed_case(protocol, status, message)]
    return team, rows, [f"case {pair.case}: {message}"]


def _with_bytes(arguments: tuple) -> tuple:
    team, pair, protocol, options = arguments
    pred_bytes = pair.pred_path.read_bytes() if pair.pred_path is not None else None
    return team, pair, pair.gt_path.read_bytes(), pred_bytes, protocol, options


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
    from tqdm import tqdm

    from .execution import SHIP_MODES, connect, prepare_workers, run_tasks, workers_see_files

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
    bar = tqdm(total=len(jobs), desc="scoring", unit="case", disable=None if progress is None else not progress)
    try:
        for team, rows, messages in run_tasks(task, arguments, workers=local_workers, client=client,
                                              prepare=prepare, on_failure=_worker_died,
                                              limits=protocol.scoring_limits):
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
    if not frames:
        return pd.DataFrame(columns=columns)
    keys = _sort_keys(protocol, teams=columns != base)
    return pd.concat(frames, ignore_index=True).sort_values(keys, ignore_index=True, kind="stable")


def _sort_keys(protocol: Protocol, *, teams: bool) -> list[str]:
    """Rows sort by team and case, then organ label; a region protocol's regions keep the protocol's order."""
    return ["team"] * teams + ["case"] + ([] if protocol.regions else ["label"])


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
        One row per case and organ, sorted by case then label, with columns
        ``case, label, organ, DSC, NSD, status, gt_voxels, pred_voxels, message``.
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
        return pd.DataFrame(columns=["team", *score_columns(protocol)])
    return _score_many(jobs, protocol, workers=workers, options=_Options(strict, resample), progress=progress,
                       on_case=on_case, scheduler=scheduler, ship=ship)


def summarize_scores(scores: pd.DataFrame, protocol: str | Protocol | None = None) -> pd.DataFrame:
    """Per-organ summary of DSC and NSD over cases (per team when there is a ``team`` column).

    Parameters
    ----------
    scores : pandas.DataFrame
        Long scores as returned by `score_folder` or `score_teams`.
    protocol : str or Protocol, optional
        Needed for a region protocol (KiTS23, BraTS, ...), whose summary is per
        region and metric.

    Returns
    -------
    pandas.DataFrame
        One row per organ plus ``mean`` (the per-case mean over organs), with
        ``n`` and mean, median, Q1 and Q3 of DSC and NSD. For a region protocol:
        one row per region and metric, ``region, metric, n, mean, median, q1,
        q3`` (NaN values, e.g. autoPET's Dice of two empty masks, left out).
    """
    if protocol is not None and load_protocol(protocol).regions:
        return _summarize_regions(scores, load_protocol(protocol))
    teams = ["team"] if "team" in scores else []
    case_means = scores.groupby([*teams, "case"], sort=True)[["DSC", "NSD"]].mean().reset_index()
    case_means = case_means.assign(organ="mean", label=np.iinfo(np.int64).max)
    table = pd.concat([scores[[*teams, "label", "organ", "DSC", "NSD"]], case_means.drop(columns="case")])
    grouped = table.groupby([*teams, "label", "organ"], sort=True)
    out = {"n": grouped["DSC"].count()}
    for metric in ("DSC", "NSD"):
        values = grouped[metric]
        out[f"{metric}_mean"] = values.mean()
        out[f"{metric}_median"] = values.median()
        out[f"{metric}_q1"] = values.quantile(0.25)
        out[f"{metric}_q3"] = values.quantile(0.75)
    # Sorting by label puts each team's organs in protocol order and its mean row last.
    return pd.DataFrame(out).reset_index().drop(columns="label")


def _summarize_regions(scores: pd.DataFrame, protocol: Protocol) -> pd.DataFrame:
    teams = ["team"] if "team" in scores else []
    long = scores.melt(id_vars=[*teams, "case", "region"], value_vars=list(protocol.score_columns),
                       var_name="metric", value_name="value").dropna(subset=["value"])
    long["value"] = long["value"].astype(float)
    order = {region.name: i for i, region in enumerate(protocol.regions)}
    grouped = long.groupby([*teams, "region", "metric"], sort=False)["value"]
    table = pd.DataFrame({"n": grouped.count(), "mean": grouped.mean(), "median": grouped.median(),
                          "q1": grouped.quantile(0.25), "q3": grouped.quantile(0.75)}).reset_index()
    metric_order = {m: i for i, m in enumerate(protocol.score_columns)}
    table = table.assign(_r=table["region"].map(order), _m=table["metric"].map(metric_order))
    return table.sort_values([*teams, "_r", "_m"]).drop(columns=["_r", "_m"]).reset_index(drop=True)


def official_table(scores: pd.DataFrame, protocol: str | Protocol = "flare22") -> pd.DataFrame:
    """Scores in the official FLARE wide layout, rounded to 4 decimals.

    Columns ``Name, <code>_DSC for each organ, <code>_NSD for each organ``;
    ``Name`` is ``<case>.nii.gz``. With several teams a ``Team`` column comes first.
    A region protocol's wide layout has one row per case and a column
    ``<region>_<metric>`` per region and metric, unrounded unless the protocol rounds.
    """
    protocol = load_protocol(protocol)
    if protocol.regions:
        index = ["team", "case"] if "team" in scores else ["case"]
        wide = scores.pivot(index=index, columns="region", values=list(protocol.score_columns))
        table = pd.DataFrame({"Name": wide.index.get_level_values("case")})
        if "team" in scores:
            table.insert(0, "Team", wide.index.get_level_values("team"))
        for region in protocol.regions:
            for metric in region.metrics:
                for column in metric.columns:
                    table[f"{region.name}_{column}"] = wide[(column, region.name)].to_numpy()
        return table
    codes = [o.code for o in protocol.organs]
    index = ["team", "case"] if "team" in scores else ["case"]
    wide = scores.pivot(index=index, columns="organ", values=["DSC", "NSD"])
    table = pd.DataFrame({"Name": [f"{case}.nii.gz" for case in wide.index.get_level_values("case")]})
    if "team" in scores:
        table.insert(0, "Team", wide.index.get_level_values("team"))
    for metric in ("DSC", "NSD"):
        for code in codes:
            table[f"{code}_{metric}"] = wide[(metric, code)].to_numpy().round(4)
    return table


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
    """
    protocol = load_protocol(protocol)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = ["team", "case"] if teams else ["case"]
    partial = out_dir / "scores.partial.csv"
    done = pd.DataFrame(columns=keys[:-1] + score_columns(protocol))
    if partial.exists():
        if force:
            partial.unlink()
        else:
            drop_torn_tail(partial)
            done = read_table(partial, role="partial scores")
            done["message"] = done["message"].astype(object).fillna("")
            # A torn append can leave a case with some of its organs: score it again.
            per_case = len(protocol.regions) or len(protocol.organs)
            complete = done.groupby(keys[:-1] + ["case"])["case"].transform("size") == per_case
            done = done[complete]
    common = dict(workers=workers, strict=strict, progress=progress, scheduler=scheduler, ship=ship,
                  resample=resample, on_case=lambda rows: append_rows(rows, partial))
    if teams:
        new = score_teams(pred_dir, gt_dir, protocol, skip=set(zip(done["team"], done["case"])), **common)
    else:
        new = score_folder(pred_dir, gt_dir, protocol, skip_cases=set(done["case"]), **common)
    frames = [frame for frame in (done, new) if len(frame)]
    scores = pd.concat(frames, ignore_index=True) if frames else new
    scores = scores.sort_values(_sort_keys(protocol, teams=teams), ignore_index=True, kind="stable")
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

"""One case: a prediction scored against its ground truth, in a bounded worker when it comes from files.

The rules for predictions that cannot be scored as they are (missing, on
another grid, holding foreign labels, out of a metric's range) are applied
here, the same for every protocol; the numbers come from
:func:`flare_eval.scoring.engine.score_label_maps`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import metrics
from .._text import preview
from ..errors import STATUS_INVALID_PREDICTION, STATUS_MEMORY_LIMIT, STATUS_OK, STATUS_TIME_LIMIT, FlareEvalWarning
from ..io import CasePair, InvalidLabelMapError, LabelMap, read_label_map
from ..protocol import Protocol, load_protocol
from .engine import score_label_maps
from .prediction import _as_label_map, _load_prediction, _Options
from .tables import score_columns

if TYPE_CHECKING:  # workers return plain rows; only score_case builds a table
    import pandas as pd

__all__ = ["score_case"]


def score_case(
    pred: str | Path | np.ndarray | LabelMap | None,
    gt: str | Path | np.ndarray | LabelMap,
    protocol: str | Protocol = "flare22",
    *,
    spacing_mm: Sequence[float] | None = None,
    strict: bool = False,
    resample: bool = False,
) -> pd.DataFrame:
    """Score one case: every metric of every region of the protocol (FLARE: DSC and NSD of every organ).

    Parameters
    ----------
    pred : path, ndarray, LabelMap or None
        The prediction. None means missing: status ``missing``, scored as the
        protocol's ``unusable_prediction`` rule says (FLARE: every organ 0).
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
        One row per region: the columns of `score_columns` but ``case`` (FLARE:
        ``label, organ, DSC, NSD, status, gt_voxels, pred_voxels, message``).

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
    import pandas as pd

    protocol = load_protocol(protocol)
    gt_map = _as_label_map(gt, spacing_mm, "gt")
    rows = _score_pair(gt_map, pred, protocol, _Options(strict, resample), spacing_mm=spacing_mm)
    return pd.DataFrame(rows, columns=score_columns(protocol)[1:])


def _score_pair(
    gt_map: LabelMap,
    pred: str | Path | np.ndarray | LabelMap | None,
    protocol: Protocol,
    options: _Options,
    *,
    spacing_mm: Sequence[float] | None = None,
) -> list[dict]:
    """Rows of one case without ``case``: the region keys, the metrics, ``status`` and ``message``."""
    from ..geometry import superior_axis

    loaded = _load_prediction(gt_map, pred, options, spacing_mm)
    if loaded.labels is None and protocol.unusable_prediction == "zero":
        return _unscored_rows(protocol, loaded.status, loaded.message)
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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FlareEvalWarning)
        rows = score_label_maps(gt_map.array, labels, spacing, protocol, superior=superior_axis(gt_map.affine))
    for warning in caught:
        source = gt_map.path if str(warning.message).startswith("ground truth") else getattr(
            loaded.label_map, "path", None)
        warnings.warn(f"{source}: {warning.message}" if source is not None else str(warning.message),
                      FlareEvalWarning, stacklevel=3)
    return [_within_range({**row, "status": status, "message": message}, protocol) for row in rows]


def _unscored_rows(protocol: Protocol, status: str, message: str, *, values: bool = True) -> list[dict]:
    """Rows of a case that could not be scored: every metric's unscored value (with ``values``), else none."""
    rows = []
    for region in protocol.regions:
        row = protocol.layout.keys(region)
        if values:
            for metric in region.metrics:
                row.update(metric.unscored())
        rows.append({**row, "status": status, "message": message})
    return rows


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


def _score_case_task(team: str | None, pair: CasePair, protocol: Protocol, options: _Options):
    """Task: score one case from files; returns ``(team, rows, warning messages)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FlareEvalWarning)
        gt_map = read_label_map(pair.gt_path, follow_link=True)
        _check_ground_truth(gt_map, protocol)
        rows = [{"case": pair.case, **row} for row in _score_pair(gt_map, pair.pred_path, protocol, options)]
    return team, rows, [str(w.message) for w in caught]


#: A ground truth with more distinct values outside the protocol's labels than this is not a label map.
_MAX_FOREIGN_VALUES = 32


def _check_ground_truth(gt_map: LabelMap, protocol: Protocol) -> None:
    """Refuse a ground truth that is an image, not a label map (``--labels imagesTs/``, the wrong folder).

    Labels are never negative, and a label map holds a handful of values; a
    CT holds negative values, an MR image thousands of intensities.
    """
    foreign = metrics._labels_outside(gt_map.array, protocol.labels)  # sorted: negative values first
    if foreign and foreign[0] < 0:
        raise InvalidLabelMapError(f"{gt_map.path}: holds negative values (down to {foreign[0]}): an image, not a "
                                   "label map? give the folder of ground-truth label maps")
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
    """The result of a case whose scoring exceeded a limit or died, the message naming the files.

    Under ``unusable_prediction = "zero"`` (FLARE) every metric is 0; otherwise the values are left empty (the
    case could not be scored) and the ranking gives them the worst value.
    """
    team, pair, protocol = arguments[0], arguments[1], arguments[-2]
    status = {"time": STATUS_TIME_LIMIT, "memory": STATUS_MEMORY_LIMIT}.get(failure.kind, STATUS_INVALID_PREDICTION)
    message = f"scoring {pair.pred_path} against {pair.gt_path} failed: {failure}"
    rows = [{"case": pair.case, **row} for row in _unscored_rows(
        protocol, status, message, values=protocol.unusable_prediction == "zero")]
    return team, rows, [f"case {pair.case}: {message}"]


def _with_bytes(arguments: tuple) -> tuple:
    team, pair, protocol, options = arguments
    pred_bytes = pair.pred_path.read_bytes() if pair.pred_path is not None else None
    return team, pair, pair.gt_path.read_bytes(), pred_bytes, protocol, options

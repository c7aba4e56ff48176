"""Evaluation protocols: which labels are scored, how, and how teams are ranked.

A protocol is configuration as data. Each challenge edition is a JSON file in
``tolerances/`` (shipped inside the package as ``flare_eval/tolerances``); a
user's own file with the same schema works everywhere a preset name does.

The schema (all lengths in millimetres)::

    {
      "name": "flare22",
      "description": "...",
      "organs": [{"label": 1, "code": "Liver", "name": "liver", "tolerance_mm": 5}, ...],
      "slice_range": {"labels": [5, 6, 10], "mode": "half_open"} or null,
      "both_empty_score": 1.0,
      "ranking": {"metrics": [{"name": "DSC", "higher_is_better": true,
                               "weight": 1.0, "worst": 0.0,
                               "minimum": 0.0, "maximum": 1.0}, ...],
                  "tie_method": "min"},
      "resources": {"gpu_allowance_mib": 2048, "time_limit_s": 3600,
                    "gpu_memory": "container", "max_consecutive_failures": null},
      "scoring_limits": {"time_s": 600, "memory_mib": 8192},
      "container": {"input_mount": "/workspace/inputs", "output_mount": "/workspace/outputs",
                    "command": ["/bin/bash", "-c", "sh predict.sh"],
                    "input_name": "{case}_0000.nii.gz", "output_name": "{case}.nii.gz"}
    }

A file may start from another protocol with ``"extends": "flare22"`` (a preset
name or a path relative to the file) and give only the fields that differ; each
top-level field it gives replaces the base's.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .execution import TaskLimits

__all__ = [
    "ContainerInterface",
    "Organ",
    "SliceRangeRule",
    "RankingMetric",
    "Protocol",
    "load_protocol",
    "available_protocols",
    "SLICE_RANGE_MODES",
]

#: ``half_open`` is what the official FLARE22 script did (the last ground-truth
#: slice is cut away); ``inclusive`` keeps every ground-truth slice.
SLICE_RANGE_MODES = ("half_open", "inclusive")
TIE_METHODS = ("min",)
#: ``resources.gpu_memory``: the container's own GPU memory (default), or the whole device's used memory
#: with no baseline, as the official FLARE script read it (idle driver memory included).
GPU_MEMORY_READINGS = ("container", "device_total")


@dataclass(frozen=True)
class Organ:
    """One scored structure.

    Attributes
    ----------
    label : int
        Value of the structure in the label maps.
    code : str
        Short name used in the official wide CSV (``Liver``, ``RK``, ...).
    name : str
        Human-readable name.
    tolerance_mm : float
        NSD tolerance in millimetres.
    """

    label: int
    code: str
    name: str
    tolerance_mm: float


@dataclass(frozen=True)
class SliceRangeRule:
    """Evaluate some organs only on the ground truth's slice range.

    Both masks are cut to the ground truth's labelled slices along its
    superior-inferior axis (whichever array axis that is, from the header; the
    third axis for RAS NIfTI, as in the official script) before DSC and NSD are
    computed. With ``mode="half_open"`` the cut is ``[z_min, z_max)`` as in the
    official FLARE22 script, which drops the most superior labelled slice;
    ``mode="inclusive"`` keeps it. When the ground truth lies on a single
    slice the half-open cut would be empty (the official script crashes
    there); that one slice is evaluated instead.
    """

    labels: tuple[int, ...]
    mode: str


#: Kinds of region metrics (see `RegionMetric`) and the columns each writes.
METRIC_KINDS = ("dice", "dice_raw", "surface_dice", "hausdorff", "brats_lesion_wise", "false_volumes")
LESION_WISE_COLUMNS = ("LesionWise_Dice", "LesionWise_HD95", "Legacy_Dice", "Legacy_HD95", "Num_TP", "Num_FP",
                       "Num_FN", "Sensitivity", "Specificity", "GT_Complete_Volume")
FALSE_VOLUME_COLUMNS = ("FP_volume_ml", "FN_volume_ml")
SPACING_SOURCES = ("ground_truth", "prediction")
#: ``rank_then_aggregate``: FLARE's; ``aggregate_then_rank``: KiTS23's (rank each metric's mean over cases,
#: average the ranks, rank again, ties broken by ``tie_break``'s mean).
RANKING_SCHEMES = ("rank_then_aggregate", "aggregate_then_rank")
#: A prediction holding a value outside the protocol's labels: ``ignore`` (background, with a warning),
#: ``zero_scores`` (FLARE24: DSC = NSD = 0), ``refuse`` (status ``invalid_prediction``, scored as empty; for
#: metrics on raw values, where another value would inflate the score).
INVALID_LABEL_RULES = ("ignore", "zero_scores", "refuse")


@dataclass(frozen=True)
class RegionMetric:
    """One metric of a region, with the parameters and empty-mask rules of a challenge.

    Attributes
    ----------
    kind : str
        ``dice``; ``dice_raw`` (autoPET: ``2 sum(g p) / (sum g + sum p)`` on the
        raw label values); ``surface_dice`` (DeepMind NSD at ``tolerance_mm``);
        ``hausdorff`` (DeepMind robust Hausdorff at ``percentile``);
        ``brats_lesion_wise`` (see :func:`flare_eval.lesions.brats_lesion_wise`;
        writes `LESION_WISE_COLUMNS`); ``false_volumes`` (autoPET, writes
        `FALSE_VOLUME_COLUMNS`).
    name : str
        Column name (for the kinds that write one column).
    both_empty, one_empty : float or None
        Value when ground truth and prediction are both empty, or exactly one
        is (None: NaN; for ``hausdorff`` one empty may be a penalty in mm).
    tolerance_mm, percentile : float or None
        Of ``surface_dice`` and ``hausdorff``.
    zero_below_dice : float or None
        FLARE24's rule: this metric is 0 when the region's Dice is below it.
    dilation_iterations, min_lesion_mm3, penalty_mm : optional
        BraTS lesion matching.
    connectivity : int or None
        Of ``false_volumes`` components (autoPET: 18).
    """

    kind: str
    name: str
    both_empty: float | None = 1.0
    one_empty: float | None = 0.0
    tolerance_mm: float | None = None
    percentile: float | None = None
    zero_below_dice: float | None = None
    dilation_iterations: int | None = None
    min_lesion_mm3: float | None = None
    penalty_mm: float | None = None
    connectivity: int | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """The score columns this metric writes."""
        if self.kind == "brats_lesion_wise":
            return LESION_WISE_COLUMNS
        if self.kind == "false_volumes":
            return FALSE_VOLUME_COLUMNS
        return (self.name,)


@dataclass(frozen=True)
class Region:
    """A scored region: the union of some labels, and its metrics."""

    name: str
    labels: tuple[int, ...]
    metrics: tuple[RegionMetric, ...]


@dataclass(frozen=True)
class RankingMetric:
    """One metric of the ranking scheme.

    Attributes
    ----------
    name : str
        Column name in ``results.csv`` (``DSC``, ``NSD``, ``Time``, ...).
    higher_is_better : bool
        Direction of the metric.
    weight : float
        Weight of the metric's ranks in the final score.
    worst : float
        Value given to a team that has no valid value for a case.
    minimum, maximum : float or None
        The metric's valid range, bounds included (None: unbounded). A value
        outside it is an error, never ranked: DSC and NSD lie in [0, 1],
        times and AUCs are at least 0.
    region : str or None
        Of a region protocol: the region whose value of ``score_column`` this
        metric ranks (BraTS ranks each region's lesion-wise Dice on its own).
        None: the case's mean over the regions that have ``score_column``.
    score_column : str or None
        The column of ``scores.csv`` the metric is made from (default: ``name``).
    """

    name: str
    higher_is_better: bool
    weight: float
    worst: float
    minimum: float | None = None
    maximum: float | None = None
    region: str | None = None
    score_column: str | None = None

    @property
    def source(self) -> str:
        """The ``scores.csv`` column this metric is made from."""
        return self.score_column or self.name

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the metric's valid range."""
        return (self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)


@dataclass(frozen=True)
class ContainerInterface:
    """How a submitted container is called: mount points, command, file names and formats.

    Attributes
    ----------
    input_mount, output_mount : str
        Folders inside the container: the case's image is mounted read-only in
        the first; the prediction is expected in the second.
    command : tuple of str or None
        Command to run; None runs the image's own entry point and command.
    input_name : str
        Name of the image inside ``input_mount``, with ``{case}``; its
        extension sets the format (the harness converts when the source differs).
    output_name : str
        Name of the expected prediction, with ``{case}``, or a pattern such as
        ``*.mha`` when the container chooses the name (exactly one file must
        match); its extension is the prediction's format.

    The FLARE22 defaults: ``/workspace/inputs``, ``/workspace/outputs``,
    ``/bin/bash -c "sh predict.sh"``, ``<case>_0000.nii.gz`` -> ``<case>.nii.gz``.
    """

    input_mount: str = "/workspace/inputs"
    output_mount: str = "/workspace/outputs"
    command: tuple[str, ...] | None = ("/bin/bash", "-c", "sh predict.sh")
    input_name: str = "{case}_0000.nii.gz"
    output_name: str = "{case}.nii.gz"

    def prediction_name(self, case: str) -> str:
        """File name under which a case's prediction is kept: ``<case>`` plus the output's extension."""
        from .io import case_id

        pattern = self.output_name.replace("{case}", case)
        stem = case_id(Path(pattern))
        return f"{case}{pattern[len(stem):]}" if stem is not None else pattern


@dataclass(frozen=True)
class Protocol:
    """A complete evaluation protocol; see the module docstring for the file schema."""

    name: str
    description: str
    organs: tuple[Organ, ...]
    slice_range: SliceRangeRule | None
    both_empty_score: float
    ranking_metrics: tuple[RankingMetric, ...]
    tie_method: str
    gpu_allowance_mib: float
    time_limit_s: float
    source: str
    container: ContainerInterface = ContainerInterface()
    gpu_memory: str = "container"
    regions: tuple[Region, ...] = ()
    spacing_from: str = "ground_truth"
    invalid_labels: str = "ignore"
    rounding: int | None = None
    ranking_scheme: str = "rank_then_aggregate"
    tie_break: str | None = None
    scoring_limits: TaskLimits = TaskLimits()
    max_consecutive_failures: int | None = None
    #: The protocol's fields as loaded (``extends`` resolved): what every output folder's settings.json records,
    #: so that a later step reads the very protocol a folder was made with (`load_protocol` takes it back).
    definition: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def score_columns(self) -> tuple[str, ...]:
        """Metric columns of ``scores.csv``: ``DSC, NSD`` for organ protocols, else those of the regions' metrics."""
        if not self.regions:
            return ("DSC", "NSD")
        columns: list[str] = []
        for region in self.regions:
            for metric in region.metrics:
                columns.extend(c for c in metric.columns if c not in columns)
        return tuple(columns)

    @property
    def labels(self) -> tuple[int, ...]:
        """Labels of the scored organs, in protocol order (of a region protocol: every region's labels, sorted)."""
        if self.regions:
            return tuple(sorted({label for region in self.regions for label in region.labels}))
        return tuple(organ.label for organ in self.organs)

    def organ(self, label: int) -> Organ:
        """Return the organ with the given label value."""
        for organ in self.organs:
            if organ.label == label:
                return organ
        raise KeyError(f"label {label} is not part of protocol {self.name!r}; labels: {self.labels}")

    def tie_break_parts(self) -> tuple[str, str] | None:
        """``(score column, region)`` of the tie-break column ``<column>_<region>`` (KiTS23: Dice, tumor).

        The region is found among the protocol's regions by name, so a region
        whose name holds ``_`` (``kidney_and_mass``) can be the tie-break's.
        """
        if not self.tie_break:
            return None
        for region in sorted(self.regions, key=lambda r: -len(r.name)):
            column = self.tie_break[: -len(region.name) - 1]
            if self.tie_break.endswith("_" + region.name) and column in self.score_columns:
                return column, region.name
        raise ValueError(f"protocol {self.name!r}: tie_break {self.tie_break!r} is not <score column>_<region> for "
                         f"any of the regions {[r.name for r in self.regions]}")

    def slice_range_applies(self, label: int) -> bool:
        """Whether ``label`` is evaluated only on the ground truth's slice range."""
        return self.slice_range is not None and label in self.slice_range.labels

    def with_slice_range_mode(self, mode: str) -> Protocol:
        """Return a copy whose slice-range rule uses ``mode`` (see `SLICE_RANGE_MODES`)."""
        if mode not in SLICE_RANGE_MODES:
            raise ValueError(f"slice range mode must be one of {SLICE_RANGE_MODES}, got {mode!r}")
        if self.slice_range is None:
            return self
        definition = copy.deepcopy(self.definition)
        if isinstance(definition.get("slice_range"), dict):
            definition["slice_range"]["mode"] = mode
        return replace(self, slice_range=replace(self.slice_range, mode=mode), definition=definition)

    def __repr__(self) -> str:
        scored = f"regions={len(self.regions)}" if self.regions else f"organs={len(self.organs)}"
        return f"Protocol(name={self.name!r}, {scored}, slice_range={self.slice_range}, source={self.source!r})"

    def record(self) -> dict:
        """What an output folder's settings.json records of this protocol: name, source and full definition."""
        return {"protocol": self.name, "protocol_source": self.source, "protocol_definition": self.definition}


def available_protocols() -> list[str]:
    """Names of the protocol presets shipped with the package.

    Examples
    --------
    >>> "flare22" in available_protocols()
    True
    """
    folder = resources.files("flare_eval.tolerances")
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_protocol(protocol: str | Path | Protocol | Mapping = "flare22") -> Protocol:
    """Load a protocol by preset name or from a JSON file.

    Parameters
    ----------
    protocol : str, path, Protocol or mapping
        A preset name (see `available_protocols`), the path of a JSON file
        with the schema in this module's docstring, a `Protocol`, which is
        returned as is, or a protocol's `Protocol.definition` (as a
        settings.json records it).

    Returns
    -------
    Protocol

    Raises
    ------
    ValueError
        If the name is unknown or the file does not follow the schema; the
        message names the file and the offending field.

    Examples
    --------
    >>> p = load_protocol("flare22")
    >>> p.organ(1).tolerance_mm
    5.0
    >>> p.slice_range.mode
    'half_open'
    """
    if isinstance(protocol, Protocol):
        return protocol
    if isinstance(protocol, Mapping):  # a definition recorded in an output folder's settings.json
        return _protocol_from_dict(copy.deepcopy(dict(protocol)), f"recorded definition of {protocol.get('name')!r}")
    data, source = _load_json(protocol, seen=())
    return _protocol_from_dict(data, source)


def _load_json(protocol: str | Path, seen: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """The protocol's fields, with those of the protocol it extends underneath."""
    text, source = _read_protocol_text(protocol)
    try:
        data = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"protocol file {source}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise ValueError(f"protocol file {source}: nested too deeply to be a protocol") from None
    if not isinstance(data, dict):
        raise ValueError(f"protocol file {source}: top level must be a JSON object")
    base_name = data.pop("extends", None)
    if base_name is None:
        return data, source
    if source in seen:
        raise ValueError(f"protocol file {source}: 'extends' loops back to itself")
    base_path = Path(str(base_name))
    if not base_path.is_absolute() and not source.startswith("preset ") and base_path.suffix == ".json":
        base_path = Path(source).parent / base_path
    base, _ = _load_json(base_path if base_path.suffix == ".json" else str(base_name), (*seen, source))
    return {**base, **data}, source


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:30]} is too large to be finite")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a protocol may hold")


def _read_protocol_text(protocol: str | Path) -> tuple[str, str]:
    path = Path(protocol)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ValueError(f"protocol file {path} does not exist")
        return path.read_text(encoding="utf-8"), str(path)
    name = str(protocol)
    preset = resources.files("flare_eval.tolerances") / f"{name}.json"
    if not preset.is_file():
        raise ValueError(
            f"unknown protocol {name!r}: use one of {available_protocols()} or the path of a JSON file"
        )
    return preset.read_text(encoding="utf-8"), f"preset {name}"


def _require(data: dict[str, Any], key: str, source: str, where: str = "") -> Any:
    if key not in data:
        raise ValueError(f"protocol file {source}: missing field {where}{key!r}")
    return data[key]


def _protocol_from_dict(data: dict[str, Any], source: str) -> Protocol:
    definition = copy.deepcopy(data)
    organs = []
    regions = _regions_from_list(data.get("regions") or [], source)
    if "organs" not in data and not regions:
        raise ValueError(f"protocol file {source}: missing field 'organs' (or 'regions')")
    for i, item in enumerate(data.get("organs") or []):
        where = f"organs[{i}]."
        try:
            organ = Organ(
                label=int(_require(item, "label", source, where)),
                code=str(_require(item, "code", source, where)),
                name=str(item.get("name", item.get("code"))),
                tolerance_mm=float(_require(item, "tolerance_mm", source, where)),
            )
        except (TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"protocol file {source}: {where.rstrip('.')} is malformed: label must be a whole "
                             f"number, code text and tolerance_mm a number ({exc})") from exc
        if organ.label <= 0:
            raise ValueError(f"protocol file {source}: {where}label must be a positive integer, got {organ.label}")
        if not organ.tolerance_mm > 0:
            raise ValueError(
                f"protocol file {source}: {where}tolerance_mm must be positive, got {organ.tolerance_mm}"
            )
        organs.append(organ)
    if not organs and not regions:
        raise ValueError(f"protocol file {source}: 'organs' is empty")
    labels = [o.label for o in organs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"protocol file {source}: duplicated labels in 'organs': {labels}")

    rule = None
    raw_rule = data.get("slice_range")
    if raw_rule:
        unknown_keys = sorted(set(raw_rule) - {"labels", "mode"})
        if unknown_keys:
            raise ValueError(f"protocol file {source}: unknown slice_range field(s) {unknown_keys}; fields: "
                             "labels, mode (the axis is the ground truth's superior-inferior axis)")
        mode = raw_rule.get("mode", "half_open")
        if mode not in SLICE_RANGE_MODES:
            raise ValueError(
                f"protocol file {source}: slice_range.mode must be one of {SLICE_RANGE_MODES}, got {mode!r}"
            )
        rule_labels = tuple(int(v) for v in _require(raw_rule, "labels", source, "slice_range."))
        unknown = sorted(set(rule_labels) - set(labels))
        if unknown:
            raise ValueError(f"protocol file {source}: slice_range.labels {unknown} are not organs of the protocol")
        rule = SliceRangeRule(labels=rule_labels, mode=mode)

    ranking = data.get("ranking") or {}
    metrics = []
    for i, item in enumerate(ranking.get("metrics", [])):
        where = f"ranking.metrics[{i}]."
        metric = RankingMetric(
            name=str(_require(item, "name", source, where)),
            higher_is_better=bool(_require(item, "higher_is_better", source, where)),
            weight=float(item.get("weight", 1.0)),
            worst=float(_require(item, "worst", source, where)),
            minimum=None if item.get("minimum") is None else float(item["minimum"]),
            maximum=None if item.get("maximum") is None else float(item["maximum"]),
            region=None if item.get("region") is None else str(item["region"]),
            score_column=None if item.get("score_column") is None else str(item["score_column"]),
        )
        if metric.region is not None and metric.region not in {r.name for r in regions}:
            raise ValueError(f"protocol file {source}: {where}region {metric.region!r} is not one of the "
                             f"protocol's regions {[r.name for r in regions]}")
        if not metric.contains(metric.worst):
            raise ValueError(f"protocol file {source}: {where}worst {metric.worst:g} lies outside the metric's "
                             f"range [{metric.minimum}, {metric.maximum}]")
        metrics.append(metric)
    tie_method = ranking.get("tie_method", "min")
    if tie_method not in TIE_METHODS:
        raise ValueError(f"protocol file {source}: ranking.tie_method must be one of {TIE_METHODS}, got {tie_method!r}")
    res = data.get("resources") or {}
    gpu_memory = res.get("gpu_memory", "container")
    if gpu_memory not in GPU_MEMORY_READINGS:
        raise ValueError(f"protocol file {source}: resources.gpu_memory must be one of {GPU_MEMORY_READINGS}, "
                         f"got {gpu_memory!r}")
    container = _container_from_dict(data.get("container") or {}, source)
    return Protocol(
        name=str(data.get("name", Path(source).stem)),
        description=str(data.get("description", "")),
        organs=tuple(organs),
        slice_range=rule,
        both_empty_score=float(data.get("both_empty_score", 1.0)),
        ranking_metrics=tuple(metrics),
        tie_method=tie_method,
        gpu_allowance_mib=float(res.get("gpu_allowance_mib", 2048)),
        time_limit_s=float(res.get("time_limit_s", 3600)),
        source=source,
        container=container,
        gpu_memory=gpu_memory,
        regions=regions,
        spacing_from=_choice(data, "spacing_from", SPACING_SOURCES, "ground_truth", source),
        invalid_labels=_choice(data, "invalid_labels", INVALID_LABEL_RULES, "ignore", source),
        rounding=None if data.get("rounding") is None else int(data["rounding"]),
        ranking_scheme=_choice(ranking, "scheme", RANKING_SCHEMES, "rank_then_aggregate", source),
        tie_break=ranking.get("tie_break"),
        scoring_limits=_scoring_limits(data.get("scoring_limits") or {}, source),
        max_consecutive_failures=_positive_int_or_none(res.get("max_consecutive_failures"),
                                                       "resources.max_consecutive_failures", source),
        definition=definition,
    )


def _positive_int_or_none(value: Any, field: str, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"protocol file {source}: {field} must be a positive whole number or null, got {value!r}")
    return value


def _scoring_limits(raw: Any, source: str) -> TaskLimits:
    if not isinstance(raw, dict) or set(raw) - {"time_s", "memory_mib"}:
        raise ValueError(f"protocol file {source}: scoring_limits must be an object with time_s and/or memory_mib")
    try:
        return TaskLimits(**{key: float(value) for key, value in raw.items()})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"protocol file {source}: scoring_limits: {exc}") from None


def _choice(data: dict[str, Any], key: str, allowed: tuple[str, ...], default: str, source: str) -> str:
    value = data.get(key, default)
    if value not in allowed:
        raise ValueError(f"protocol file {source}: {key} must be one of {allowed}, got {value!r}")
    return value


def _regions_from_list(items: list[Any], source: str) -> tuple[Region, ...]:
    regions = []
    fields = {f for f in RegionMetric.__dataclass_fields__}
    for i, item in enumerate(items):
        where = f"regions[{i}]."
        labels = tuple(int(v) for v in _require(item, "labels", source, where))
        if not labels or min(labels) <= 0:
            raise ValueError(f"protocol file {source}: {where}labels must be positive integers, got {labels}")
        metrics = []
        for j, raw in enumerate(_require(item, "metrics", source, where)):
            unknown = sorted(set(raw) - fields)
            if unknown:
                raise ValueError(f"protocol file {source}: {where}metrics[{j}] has unknown field(s) {unknown}")
            metric = RegionMetric(**_typed_metric_fields(raw, f"{where}metrics[{j}].", source))
            if metric.kind not in METRIC_KINDS:
                raise ValueError(f"protocol file {source}: {where}metrics[{j}].kind must be one of {METRIC_KINDS}, "
                                 f"got {metric.kind!r}")
            if metric.kind == "surface_dice" and not (metric.tolerance_mm or 0) > 0:
                raise ValueError(f"protocol file {source}: {where}metrics[{j}] needs a positive tolerance_mm")
            if metric.kind == "hausdorff" and not 0 < (metric.percentile or 0) <= 100:
                raise ValueError(f"protocol file {source}: {where}metrics[{j}] needs a percentile in (0, 100]")
            if metric.kind == "brats_lesion_wise" and None in (metric.dilation_iterations, metric.min_lesion_mm3):
                raise ValueError(f"protocol file {source}: {where}metrics[{j}] needs dilation_iterations and "
                                 "min_lesion_mm3")
            metrics.append(metric)
        regions.append(Region(str(_require(item, "name", source, where)), labels, tuple(metrics)))
    return tuple(regions)


_TEXT_FIELDS = ("kind", "name")
_WHOLE_FIELDS = ("dilation_iterations", "connectivity")


def _typed_metric_fields(raw: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    """A region metric's fields, each of its type; a wrong one is named (``"tolerance_mm": "2"`` is not a number)."""
    typed = {}
    for key, value in raw.items():
        if key in _TEXT_FIELDS:
            ok = isinstance(value, str)
            wanted = "text"
        elif key in _WHOLE_FIELDS:
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
            wanted = "a whole number or null"
        else:
            ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
            wanted = "a number or null"
            value = None if value is None else float(value) if ok else value
        if not ok:
            raise ValueError(f"protocol file {source}: {where}{key} must be {wanted}, got {value!r}")
        typed[key] = value
    return typed


def _container_from_dict(raw: dict[str, Any], source: str) -> ContainerInterface:
    fields = ("input_mount", "output_mount", "command", "input_name", "output_name")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"protocol file {source}: unknown container field(s) {unknown}; fields: {list(fields)}")
    defaults = ContainerInterface()
    command = raw.get("command", defaults.command)
    if command is not None:
        if isinstance(command, str) or not all(isinstance(part, str) for part in command):
            raise ValueError(f"protocol file {source}: container.command must be a list of strings or null")
        command = tuple(command)
    interface = ContainerInterface(
        input_mount=str(raw.get("input_mount", defaults.input_mount)),
        output_mount=str(raw.get("output_mount", defaults.output_mount)),
        command=command,
        input_name=str(raw.get("input_name", defaults.input_name)),
        output_name=str(raw.get("output_name", defaults.output_name)),
    )
    for name in ("input_mount", "output_mount"):
        if not getattr(interface, name).startswith("/"):
            raise ValueError(f"protocol file {source}: container.{name} must be an absolute path")
    if "{case}" not in interface.input_name:
        raise ValueError(f"protocol file {source}: container.input_name must contain {{case}}")
    return interface

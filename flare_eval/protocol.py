"""Evaluation protocols: which labels are scored, how, and how teams are ranked.

A protocol is configuration as data. Each challenge edition is a JSON file in
``tolerances/`` (shipped inside the package as ``flare_eval/tolerances``); a
user's own file with the same schema works everywhere a preset name does.

The schema (all lengths in millimetres)::

    {
      "name": "flare22",
      "description": "...",
      "regions": [{"name": "kidney_and_mass", "labels": [1, 2, 3],
                   "metrics": [{"kind": "dice", "name": "Dice"},
                               {"kind": "surface_dice", "name": "SD", "tolerance_mm": 1.03}]}, ...],
      "slice_range": {"labels": [5, 6, 10], "mode": "half_open"} or null,
      "layout": "regions",
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

Every challenge is regions x metrics: a region is one label or the union of
several, scored with metrics of the kinds in :mod:`flare_eval.metric_kinds`.
FLARE's files list ``organs`` instead, the short form of one region per label
scored with Dice and surface Dice at the organ's tolerance::

      "organs": [{"label": 1, "code": "Liver", "name": "liver", "tolerance_mm": 5}, ...],
      "both_empty_score": 1.0,

which the loader reads as regions named by ``code`` with the metrics
``dice`` (DSC), ``surface_dice`` (NSD) and ``voxel_counts``, both empty scoring
``both_empty_score``, laid out as FLARE's tables are (``"layout": "organs"``:
columns ``label, organ``, the official wide table with 4 decimals) and scoring
0 everywhere when a prediction cannot be used (``"unusable_prediction":
"zero"``; a region file's default ``"empty"`` scores it as an empty mask).

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
from .metric_kinds import Dice, MetricFieldError, RegionMetric, SurfaceDice, VoxelCounts, metric_from_fields

__all__ = [
    "ContainerInterface",
    "Region",
    "RegionMetric",
    "ScoreLayout",
    "layout_of_table",
    "SliceRangeRule",
    "RankingMetric",
    "Protocol",
    "load_protocol",
    "resolve_protocol",
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
class SliceRangeRule:
    """Evaluate some regions only on the ground truth's slice range.

    A region is cut when all its labels are among ``labels``. Both masks are
    cut to the ground truth's labelled slices along its superior-inferior axis
    (whichever array axis that is, from the header; the third axis for RAS
    NIfTI, as in the official script) before its metrics are computed. With
    ``mode="half_open"`` the cut is ``[z_min, z_max)`` as in the
    official FLARE22 script, which drops the most superior labelled slice;
    ``mode="inclusive"`` keeps it. When the ground truth lies on a single
    slice the half-open cut would be empty (the official script crashes
    there); that one slice is evaluated instead.
    """

    labels: tuple[int, ...]
    mode: str


SPACING_SOURCES = ("ground_truth", "prediction")
#: ``rank_then_aggregate``: FLARE's; ``aggregate_then_rank``: KiTS23's (rank each metric's mean over cases, or
#: its median with ``statistic``, average the ranks, rank again, ties broken by ``tie_break``'s mean or median).
RANKING_SCHEMES = ("rank_then_aggregate", "aggregate_then_rank")
#: A prediction holding a value outside the protocol's labels: ``ignore`` (background, with a warning),
#: ``zero_scores`` (FLARE24: DSC = NSD = 0), ``refuse`` (status ``invalid_prediction``, scored as empty; for
#: metrics on raw values, where another value would inflate the score).
INVALID_LABEL_RULES = ("ignore", "zero_scores", "refuse")
#: A prediction that cannot be used (missing, unreadable, on another grid): ``zero`` (FLARE: every metric 0,
#: as the official script scores it) or ``empty`` (scored as an empty mask: Dice 0, a distance's penalty, ...).
UNUSABLE_PREDICTION_RULES = ("zero", "empty")


@dataclass(frozen=True)
class Region:
    """A scored region: the union of some labels, and its metrics.

    Attributes
    ----------
    name : str
        Name in the tables (FLARE: the organ's code, ``Liver``, ``RK``, ...).
    labels : tuple of int
        Label values whose union is the region.
    metrics : tuple of RegionMetric
        Its metrics, in column order.
    title : str
        Human-readable name (FLARE: ``right kidney``); default ``name``.
    sliced : bool
        Whether the protocol's slice-range rule cuts this region.
    """

    name: str
    labels: tuple[int, ...]
    metrics: tuple[RegionMetric, ...]
    title: str = ""
    sliced: bool = False

    def metric(self, name: str) -> RegionMetric:
        """The metric writing column ``name``."""
        for metric in self.metrics:
            if name in metric.columns:
                return metric
        raise KeyError(f"region {self.name!r} has no metric {name!r}; its columns: "
                       f"{[c for m in self.metrics for c in m.columns]}")


#: The columns a layout takes its region keys from, and how each key is read off a region.
_KEY_VALUES = {"label": lambda region: region.labels[0], "organ": lambda region: region.name,
               "region": lambda region: region.name}


@dataclass(frozen=True)
class ScoreLayout:
    """How a protocol's scores are laid out in its tables: data that the one table writer reads.

    Attributes
    ----------
    name : str
        ``organs`` (FLARE's tables) or ``regions``.
    unit : str
        The word for one region in tables and the report (``organ``, ``region``).
    key_columns : tuple of str
        Columns naming a region in ``scores.csv``; the last holds its name.
    official_name : str
        The official table's ``Name`` column, with ``{case}``.
    official_by_metric : bool
        Official columns ``<region>_<metric>`` grouped by metric (FLARE: every
        organ's DSC, then every NSD) rather than by region.
    official_decimals : int or None
        Decimals of the official table (FLARE: 4).
    wide_summary : bool
        ``summary.csv`` with one row per region and columns ``<metric>_mean``,
        ... and a ``mean`` row over regions (FLARE), rather than one row per
        region and metric.
    """

    name: str
    unit: str
    key_columns: tuple[str, ...]
    official_name: str
    official_by_metric: bool
    official_decimals: int | None
    wide_summary: bool

    @property
    def name_column(self) -> str:
        """The column of ``scores.csv`` holding the region's name (``organ`` or ``region``)."""
        return self.key_columns[-1]

    def keys(self, region: Region) -> dict:
        """The key columns' values of ``region``."""
        return {column: _KEY_VALUES[column](region) for column in self.key_columns}


LAYOUTS = {
    "organs": ScoreLayout("organs", "organ", ("label", "organ"), "{case}.nii.gz", True, 4, True),
    "regions": ScoreLayout("regions", "region", ("region",), "{case}", False, None, False),
}


def layout_of_table(columns) -> ScoreLayout:
    """The layout whose region keys (or, failing that, whose name column) a table's ``columns`` hold.

    For tables read without their protocol (scores, volumes, a comparison's differences).

    Raises
    ------
    ValueError
        If the columns hold the keys of no layout.
    """
    ordered = sorted(LAYOUTS.values(), key=lambda layout: -len(layout.key_columns))
    for layout in ordered:
        if all(column in columns for column in layout.key_columns):
            return layout
    for layout in ordered:  # a derived table may keep only the name (a comparison's differences: organ)
        if layout.name_column in columns:
            return layout
    raise ValueError(f"a scores table names what each row scored in the columns of a layout "
                     f"({' or '.join(', '.join(lay.key_columns) for lay in LAYOUTS.values())}); these columns "
                     f"have none: {list(columns)[:12]}")


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
    regions: tuple[Region, ...]
    slice_range: SliceRangeRule | None
    ranking_metrics: tuple[RankingMetric, ...]
    tie_method: str
    gpu_allowance_mib: float
    time_limit_s: float
    source: str
    container: ContainerInterface = ContainerInterface()
    gpu_memory: str = "container"
    layout: ScoreLayout = LAYOUTS["regions"]
    spacing_from: str = "ground_truth"
    invalid_labels: str = "ignore"
    unusable_prediction: str = "empty"
    rounding: int | None = None
    ranking_scheme: str = "rank_then_aggregate"
    ranking_statistic: str = "mean"
    tie_break: str | None = None
    scoring_limits: TaskLimits = TaskLimits()
    max_consecutive_failures: int | None = None
    #: The protocol's fields as loaded (``extends`` resolved): what every output folder's settings.json records,
    #: so that a later step reads the very protocol a folder was made with (`load_protocol` takes it back).
    definition: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def score_columns(self) -> tuple[str, ...]:
        """Score columns of ``scores.csv``: those of the regions' metrics, in order (FLARE: ``DSC, NSD``)."""
        return self._columns(descriptive=False)

    @property
    def descriptive_columns(self) -> tuple[str, ...]:
        """Columns that describe rather than score (FLARE's ``gt_voxels, pred_voxels``), written after ``status``."""
        return self._columns(descriptive=True)

    def _columns(self, *, descriptive: bool) -> tuple[str, ...]:
        columns: list[str] = []
        for region in self.regions:
            for metric in region.metrics:
                if metric.descriptive == descriptive:
                    columns.extend(c for c in metric.columns if c not in columns)
        return tuple(columns)

    @property
    def labels(self) -> tuple[int, ...]:
        """Every label of the regions, in order of first appearance (FLARE: its organs' labels)."""
        return tuple(dict.fromkeys(label for region in self.regions for label in region.labels))

    def region(self, name: str) -> Region:
        """The region called ``name`` (FLARE: an organ's code)."""
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(f"protocol {self.name!r} has no region {name!r}; its regions: "
                       f"{[r.name for r in self.regions]}")

    def region_of_label(self, label: int) -> Region:
        """The region made of ``label`` alone (FLARE: the organ with this label)."""
        for region in self.regions:
            if region.labels == (label,):
                return region
        raise KeyError(f"label {label} is not a region of its own in protocol {self.name!r}; labels: {self.labels}")

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
        return (f"Protocol(name={self.name!r}, regions={len(self.regions)}, layout={self.layout.name!r}, "
                f"slice_range={self.slice_range}, source={self.source!r})")

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
    >>> p.region("Liver").metric("NSD").tolerance_mm
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


def resolve_protocol(given: str | Path | Protocol | None, *places: str | Path | None) -> Protocol:
    """The protocol of a command: the one given, or the one recorded where its inputs or outputs are.

    Each place is a folder (or a file, meaning its folder) whose ``settings.json`` may record the protocol it
    was made with (see `flare_eval.protocol.Protocol.record`); for a runs folder, its teams' folders too. A
    place that does not exist yet (a new output folder) records nothing: its parent's other folders are other
    runs. With nothing given and nothing recorded: ``flare22``.

    Raises
    ------
    ValueError
        If the given protocol differs from a recorded one (a folder made with KiTS23 ranked with FLARE22), or
        two places record different protocols; the message names both and where each comes from.
    """
    from .io import read_settings

    recorded: list[tuple[Protocol, Path]] = []
    for place in places:
        if place is None or not Path(place).exists():
            continue
        folder = Path(place) if Path(place).is_dir() else Path(place).parent
        candidates = [folder / "settings.json", *sorted(folder.glob("*/settings.json"))[:1]]
        for settings_path in candidates:
            settings = read_settings(settings_path)
            found = settings.get("protocol_definition") or settings.get("protocol")
            if found:
                recorded.append((load_protocol(found), settings_path))
                break
    chosen = None if given is None else load_protocol(given)
    for protocol, where in recorded:
        reference = chosen or recorded[0][0]
        if _protocols_differ(reference, protocol):
            mine = f"--protocol {chosen.name}" if chosen is not None else \
                f"the protocol {reference.name} recorded in {recorded[0][1]}"
            raise ValueError(f"{mine} differs from the protocol {protocol.name} recorded in {where}: "
                             "leave --protocol out to use the recorded one, or use a new output folder")
    if chosen is not None:
        return chosen
    return recorded[0][0] if recorded else load_protocol("flare22")


def _protocols_differ(a: Protocol, b: Protocol) -> bool:
    """Whether two protocols evaluate differently: their definitions but for the description (prose only)."""
    if a.definition and b.definition:
        def rules(protocol: Protocol) -> dict:
            return {k: v for k, v in protocol.definition.items() if k != "description"}

        return rules(a) != rules(b)
    return a.name != b.name


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
    # The two forms of the scored structures replace each other: a file of regions extending FLARE drops its organs.
    if "regions" in data:
        base = {k: v for k, v in base.items() if k not in ("organs", "both_empty_score", "layout")}
    if "organs" in data:
        base = {k: v for k, v in base.items() if k not in ("regions", "layout")}
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
    if ("organs" in data) == ("regions" in data):
        raise ValueError(f"protocol file {source}: give either 'organs' (FLARE's short form) or 'regions'")
    rule = _slice_range_rule(data.get("slice_range"), source)
    if "organs" in data:
        regions = _regions_from_organs(data["organs"], float(data.get("both_empty_score", 1.0)), rule, source)
        defaults = {"layout": "organs", "unusable_prediction": "zero"}
    else:
        if "both_empty_score" in data:
            raise ValueError(f"protocol file {source}: both_empty_score belongs to the 'organs' form; a region "
                             "metric gives its own both_empty")
        regions = _regions_from_list(data["regions"], rule, source)
        defaults = {"layout": "regions", "unusable_prediction": "empty"}
    layout = LAYOUTS[_choice(data, "layout", tuple(LAYOUTS), defaults["layout"], source)]
    if layout.name == "organs" and any(len(r.labels) != 1 for r in regions):
        raise ValueError(f"protocol file {source}: layout 'organs' needs regions of one label each")
    labels = [label for region in regions for label in region.labels]
    if rule is not None:
        unknown = sorted(set(rule.labels) - set(labels))
        if unknown:
            raise ValueError(f"protocol file {source}: slice_range.labels {unknown} are not labels of the protocol")

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
        regions=regions,
        slice_range=rule,
        ranking_metrics=tuple(metrics),
        tie_method=tie_method,
        gpu_allowance_mib=float(res.get("gpu_allowance_mib", 2048)),
        time_limit_s=float(res.get("time_limit_s", 3600)),
        source=source,
        container=container,
        gpu_memory=gpu_memory,
        layout=layout,
        spacing_from=_choice(data, "spacing_from", SPACING_SOURCES, "ground_truth", source),
        invalid_labels=_choice(data, "invalid_labels", INVALID_LABEL_RULES, "ignore", source),
        unusable_prediction=_choice(data, "unusable_prediction", UNUSABLE_PREDICTION_RULES,
                                    defaults["unusable_prediction"], source),
        rounding=None if data.get("rounding") is None else int(data["rounding"]),
        ranking_scheme=_choice(ranking, "scheme", RANKING_SCHEMES, "rank_then_aggregate", source),
        ranking_statistic=_choice(ranking, "statistic", ("mean", "median"), "mean", source),
        tie_break=_tie_break(ranking.get("tie_break"), regions, source),
        scoring_limits=_scoring_limits(data.get("scoring_limits") or {}, source),
        max_consecutive_failures=_positive_int_or_none(res.get("max_consecutive_failures"),
                                                       "resources.max_consecutive_failures", source),
        definition=definition,
    )


def _tie_break(raw: Any, regions: tuple[Region, ...], source: str) -> str | None:
    """The tie-break column ``<score column>_<region>``, given as that name or as ``{"score_column", "region"}``."""
    if raw is None or isinstance(raw, str):
        return raw
    if not isinstance(raw, dict) or set(raw) != {"score_column", "region"}:
        raise ValueError(f"protocol file {source}: ranking.tie_break must be a results column name or an object "
                         "with score_column and region")
    region = next((r for r in regions if r.name == raw["region"]), None)
    if region is None or raw["score_column"] not in [c for m in region.metrics for c in m.columns]:
        raise ValueError(f"protocol file {source}: ranking.tie_break: region {raw['region']!r} has no score "
                         f"{raw['score_column']!r}")
    return f"{raw['score_column']}_{raw['region']}"


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


def _slice_range_rule(raw: Any, source: str) -> SliceRangeRule | None:
    if not raw:
        return None
    unknown_keys = sorted(set(raw) - {"labels", "mode"})
    if unknown_keys:
        raise ValueError(f"protocol file {source}: unknown slice_range field(s) {unknown_keys}; fields: "
                         "labels, mode (the axis is the ground truth's superior-inferior axis)")
    mode = raw.get("mode", "half_open")
    if mode not in SLICE_RANGE_MODES:
        raise ValueError(f"protocol file {source}: slice_range.mode must be one of {SLICE_RANGE_MODES}, got {mode!r}")
    return SliceRangeRule(labels=tuple(int(v) for v in _require(raw, "labels", source, "slice_range.")), mode=mode)


def _sliced(labels: tuple[int, ...], rule: SliceRangeRule | None) -> bool:
    return rule is not None and set(labels) <= set(rule.labels)


def _regions_from_organs(items: Any, both_empty: float, rule: SliceRangeRule | None,
                         source: str) -> tuple[Region, ...]:
    """FLARE's organs as regions: one label each, Dice (DSC) and surface Dice (NSD) at the organ's tolerance."""
    regions = []
    for i, item in enumerate(items or []):
        where = f"organs[{i}]."
        try:
            label = int(_require(item, "label", source, where))
            code = str(_require(item, "code", source, where))
            tolerance_mm = float(_require(item, "tolerance_mm", source, where))
            title = str(item.get("name", code))
        except (TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"protocol file {source}: {where.rstrip('.')} is malformed: label must be a whole "
                             f"number, code text and tolerance_mm a number ({exc})") from exc
        if label <= 0:
            raise ValueError(f"protocol file {source}: {where}label must be a positive integer, got {label}")
        if not tolerance_mm > 0:
            raise ValueError(f"protocol file {source}: {where}tolerance_mm must be positive, got {tolerance_mm}")
        metrics = (Dice("DSC", both_empty=both_empty, one_empty=0.0),
                   SurfaceDice("NSD", both_empty=both_empty, one_empty=0.0, tolerance_mm=tolerance_mm),
                   VoxelCounts())
        regions.append(Region(code, (label,), metrics, title, _sliced((label,), rule)))
    if not regions:
        raise ValueError(f"protocol file {source}: 'organs' is empty")
    _refuse_duplicates(regions, source, "organs")
    return tuple(regions)


def _regions_from_list(items: Any, rule: SliceRangeRule | None, source: str) -> tuple[Region, ...]:
    regions = []
    for i, item in enumerate(items or []):
        where = f"regions[{i}]."
        if not isinstance(item, dict):
            raise ValueError(f"protocol file {source}: {where.rstrip('.')} must be an object")
        unknown = sorted(set(item) - {"name", "labels", "metrics", "title"})
        if unknown:
            raise ValueError(f"protocol file {source}: {where.rstrip('.')} has unknown field(s) {unknown}; fields: "
                             "name, labels, metrics, title")
        raw_labels = _require(item, "labels", source, where)
        if (not isinstance(raw_labels, list) or not raw_labels
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw_labels)):
            raise ValueError(f"protocol file {source}: {where}labels must be a list of positive whole numbers, "
                             f"got {raw_labels!r}")
        labels = tuple(raw_labels)
        metrics = []
        for j, raw in enumerate(_require(item, "metrics", source, where)):
            if not isinstance(raw, dict):
                raise ValueError(f"protocol file {source}: {where}metrics[{j}] must be an object")
            try:
                metrics.append(metric_from_fields(raw))
            except MetricFieldError as exc:
                named = f".{exc.field} {exc.problem}" if exc.field else f": {exc.problem}"
                raise ValueError(f"protocol file {source}: {where}metrics[{j}]{named}") from None
        if not metrics:
            raise ValueError(f"protocol file {source}: {where}metrics is empty")
        name = str(_require(item, "name", source, where))
        regions.append(Region(name, labels, tuple(metrics), str(item.get("title", name)), _sliced(labels, rule)))
    if not regions:
        raise ValueError(f"protocol file {source}: 'regions' is empty")
    _refuse_duplicates(regions, source, "regions")
    return tuple(regions)


def _refuse_duplicates(regions: list[Region], source: str, where: str) -> None:
    if where == "organs":
        labels = [r.labels[0] for r in regions]
        if len(set(labels)) != len(labels):
            raise ValueError(f"protocol file {source}: duplicated labels in 'organs': {labels}")
    names = [r.name for r in regions]
    if len(set(names)) != len(names):
        raise ValueError(f"protocol file {source}: duplicated names in {where!r}: {names}")


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

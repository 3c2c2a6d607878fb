"""The ``search:`` section of a recipe: what to vary, what to optimize, under which constraints.

Only pydantic here (no optuna, no torch); ``qaprune.autosearch`` runs what it describes.
A recipe's search section, in YAML::

    search:
      space:                                   # recipe field path -> choices or a range
        prune.sparsity: {low: 0.5, high: 0.95}
        prune.criterion: {choices: [magnitude, taylor]}
        quant.weight_bits: {low: 2, high: 8}   # integer ends: an integer range
        layers.fc1.weight_bits: {choices: [4, 6, 8]}
        layers.fc*.act_bits: {choices: [4, 8]}
        # layers.*.weight_bits: {choices: [2, 4, 8], per_layer: true}  (one parameter per layer)
        model.args.hidden: {choices: [[64, 32], [32, 32]]}
      objectives: [accuracy, bops]             # or {metric: size_bytes, direction: minimize}
      constraints:
        - {metric: accuracy, min: -0.005, reference: dense}   # at most 0.5 points below dense
      sampler: nsga2                           # tpe (default), gp, nsga2, random
      pruner: threshold                        # none, median, hyperband, threshold
      sparsity_bound: {trials: 5}              # Condensa: bisect the highest feasible sparsity first
      latency: {batch: 1, threads: 1}          # measure latency_ms for every trial

Example:
    >>> spec = SearchSpec(space={"prune.sparsity": {"low": 0.5, "high": 0.95},
    ...                          "quant.weight_bits": {"choices": [2, 4, 8]}},
    ...                   objectives=["accuracy", "bops"])
    >>> [(o.metric, o.direction) for o in spec.objectives], spec.space["prune.sparsity"].kind
    ([('accuracy', 'maximize'), ('bops', 'minimize')], 'float')
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

# Every metric a trial can be judged by, and the direction that is better. All but latency_ms
# come from results.json; latency_ms is measured on the trial's model (``search.latency``).
METRICS: dict[str, str] = {
    "accuracy": "maximize",
    "auc": "maximize",
    "loss": "minimize",
    "bops": "minimize",
    "bops_reduction": "maximize",
    "size_bytes": "minimize",
    "compression": "maximize",
    "params": "minimize",
    "nonzero_params": "minimize",
    "sparsity": "maximize",
    "macs": "minimize",
    "macs_nonzero": "minimize",
    "flops": "minimize",
    "neural_efficiency": "maximize",
    "aiq": "maximize",
    "latency_ms": "minimize",
}
LATENCY = "latency_ms"
SPARSITY = "prune.sparsity"
SAMPLERS = ("tpe", "gp", "nsga2", "random")
PRUNERS = ("none", "median", "hyperband", "threshold")
CURVE_METRIC = "accuracy"  # the per-step curve the pruners watch (each pruning round's accuracy)
NOT_SEARCHABLE = ("search", "data", "name")  # the data split must be the same for every trial


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


class ParamSpec(_Strict):
    """One searched recipe field: ``choices`` (any YAML values, e.g. lists of widths), or a
    numeric range ``low``..``high`` (inclusive; ``step``, ``log``). A range is integer when its
    ends (and step) are integers, unless ``type`` says otherwise. ``per_layer`` (for
    ``layers.<pattern>.<field>``): one parameter per matching weight layer, e.g. every layer's
    own bit width from one entry ``layers.*.weight_bits``."""

    choices: list[Any] | None = None
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    type: Literal["int", "float"] | None = None
    per_layer: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.choices is not None:
            _check_choices(self)
            return self
        if self.low is None or self.high is None:
            raise ValueError("give either choices: [...] or both low and high")
        if not self.low < self.high:
            raise ValueError(f"low {self.low} must be < high {self.high}")
        if self.step is not None and (self.step <= 0 or self.log):
            raise ValueError(f"step {self.step}: must be > 0 and cannot be combined with log")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0, got {self.low}")
        if self.kind == "int" and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            raise ValueError("type int needs integer low, high and step")
        return self

    @property
    def kind(self) -> Literal["categorical", "int", "float"]:
        if self.choices is not None:
            return "categorical"
        if self.type is not None:
            return self.type
        ends = (self.low, self.high) + (() if self.step is None else (self.step,))
        return "int" if all(isinstance(v, int) and not isinstance(v, bool) for v in ends) else "float"

    @property
    def scalar_choices(self) -> bool:
        """Whether optuna can store the choices as they are (else they travel as JSON text)."""
        return self.choices is not None and all(_scalar(c) for c in self.choices)

    def probes(self) -> list[Any]:
        """The values that must each give a valid recipe: every choice, or both range ends."""
        if self.choices is not None:
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


def _check_choices(p: ParamSpec) -> None:
    if not p.choices:
        raise ValueError("choices: empty; give at least one value")
    if any(v is not None for v in (p.low, p.high, p.step)) or p.log or p.type:
        raise ValueError("choices cannot be combined with low/high/step/log/type")
    keys = [json.dumps(c, sort_keys=True) for c in p.choices]
    if len(set(keys)) != len(keys):
        raise ValueError(f"choices: {p.choices} has duplicates")


def _known_metric(v: str) -> str:
    if v not in METRICS:
        raise ValueError(f"{v!r} is unknown; known: {', '.join(METRICS)}")
    return v


class ObjectiveSpec(_Strict):
    """A metric to optimize; ``direction`` defaults to the better side (METRICS). A plain
    string in the recipe (``accuracy``) means that metric in its default direction."""

    metric: str
    direction: Literal["maximize", "minimize"]

    _known = field_validator("metric")(_known_metric)

    @model_validator(mode="before")
    @classmethod
    def _default_direction(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"metric": data}
        if isinstance(data, dict) and data.get("direction") is None:  # unknown metric: its own error
            data = {**data, "direction": METRICS.get(data.get("metric"), "maximize")}
        return data


class ConstraintSpec(_Strict):
    """``min <= metric <= max``; with ``reference: dense`` the bounds are offsets from the metric
    of the dense float baseline (the base recipe unpruned at 32 bits), e.g. min: -0.005 is
    "accuracy at most half a point below dense"."""

    metric: str
    min: float | None = None
    max: float | None = None
    reference: Literal["absolute", "dense"] = "absolute"

    _known = field_validator("metric")(_known_metric)

    @model_validator(mode="after")
    def _bounds(self) -> ConstraintSpec:
        if self.min is None and self.max is None:
            raise ValueError(f"{self.metric}: give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"{self.metric}: min {self.min} > max {self.max}; no trial can meet it")
        if self.reference == "dense" and self.metric == LATENCY:
            raise ValueError(f"{LATENCY}: reference dense is not measured; use absolute bounds")
        return self


class LatencySpec(_Strict):
    """How ``latency_ms`` is measured: the trial's model baked, pruned channels removed, batch
    norms folded; median of ``repeats`` calls at this batch size and thread count. Workers that
    share a machine time each other's load too: for latency objectives use one worker per
    machine, or cores enough for every worker."""

    batch: int = 1
    threads: int = 1
    backend: Literal["torch", "ort"] = "torch"
    repeats: int = 30


class BoundSpec(_Strict):
    """Condensa's first phase: bisect ``prune.sparsity`` over its range for the highest value whose
    run meets every constraint (``trials`` runs), then search with prune.sparsity at most that."""

    trials: int = 5

    @field_validator("trials")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"{v} is not >= 1")
        return v


class SearchSpec(_Strict):
    """The search space (``space``: recipe field path -> ParamSpec; ``layers.<pattern>.<field>``
    for per-layer fields), the objectives, constraints, sampler and pruner."""

    space: dict[str, ParamSpec]
    objectives: list[ObjectiveSpec] = [ObjectiveSpec(metric="accuracy"), ObjectiveSpec(metric="bops")]
    constraints: list[ConstraintSpec] = []
    sampler: Literal["tpe", "gp", "nsga2", "random"] = "tpe"
    pruner: Literal["none", "median", "hyperband", "threshold"] = "none"
    startup_trials: int | None = None  # tpe/gp: random trials before the model; None: optuna's 10
    population: int = 20  # nsga2: population size
    seed: int = 0
    sparsity_bound: BoundSpec | None = None
    latency: LatencySpec | None = None

    @field_validator("space", "objectives", "constraints", mode="wrap")
    @classmethod
    def _readable(cls, v: Any, handler, info) -> Any:
        """Nested errors as one line each (``prune.sparsity: low 0.9 must be < high 0.5``)."""
        try:
            return handler(v)
        except ValidationError as exc:
            model = _ITEM_MODELS[info.field_name]
            raise ValueError("; ".join(_one_line(e, model) for e in exc.errors())) from None

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        if not v:
            raise ValueError("empty; declare at least one field, e.g. prune.sparsity: {low: 0.5, high: 0.95}")
        for key in v:
            if "." not in key or key.split(".")[0] in NOT_SEARCHABLE:
                raise ValueError(
                    f"{key!r} is not searchable; give a recipe field path such as quant.weight_bits, "
                    f"prune.sparsity, layers.fc1.weight_bits (not {', '.join(NOT_SEARCHABLE)})"
                )
            if v[key].per_layer and (not key.startswith("layers.") or any(k.startswith("model.") for k in v)):
                raise ValueError(
                    f"{key}: per_layer needs a key layers.<pattern>.<field> and a fixed model "
                    "(the layers are named before the search starts)"
                )
        return v

    @model_validator(mode="after")
    def _coherent(self) -> SearchSpec:
        for problem in _problems(self):
            raise ValueError(problem)
        return self

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [str(o.direction) for o in self.objectives]

    @property
    def needs_latency(self) -> bool:
        return self.latency is not None or LATENCY in self.metrics + [c.metric for c in self.constraints]

    @property
    def needs_dense(self) -> bool:
        return any(c.reference == "dense" for c in self.constraints)


def _problems(s: SearchSpec) -> list[str]:
    """What makes the objectives, constraints, pruner and sparsity bound contradict each other."""
    out = []
    if not s.objectives:
        out.append("objectives: empty; name at least one metric, e.g. [accuracy, bops]")
    if len(set(s.metrics)) != len(s.metrics):
        out.append(f"objectives: {s.metrics} names a metric twice")
    if s.pruner in ("median", "hyperband") and s.metrics != [CURVE_METRIC]:
        out.append(
            f"pruner: {s.pruner!r} compares each pruning round's {CURVE_METRIC}, so it needs the single "
            f"objective {CURVE_METRIC}; objectives are {s.metrics} (use pruner: threshold with an "
            f"{CURVE_METRIC} min constraint, or none)"
        )
    if s.pruner == "threshold" and not _accuracy_floor(s):
        out.append(
            f"pruner: 'threshold' stops a trial once a round's {CURVE_METRIC} falls below the "
            f"{CURVE_METRIC} min constraint; add one, e.g. {{metric: {CURVE_METRIC}, min: 0.9}}"
        )
    if s.sparsity_bound is not None:
        p = s.space.get(SPARSITY)
        if not s.constraints:
            out.append("sparsity_bound: needs constraints (the bound is the highest sparsity that meets them)")
        if p is None or p.kind != "float":
            out.append(f"sparsity_bound: needs {SPARSITY} in space as a range {{low: ..., high: ...}}")
    if s.population < 2:
        out.append(f"population: {s.population} is not >= 2")
    return out


def _accuracy_floor(s: SearchSpec) -> bool:
    return any(c.metric == CURVE_METRIC and c.min is not None for c in s.constraints)


_ITEM_MODELS: dict[str, type[BaseModel]] = {
    "space": ParamSpec,
    "objectives": ObjectiveSpec,
    "constraints": ConstraintSpec,
}


def _one_line(err: dict, model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f"unknown field; allowed: {', '.join(model.model_fields)}"
    return f"{loc}: {msg}" if loc else msg


def finite(value: Any) -> bool:
    """A real, finite number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

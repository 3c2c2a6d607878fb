"""Typed, validated recipes (pydantic, unknown fields rejected); YAML/JSON in and out.

Errors name the field and what is allowed: ``recipe.prune.sparsity: 1.3 is not in [0, 1)``.
Per-layer overrides live under ``layers``: a mapping from a module-name pattern (fnmatch, e.g.
``fc4`` or ``features.*``) to the fields to change; later patterns win.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from qaprune.errors import RecipeError
from qaprune.prune.allocation import ALLOCATIONS
from qaprune.prune.criteria import CRITERIA
from qaprune.prune.schedules import SCHEDULES
from qaprune.prune.structures import STRUCTURES
from qaprune.quant.bits import bits_problem
from qaprune.quant.cluster import MAX_CLUSTERS
from qaprune.recipe.search import SearchSpec
from qaprune.registry import Registry

SPARSE_OPTIMIZERS = ("hspg", "obproxsg")  # qaprune.prune.optim: exact zeros while training


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def member_of(registry: Registry) -> AfterValidator:
    """A pydantic validator: the value must be a name in ``registry`` (the one source of truth);
    the error lists the known names."""

    def check(v: str) -> str:
        if v not in registry:
            raise ValueError(f"{v!r} is unknown; known: {', '.join(registry.names())}")
        return v

    return AfterValidator(check)


def enum_of(registry: Registry) -> Any:
    """JSON Schema ``enum`` of the registry's names, read when the schema is made (so plug-ins
    registered by then are in it)."""

    def schema(s: dict[str, Any]) -> None:
        s["enum"] = registry.names()

    return Field(json_schema_extra=schema)


Allocation = Annotated[str, member_of(ALLOCATIONS), enum_of(ALLOCATIONS)]
Criterion = Annotated[str, member_of(CRITERIA), enum_of(CRITERIA)]
Schedule = Annotated[str, member_of(SCHEDULES), enum_of(SCHEDULES)]
Structure = Annotated[str, member_of(STRUCTURES), enum_of(STRUCTURES)]


def _bits(v: int | None, info) -> int | None:
    problem = None if v is None else bits_problem(v, weights=info.field_name == "weight_bits")
    if problem:
        raise ValueError(problem)
    return v


def _clusters(v: int | None) -> int | None:
    if v is not None and not 2 <= v <= MAX_CLUSTERS:
        raise ValueError(f"{v} clusters is not supported; allowed: 2..{MAX_CLUSTERS}")
    return v


def _fraction(v: float | None) -> float | None:
    if v is not None and not 0.0 <= v < 1.0:
        raise ValueError(f"{v} is not in [0, 1)")
    return v


class DataSpec(_Strict):
    name: str = "digits"  # registry name or a path to a .npz / .csv file
    path: str | None = None  # explicit file or folder for a registry dataset
    train: float | int | None = None  # fraction or count; None: the rest
    val: float | int = 0.15
    test: float | int = 0.2  # ignored where the dataset has an official test split
    scale: Literal["auto", "standard", "minmax", "unit", "none"] = "auto"
    seed: int = 0
    label_column: str | None = None
    stratify: bool = True  # splits keep every class in proportion; False: a plain permutation


class ModelSpec(_Strict):
    name: str = "mlp"  # registry name or "module:factory" (a function or class of yours)
    args: dict[str, Any] = {}
    path: str | None = None  # the folder "module" is imported from; set when the recipe is resolved


class QuantSpec(_Strict):
    weight_bits: int = 32  # 1 (binary) .. 16, 32 = float; activations: 2..16, 32
    act_bits: int = 32  # bits of QuantReLU outputs
    input_bits: int | None = None  # the input quantizer; None: same as act_bits
    input_max: float | None = None  # None: calibrated on the training split
    input_calibration: Literal["mae", "mse", "percentile", "max"] = "mae"  # how (quant.activations)
    act_max: float = 6.0  # QuantReLU clips at this value (the start, when learned)
    act_scale: Literal["fixed", "learned"] = "fixed"  # learned: LSQ steps for QuantReLU
    input_scale: Literal["learned", "fixed"] = "learned"  # the input quantizer's step: LSQ from the calibration
    per_channel: bool = False
    bias_bits: int = 32  # 32: float bias (see quant.fake_quant's bias policy)
    weight_scale: Literal["max", "learned"] = "max"  # learned: LSQ step sizes for the weights
    #                                    (max: max|w|/qmax, 1 bit: mean|w|; see quant.fake_quant)
    clusters: int | None = None  # weight sharing: k shared values per layer (quant.cluster)
    cluster_epochs: int = 3  # fine-tuning of the shared values after clustering
    cluster_reg: float = 0.0  # clustering-friendly regularizer (pull to the centres)

    _check_bits = field_validator("weight_bits", "act_bits", "input_bits", "bias_bits")(_bits)
    _check_clusters = field_validator("clusters")(_clusters)


class PruneSpec(_Strict):
    sparsity: float = 0.0  # final sparsity of the free layers, in [0, 1)
    criterion: Criterion = "magnitude"
    structure: Structure = "unstructured"
    structure_args: dict[str, Any] = {}  # e.g. {n: 2, m: 4} for N:M, {block: [4, 4]} for blocks,
    #                                      {round_to: 8} for channels; per layer: layers.<p>.structure_args
    allocation: Allocation = "global"
    schedule: Schedule = "iterative"
    rate: float = 0.1  # iterative: sparsity added per round
    of: Literal["original", "remaining"] = "original"
    rewind: Literal["ft", "lt"] = "ft"  # fine-tune, or lottery-ticket rewind to the initial weights
    n_steps: int = 10  # cubic: number of pruning events, one per epoch
    start_epoch: int = 0  # cubic: first epoch that prunes
    stop_after: int | None = 2  # stop once validation stayed outside select.max_drop this many steps

    _check_sparsity = field_validator("sparsity")(_fraction)

    @field_validator("stop_after")
    @classmethod
    def _stop_after(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"{v} is not >= 1 (null: never stop early)")
        return v

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"{v} is not in (0, 1)")
        return v


class SparseSpec(_Strict):
    """Options of the sparse optimizers (``train.optimizer`` hspg / obproxsg, see prune.optim)."""

    lam: float = 1e-3  # λ: group-lasso (hspg) or ℓ1 (obproxsg) strength
    n_p: int = 100  # Prox-SG steps before the half-space / orthant steps
    n_o: int | None = None  # obproxsg: orthant steps per cycle; None: orthant for good
    epsilon: float = 0.0  # hspg: half-space projection threshold, in [0, 1)
    groups: Literal["rows", "columns", "all"] = "rows"  # hspg: how a weight splits into groups

    _check_epsilon = field_validator("epsilon")(_fraction)

    @field_validator("lam", "n_p", "n_o")
    @classmethod
    def _non_negative(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError(f"{v} is not >= 0")
        return v

    @model_validator(mode="after")
    def _some_steps(self) -> SparseSpec:
        if self.n_o is not None and self.n_p + self.n_o == 0:
            raise ValueError(
                "n_p + n_o = 0; at least one step per cycle is needed (n_o: null "
                "switches to orthant steps for good after n_p)"
            )
        return self


class DistillSpec(_Strict):
    """Knowledge distillation: loss = (1 − weight)·CE + weight·T²·KL(teacher_T ‖ student_T)."""

    teacher: str = "round0"  # "round0": this run's trained, unpruned model; or a run directory
    temperature: float = 4.0
    weight: float = 0.5

    @field_validator("temperature")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"{v} is not > 0")
        return v

    @field_validator("weight")
    @classmethod
    def _unit(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{v} is not in [0, 1]")
        return v


class TrainSpec(_Strict):
    optimizer: Literal["adam", "adamw", "sgd", "hspg", "obproxsg"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd and hspg
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 100  # at most, per training round
    patience: int | None = 10  # early stopping on validation loss; None: off
    min_delta: float = 0.0
    lr_schedule: Literal["none", "cosine", "step"] = "none"
    l1: float = 0.0  # L1 penalty on the weights
    deterministic: bool = True
    threads: int | None = None
    sparse: SparseSpec | None = None  # hspg / obproxsg options; None: SparseSpec's defaults
    distill: DistillSpec | None = None  # knowledge distillation from a teacher (see DistillSpec)

    @field_validator("weight_decay")
    @classmethod
    def _no_decay_when_sparse(cls, v: float, info) -> float:
        opt = info.data.get("optimizer")
        if v and opt in SPARSE_OPTIMIZERS:
            raise ValueError(f"{v} is not supported by optimizer {opt!r}; allowed: 0 (its penalty is train.sparse.lam)")
        return v

    @field_validator("sparse")
    @classmethod
    def _sparse_needs_its_optimizer(cls, v: SparseSpec | None, info) -> SparseSpec | None:
        opt = info.data.get("optimizer")
        if v is not None and opt is not None and opt not in SPARSE_OPTIMIZERS:
            raise ValueError(
                f"set, but train.optimizer is {opt!r}; it is used by: "
                f"{', '.join(SPARSE_OPTIMIZERS)} (remove it, or --set train.sparse=null)"
            )
        return v

    @property
    def sparse_options(self) -> SparseSpec:
        """``sparse`` or, when unset, the defaults."""
        return self.sparse if self.sparse is not None else SparseSpec()


class LayerOverride(_Strict):
    weight_bits: int | None = None
    act_bits: int | None = None
    per_channel: bool | None = None
    sparsity: float | None = None  # this layer's final sparsity (outside the global pool)
    prune: bool | None = None  # False: never prune this layer
    structure_args: dict[str, Any] | None = None  # this layer's structure options (e.g. MPD's k)
    clusters: int | None = None  # this layer's number of shared values

    _check_bits = field_validator("weight_bits", "act_bits")(_bits)
    _check_clusters = field_validator("clusters")(_clusters)
    _check_sparsity = field_validator("sparsity")(_fraction)


class SelectSpec(_Strict):
    """Which pruning step a run delivers (``results.json``'s ``selected``, ``model.safetensors``).

    The most compressed step (``by``) whose **validation** ``metric`` is at most ``max_drop``
    points below the reference's: the 32-bit dense model of the same model, data and training
    budget (``reference: dense``, trained once and cached), or this run's own first step
    (``reference: none``). When no step is within, the most accurate step is delivered and
    ``within_tolerance`` is false. ``step`` delivers a given step instead (``last``, or a number);
    it is still compared with the reference."""

    reference: Literal["dense", "none"] = "dense"
    metric: Literal["accuracy", "balanced_accuracy"] = "accuracy"
    max_drop: float = 0.5  # points (0.5 = half a percentage point)
    by: Literal["bops", "size_bytes", "latency_ms"] = "bops"
    step: Literal["last"] | int | None = None  # deliver this step instead of choosing one

    @field_validator("step")
    @classmethod
    def _step(cls, v: str | int | None) -> str | int | None:
        if isinstance(v, int) and (isinstance(v, bool) or v < 0):
            raise ValueError(f"{v!r} is not a step number >= 0, 'last' or null")
        return v

    @field_validator("max_drop")
    @classmethod
    def _points(cls, v: float) -> float:
        if not 0.0 <= v <= 100.0:
            raise ValueError(f"{v} is not in [0, 100] (points of the metric)")
        return v


class Recipe(_Strict):
    """A whole experiment. ``Recipe.load(path)``, ``recipe.dump(path)``, ``recipe.override(...)``.

    Example:
        >>> r = Recipe(prune={"sparsity": 0.5}).override(["quant.weight_bits=6"])
        >>> (r.quant.weight_bits, r.prune.sparsity)
        (6, 0.5)
    """

    name: str = "run"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    quant: QuantSpec = QuantSpec()
    prune: PruneSpec = PruneSpec()
    train: TrainSpec = TrainSpec()
    layers: dict[str, LayerOverride] = {}
    select: SelectSpec = SelectSpec()  # which step the run delivers
    search: SearchSpec | None = None  # qaprune search: the space and objectives

    @model_validator(mode="after")
    def _cubic_fits(self) -> Recipe:
        if self.prune.schedule == "cubic" and self.prune.sparsity > 0:
            end = self.prune.start_epoch + self.prune.n_steps
            if end > self.train.epochs:
                raise ValueError(
                    f"prune.start_epoch + prune.n_steps = {end} exceeds train.epochs = "
                    f"{self.train.epochs}; the cubic schedule must end inside training"
                )
        return self

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: dict[str, Any]) -> Recipe:
        """Validate a plain dict; errors become one ``RecipeError`` naming every bad field."""
        if not isinstance(data, dict):
            raise RecipeError(f"recipe: expected a mapping at the top level, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RecipeError(format_errors(exc)) from None

    @classmethod
    def load(cls, path: str | Path, *, overrides: list[str] | None = None) -> Recipe:
        """Read a YAML or JSON recipe, apply ``key.path=value`` overrides, validate."""
        p = Path(path)
        if not p.is_file():
            raise RecipeError(f"recipe: no such file {str(p)!r}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RecipeError(f"recipe: {p} is not valid YAML/JSON: {exc}") from None
        return cls.parse(apply_overrides(data, overrides or []))

    def override(self, overrides: list[str]) -> Recipe:
        return Recipe.parse(apply_overrides(self.to_dict(), overrides))

    # --- output -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def dump(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(json.dumps(self.to_dict(), indent=2) if p.suffix == ".json" else self.to_yaml())
        return p

    # --- per-layer resolution -----------------------------------------------------------------
    def layer(self, name: str) -> LayerOverride:
        """The merged overrides for module ``name`` (later patterns win)."""
        merged: dict[str, Any] = {}
        for pattern, spec in self.layers.items():
            if fnmatch.fnmatchcase(name, pattern):
                merged.update(spec.model_dump(exclude_none=True))
        return LayerOverride(**merged)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML: numbers, lists, true/false, null)."""
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set {item!r}: expected key.path=value")
        node, parts = out, key.split(".")
        if parts[0] == "layers" and len(parts) > 3:  # a module pattern may contain dots
            parts = ["layers", ".".join(parts[1:-1]), parts[-1]]
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:  # an unset optional section (train.sparse: null)
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {item!r}: recipe.{'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    return out


def format_errors(exc: ValidationError) -> str:
    """One line per error: ``recipe.<field>: <what is wrong>; allowed: …``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        field = f"recipe.{loc}" if loc else "recipe"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; allowed: {', '.join(_allowed_fields(err['loc']))}"
        elif "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
            msg = f"{err['input']!r}: {msg}" if repr(err["input"]) not in msg else msg
        lines.append(f"{field}: {msg}")
    return "\n".join(lines)


def _allowed_fields(loc: tuple) -> list[str]:
    model: type[BaseModel] = Recipe
    parts, i = [str(p) for p in loc[:-1]], 0
    while i < len(parts):
        if model is Recipe and parts[i] == "layers":  # layers.<pattern>.<field>
            model, i = LayerOverride, i + 2
            continue
        ann = model.model_fields[parts[i]].annotation
        for t in (ann, *get_args(ann)):  # a section, or an optional one (SparseSpec | None)
            if isinstance(t, type) and issubclass(t, BaseModel):
                model = t
                break
        i += 1
    return list(model.model_fields)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe (``qaprune schema``)."""
    return Recipe.model_json_schema()

"""The operating point: which step of a run is delivered.

Every step of a run is measured on the validation split (``val_accuracy``,
``val_balanced_accuracy``) and on the test split. A step is *within tolerance* when its
validation ``metric`` is at most ``max_drop`` points below the reference's (``floor``). The
delivered step is the most compressed one within tolerance (least ``bops``, ``size_bytes`` or
``latency_ms``; ties go to the more accurate, then the earlier step); when none is within, the
most accurate step, and the run says so. Selection reads validation numbers only, never test.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qaprune.data import Dataset
from qaprune.quant.activations import InputRangeWarning
from qaprune.recipe import Recipe
from qaprune.reference import Reference
from qaprune.rundir import build, load_into

EPS = 1e-12


def floor_of(reference_val: float, max_drop: float) -> float:
    """The lowest validation metric within tolerance: reference − max_drop points.

    Example:
        >>> round(floor_of(0.95, 0.5), 6)
        0.945
    """
    return reference_val - max_drop / 100.0


def within(entry: Mapping[str, Any], *, metric: str, floor: float) -> bool:
    """Whether a history entry's validation ``metric`` reaches ``floor``."""
    value = entry.get(f"val_{metric}")
    return value is not None and float(value) >= floor - EPS


def choose(
    history: Sequence[Mapping[str, Any]],
    *,
    metric: str,
    floor: float,
    by: str = "bops",
    costs: Mapping[int, float] | None = None,
    fixed: str | int | None = None,
) -> tuple[int, bool]:
    """(step, within tolerance) of the step to deliver. ``costs``: step -> cost when ``by`` is
    not a key of the entries (measured latency). ``fixed``: deliver that step ("last" or a step
    number) instead of choosing.

    Example:
        >>> h = [{"step": 0, "val_accuracy": 0.95, "bops": 10.0}, {"step": 1, "val_accuracy": 0.948, "bops": 5.0},
        ...      {"step": 2, "val_accuracy": 0.90, "bops": 2.0}]
        >>> choose(h, metric="accuracy", floor=0.945), choose(h, metric="accuracy", floor=0.96)
        ((1, True), (0, False))
    """
    if not history:
        raise ValueError("choose: an empty history has no step to deliver")

    def cost(e: Mapping[str, Any]) -> float:
        return float(costs[e["step"]] if costs is not None else e[by])

    def acc(e: Mapping[str, Any]) -> float:
        return float(e.get(f"val_{metric}") or 0.0)

    if fixed is not None:
        entry = history[-1] if fixed == "last" else next((e for e in history if e["step"] == fixed), None)
        if entry is None:
            raise ValueError(f"select.step: {fixed} is not a step of this run (steps 0..{history[-1]['step']})")
        return int(entry["step"]), within(entry, metric=metric, floor=floor)
    ok = [e for e in history if within(e, metric=metric, floor=floor)]
    if ok:
        best = min(ok, key=lambda e: (cost(e), -acc(e), e["step"]))
        return int(best["step"]), True
    return int(max(history, key=lambda e: (acc(e), -e["step"]))["step"]), False


def should_stop(history: Sequence[Mapping[str, Any]], *, metric: str, floor: float, stop_after: int | None) -> bool:
    """Whether the last ``stop_after`` pruning steps (step ≥ 1) were all outside tolerance.

    Example:
        >>> h = [{"step": k, "val_accuracy": a} for k, a in enumerate([0.95, 0.94, 0.90, 0.85])]
        >>> should_stop(h, metric="accuracy", floor=0.945, stop_after=2), should_stop(h[:3], metric="accuracy",
        ...     floor=0.945, stop_after=3)
        (True, False)
    """
    pruned = [e for e in history if e["step"] >= 1]
    if stop_after is None or len(pruned) < stop_after:
        return False
    return not any(within(e, metric=metric, floor=floor) for e in pruned[-stop_after:])


def deployed_latency_ms(
    model: nn.Module, example: Tensor, *, batch: int = 1, threads: int = 1, repeats: int = 20, backend: str = "torch"
) -> float:
    """Median milliseconds of ``model`` in its deployment form: baked, pruned channels removed
    (sparse kernels where faster), batch norms folded. example (N, ...): inputs it accepts."""
    from qaprune.export import shrink
    from qaprune.export.fold import fold_batchnorm
    from qaprune.metrics.latency import measure_latency

    model = model.cpu().eval()
    plain, _ = fold_batchnorm(shrink(model, example[:64].cpu()).model)
    rows = measure_latency(
        plain,
        tuple(example.shape[1:]),
        batch_sizes=(batch,),
        threads=(threads,),
        backend=backend,
        warmup=5,
        repeats=repeats,
    )
    return float(rows[0]["median_ms"])


def summary(
    entry: Mapping[str, Any], *, within_tolerance: bool, reference_accuracy: float | None, max_drop: float, **extra: Any
) -> dict[str, Any]:
    """``results.json``'s ``selected``: the delivered step and how it compares."""
    return {
        "step": int(entry["step"]),
        "accuracy": entry.get("accuracy"),
        "balanced_accuracy": entry.get("balanced_accuracy"),
        "bops_reduction": entry.get("bops_reduction"),
        "reference_accuracy": reference_accuracy,
        "max_drop": max_drop,
        "within_tolerance": within_tolerance,
        **extra,
    }


# --- the run's side: which floor, whether to stop, the delivered step's model -----------------------
def tolerance_floor(recipe: Recipe, history: list[dict[str, Any]], ref: Reference | None) -> float | None:
    """The validation floor of the tolerance: the reference's, or this run's step 0's."""
    metric = recipe.select.metric
    base = ref.val.get(metric) if ref is not None else next((e.get(f"val_{metric}") for e in history), None)
    return None if base is None else floor_of(float(base), recipe.select.max_drop)


def stop_here(recipe: Recipe, history: list[dict[str, Any]], ref: Reference | None, log) -> bool:
    """Whether pruning stops here: validation stayed outside the tolerance ``prune.stop_after`` steps."""
    floor = tolerance_floor(recipe, history, ref)
    metric, after = recipe.select.metric, recipe.prune.stop_after
    if recipe.select.step is not None:  # a given step is delivered: every step is run
        return False
    if floor is None or not should_stop(history, metric=metric, floor=floor, stop_after=after):
        return False
    log(f"stopped after step {history[-1]['step']}: validation {metric} below {floor:.4f} for {after} steps")
    return True


def device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def step_model(recipe: Recipe, data: Dataset, run_dir: Path, step: int, device: torch.device) -> nn.Module:
    """A fresh model with step ``step``'s weights (masks, channel masks, clusters as they were then)."""
    with warnings.catch_warnings():  # the run logged the build's warnings already
        warnings.simplefilter("ignore", InputRangeWarning)
        model = build(recipe, data, device)
    return load_into(model, run_dir / "checkpoints" / f"step_{step:03d}.safetensors")


def deliver(
    recipe: Recipe, data: Dataset, run_dir: Path, history: list, ref: Reference | None, log, *, device: torch.device
) -> tuple[dict[str, Any], nn.Module]:
    """Choose the step to deliver (``select``); -> (``selected``, a model with its weights)."""
    sel, floor = recipe.select, tolerance_floor(recipe, history, ref)
    timed = sel.by == "latency_ms" and sel.step is None
    costs = step_latencies(recipe, data, run_dir, history, floor, device) if timed else None
    step, ok = choose(
        history, metric=sel.metric, floor=floor if floor is not None else 0.0, by=sel.by, costs=costs, fixed=sel.step
    )
    if not ok and sel.step is None:
        log(
            f"no step within {sel.max_drop} points of the reference's validation {sel.metric} "
            f"({floor:.4f} needed); delivering the most accurate, step {step}"
        )
    entry = next(e for e in history if e["step"] == step)
    extra = {"metric": sel.metric, "by": sel.by, "val_floor": floor, "val": entry.get(f"val_{sel.metric}")}
    if costs is not None:
        extra["latency_ms"] = costs[step]
    ref_acc = ref.accuracy if ref is not None else None
    selected = summary(entry, within_tolerance=ok, reference_accuracy=ref_acc, max_drop=sel.max_drop, **extra)
    return selected, step_model(recipe, data, run_dir, step, device)


def step_latencies(
    recipe: Recipe, data: Dataset, run_dir: Path, history: list, floor: float | None, device: torch.device
) -> dict[int, float]:
    """Measured deployed latency of every step (``select.by: latency_ms``); steps outside the
    tolerance are not timed (they cannot be chosen by cost) and count as infinitely slow."""
    out = {}
    for e in history:
        if floor is not None and not within(e, metric=recipe.select.metric, floor=floor):
            out[e["step"]] = float("inf")
            continue
        out[e["step"]] = deployed_latency_ms(step_model(recipe, data, run_dir, e["step"], device), data.x_test)
    return out

"""``run(recipe)``: one quantization-aware pruning experiment, written to a run directory.

Round 0 trains the (quantized) model; every later round prunes to the schedule's next target,
fine-tunes (FT) or rewinds to the initial weights (LT), retrains and is measured. Each finished
round is checkpointed (safetensors + JSON), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qaprune import __version__ as VERSION
from qaprune.compress import recipe_clusters, rewind
from qaprune.data import Dataset
from qaprune.errors import RecipeError
from qaprune.io import copy_state, load_tensors, save_tensors, write_json
from qaprune.metrics import measure
from qaprune.metrics.classification import accuracy, balanced_accuracy, predict
from qaprune.param import prunable_layers
from qaprune.prune import CRITERIA, prune_to
from qaprune.prune.optim import groups_to_masks
from qaprune.prune.schedules import SCHEDULES, steps
from qaprune.prune.stats import MomentumTracker, collect_stats
from qaprune.quant.activations import InputRangeWarning
from qaprune.quant.cluster import ClusterPull, cluster_model
from qaprune.recipe import SPARSE_OPTIMIZERS, Recipe
from qaprune.reference import Reference, reference
from qaprune.rundir import (
    build,
    checkpoint,
    environment,
    load_data,
    load_into,
    load_run,
    prepare,
    resolve_recipe,
    setup,
    start_or_resume,
)
from qaprune.select import deliver, device_of, stop_here
from qaprune.train import fit

__all__ = ["RunResult", "run"]


@dataclass
class RunResult:
    run_dir: Path
    results: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.results["metrics"]


def plan(recipe: Recipe, model: nn.Module) -> tuple[list[float], dict[str, float], float]:
    """Targets of the iterative/oneshot rounds, fixed per-layer sparsities, and the final level."""
    p, layers = recipe.prune, prunable_layers(model)
    fixed = {n: recipe.layer(n).sparsity for n in layers if recipe.layer(n).sparsity is not None}
    final = p.sparsity if p.sparsity > 0 else max(fixed.values(), default=0.0)
    if final <= 0 or p.schedule == "cubic":
        return [], fixed, final
    args = {"rate": p.rate, "of_": p.of} if p.schedule == "iterative" else {}
    return steps(p.schedule, final=final, **args), fixed, final


@dataclass
class _Pruning:
    """What a pruning event needs: the recipe, per-layer fixed sparsities, the final level, and
    the data (and training-time tracker) for criteria that score from statistics."""

    recipe: Recipe
    fixed: dict[str, float]
    final: float
    data: Any = None
    tracker: Any = None

    @property
    def needs(self) -> frozenset[str]:
        return getattr(CRITERIA.get(self.recipe.prune.criterion), "needs", frozenset())

    def __call__(self, model: nn.Module, target: float) -> None:
        p, frac = self.recipe.prune, target / self.final if self.final else 1.0
        gen = torch.Generator().manual_seed(self.recipe.seed)
        stats = None
        if self.needs:
            stats = collect_stats(
                model,
                self.data.x_train,
                self.data.y_train,
                needs=self.needs,
                momentum=self.tracker,
                generator=torch.Generator().manual_seed(self.recipe.seed),
            )
        layer_args = {n: a for n in prunable_layers(model) if (a := self.recipe.layer(n).structure_args)}
        prune_to(
            model,
            p.sparsity * frac,
            criterion=p.criterion,
            structure=p.structure,
            allocation=p.allocation,
            fixed={n: s * frac for n, s in self.fixed.items()},
            generator=gen,
            stats=stats,
            structure_args=p.structure_args,
            layer_args=layer_args,
            example_input=self.data.x_train[:2],  # for structures that act on channel groups
        )


def run(
    recipe: Recipe | str | Path | dict,
    *,
    out: str | Path | None = None,
    data_dir: str | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    progress: bool = False,
    log=print,
) -> RunResult:
    """Run a recipe end to end; returns the run directory and its results.

    Example:
        >>> res = run({"data": {"name": "digits"}, "train": {"epochs": 2}}, out="/tmp/qap-doc")
        >>> 0.0 <= res.metrics["accuracy"] <= 1.0
        True
    """
    recipe = resolve_recipe(recipe, overrides)
    run_dir = Path(out) if out is not None else Path("runs") / recipe.name
    ckpt = prepare(run_dir, recipe, resume)
    device = setup(recipe)
    data = load_data(recipe, data_dir, device)
    ref = _reference(recipe, data, data_dir, progress, log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputRangeWarning)
        model = build(recipe, data, device)
    notes = _logged_warnings(caught, log)
    targets, fixed, final = plan(recipe, model)
    pruning = _Pruning(recipe, fixed, final, data)
    if "momentum" in pruning.needs:
        pruning.tracker = MomentumTracker(model)
    state = start_or_resume(model, ckpt, resume)
    history, timing = state["history"], state["timing"]
    init_state = load_tensors(ckpt / "init.safetensors")
    t_start = time.perf_counter()
    ks = recipe_clusters(model, recipe)
    last = len(targets) + (1 if ks else 0)  # weight sharing is a round of its own, after pruning
    if isinstance(recipe.select.step, int) and recipe.select.step > last:
        raise RecipeError(f"recipe.select.step: {recipe.select.step}; this run has steps 0..{last}")
    teacher = None
    for step in range(state["next_step"], last + 1):
        if stop_here(recipe, history, ref, log):
            break
        teacher = teacher or _teacher(recipe, data, device, ckpt, step, data_dir)
        if ks and step == last:
            target, hook, res = final, None, _cluster_round(model, recipe, data, ks, step, progress, teacher)
        else:
            target, hook, res = _prune_round(
                model,
                recipe,
                data,
                pruning,
                targets,
                step,
                init_state,
                progress,
                pull=_pull(recipe, ks) if step == len(targets) else None,
                teacher=teacher,
            )
        entry = _entry(model, data, step, target if hook is None else final, res)
        entry["phase"] = "cluster" if ks and step == last else "prune" if step else "train"
        history.append(entry)
        timing["epochs"] += res.epochs
        timing["train_seconds"] += res.train_seconds
        log(
            f"step {step}: sparsity {entry['sparsity']:.3f} accuracy {entry['accuracy']:.4f} "
            f"BOPs {entry['bops']:.4g} ({entry['bops_reduction']:.1f}x) epochs {res.epochs}"
        )
        checkpoint(model, ckpt, step, history, timing)
    timing["total_seconds"] = timing.get("total_seconds", 0.0) + time.perf_counter() - t_start
    return RunResult(run_dir, _finish(model, recipe, data, run_dir, history, timing, ref, log, notes))


def _logged_warnings(caught: list[warnings.WarningMessage], log) -> list[str]:
    """Log the warnings that building the model raised (one line each); others are re-raised."""
    notes = []
    for w in caught:
        if issubclass(w.category, InputRangeWarning):
            notes.append(str(w.message))
            log(f"warning: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return notes


def _reference(recipe: Recipe, data: Dataset, data_dir: str | None, progress: bool, log) -> Reference | None:
    """The cached 32-bit dense reference (``select.reference: dense``), trained when missing."""
    if recipe.select.reference == "none":
        return None

    def train(dense: Recipe, out: Path) -> None:
        run(dense, out=out, data_dir=data_dir, resume=True, progress=progress, log=lambda m: log(f"reference: {m}"))

    return reference(recipe, data, train=train, log=log)


def _prune_round(
    model: nn.Module,
    recipe: Recipe,
    data,
    pruning: _Pruning,
    targets: list[float],
    step: int,
    init_state: dict,
    progress: bool,
    *,
    pull=None,
    teacher=None,
) -> tuple[float, Any, Any]:
    """Round ``step``: prune to its target (none in round 0), rewind for LT, train. -> (target,
    the cubic schedule's epoch hook or None, the fit result)."""
    target = targets[step - 1] if step else 0.0
    if step:
        pruning(model, target)
        if recipe.prune.rewind == "lt":
            rewind(model, init_state)
    hook = _gradual_hook(model, pruning) if step == 0 and recipe.prune.schedule == "cubic" else None
    res = fit(
        model,
        data.x_train,
        data.y_train,
        data.x_val,
        data.y_val,
        spec=recipe.train,
        seed=recipe.seed + step,
        on_epoch=hook,
        on_step=_both(pruning.tracker, pull),
        teacher=teacher,
        progress=progress,
        label=f"step {step}",
    )
    if recipe.train.optimizer in SPARSE_OPTIMIZERS:  # the zeros it reached stay zero
        groups_to_masks(model, res.optimizer)
    return target, hook, res


def _cluster_round(
    model: nn.Module,
    recipe: Recipe,
    data,
    ks: dict[str, int],
    step: int,
    progress: bool,
    teacher: nn.Module | None = None,
):
    """Weight sharing (Deep Compression): optimal 1-D k-means of every layer's pruned weights, then
    ``quant.cluster_epochs`` epochs that train the shared values (pruned weights stay zero)."""
    cluster_model(model, ks)
    spec = recipe.train.model_copy(update={"epochs": recipe.quant.cluster_epochs})
    return fit(
        model,
        data.x_train,
        data.y_train,
        data.x_val,
        data.y_val,
        spec=spec,
        seed=recipe.seed + step,
        teacher=teacher,
        progress=progress,
        label=f"step {step} (clusters)",
    )


def _teacher(
    recipe: Recipe, data, device: torch.device, ckpt: Path, step: int, data_dir: str | None = None
) -> nn.Module | None:
    """The distillation teacher (``train.distill``), frozen in eval mode: this run's round-0 model
    (from its checkpoint, so also after --resume; available from round 1 on) or another run's."""
    d = recipe.train.distill
    if d is None or (d.teacher == "round0" and step == 0):
        return None
    if d.teacher == "round0":
        teacher = load_into(build(recipe, data, device), ckpt / "step_000.safetensors")
    else:
        teacher = load_run(d.teacher, data_dir=data_dir)[2].to(device)  # its data: where this run's is
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def _pull(recipe: Recipe, ks: dict[str, int]):
    """The clustering-friendly pull toward the centres (``quant.cluster_reg``) for the last
    pruning round before weight sharing, or None."""
    if not ks or recipe.quant.cluster_reg <= 0:
        return None
    return ClusterPull(ks, strength=recipe.quant.cluster_reg, lr=recipe.train.lr)


def _both(*hooks):
    """One ``on_step`` hook calling every given one (None when there is none)."""
    live = [h for h in hooks if h is not None]
    if len(live) < 2:
        return live[0] if live else None

    def step(model: nn.Module) -> None:
        for h in live:
            h(model)

    return step


def _entry(model: nn.Module, data: Dataset, step: int, target: float, res) -> dict[str, Any]:
    m = measure(model, data.x_test, data.y_test, num_classes=data.num_classes, class_names=data.class_names)
    m.pop("layers")
    val = _val_metrics(model, data)
    return {
        "step": step,
        "target_sparsity": target,
        "epochs": res.epochs,
        "best_val_loss": res.best_val_loss,
        **val,
        **m,
    }


def _val_metrics(model: nn.Module, data: Dataset) -> dict[str, float]:
    """Accuracy and balanced accuracy on the validation split (what selection reads)."""
    logits = predict(model, data.x_val)
    return {
        "val_accuracy": accuracy(logits, data.y_val),
        "val_balanced_accuracy": balanced_accuracy(logits, data.y_val),
    }


def _gradual_hook(model: nn.Module, pruning: _Pruning):
    """Cubic (Zhu & Gupta) pruning inside one training run: one pruning event per epoch."""
    p, cubic, final = pruning.recipe.prune, SCHEDULES.get("cubic"), pruning.final

    def hook(epoch: int) -> bool:
        k = epoch - p.start_epoch + 1
        if final <= 0 or not 1 <= k <= p.n_steps:
            return False
        pruning(model, cubic(k, final=final, n_steps=p.n_steps))
        return True

    return hook


def _finish(
    model: nn.Module,
    recipe: Recipe,
    data: Dataset,
    run_dir: Path,
    history: list,
    timing: dict,
    ref: Reference | None,
    log,
    notes: list[str] | None = None,
) -> dict:
    from qaprune.report import write_report
    from qaprune.storage import save_qap

    selected, model = deliver(recipe, data, run_dir, history, ref, log, device=device_of(model))
    metrics = measure(model, data.x_test, data.y_test, num_classes=data.num_classes, class_names=data.class_names)
    layers = metrics.pop("layers")
    save_tensors(run_dir / "model.safetensors", copy_state(model))
    metrics["size_bytes"] = save_qap(model, run_dir / "model.qap")  # the bytes size_bytes counts
    metrics["compression"] = metrics["size_bytes_fp32"] / metrics["size_bytes"]  # against float32 dense
    timing["seconds_per_epoch"] = timing["train_seconds"] / max(timing["epochs"], 1)
    results = {
        "name": recipe.name,
        "qaprune_version": VERSION,
        "metrics": metrics,
        "selected": selected,
        "reference": None if ref is None else ref.to_dict(),
        "warnings": notes or [],
        "layers": layers,
        "history": history,
        "timing": timing,
        "data": data.summary(),
        "recipe": recipe.to_dict(),
        "environment": environment(),
    }
    write_json(run_dir / "results.json", results)
    write_report(run_dir)
    return results

"""One trial: sample a recipe, run it into ``OUT/trials/<n>/``, return its objective values.

Each trial stores its metrics as the user attribute ``metrics`` (so constraints, reports and
optuna-dashboard see them) and its run directory as ``run_dir``; a retried trial (its worker died)
inherits ``run_dir`` and resumes that run from its last checkpoint.

Example:
    >>> from qaprune.recipe.search import SearchSpec
    >>> spec = SearchSpec(space={"prune.sparsity": {"low": 0.1, "high": 0.9}}, objectives=["accuracy"],
    ...                   constraints=[{"metric": "accuracy", "min": -0.01, "reference": "dense"}])
    >>> bounds = constraint_bounds(spec, dense={"accuracy": 0.95})
    >>> [(name, round(v, 6)) for name, v in constraint_items({"accuracy": 0.93}, bounds)]
    [('accuracy>=0.94', 0.01)]
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qaprune.autosearch.space import expand_space, suggest, trial_recipe
from qaprune.errors import QapruneError
from qaprune.recipe import Recipe
from qaprune.recipe.search import CURVE_METRIC, LATENCY, LatencySpec, SearchSpec, finite

INFEASIBLE = 1.0e6  # the violation of a trial without metrics (pruned): never feasible
STEP_LINE = re.compile(r"^step (\d+):.*?\baccuracy ([-+0-9.eE]+|nan)")


class SearchError(QapruneError):
    """A search cannot go on: unreachable storage, a study of another recipe, failing trials."""


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics dict (what a trial stores and is judged on)."""
    return {k: float(v) for k, v in metrics.items() if finite(v)}


def objective_values(metrics: dict[str, float], spec: SearchSpec) -> list[float]:
    missing = [m for m in spec.metrics if m not in metrics]
    if missing:
        raise SearchError(f"objectives {missing}: not in the trial's metrics ({', '.join(sorted(metrics))})")
    return [metrics[m] for m in spec.metrics]


def constraint_bounds(spec: SearchSpec, dense: dict[str, float] | None) -> list[tuple[str, float | None, float | None]]:
    """(metric, min, max) per constraint, with ``reference: dense`` offsets resolved."""
    out = []
    for c in spec.constraints:
        base = 0.0
        if c.reference == "dense":
            if not dense or c.metric not in dense:
                raise SearchError(f"constraint on {c.metric}: the dense baseline has no such metric")
            base = dense[c.metric]
        out.append((c.metric, None if c.min is None else base + c.min, None if c.max is None else base + c.max))
    return out


def constraint_items(
    metrics: dict[str, float] | None, bounds: list[tuple[str, float | None, float | None]]
) -> list[tuple[str, float]]:
    """Optuna's convention, one (name, value) per bound: <= 0 is met, > 0 is by how much it is
    missed; a trial without metrics (pruned) misses every bound."""
    out = []
    for metric, low, high in bounds:
        value = (metrics or {}).get(metric)
        for bound, sign, op in ((low, 1.0, ">="), (high, -1.0, "<=")):
            if bound is not None:
                out.append((f"{metric}{op}{bound:.6g}", INFEASIBLE if value is None else sign * (bound - value)))
    return out


def constraint_values(metrics: dict[str, float] | None, bounds) -> list[float]:
    return [v for _, v in constraint_items(metrics, bounds)]


def feasible(metrics: dict[str, float] | None, bounds) -> bool:
    return metrics is not None and all(v <= 0 for v in constraint_values(metrics, bounds))


def accuracy_floor(bounds) -> float | None:
    """The highest accuracy minimum among the constraints (the threshold pruner's line)."""
    lows = [low for metric, low, _ in bounds if metric == CURVE_METRIC and low is not None]
    return max(lows) if lows else None


@dataclass
class Context:
    """Everything a trial needs, the same in every worker."""

    base: Recipe
    spec: SearchSpec
    out: Path
    data_dir: str | None = None
    dense: dict[str, float] | None = None
    bound: float | None = None
    log: Callable[[str], None] = print
    layers: tuple[str, ...] = ()  # the model's weight layers (for per_layer parameters)
    space: dict[str, Any] = field(default_factory=dict)  # the space, per_layer entries expanded

    def __post_init__(self) -> None:
        self.space = expand_space(self.spec.space, self.layers)

    @property
    def bounds(self):
        return constraint_bounds(self.spec, self.dense)

    def constraints(self, trial: Any) -> list[float]:
        """optuna's ``constraints_func`` (FrozenTrial -> violations), for optuna < 5."""
        return constraint_values(trial.user_attrs.get("metrics"), self.bounds)

    def set_constraints(self, trial: Any, metrics: dict[str, float] | None) -> None:
        """Record the trial's constraint values (optuna >= 5: ``Trial.set_constraint``)."""
        if hasattr(trial, "set_constraint"):
            for name, value in constraint_items(metrics, self.bounds):
                trial.set_constraint(name, value)


class StepReporter:
    """The runner's ``log``: reads each pruning round's accuracy from its step line, reports it
    to the trial (optuna pruners) and raises ``TrialPruned`` when the trial is hopeless."""

    def __init__(self, trial: Any, *, report: bool, floor: float | None, log: Callable[[str], None]) -> None:
        self.trial, self.report, self.floor, self.log = trial, report, floor, log

    def __call__(self, msg: str) -> None:
        import optuna

        self.log(f"trial {self.trial.number}: {msg}")
        m = STEP_LINE.match(msg)
        if m is None:
            return
        step, acc = int(m.group(1)), float(m.group(2))
        if self.floor is not None and not acc >= self.floor:
            raise optuna.TrialPruned(f"step {step}: {CURVE_METRIC} {acc:.4f} below the constraint {self.floor:.4f}")
        if self.report:
            self.trial.report(acc, step)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"step {step}: {CURVE_METRIC} {acc:.4f} (pruner)")


def run_trial(
    ctx: Context, recipe: Recipe, run_dir: Path, *, resume: bool, log: Callable[[str], None]
) -> dict[str, float]:
    """Run one recipe into ``run_dir`` (resuming it when asked); -> its numeric metrics, plus
    ``latency_ms`` when the search measures latency."""
    from qaprune.runner import run

    result = run(recipe, out=run_dir, data_dir=ctx.data_dir, resume=resume, log=log)
    metrics = numeric(result.metrics)
    if ctx.spec.needs_latency:
        metrics[LATENCY] = measure_run_latency(run_dir, ctx.spec.latency or LatencySpec(), data_dir=ctx.data_dir)
    return metrics


def measure_run_latency(run_dir: str | Path, spec: LatencySpec, *, data_dir: str | None = None) -> float:
    """Median milliseconds of the run's delivered model in its deployment form (``select.deployed_latency_ms``)."""
    from qaprune.rundir import load_run
    from qaprune.select import deployed_latency_ms

    _, data, model = load_run(run_dir, data_dir=data_dir)
    return deployed_latency_ms(
        model, data.x_test, batch=spec.batch, threads=spec.threads, repeats=spec.repeats, backend=spec.backend
    )


class TrialObjective:
    """The callable handed to ``study.optimize``; remembers the last trial it started."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.last: int | None = None  # number of the trial in progress / last run here
        floor = accuracy_floor(ctx.bounds) if ctx.spec.pruner == "threshold" else None
        self.floor, self.report = floor, ctx.spec.pruner in ("median", "hyperband")

    def __call__(self, trial: Any) -> float | list[float]:
        self.last = trial.number
        params = suggest(trial, self.ctx.space, bound=self.ctx.bound)
        resume = "run_dir" in trial.user_attrs  # a retry of a trial whose worker died
        rel = trial.user_attrs.get("run_dir", f"trials/{trial.number}")
        trial.set_user_attr("run_dir", rel)
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), "trial": trial.number})
        metrics = _same_params(trial)
        if metrics is None:
            recipe = trial_recipe(self.ctx.base, params, name=f"{self.ctx.base.name}-t{Path(rel).name}")
            metrics = self._run(trial, recipe, self.ctx.out / rel, resume=resume)
        trial.set_user_attr("metrics", metrics)
        self.ctx.set_constraints(trial, metrics)
        values = objective_values(metrics, self.ctx.spec)
        self.ctx.log(
            f"trial {trial.number}: "
            + ", ".join(f"{m} {v:.6g}" for m, v in zip(self.ctx.spec.metrics, values))
            + ("" if feasible(metrics, self.ctx.bounds) else " (misses a constraint)")
        )
        return values[0] if len(values) == 1 else values

    def _run(self, trial: Any, recipe: Recipe, run_dir: Path, *, resume: bool) -> dict[str, float]:
        import optuna

        reporter = StepReporter(trial, report=self.report, floor=self.floor, log=self.ctx.log)
        try:
            return run_trial(self.ctx, recipe, run_dir, resume=resume, log=reporter)
        except optuna.TrialPruned:
            self.ctx.set_constraints(trial, None)  # a pruned trial is infeasible
            raise


def _same_params(trial: Any) -> dict[str, float] | None:
    """Metrics of a finished trial with exactly these parameters (training is deterministic, so
    a sampler that proposes a finished configuration again gets its numbers, not a rerun)."""
    import optuna

    for other in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if other.params == trial.params and "metrics" in other.user_attrs:
            trial.set_user_attr("same_as", other.number)
            trial.set_user_attr("run_dir", other.user_attrs.get("run_dir", f"trials/{other.number}"))
            return dict(other.user_attrs["metrics"])
    return None

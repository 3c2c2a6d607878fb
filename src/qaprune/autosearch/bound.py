"""Before the trials: the dense float baseline (for constraints relative to it) and Condensa's
first phase, the highest ``prune.sparsity`` that meets every constraint.

The bound is found by bisection over the space's range of ``prune.sparsity`` (it assumes the
constraints get harder as sparsity grows, as accuracy floors do): first the top of the range,
then midpoints. Its runs are trials of their own study (``<study>/sparsity-bound``, next to the
main one) and run directories ``OUT/bound/sparsity-<s>/``; a killed search replays the finished
ones and resumes the interrupted one. The result is the main study's user attribute
``sparsity_bound``, which caps prune.sparsity for every worker.

Example:
    >>> next_point(0.5, 0.9, [])                 # first the top of the range
    0.9
    >>> next_point(0.5, 0.9, [(0.9, False)])     # it failed: the midpoint
    0.7
"""

from __future__ import annotations

from typing import Any

from qaprune.autosearch.objectives import Context, StepReporter, accuracy_floor, feasible, run_trial
from qaprune.autosearch.space import trial_recipe
from qaprune.autosearch.study import open_study
from qaprune.recipe.search import SPARSITY
from qaprune.reference import dense_recipe

DENSE_ATTR, BOUND_ATTR = "dense_metrics", "sparsity_bound"


def dense_baseline(study: Any, ctx: Context) -> dict[str, float] | None:
    """The dense baseline's metrics (run once into ``OUT/dense``, kept as a study attribute)."""
    if not ctx.spec.needs_dense:
        return None
    if DENSE_ATTR in study.user_attrs:
        return dict(study.user_attrs[DENSE_ATTR])
    ctx.log("dense float baseline (for constraints relative to it)")
    recipe = dense_recipe(ctx.base)
    metrics = run_trial(ctx, recipe, ctx.out / "dense", resume=True, log=lambda m: ctx.log(f"dense: {m}"))
    study.set_user_attr(DENSE_ATTR, metrics)
    return metrics


def next_point(low: float, high: float, tested: list[tuple[float, bool]]) -> float | None:
    """The bisection's next sparsity after the ``tested`` (sparsity, feasible) results, in order;
    None when the top of the range is feasible (nothing left to find)."""
    lo, hi = low, high
    for k, (s, ok) in enumerate(tested):
        if ok and k == 0:
            return None
        lo, hi = (s, hi) if ok else (lo, s)
    return high if not tested else (lo + hi) / 2


def sparsity_bound(study: Any, storage: Any, ctx: Context, name: str) -> float | None:
    """Find (or read back) the highest feasible prune.sparsity; None when not asked for."""
    spec = ctx.spec
    if spec.sparsity_bound is None:
        return None
    if BOUND_ATTR in study.user_attrs:
        return float(study.user_attrs[BOUND_ATTR])
    import optuna

    bstudy = open_study(storage, f"{name}/sparsity-bound", ctx.base, directions=["maximize"], metric_names=[SPARSITY])
    p = spec.space[SPARSITY]
    dist = optuna.distributions.FloatDistribution(float(p.low), float(p.high))
    while True:  # a resumed search replays the finished runs and goes on from there
        tested = _tested(bstudy, ctx)
        s = next_point(float(p.low), float(p.high), tested) if len(tested) < spec.sparsity_bound.trials else None
        if s is None:
            break
        _run_point(bstudy, ctx, s, dist)
    good = [s for s, ok in tested if ok]
    bound = max(good) if good else float(p.low)
    ctx.log(
        f"sparsity bound: {bound:.4g} ({len(tested)} runs; "
        + ("none met the constraints: searching at the low end" if not good else "searching at or below it")
        + ")"
    )
    study.set_user_attr(BOUND_ATTR, bound)
    return bound


def _tested(bstudy: Any, ctx: Context) -> list[tuple[float, bool]]:
    """(sparsity, feasible) of the finished bound runs in order; a pruned run is infeasible."""
    import optuna

    S = optuna.trial.TrialState
    out = []
    for t in bstudy.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED)):
        metrics = t.user_attrs.get("metrics") if t.state == S.COMPLETE else None
        out.append((float(t.params[SPARSITY]), feasible(metrics, ctx.bounds)))
    return out


def _run_point(bstudy: Any, ctx: Context, s: float, dist: Any) -> None:
    """One bound run at sparsity ``s`` (resuming its directory when an earlier one was killed)."""
    import optuna

    floor = accuracy_floor(ctx.bounds) if ctx.spec.pruner == "threshold" else None

    def objective(trial: Any) -> float:
        value = trial.suggest_float(SPARSITY, dist.low, dist.high)
        rel = f"bound/sparsity-{value:.6g}"
        trial.set_user_attr("run_dir", rel)
        recipe = trial_recipe(ctx.base, {SPARSITY: value}, name=f"{ctx.base.name}-bound-{value:.6g}")
        reporter = StepReporter(trial, report=False, floor=floor, log=ctx.log)
        metrics = run_trial(ctx, recipe, ctx.out / rel, resume=True, log=reporter)
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("feasible", feasible(metrics, ctx.bounds))
        return value

    waiting = bstudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if not any(t.system_attrs.get("fixed_params", {}).get(SPARSITY) == s for t in waiting):
        bstudy.enqueue_trial({SPARSITY: s})  # else an interrupted search already queued it
    bstudy.optimize(objective, n_trials=1)


def bound_rows(storage: Any, name: str) -> list[dict]:
    """The bound runs as report rows (sparsity, feasible, metrics); empty when there were none."""
    import optuna

    try:
        bstudy = optuna.load_study(study_name=f"{name}/sparsity-bound", storage=storage)
    except KeyError:
        return []
    return [
        {
            "number": t.number,
            "sparsity": t.params.get(SPARSITY),
            "feasible": t.user_attrs.get("feasible"),
            "metrics": t.user_attrs.get("metrics", {}),
            "run_dir": t.user_attrs.get("run_dir"),
            "state": t.state.name,
        }
        for t in bstudy.get_trials(deepcopy=False)
        if t.params
    ]

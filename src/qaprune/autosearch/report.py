"""The search's report: Pareto plots (accuracy vs BOPs, vs bytes, vs latency), hypervolume
against trial number, the table of Pareto-optimal configurations, and their export as ready
recipes.

Files in the search directory: ``search.html`` (self-contained), ``search_<x>.png``,
``search_hypervolume.png``, ``trials.json`` (every trial) and ``pareto.json``.
``export_recipes`` writes one ``trial_<n>.yaml`` per Pareto-optimal trial: ``qaprune run`` on
it reproduces the trial (training is deterministic on a given machine).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from qaprune.autosearch.front import hypervolume_curve, losses, non_dominated
from qaprune.autosearch.objectives import feasible
from qaprune.autosearch.space import decode_params, trial_recipe
from qaprune.io import write_json
from qaprune.recipe import Recipe
from qaprune.recipe.search import LATENCY, SearchSpec

FRONT_AXES = {"bops": "BOPs", "size_bytes": "artifact bytes", LATENCY: "latency (ms)"}
TABLE_METRICS = ["accuracy", "auc", "bops", "bops_reduction", "size_bytes", LATENCY, "sparsity"]


def trial_rows(study: Any, spec: SearchSpec, bounds: list, space: dict | None = None) -> list[dict]:
    """One plain dict per trial: number, state, params (recipe values), values, metrics,
    feasible, run_dir; ordered by trial number. ``space``: the expanded space (default spec's)."""
    rows, space = [], space or spec.space
    for t in study.get_trials(deepcopy=False):
        metrics = t.user_attrs.get("metrics")
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": decode_params(t.params, space),
                "values": list(t.values) if t.values is not None else None,
                "metrics": metrics or {},
                "feasible": t.state.name == "COMPLETE" and feasible(metrics, bounds),
                "run_dir": t.user_attrs.get("run_dir"),
                "same_as": t.user_attrs.get("same_as"),
                "retry_of": t.system_attrs.get("failed_trial"),
            }
        )
    return rows


def pareto_rows(rows: list[dict], spec: SearchSpec) -> list[dict]:
    """The feasible complete trials no other one dominates, by the first objective; a
    configuration that was proposed twice (``same_as``) is listed once."""
    live = [r for r in rows if r["feasible"] and r["values"] is not None and r["same_as"] is None]
    front = [live[i] for i in non_dominated([losses(r["values"], spec.directions) for r in live])]
    sign = -1 if spec.directions[0] == "maximize" else 1
    return sorted(front, key=lambda r: (sign * r["values"][0], r["number"]))


def export_recipes(pareto: list[dict], base: Recipe, out_dir: str | Path) -> list[Path]:
    """Write each Pareto-optimal trial's recipe (``trial_<n>.yaml``, exactly the recipe its run
    used) and an index ``pareto.json`` into ``out_dir``; -> the recipe paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, index = [], []
    for r in pareto:
        tag = Path(r["run_dir"]).name if r["run_dir"] else str(r["number"])
        recipe = trial_recipe(base, r["params"], name=f"{base.name}-t{tag}")
        paths.append(recipe.dump(out_dir / f"trial_{r['number']}.yaml"))
        index.append({"recipe": paths[-1].name, **_summary(r)})
    write_json(out_dir / "pareto.json", index)
    return paths


def _summary(r: dict) -> dict:
    return {
        "number": r["number"],
        "values": r["values"],
        "params": r["params"],
        "run_dir": r["run_dir"],
        "metrics": {k: r["metrics"][k] for k in TABLE_METRICS if k in r["metrics"]},
    }


# ----------------------------------------------------------------------------- plots


def _figure(xlabel: str, ylabel: str, title: str) -> tuple[Any, Any]:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # never switch an interactive session's backend
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


def plot_front(
    rows: list[dict], pareto: list[dict], x: str, path: Path, *, dense: dict | None = None, bounds: list | None = None
) -> Path | None:
    """Accuracy vs metric ``x`` (log scale): every finished trial, the 2-D front of the feasible
    ones, and the search's Pareto-optimal trials starred. None when no trial has ``x``."""
    from qaprune.report.plots import pareto_front

    pts = [r for r in rows if x in r["metrics"] and "accuracy" in r["metrics"] and r["metrics"][x] > 0]
    if not pts:
        return None
    fig, ax = _figure(FRONT_AXES.get(x, x), "accuracy", f"accuracy vs {FRONT_AXES.get(x, x)}")
    for ok, style, label in ((True, "o", "feasible trials"), (False, "x", "infeasible trials")):
        sel = [r for r in pts if r["feasible"] == ok]
        if sel:
            ax.plot(
                [r["metrics"][x] for r in sel],
                [r["metrics"]["accuracy"] for r in sel],
                style,
                alpha=0.6 if ok else 0.4,
                color=None if ok else "grey",
                label=label,
            )
    good = [(r["metrics"][x], r["metrics"]["accuracy"]) for r in pts if r["feasible"]]
    front = [good[i] for i in pareto_front(good)]
    if front:
        ax.step(
            [p[0] for p in front],
            [p[1] for p in front],
            where="post",
            color="black",
            linestyle=":",
            label=f"front (accuracy, {x})",
        )
    best = [r for r in pareto if x in r["metrics"] and "accuracy" in r["metrics"]]
    if best:
        ax.plot(
            [r["metrics"][x] for r in best],
            [r["metrics"]["accuracy"] for r in best],
            "*",
            markersize=12,
            label="Pareto-optimal (objectives)",
        )
    _dense_marker(ax, dense, x)
    _accuracy_constraint(ax, bounds or [])
    ax.set_xscale("log")
    _legend(ax)
    fig.savefig(path, dpi=110, format="png")
    return path


def _legend(ax: Any) -> None:
    """The legend beside the axes, never over the trials."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _accuracy_constraint(ax: Any, bounds: list) -> None:
    """The accuracy floor of the constraints (a feasible trial lies on or above it)."""
    for metric, low, high in bounds:
        if metric == "accuracy" and low is not None:
            ax.axhline(low, color="C3", linestyle="--", linewidth=1, label=f"constraint: accuracy ≥ {low:.4f}")
        if metric == "accuracy" and high is not None:
            ax.axhline(high, color="C3", linestyle=":", linewidth=1, label=f"constraint: accuracy ≤ {high:.4f}")


def _dense_marker(ax: Any, dense: dict | None, x: str) -> None:
    ref = {"bops": "bops_fp32_dense", "size_bytes": "size_bytes_fp32"}.get(x)
    if dense and x in dense and "accuracy" in dense:
        ax.plot([dense[x]], [dense["accuracy"]], "D", color="grey", label="dense float baseline")
    elif dense and ref in dense:
        ax.axvline(dense[ref], color="grey", linestyle="--", linewidth=1, label="32-bit dense")


def plot_progress(rows: list[dict], spec: SearchSpec, path: Path) -> Path | None:
    """Hypervolume (several objectives) or best value (one) of the feasible trials so far,
    against trial number. Every finished trial is a point: while no trial is feasible the
    hypervolume is 0 (and the plot says so); None only when no trial has finished."""
    done = [r for r in rows if r["values"] is not None]
    if not done:
        return None
    feasible = [r["feasible"] for r in done]
    curve: list[float | None] | list[float]
    if len(spec.metrics) == 1:
        values = [r["values"][0] if ok else None for r, ok in zip(done, feasible)]
        curve, label = _best_feasible(values, spec.directions[0]), f"best feasible {spec.metrics[0]}"
    else:
        curve = _hypervolume_feasible([losses(r["values"], spec.directions) for r in done], feasible)
        label = "hypervolume (normalized objectives, reference 1.1)"
    fig, ax = _figure("trial", label, "search progress")
    ax.plot([r["number"] for r in done], curve, "o-", markersize=3, label="feasible trials so far")
    if not any(feasible):
        ax.text(0.5, 0.5, "no feasible trial yet", ha="center", transform=ax.transAxes, color="C3")
    _legend(ax)
    fig.savefig(path, dpi=110, format="png")
    return path


def _best_feasible(values: list[float | None], direction: str) -> list[float | None]:
    """Best feasible value after each trial (None until the first feasible one)."""
    out: list[float | None] = []
    best: float | None = None
    for v in values:
        if v is not None:
            best = v if best is None else (max(best, v) if direction == "maximize" else min(best, v))
        out.append(best)
    return out


def _hypervolume_feasible(points: list[list[float]], feasible: list[bool]) -> list[float]:
    """After each trial, the hypervolume of the feasible points so far (``hypervolume_curve``
    over the feasible ones, held between them; 0 before the first)."""
    curve = hypervolume_curve([p for p, ok in zip(points, feasible) if ok])
    out, k = [], 0
    for ok in feasible:
        k += ok
        out.append(curve[k - 1] if k else 0.0)
    return out


# ----------------------------------------------------------------------------- page


def _table_rows(pareto: list[dict], spec: SearchSpec, exported: dict[int, Path]) -> list[dict]:
    out = []
    for r in pareto:
        row: dict[str, Any] = {"trial": r["number"], **dict(zip(spec.metrics, r["values"]))}
        row.update({k: r["metrics"][k] for k in TABLE_METRICS if k in r["metrics"] and k not in row})
        row.update({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r["params"].items()})
        row["recipe"] = exported[r["number"]].name if r["number"] in exported else None
        row["run"] = r["run_dir"]
        out.append(row)
    return out


def write_search_report(
    out: str | Path,
    study: Any,
    spec: SearchSpec,
    bounds: list,
    *,
    dense: dict | None = None,
    bound: float | None = None,
    bound_runs: list[dict] | None = None,
    exported: dict[int, Path] | None = None,
    space: dict | None = None,
) -> Path:
    """Write the plots, ``trials.json``, ``pareto.json`` and ``search.html`` into ``out``."""
    from qaprune.report.markup import columns, img, kv_table, page, table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study, spec, bounds, space)
    pareto = pareto_rows(rows, spec)
    write_json(out / "trials.json", rows)
    write_json(out / "pareto.json", [_summary(r) for r in pareto])
    pngs = [
        p for x in FRONT_AXES if (p := plot_front(rows, pareto, x, out / f"search_{x}.png", dense=dense, bounds=bounds))
    ]
    progress = plot_progress(rows, spec, out / "search_hypervolume.png")
    pareto_table = _table_rows(pareto, spec, exported or {})
    states = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    summary = {
        "study": study.study_name,
        "objectives": ", ".join(f"{o.metric} ({o.direction})" for o in spec.objectives),
        "constraints": "; ".join(_bound_text(b) for b in bounds) or "–",
        "sampler": spec.sampler,
        "pruner": spec.pruner,
        "sparsity bound": bound,
        **{f"trials {k.lower()}": v for k, v in states.items()},
    }
    body = [
        "<h2>Study</h2>",
        kv_table(summary),
        *(img(p, p.stem) for p in pngs),
        *([img(progress, "progress")] if progress else []),
        f"<h2>Pareto-optimal configurations ({len(pareto)})</h2>",
        table(pareto_table, columns(pareto_table, [])),
    ]
    if bound_runs:
        flat = [
            {
                "sparsity": b["sparsity"],
                "feasible": b["feasible"],
                "state": b["state"],
                "accuracy": b["metrics"].get("accuracy"),
                "run": b["run_dir"],
            }
            for b in bound_runs
        ]
        body += ["<h2>Sparsity bound (bisection runs)</h2>", table(flat, columns(flat, []))]
    path = out / "search.html"
    path.write_text(page(f"search: {study.study_name}", "\n".join(body)), encoding="utf-8")
    return path


def _bound_text(b: tuple) -> str:
    metric, low, high = b
    return " ".join(
        s
        for s in (f"{low:.6g} <=" if low is not None else "", metric, f"<= {high:.6g}" if high is not None else "")
        if s
    )

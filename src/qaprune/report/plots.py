"""The report's plots (matplotlib, Agg, imported on use): accuracy vs BOPs of a run with its
reference and tolerance, and the Pareto comparison of several runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from qaprune.report.markup import as_dict, as_rows, fmt, number


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (bops, accuracy) points no other point dominates (lower-or-equal BOPs and
    higher-or-equal accuracy, one strictly), in order of increasing BOPs. Equal points are all
    kept; points with a non-finite coordinate are never on the front."""
    order = sorted(
        (i for i, (b, a) in enumerate(points) if number(b) is not None and number(a) is not None),
        key=lambda i: (points[i][0], -points[i][1], i),
    )
    front: list[int] = []
    best: tuple[float, float] | None = None  # (bops, accuracy) of the best point so far
    for i in order:
        bops, acc = points[i]
        if best is None or acc > best[1] or (acc == best[1] and bops == best[0]):
            front.append(i)
            best = (bops, acc)
    return front


def _points(results: dict) -> list[tuple[float, float, float | None]]:
    """(bops, accuracy, sparsity) of each history step (or of the final metrics if none)."""
    rows = sorted(as_rows(results.get("history")), key=lambda r: number(r.get("step")) or 0.0)
    rows = rows or [as_dict(results.get("metrics"))]
    out = []
    for r in rows:
        bops, acc = number(r.get("bops")), number(r.get("accuracy"))
        sparsity = number(r.get("sparsity", r.get("target_sparsity")))
        if bops is not None and bops > 0 and acc is not None:
            out.append((bops, acc, sparsity))
    return out


def _axes(title: str) -> tuple[Any, Any]:
    """A fresh Agg-rendered figure and axes (matplotlib imported here, not at import time)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # never switch an interactive session's backend
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set(xlabel="BOPs", ylabel="accuracy", title=title)
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


def _finish(fig: Any, ax: Any, path: Path, *, has_data: bool) -> Path:
    _decorate(fig, ax, has_data=has_data)
    fig.savefig(path, dpi=110, format="png")
    return path


def _decorate(fig: Any, ax: Any, *, has_data: bool) -> None:
    """Log-x and the legend beside the axes (never over the data), or a note when empty."""
    if has_data:
        ax.set_xscale("log")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        ax.text(0.5, 0.5, "no BOPs / accuracy data", ha="center", transform=ax.transAxes)


def _reference(ax: Any, bops_values: list[Any]) -> bool:
    refs = {b for b in (number(v) for v in bops_values) if b is not None and b > 0}
    for ref in sorted(refs):
        ax.axvline(ref, color="grey", linestyle="--", linewidth=1, label=f"fp32 dense ({fmt(ref)})")
    return bool(refs)


def plot_accuracy_vs_bops(results: dict, path: str | Path) -> Path:
    """Accuracy vs BOPs of every history step (log-x, points labelled with their sparsity), the
    dense reference's accuracy with the tolerance band under it, and the delivered step."""
    path = Path(path)
    fig, has_data = accuracy_vs_bops_figure(results)
    fig.savefig(path, dpi=110, format="png")
    return path


def accuracy_vs_bops_figure(results: dict) -> tuple[Any, bool]:
    """The figure of ``plot_accuracy_vs_bops`` and whether it shows any data."""
    metrics, selected = as_dict(results.get("metrics")), as_dict(results.get("selected"))
    fig, ax = _axes(str(results.get("name") or "run"))
    points = _points(results)
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="C0", label="pruning steps", zorder=3)
    for bops, acc, sparsity in points:
        if sparsity is not None:
            ax.annotate(f"{sparsity:.0%}", (bops, acc), textcoords="offset points", xytext=(4, 4), fontsize=8)
    _tolerance(ax, selected, number(metrics.get("bops_fp32_dense")))
    chosen = (number(metrics.get("bops")), number(metrics.get("accuracy")))
    if chosen[0] and chosen[0] > 0 and chosen[1] is not None:
        step = selected.get("step")
        label = f"delivered (step {step})" if step is not None else "final"
        ax.plot([chosen[0]], [chosen[1]], "*", color="C3", markersize=15, markeredgecolor="black", label=label,
                zorder=5)  # fmt: skip
    has_ref = _reference(ax, [metrics.get("bops_fp32_dense")])
    _decorate(fig, ax, has_data=bool(points) or has_ref)
    return fig, bool(points) or has_ref


def _tolerance(ax: Any, selected: dict, dense_bops: float | None) -> None:
    """The reference's accuracy (line, and its point at the dense BOPs) and the band of
    ``max_drop`` points under it."""
    ref, drop = number(selected.get("reference_accuracy")), number(selected.get("max_drop"))
    if ref is None:
        return
    ax.axhline(ref, color="black", linewidth=1, label=f"32-bit dense reference ({ref:.4f})", zorder=2)
    if drop is not None and drop > 0:
        ax.axhspan(ref - drop / 100.0, ref, color="C2", alpha=0.18, label=f"within {drop:g} points", zorder=1)
    if dense_bops:
        ax.plot([dense_bops], [ref], "s", color="black", markersize=6, zorder=4)


def plot_pareto(runs: dict[str, dict], path: str | Path, *, title: str = "") -> Path:
    """Accuracy vs BOPs, one series per variant, and the Pareto front over all points."""
    path = Path(path)
    fig, ax = _axes(title)
    everything: list[tuple[float, float]] = []
    for name, results in runs.items():
        points = _points(as_dict(results))
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=str(name), markersize=4)
        everything += [(b, a) for b, a, _ in points]
    front = [everything[i] for i in pareto_front(everything)]
    if front:
        ax.step(
            [b for b, _ in front],
            [a for _, a in front],
            where="post",
            color="black",
            linestyle=":",
            linewidth=1.5,
            label="Pareto front",
        )
    refs = [as_dict(as_dict(r).get("metrics")).get("bops_fp32_dense") for r in runs.values()]
    has_ref = _reference(ax, refs)
    return _finish(fig, ax, path, has_data=bool(everything) or has_ref)

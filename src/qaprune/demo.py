"""``qaprune demo``: the Ps-and-Qs study in miniature on scikit-learn's bundled digits.

32-bit dense, QAT only (4, 6, 8 bits), pruning only (32 bits) and QAP (6 and 4 bits) on the
jet-tagger-shaped MLP 64→64→32→32→10; every pruning step is a point of the accuracy-vs-BOPs
plane. The headline is the largest BOPs reduction (against 32-bit dense) whose accuracy is
within 0.5 points of the 32-bit dense model's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qaprune.io import write_json

BASE: dict[str, Any] = {
    "data": {"name": "digits", "val": 0.15, "test": 0.25, "seed": 0},
    "model": {"name": "mlp", "args": {"hidden": [64, 32, 32], "batchnorm": "affine"}},
    "train": {"optimizer": "adam", "lr": 3e-3, "batch_size": 64, "epochs": 80, "patience": 10, "threads": 1},
    "prune": {"rate": 0.1, "of": "original", "rewind": "ft"},
}

# name -> (weight/activation bits, final sparsity)
VARIANTS: dict[str, tuple[int, float]] = {
    "fp32": (32, 0.0),
    "qat-8b": (8, 0.0),
    "qat-6b": (6, 0.0),
    "qat-4b": (4, 0.0),
    "prune-fp32": (32, 0.9),
    "qap-6b": (6, 0.9),
    "qap-4b": (4, 0.9),
}

TOLERANCE_POINTS = 0.5


def variant_recipe(name: str, *, quick: bool = False) -> dict[str, Any]:
    """The recipe (as a dict) of one demo variant."""
    bits, sparsity = VARIANTS[name]
    recipe = {
        **BASE,
        "name": f"demo-{name}",
        "quant": {"weight_bits": bits, "act_bits": bits},
        "prune": {**BASE["prune"], "sparsity": sparsity},
    }
    if quick:
        recipe["train"] = {**BASE["train"], "epochs": 3}
        recipe["prune"] = {**recipe["prune"], "rate": 0.45}
    return recipe


def headline(runs: dict[str, dict], *, tolerance: float = TOLERANCE_POINTS) -> dict[str, Any]:
    """Largest BOPs reduction over every step of every run within ``tolerance`` points of fp32."""
    ref = runs["fp32"]["history"][-1]
    best: dict[str, Any] = {
        "bops_reduction": 1.0,
        "variant": "fp32",
        "step": 0,
        "accuracy": ref["accuracy"],
        "accuracy_drop_points": 0.0,
    }
    for name, res in runs.items():
        for h in res["history"]:
            drop = 100.0 * (ref["accuracy"] - h["accuracy"])
            if drop <= tolerance + 1e-9 and h["bops_reduction"] > best["bops_reduction"]:
                best = {
                    "bops_reduction": h["bops_reduction"],
                    "variant": name,
                    "step": h["step"],
                    "accuracy": h["accuracy"],
                    "accuracy_drop_points": drop,
                    "sparsity": h["sparsity"],
                    "bops": h["bops"],
                }
    best["fp32_accuracy"] = ref["accuracy"]
    best["tolerance_points"] = tolerance
    return best


def run_demo(
    out: str | Path = "demo-out", *, quick: bool = False, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run every variant into ``out/<variant>``; write ``out/report.html`` and ``out/summary.json``."""
    from qaprune.report import write_comparison_report
    from qaprune.rundir import clean
    from qaprune.runner import run

    out = Path(out)
    t0, runs = time.perf_counter(), {}
    for name in VARIANTS:
        clean(out / name)
        log(f"== {name}")
        runs[name] = run(variant_recipe(name, quick=quick), out=out / name, log=log).results
    head = headline(runs)
    summary = {
        "headline": head,
        "seconds": time.perf_counter() - t0,
        "variants": {
            n: {"metrics": r["metrics"], "history": r["history"], "timing": r["timing"]} for n, r in runs.items()
        },
    }
    write_json(out / "summary.json", summary)
    html = write_comparison_report(out, runs, title="qaprune demo: quantization-aware pruning on digits", headline=head)
    log(_table(runs))
    log(
        f"headline: {head['bops_reduction']:.1f}x fewer BOPs than 32-bit dense ({head['variant']}, step "
        f"{head['step']}) at accuracy {head['accuracy']:.4f} vs {head['fp32_accuracy']:.4f} "
        f"(within {TOLERANCE_POINTS} points)"
    )
    log(f"report: {html}  ({summary['seconds']:.0f} s)")
    return summary


def _table(runs: dict[str, dict]) -> str:
    rows = [f"{'variant':<11} {'step':>4} {'sparsity':>8} {'accuracy':>8} {'BOPs':>11} {'reduction':>9}"]
    for name, res in runs.items():
        for h in res["history"]:
            rows.append(
                f"{name:<11} {h['step']:>4} {h['sparsity']:>8.3f} {h['accuracy']:>8.4f} "
                f"{h['bops']:>11.4g} {h['bops_reduction']:>8.1f}x"
            )
    return "\n".join(rows)

"""``qaprune demo``: the Ps-and-Qs study in miniature on scikit-learn's bundled digits.

32-bit dense, QAT only (4, 6, 8 bits), pruning only (32 bits) and QAP (6 and 4 bits) on the
jet-tagger-shaped MLP 64→64→32→32→10; every pruning step is a point of the accuracy-vs-BOPs
plane. Each run delivers its most compressed step within 0.5 points of the shared 32-bit dense
reference on validation; the headline is the largest BOPs reduction among them (test numbers).
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


def headline(runs: dict[str, dict]) -> dict[str, Any]:
    """The largest BOPs reduction among the variants' delivered models that are within the
    tolerance of the 32-bit dense reference (judged on validation; test numbers reported)."""
    ok = {n: r for n, r in runs.items() if (r.get("selected") or {}).get("within_tolerance")}
    name = max(ok, key=lambda n: ok[n]["selected"]["bops_reduction"], default=None)
    if name is None:
        return {"variant": None, "bops_reduction": 1.0, "note": "no variant within tolerance"}
    sel, m = ok[name]["selected"], ok[name]["metrics"]
    return {
        "variant": name,
        "step": sel["step"],
        "bops_reduction": sel["bops_reduction"],
        "accuracy": sel["accuracy"],
        "reference_accuracy": sel["reference_accuracy"],
        "accuracy_drop_points": 100.0 * (sel["reference_accuracy"] - sel["accuracy"]),
        "tolerance_points": sel["max_drop"],
        "sparsity": m["sparsity"],
        "bops": m["bops"],
    }


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
    if head["variant"] is None:
        log("headline: no variant delivered a step within 0.5 points of the 32-bit dense reference")
    else:
        log(
            f"headline: {head['bops_reduction']:.1f}x fewer BOPs than 32-bit dense ({head['variant']}, step "
            f"{head['step']}) at test accuracy {head['accuracy']:.4f} vs {head['reference_accuracy']:.4f} "
            f"(delivered within {head['tolerance_points']} points on validation)"
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

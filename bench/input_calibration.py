"""Which calibration of the input quantizer is best: 6-bit inputs calibrated by ``max``,
``percentile`` (99th), ``mse``, ``mae`` (qaprune's default) and ``mae`` with a learned step
(``quant.input_scale: learned``, LSQ, qaprune's default), against 32-bit inputs, on heavy-tailed standardized features
and on UCI Letter (bounded integer features, min-max scaled) as a control.

    python bench/input_calibration.py --data-dir ../shared/datasets --threads 1

Only the input is quantized: weights and activations stay 32-bit, no pruning, and each run
delivers its only step (``select.reference: none``). The model is qaprune's ``mlp`` (in → 64 →
32 → 32 → classes, batch norm), Adam 1e-3, batch 256, ``--epochs`` with early stopping
(``--patience``); ``--seeds`` change the initialization and the batch order (the data and its
split stay those of data seed 0).

The heavy-tailed data are a user ``.npz`` this script writes (``heavy_tailed_data``, seeded): 9
Student-t features (df = 2: a finite mean, no finite variance), standardized by the run
(``data.scale: standard``), and labels from a nonlinear rule on the bulk of the features (each
clipped to ±3), cut at quantiles into 4 classes with 79% in the majority class: a coarse input
grid that spends its levels on the outliers leaves only the majority class.

Writes bench/results/input_calibration.json (``--quick``: input_calibration_quick.json) whose
``headline`` holds, on the heavy-tailed data, ``best_fixed`` (the fixed calibration with the best
mean accuracy), ``mae_drop_points``, ``learned_drop_points``, ``max_drop_points`` (and the
others), each the mean over seeds of (32-bit inputs − 6-bit inputs) in points, and
``mae_within_half_point``; ``letter`` holds the same drops on the control.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine, table, write_results

BITS = 6
CONFIGS: dict[str, list[str]] = {  # name -> recipe overrides of the input quantizer
    "float": ["quant.input_bits=32"],
    "max": [f"quant.input_bits={BITS}", "quant.input_calibration=max", "quant.input_scale=fixed"],
    "percentile": [f"quant.input_bits={BITS}", "quant.input_calibration=percentile", "quant.input_scale=fixed"],
    "mse": [f"quant.input_bits={BITS}", "quant.input_calibration=mse", "quant.input_scale=fixed"],
    "mae": [f"quant.input_bits={BITS}", "quant.input_calibration=mae", "quant.input_scale=fixed"],
    "mae+learned": [f"quant.input_bits={BITS}", "quant.input_calibration=mae", "quant.input_scale=learned"],
}
FIXED = ("max", "percentile", "mse", "mae")
DEFAULT = "mae+learned"  # quant.input_calibration: mae, quant.input_scale: learned
HEAVY = "heavy_tailed.npz"
DATA: dict[str, dict[str, Any]] = {
    "heavy_tailed": {"name": HEAVY, "val": 0.15, "test": 0.2, "scale": "standard"},
    "letter": {"name": "letter", "train": 14000, "val": 2000, "test": 4000, "scale": "minmax"},
}
QUICK_DATA = {"letter": ["data.train=2000", "data.val=500", "data.test=1000"]}
COLUMNS = [
    ("dataset", "dataset", ""),
    ("config", "inputs", ""),
    ("accuracy_mean", "accuracy", ".4f"),
    ("accuracy_std", "± std", ".4f"),
    ("accuracy_min", "min", ".4f"),
    ("accuracy_max", "max", ".4f"),
    ("drop_points_mean", "drop (pts)", ".2f"),
    ("drop_points_std", "± std", ".2f"),
    ("range_mean", "input range", ".3g"),
    ("epochs_mean", "epochs", ".0f"),
]


def heavy_tailed_data(path: Path, *, n: int = 10000, features: int = 9, majority: float = 0.79, seed: int = 0) -> Path:
    """Write the heavy-tailed classification data to ``path`` (.npz with x float32 (n, features),
    y int64): Student-t (df = 2) features; the score
    ``b0·b1 + sin(2·b2) + b3²/2 − b4 + b5·b6/2 + 0.3·noise`` of the features clipped to ±3 (``b``;
    the last two features carry no signal); classes: score below its ``majority`` quantile (0),
    then three equal bands above (1, 2, 3). The same arguments give the same file."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(2, size=(n, features))
    b = np.clip(x, -3.0, 3.0)
    score = b[:, 0] * b[:, 1] + np.sin(2 * b[:, 2]) + 0.5 * b[:, 3] ** 2 - b[:, 4] + 0.5 * b[:, 5] * b[:, 6]
    score = score + 0.3 * rng.standard_normal(n)
    rest = (1.0 - majority) / 3
    cuts = np.quantile(score, [majority, majority + rest, majority + 2 * rest])
    y = np.searchsorted(cuts, score, side="right").astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def recipe_for(dataset: str, config: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from qaprune.recipe import Recipe

    data = dict(DATA[dataset])
    if data["name"] == HEAVY:
        data["name"] = str(heavy_tailed_data(Path(args.runs_dir) / "data" / HEAVY, n=args.samples))
    base = {
        "name": f"{dataset}-{config}-s{seed}",
        "seed": seed,
        "data": data,
        "model": {"name": "mlp", "args": {"hidden": [64, 32, 32], "batchnorm": "affine"}},
        "quant": {"weight_bits": 32, "act_bits": 32},
        "prune": {"sparsity": 0.0},
        "train": {
            "optimizer": "adam",
            "lr": 1e-3,
            "batch_size": 256,
            "epochs": args.epochs,
            "patience": args.patience,
            "threads": args.threads,
        },
        "select": {"reference": "none"},
    }
    sets = [*CONFIGS[config], *(QUICK_DATA.get(dataset, []) if args.quick else []), *args.set]
    return Recipe.parse(base).override(sets).to_dict()


def input_range(run_dir: Path, data_dir: str | None) -> float | None:
    """The input quantizer's range (the top of its grid) in the delivered model, learned or
    calibrated; None: float inputs."""
    from qaprune.quant.activations import InputRangeWarning, QuantInput
    from qaprune.rundir import load_run

    with warnings.catch_warnings():  # the run logged its InputRangeWarning already (``warnings``)
        warnings.simplefilter("ignore", InputRangeWarning)
        _, _, model = load_run(run_dir, data_dir=data_dir)
    quant = getattr(model, "input_quant", None)
    return quant.max_value if isinstance(quant, QuantInput) else None


def one_run(dataset: str, config: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from qaprune.rundir import clean
    from qaprune.runner import run

    run_dir = Path(args.runs_dir) / dataset / config / f"seed{seed}"
    clean(run_dir)
    t0 = time.perf_counter()
    res = run(recipe_for(dataset, config, seed, args), out=run_dir, data_dir=args.data_dir, log=lambda *_: None)
    m, timing = res.results["metrics"], res.results["timing"]
    row = {
        "dataset": dataset,
        "config": config,
        "seed": seed,
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "val_accuracy": res.results["history"][-1]["val_accuracy"],
        "input_range": input_range(run_dir, args.data_dir),
        "epochs": timing["epochs"],
        "seconds": time.perf_counter() - t0,
        "warnings": res.results.get("warnings", []),
    }
    print(
        f"{dataset:<12} {config:<12} seed {seed}: accuracy {row['accuracy']:.4f} "
        f"(range {row['input_range'] if row['input_range'] is None else round(row['input_range'], 3)}, "
        f"{row['epochs']} epochs, {row['seconds']:.1f} s)",
        flush=True,
    )
    return row


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, config): accuracy mean, sample std, min, max over seeds, and the drop against
    32-bit inputs of the same seed, in points (mean, std)."""
    float_acc = {(r["dataset"], r["seed"]): r["accuracy"] for r in rows if r["config"] == "float"}
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for config in CONFIGS:
            rs = [r for r in rows if r["dataset"] == dataset and r["config"] == config]
            if not rs:
                continue
            acc = [r["accuracy"] for r in rs]
            drops = [
                100 * (float_acc[(dataset, r["seed"])] - r["accuracy"]) for r in rs if (dataset, r["seed"]) in float_acc
            ]
            ranges = [r["input_range"] for r in rs if r["input_range"] is not None]
            out.append(
                {
                    "dataset": dataset,
                    "config": config,
                    "seeds": [r["seed"] for r in rs],
                    "accuracy_mean": statistics.fmean(acc),
                    "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "accuracy_min": min(acc),
                    "accuracy_max": max(acc),
                    "drop_points_mean": statistics.fmean(drops) if drops else None,
                    "drop_points_std": statistics.stdev(drops) if len(drops) > 1 else 0.0,
                    "range_mean": statistics.fmean(ranges) if ranges else None,
                    "epochs_mean": statistics.fmean(r["epochs"] for r in rs),
                }
            )
    return out


def drops_of(summary: list[dict[str, Any]], dataset: str) -> dict[str, Any]:
    s = {r["config"]: r for r in summary if r["dataset"] == dataset}
    if not s:
        return {}
    fixed = [c for c in FIXED if c in s]
    best = max(fixed, key=lambda c: s[c]["accuracy_mean"]) if fixed else None
    out: dict[str, Any] = {
        "best_fixed": best,
        "float_accuracy": s["float"]["accuracy_mean"] if "float" in s else None,
    }
    for c in CONFIGS:
        if c != "float" and c in s:
            key = "learned" if c == "mae+learned" else c
            out[f"{key}_drop_points"] = s[c]["drop_points_mean"]
            out[f"{key}_accuracy"] = s[c]["accuracy_mean"]
    mae, default = out.get("mae_drop_points"), out.get("learned_drop_points")
    out["mae_within_half_point"] = None if mae is None else mae <= 0.5
    out["default"] = DEFAULT  # what qaprune does unless the recipe says otherwise
    out["default_drop_points"] = default
    out["default_within_half_point"] = None if default is None else default <= 0.5
    return out


def headline(summary: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    h = drops_of(summary, "heavy_tailed")
    h["letter"] = drops_of(summary, "letter")
    h.update(seeds=len(args.seeds), input_bits=BITS, epochs=args.epochs, patience=args.patience)
    return h


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/datasets")
    ap.add_argument("--datasets", nargs="+", default=list(DATA), choices=list(DATA))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--samples", type=int, default=10000, help="size of the heavy-tailed data")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="extra recipe overrides, key.path=value")
    ap.add_argument("--quick", action="store_true", help="tiny data and budgets: a smoke run of the script")
    ap.add_argument("--runs-dir", type=Path, default=HERE / "runs" / "input_calibration")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.patience, args.samples, args.seeds = 3, 2, 1500, args.seeds[:2]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = [
        one_run(d, c, s, args)
        for d in args.datasets
        for c in ["float", *(c for c in args.configs if c != "float")]  # the baseline first
        for s in args.seeds
    ]
    summary = summarize(rows)
    head = headline(summary, args)
    seconds = time.perf_counter() - t0
    print()
    print(table(summary, COLUMNS))
    path = write_results(
        "input_calibration_quick" if args.quick else "input_calibration",
        {
            "benchmark": "input_calibration",
            "quick": args.quick,
            "machine": machine(),
            "threads": args.threads,
            "wall_seconds": seconds,
            "headline": head,
            "recipes": {d: recipe_for(d, "mae", args.seeds[0], args) for d in args.datasets},
            "summary": summary,
            "runs": rows,
        },
    )
    print(f"\nheadline: {_fmt(head)}\nwrote {path} in {seconds:.0f} s")
    return head


def _fmt(head: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in head.items() if not isinstance(v, dict)
    )


if __name__ == "__main__":
    main()

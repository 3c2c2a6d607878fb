"""MPDCompress on LeNet-300-100 / MNIST: permuted block-diagonal masks (k = 10) against the dense
network trained in the same run with the same recipe, and the measured speed of the block form.

    python bench/mpd_mnist.py --data-dir ../shared/datasets --distill 4 0.9 --variants lenet300

Data: the 10k MNIST training subset (9,000 train + 1,000 seeded validation), the official 10k
test set. Each variant (canonical LeNet-300-100, and the same with batch norm) is trained dense
and with ``recipes/mpd_lenet300.yaml``'s MPD masks for every ``--seeds``; the trained MPD model
of the first variant and seed is shrunk (``qaprune.export.shrink``: block-diagonal Linears become
``BlockDiagonalLinear``), checked against the masked model on the test set, and timed against
the dense model (torch eager and ONNX Runtime, batch 1 and 256, ``--threads`` threads).

``--distill T WEIGHT`` trains each MPD network with the dense network of its seed as the
distillation teacher (``train.distill``). Measured (seeds 0, 1): without it 1.47 points below
dense; T 4, weight 0.5: 1.04; T 4, weight 0.9 (``--variants lenet300``, the results file): 0.92.

Prints the tables and writes bench/results/mpd_mnist.json whose ``headline`` holds
``compression`` (dense weight count / non-zero weights, all Linear layers, bias excluded),
``accuracy_drop_points`` (dense − MPD test accuracy in points, mean over seeds, first variant)
and ``speedup`` (dense median latency / block-form median latency, torch, batch 256).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import FIXED_STEP, machine, table, write_results

from qaprune.export.shrink import shrink
from qaprune.metrics.latency import measure_latency
from qaprune.param import bake
from qaprune.recipe import Recipe
from qaprune.rundir import build, clean, load_data, load_into, setup
from qaprune.runner import run

RECIPE = HERE.parent / "recipes" / "mpd_lenet300.yaml"
VARIANTS: dict[str, list[str]] = {"lenet300": [], "lenet300-bn": ["model.args.batchnorm=affine"]}
TRAIN_COLUMNS = [
    ("variant", "variant", ""),
    ("seed", "seed", "d"),
    ("dense_accuracy", "dense acc", ".4f"),
    ("mpd_accuracy", "MPD acc", ".4f"),
    ("drop_points", "drop (pts)", ".2f"),
    ("compression", "compression", ".2f"),
    ("dense_seconds", "dense s", ".1f"),
    ("mpd_seconds", "MPD s", ".1f"),
]
LATENCY_COLUMNS = [
    ("model", "model", ""),
    ("backend", "backend", ""),
    ("batch", "batch", "d"),
    ("median_ms", "median ms", ".4f"),
    ("p10_ms", "p10 ms", ".4f"),
    ("p90_ms", "p90 ms", ".4f"),
    ("speedup", "speedup", ".2f"),
]


def train_pair(variant: str, extra: list[str], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Dense and MPD runs of the recipe (same seed, data and training): accuracies, counts."""
    row: dict[str, Any] = {"variant": variant, "seed": seed}
    for kind, sets in (("dense", ["prune.sparsity=0.0"]), ("mpd", [])):
        name = f"{variant}-{kind}-s{seed}"
        if kind == "mpd" and args.distill:  # the dense network of this seed as the teacher
            sets = [
                *sets,
                f"train.distill={{teacher: {row['dense_dir']}, temperature: {args.distill[0]}, "
                f"weight: {args.distill[1]}}}",
            ]
        recipe = Recipe.load(RECIPE).override([*FIXED_STEP, *extra, *sets, f"seed={seed}", f"name={name}", *args.set])
        out = args.runs_dir / name
        clean(out)
        t0 = time.perf_counter()
        res = run(recipe, out=out, data_dir=args.data_dir, log=lambda *_: None)
        m = res.metrics
        row.update(
            {
                f"{kind}_accuracy": m["accuracy"],
                f"{kind}_seconds": time.perf_counter() - t0,
                f"{kind}_epochs": res.results["timing"]["epochs"],
                f"{kind}_dir": str(out),
            }
        )
        if kind == "mpd":
            row.update(
                params=m["params"], nonzero_params=m["nonzero_params"], layers=_layers(res.results["layers"], recipe)
            )
    row["drop_points"] = 100.0 * (row["dense_accuracy"] - row["mpd_accuracy"])
    row["compression"] = row["params"] / row["nonzero_params"]
    print(
        f"{variant:<12} seed {seed}: dense {row['dense_accuracy']:.4f}  MPD {row['mpd_accuracy']:.4f}  "
        f"drop {row['drop_points']:.2f} pts  {row['compression']:.2f}x",
        flush=True,
    )
    return row


def _layers(profiles: list[dict], recipe: Recipe) -> dict[str, dict]:
    """Per Linear layer: weights, non-zeros, the pattern (mpd k, or dense) and params / non-zeros."""
    k = recipe.prune.structure_args.get("k")
    out = {}
    for p in profiles:
        pruned = recipe.layer(p["name"]).prune is not False
        out[p["name"]] = {
            "params": p["params"],
            "nonzero": p["nonzero"],
            "k": k if pruned else 1,
            "pattern": f"mpd k={k}" if pruned else "dense",
            "compression": p["params"] / max(p["nonzero"], 1),
        }
    return out


def load_model(run_dir: str | Path, data_dir: str) -> tuple[nn.Module, Any]:
    """The trained model of a run directory (eval mode) and its data."""
    recipe = Recipe.load(Path(run_dir) / "recipe.yaml")
    device = setup(recipe)
    data = load_data(recipe, data_dir, device)
    model = load_into(build(recipe, data, device), Path(run_dir) / "model.safetensors")
    return model.eval(), data


@torch.no_grad()
def block_form(mpd_model: nn.Module, data: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Shrink the masked MPD model; check its outputs against the masked model on the test set."""
    res = shrink(mpd_model, data.x_test[:256])
    block = res.model.eval()
    ref, out = mpd_model(data.x_test), block(data.x_test)
    stored = sum(p.numel() for n, p in block.named_parameters() if n.endswith("weight") and p.dim() >= 2)
    return block, {
        "converted": res.converted,
        "not_shrunk": res.not_shrunk,
        "max_abs_diff_vs_masked": float((out - ref).abs().max()),
        "same_predictions": bool(torch.equal(out.argmax(1), ref.argmax(1))),
        "accuracy_block_form": float((out.argmax(1) == data.y_test).float().mean()),
        "stored_weights_block_form": stored,
    }


def latency(
    models: dict[str, nn.Module], shape: tuple[int, ...], args: argparse.Namespace
) -> tuple[list[dict], dict[str, str]]:
    """Median latency per (model, backend, batch): ``--rounds`` alternating rounds of
    ``measure_latency``, the median of the round medians (robust to drifting machine load)."""
    samples: dict[tuple, list[dict]] = {}
    errors: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, model in models.items():
            for backend in args.backends:
                if f"{name}/{backend}" in errors:
                    continue
                try:
                    rows = measure_latency(
                        model,
                        shape,
                        batch_sizes=(1, 256),
                        threads=(args.threads,),
                        backend=backend,
                        warmup=args.warmup,
                        repeats=args.repeats,
                    )
                except Exception as exc:  # report, do not hide: e.g. an export the backend refuses
                    errors[f"{name}/{backend}"] = f"{type(exc).__name__}: {exc}"[:300]
                    continue
                for r in rows:
                    samples.setdefault((name, backend, r["batch"]), []).append(r)
    return [_merge(key, rs) for key, rs in samples.items()], errors


def _merge(key: tuple, rows: list[dict]) -> dict[str, Any]:
    name, backend, batch = key
    med = {k: statistics.median(r[k] for r in rows) for k in ("median_ms", "p10_ms", "p90_ms")}
    out = {
        "model": name,
        "backend": backend,
        "batch": batch,
        **med,
        "rounds": len(rows),
        "round_medians_ms": [r["median_ms"] for r in rows],
    }
    if "export" in rows[0]:
        out["export"] = rows[0]["export"]
    return out


def add_speedups(rows: list[dict]) -> dict[str, float]:
    """speedup = dense median / block median, per backend and batch (set on the block rows)."""
    dense = {(r["backend"], r["batch"]): r["median_ms"] for r in rows if r["model"] == "dense"}
    out = {}
    for r in rows:
        if r["model"] == "block" and (r["backend"], r["batch"]) in dense:
            r["speedup"] = dense[(r["backend"], r["batch"])] / r["median_ms"]
            out[f"{r['backend']}_b{r['batch']}"] = r["speedup"]
    return out


def headline(rows: list[dict], variant: str, speedups: dict[str, float]) -> dict[str, Any]:
    mine = [r for r in rows if r["variant"] == variant]
    drops = [r["drop_points"] for r in mine]
    return {
        "compression": mine[0]["compression"],
        "accuracy_drop_points": statistics.mean(drops),
        "speedup": speedups.get("torch_b256"),
        "variant": variant,
        "dense_accuracy": statistics.mean(r["dense_accuracy"] for r in mine),
        "mpd_accuracy": statistics.mean(r["mpd_accuracy"] for r in mine),
        "accuracy_drop_points_per_seed": drops,
        "within_1_point": statistics.mean(drops) <= 1.0,
        "speedup_ort_b256": speedups.get("ort_b256"),
        "speedup_torch_b1": speedups.get("torch_b1"),
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/datasets")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=1, help="torch / ORT threads for training and latency")
    ap.add_argument("--backends", nargs="+", default=["torch", "ort"], choices=["torch", "ort"])
    ap.add_argument("--rounds", type=int, default=3, help="alternating latency rounds")
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--set", nargs="*", default=[], help="extra recipe overrides key.path=value")
    ap.add_argument(
        "--distill",
        type=float,
        nargs=2,
        default=None,
        metavar=("T", "WEIGHT"),
        help="train the MPD network with the dense one of the same seed as teacher",
    )
    ap.add_argument("--quick", action="store_true", help="3 epochs, one seed: a smoke test of the script")
    ap.add_argument("--runs-dir", type=Path, default=HERE / "runs" / "mpd_mnist")
    args = ap.parse_args()
    args.set = [f"train.threads={args.threads}", *args.set]
    if args.quick:
        args.set, args.seeds, args.repeats, args.rounds = [*args.set, "train.epochs=3"], args.seeds[:1], 10, 1
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = [train_pair(v, VARIANTS[v], s, args) for v in args.variants for s in args.seeds]
    first = rows[0]
    mpd_model, data = load_model(first["mpd_dir"], args.data_dir)
    dense_model, _ = load_model(first["dense_dir"], args.data_dir)
    block, check = block_form(mpd_model, data)
    torch.set_num_threads(args.threads)  # setup() of the loaded recipes may have changed it
    lat, errors = latency({"dense": bake(copy.deepcopy(dense_model)), "block": block}, tuple(data.input_shape), args)
    speedups = add_speedups(lat)
    head = headline(rows, first["variant"], speedups)
    report(rows, lat, errors, check, head, args, time.perf_counter() - t0)


def report(
    rows: list[dict], lat: list[dict], errors: dict, check: dict, head: dict, args: argparse.Namespace, seconds: float
) -> None:
    print()
    print(table(rows, TRAIN_COLUMNS))
    print()
    print(table(sorted(lat, key=lambda r: (r["backend"], r["batch"], r["model"])), LATENCY_COLUMNS))
    for key, msg in errors.items():
        print(f"latency {key}: failed: {msg}")
    print(
        f"\nblock form: {check['converted']}; max |block - masked| on the test set "
        f"{check['max_abs_diff_vs_masked']:.3g}, same predictions: {check['same_predictions']}"
    )
    info = machine()
    info["cpu_affinity"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    path = write_results(
        "mpd_mnist_quick" if args.quick else "mpd_mnist",
        {
            "benchmark": "mpd_mnist",
            "quick": args.quick,
            "machine": info,
            "threads": args.threads,
            "wall_seconds": seconds,
            "recipe": Recipe.load(RECIPE).override(args.set).to_dict(),
            "headline": head,
            "runs": rows,
            "layers": rows[0]["layers"],
            "block_form": check,
            "latency": lat,
            "latency_errors": errors,
        },
    )
    print(
        f"\nheadline ({head['variant']}): {head['compression']:.2f}x compression, "
        f"{head['accuracy_drop_points']:.2f} points below dense "
        f"({100 * head['dense_accuracy']:.2f} -> {100 * head['mpd_accuracy']:.2f}), "
        f"block form {head['speedup'] or float('nan'):.2f}x faster at batch 256 (torch, "
        f"{args.threads} thread)\nwrote {path} in {seconds:.0f} s"
    )


if __name__ == "__main__":
    main()

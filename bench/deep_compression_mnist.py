"""Deep Compression on MNIST: prune → cluster → Huffman, and QAP + clustering, for LeNet-300-100
and LeNet-5, against the dense float32 network trained in the same run.

    python bench/deep_compression_mnist.py --data-dir ../shared/datasets

Data: the 10k MNIST training subset (9,000 train + 1,000 seeded validation), the official 10k
test set. Every variant is a ``qaprune.runner.run`` of ``recipes/dc_<model>.yaml`` with overrides:
- ``dense``: no pruning, no clusters: the reference accuracy and float32 bytes;
- ``dc-<s>``: Deep Compression (Han et al. 2016): magnitude pruning to sparsity ``s`` inside
  training (cubic schedule, LAMP allocation) in float, then weight sharing (optimal 1-D k-means
  per layer, ``quant.clusters``) and ``quant.cluster_epochs`` epochs that train the shared values;
- ``qap-<s>-w<b>``: the same, but pruned under ``b``-bit fake-quantized weights (8-bit biases),
  then clustered. Its bytes shrink by the 8-bit biases and by the integer grid (a layer whose
  weights are 6-bit codes is stored as per-tensor scaled integers), not by shorter cluster
  indices: those are Huffman-coded alike.
The ``.qap`` artifact (``model.qap``) stores each tensor in its smallest exact encoding (sparse
relative indices, Huffman-coded cluster indices, ...); ``qap_report`` lists what it chose.

compression = dense float32 bytes / bytes of the variant's ``model.qap`` file (header included),
where dense float32 bytes is the dense run's ``size_bytes_fp32``: 4 bytes × every parameter,
weights and biases (1,066,440 for LeNet-300-100, 246,824 for LeNet-5; no header).
accuracy drop = dense − variant test accuracy, in points.

Prints a table and writes bench/results/deep_compression_mnist.json, whose ``headline`` holds,
per model, the largest compression within 0.5 points of that model's dense accuracy (null, and
the closest variant, when none is), against the anchor (Deep Compression: 40× LeNet-300-100,
39× LeNet-5, no accuracy loss) and the targets (50×, 45×).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import FIXED_STEP, best_within, machine, table, write_results

from qaprune.compress import cluster_k
from qaprune.recipe import Recipe
from qaprune.rundir import build, clean, load_data, setup
from qaprune.runner import run
from qaprune.storage import load_qap_into, qap_report

RECIPES = {
    "lenet300": HERE.parent / "recipes" / "dc_lenet300.yaml",
    "lenet5": HERE.parent / "recipes" / "dc_lenet5.yaml",
}
ANCHOR = {"lenet300": 40.0, "lenet5": 39.0}  # Deep Compression (Han et al. 2016), Table 1
TARGET = {"lenet300": 50.0, "lenet5": 45.0}
TOLERANCE_POINTS = 0.5
DENSE = ("prune.sparsity=0.0", "quant.clusters=null", "layers={}")
QUICK = ("train.epochs=4", "prune.start_epoch=1", "prune.n_steps=2", "quant.cluster_epochs=1")
COLUMNS = [
    ("model", "model", ""),
    ("variant", "variant", ""),
    ("accuracy", "accuracy", ".4f"),
    ("drop_points", "drop (pts)", ".2f"),
    ("sparsity", "sparsity", ".3f"),
    ("size_bytes", "bytes", "d"),
    ("compression", "compression", ".1f"),
    ("bits_per_nonzero", "bits/nz", ".2f"),
    ("seconds", "seconds", ".0f"),
]


@dataclass(frozen=True)
class Variant:
    """One run of a model's recipe: ``method`` is dense, deep-compression or qap+clusters."""

    name: str
    method: str
    sets: tuple[str, ...] = ()


def _dc(s: float) -> Variant:
    return Variant(f"dc-{s:g}", "deep-compression", (f"prune.sparsity={s}",))


def _qap(s: float, bits: int = 6) -> Variant:
    return Variant(
        f"qap-{s:g}-w{bits}", "qap+clusters", (f"prune.sparsity={s}", f"quant.weight_bits={bits}", "quant.bias_bits=8")
    )


VARIANTS: dict[str, list[Variant]] = {
    "lenet300": [Variant("dense", "dense", DENSE), _dc(0.9), _dc(0.95), _dc(0.97), _qap(0.97), _qap(0.98)],
    "lenet5": [Variant("dense", "dense", DENSE), _dc(0.9), _dc(0.95), _qap(0.95)],
}


def run_variant(model: str, variant: Variant, args: argparse.Namespace) -> dict[str, Any]:
    """Run one variant; its accuracy, the real size of its ``model.qap`` and how each tensor was
    stored; the artifact is loaded back into a fresh model and re-scored on the test set."""
    recipe = Recipe.load(RECIPES[model]).override(
        [*FIXED_STEP, *variant.sets, f"name={model}-{variant.name}", *args.set]
    )
    out = args.runs_dir / model / variant.name
    clean(out)
    t0 = time.perf_counter()
    res = run(recipe, out=out, data_dir=args.data_dir, log=lambda *_: None)
    seconds = time.perf_counter() - t0
    m, qap = res.metrics, out / "model.qap"
    size = qap.stat().st_size
    tensors = [_tensor_row(r) for r in qap_report(qap)]
    nonzero_bytes = sum(t["bytes"] for t in tensors if t["weight"])
    row = {
        "model": model,
        "variant": variant.name,
        "method": variant.method,
        "accuracy": m["accuracy"],
        "artifact_accuracy": artifact_accuracy(recipe, out, args.data_dir),
        "sparsity": m["sparsity"],
        "params": m["params"],
        "nonzero_params": m["nonzero_params"],
        "size_bytes": size,
        "size_bytes_metric": m["size_bytes"],
        "size_bytes_fp32": m["size_bytes_fp32"],
        "bits_per_nonzero": 8 * nonzero_bytes / max(m["nonzero_params"], 1),
        "clusters": _clusters(recipe, res.results["layers"]),
        "weight_bits": recipe.quant.weight_bits,
        "bias_bits": recipe.quant.bias_bits,
        "epochs": res.results["timing"]["epochs"],
        "seconds": seconds,
        "overrides": list(variant.sets),
        "run_dir": _shown(out),
        "tensors": tensors,
    }
    print(
        f"{model:<9} {variant.name:<14} accuracy {row['accuracy']:.4f}  {size:>8d} bytes  "
        f"sparsity {row['sparsity']:.3f}  {seconds:.0f} s",
        flush=True,
    )
    return row


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (result files carry no machine paths)."""
    try:
        return str(path.resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


def _tensor_row(r: dict[str, Any]) -> dict[str, Any]:
    keep = ("name", "shape", "encoding", "values", "bits", "index_bits", "unique", "stored", "bytes")
    return {**{k: r[k] for k in keep}, "weight": r["name"].endswith("weight") and len(r["shape"]) >= 2}


def _clusters(recipe: Recipe, layers: list[dict]) -> dict[str, int | None]:
    return {p["name"]: cluster_k(recipe, p["name"]) for p in layers}


@torch.no_grad()
def artifact_accuracy(recipe: Recipe, run_dir: Path, data_dir: str | None) -> float:
    """Test accuracy of a fresh model of ``recipe`` loaded from ``run_dir/model.qap`` (the file
    that was measured, decoded): it must equal the run's accuracy."""
    device = setup(recipe)
    data = load_data(recipe, data_dir, device)
    model = load_qap_into(build(recipe, data, device), run_dir / "model.qap").eval()
    return int((model(data.x_test).argmax(1) == data.y_test).sum()) / len(data.y_test)


def add_references(rows: list[dict[str, Any]]) -> None:
    """compression (dense float32 bytes / artifact bytes) and drop_points, against each model's
    dense variant."""
    dense = {r["model"]: r for r in rows if r["method"] == "dense"}
    for r in rows:
        ref = dense[r["model"]]
        r["dense_accuracy"], r["dense_fp32_bytes"] = ref["accuracy"], ref["size_bytes_fp32"]
        r["compression"] = ref["size_bytes_fp32"] / r["size_bytes"]
        r["drop_points"] = 100.0 * (ref["accuracy"] - r["accuracy"])


def headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: the largest compression within ``TOLERANCE_POINTS`` of dense (None and the
    closest variant when there is none), the dense accuracy, and whether the target is met."""
    head: dict[str, Any] = {"tolerance_points": TOLERANCE_POINTS}
    met = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        ref = next(r for r in mine if r["method"] == "dense")
        pts = [r for r in mine if r["method"] != "dense"]
        best = best_within(pts, ref_accuracy=ref["accuracy"], tolerance_points=TOLERANCE_POINTS, key="compression")
        closest = min(pts, key=lambda r: (r["drop_points"], -r["compression"])) if pts else None
        head[f"{model}_compression"] = best["compression"] if best else None
        head[f"{model}_accuracy_drop_points"] = best["drop_points"] if best else None
        head[f"{model}_variant"] = best["variant"] if best else None
        head[f"{model}_dense_accuracy"] = ref["accuracy"]
        head[f"{model}_accuracy"] = best["accuracy"] if best else None
        head[f"{model}_dense_fp32_bytes"] = ref["size_bytes_fp32"]
        head[f"{model}_bytes"] = best["size_bytes"] if best else None
        if best is None and closest is not None:
            head[f"{model}_closest"] = {k: closest[k] for k in ("variant", "compression", "drop_points", "accuracy")}
        met[model] = best is not None and model in TARGET and best["compression"] >= TARGET[model]
    head["anchor_deep_compression"] = {m: ANCHOR[m] for m in met if m in ANCHOR}
    head["targets"] = {m: TARGET[m] for m in met if m in TARGET}
    head["targets_met"] = met
    return head


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/datasets")
    ap.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--variants", nargs="+", default=None, help="run only these variant names (dense is always run)")
    ap.add_argument("--set", nargs="*", default=[], help="extra recipe overrides key.path=value (every variant)")
    ap.add_argument("--quick", action="store_true", help="4 epochs, 1 cluster epoch: a smoke test of the script")
    ap.add_argument("--runs-dir", type=Path, default=HERE / "runs" / "deep_compression_mnist")
    args = ap.parse_args(argv)
    if args.quick:
        args.set = [*QUICK, *args.set]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    for model in args.models:
        for v in VARIANTS[model]:
            if v.method == "dense" or args.variants is None or v.name in args.variants:
                rows.append(run_variant(model, v, args))
    add_references(rows)
    report(rows, headline(rows), args, time.perf_counter() - t0)


def report(rows: list[dict[str, Any]], head: dict[str, Any], args: argparse.Namespace, seconds: float) -> Path:
    print()
    print(table(rows, COLUMNS))
    for r in rows:
        if abs(r["artifact_accuracy"] - r["accuracy"]) > 1e-9:
            print(
                f"WARNING {r['model']}/{r['variant']}: the decoded artifact scores "
                f"{r['artifact_accuracy']:.4f}, the run {r['accuracy']:.4f}"
            )
    info = machine()
    info["cpu_affinity"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    path = write_results(
        "deep_compression_mnist_quick" if args.quick else "deep_compression_mnist",
        {
            "benchmark": "deep_compression_mnist",
            "quick": args.quick,
            "machine": info,
            "wall_seconds": seconds,
            "recipes": {m: Recipe.load(RECIPES[m]).override(args.set).to_dict() for m in args.models},
            "extra_overrides": args.set,
            "headline": head,
            "runs": rows,
        },
    )
    print()
    for model in args.models:
        comp, drop = head.get(f"{model}_compression"), head.get(f"{model}_accuracy_drop_points")
        if comp is None:
            c = head.get(f"{model}_closest", {})
            print(
                f"{model}: no variant within {TOLERANCE_POINTS} points of dense; closest {c.get('variant')} "
                f"({c.get('compression', float('nan')):.1f}x, {c.get('drop_points', float('nan')):.2f} points)"
            )
        else:
            print(
                f"{model}: {comp:.1f}x ({head[f'{model}_variant']}, {drop:.2f} points below dense "
                f"{100 * head[f'{model}_dense_accuracy']:.2f}); target {TARGET[model]:.0f}x "
                f"{'met' if head['targets_met'][model] else 'missed'}, anchor {ANCHOR[model]:.0f}x"
            )
    print(f"wrote {path} in {seconds:.0f} s")
    return path


if __name__ == "__main__":
    main()

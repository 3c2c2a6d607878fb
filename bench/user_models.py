"""Your model, your data: models written as a user writes them (plain ``nn.Module`` classes in this
file) on real data, through qaprune's whole flow: ``qaprune.run`` (quantized, iterative pruning,
the 32-bit dense reference trained and cached) -> the delivered step (``results.json["selected"]``:
the most compressed step within 0.5 points of the reference on validation) -> ``shrink_run`` ->
``onnx``, ``qdq`` and ``qonnx`` exports, each verified by ``qaprune.export`` -> latency of the
32-bit dense reference against the delivered model.

    python bench/user_models.py --data-dir ../shared/datasets --threads 1

The models (below, nothing qaprune-specific in them) are named in the recipes as
``user_models:ResidualMLP`` etc., with ``model.path`` this folder (a user's module beside their
recipe). Each factory declares the data arguments it wants (``in_features``/``num_classes``,
``n_features``/``n_classes``, ``in_channels``/``num_classes``). Runs (``RUNS``):

- ``residual_mlp-letter``: a residual MLP with a side branch concatenated before the classifier,
  UCI Letter (14,000/2,000/4,000, min-max), 6-bit weights, 8-bit activations and input,
  unstructured magnitude pruning (the FPGA / BOPs case: nothing to shrink physically);
- ``residual_mlp-digits``: the same class on scikit-learn's digits, 8 bits, channel pruning;
- ``feature_cnn-mnist1d``: a 1-D CNN over a feature vector on MNIST-1D, written by this script to
  a user ``.npz`` file (``x``, ``y``, ``x_test``, ``y_test``; built offline by ``mnist1d``),
  8 bits, channel pruning (kept channels a multiple of 8);
- ``resnet8-fashion``: a ResNet-8-like CNN (3 basic blocks, 16-32-64 channels, residual adds,
  1×1 projection shortcuts, stride-2 stem) on a Fashion-MNIST subset (20,000/2,000 from the
  training pool, 5,000 of the official test set; for time), 8 bits, channel pruning (multiples
  of 8), at most 30 epochs per step (patience 5).

Every step trains with Adam 1e-3 and early stopping on validation loss (at most 60 epochs,
patience 10, unless said); iterative magnitude pruning of 10% of the weights per step, fine-tuned,
up to 80-90%, stopping once two steps in a row are outside the tolerance.

The runs deliver the step qaprune selects (no ``common.FIXED_STEP``). Latency: ONNX Runtime on the
verified files (the reference exported with ``--format onnx``, the delivered model's ``onnx``,
shrunk float, and ``qdq``, int8) and PyTorch in deployment form (``select.deployed_latency_ms``:
baked, pruned channels removed, batch norms folded), batch 1 and 256, ``--threads``; the models of
a run are timed alternately for ``--rounds`` rounds and the median of round medians is kept.

Writes bench/results/user_models.json (``--quick``: user_models_quick.json) whose ``headline``
holds ``exports_verified`` / ``exports_total`` (3 formats per run), ``selected_within_tolerance``
(runs whose delivered step is within tolerance) and ``runs``; ``runs_detail`` has, per run, the
accuracies, the selected step, BOPs reduction, bytes, shrink FLOPs ratio, latencies and each
export's verification (or its error text).
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

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine, table, write_results


# --- the user's models: plain PyTorch, nothing qaprune-specific ----------------------------------
class ResidualMLP(nn.Module):
    """x -> Linear -> ReLU -> (Linear -> ReLU -> Linear) + skip -> ReLU, concatenated with a small
    side path from the input, -> classifier. x (N, ...) -> logits (N, num_classes)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64, side: int = 16) -> None:
        super().__init__()
        self.inp, self.bn0, self.act0 = nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU()
        self.fc1, self.bn1, self.act1 = nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU()
        self.fc2, self.bn2, self.act2 = nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU()
        self.side, self.act_side = nn.Linear(in_features, side), nn.ReLU()
        self.head = nn.Linear(hidden + side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        h = self.act0(self.bn0(self.inp(x)))
        h = self.act2(h + self.bn2(self.fc2(self.act1(self.bn1(self.fc1(h))))))
        s = self.act_side(self.side(x))
        return self.head(torch.cat([h, s], dim=1))


class FeatureCNN(nn.Module):
    """A 1-D CNN over a feature vector: (N, F) -> (N, 1, F), three Conv1d/BatchNorm/ReLU layers
    with two max-poolings, flatten, Linear. x (N, F) -> logits (N, n_classes)."""

    def __init__(self, n_features: int, n_classes: int, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.conv1, self.bn1, self.act1 = nn.Conv1d(1, c, 5, padding=2), nn.BatchNorm1d(c), nn.ReLU()
        self.conv2, self.bn2, self.act2 = nn.Conv1d(c, c, 3, padding=1), nn.BatchNorm1d(c), nn.ReLU()
        self.pool1 = nn.MaxPool1d(2)
        self.conv3, self.bn3, self.act3 = nn.Conv1d(c, c, 3, padding=1), nn.BatchNorm1d(c), nn.ReLU()
        self.pool2 = nn.MaxPool1d(2)
        self.fc = nn.Linear(c * (n_features // 4), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        x = self.pool1(self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))))
        x = self.pool2(self.act3(self.bn3(self.conv3(x))))
        return self.fc(x.flatten(1))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convs with batch norm, plus the input (a 1×1 projection when
    the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class ResNet8(nn.Module):
    """ResNet-8 (MLPerf Tiny's layout): a 3×3 stem, three basic blocks of ``widths`` channels
    (strides 1, 2, 2), global average pooling, Linear. ``stem_stride`` 2 halves the image first
    (28×28 -> 14×14: a quarter of the compute). x (N, C, H, W) -> logits (N, num_classes)."""

    def __init__(
        self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (16, 32, 64), stem_stride: int = 2
    ) -> None:
        super().__init__()
        a, b, c = widths
        self.stem, self.bn = nn.Conv2d(in_channels, a, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(a)
        self.act = nn.ReLU()
        self.layer1, self.layer2, self.layer3 = BasicBlock(a, a), BasicBlock(a, b, 2), BasicBlock(b, c, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


# --- the runs ------------------------------------------------------------------------------------
MODULE = "user_models"  # this file, as the recipes import it (model.path: this folder)
MNIST1D = "mnist1d.npz"  # written into --runs-dir/data by this script: a user's data file
FORMATS = ("onnx", "qdq", "qonnx")
TRAIN = {"optimizer": "adam", "lr": 1e-3, "batch_size": 256, "epochs": 60, "patience": 10}
PRUNE = {"criterion": "magnitude", "schedule": "iterative", "rate": 0.1, "rewind": "ft"}
RUNS: dict[str, dict[str, Any]] = {
    "residual_mlp-letter": {
        "model": {"name": f"{MODULE}:ResidualMLP", "args": {"hidden": 64, "side": 16}},
        "data": {"name": "letter", "train": 14000, "val": 2000, "test": 4000, "scale": "minmax"},
        "quant": {"weight_bits": 6, "act_bits": 8},
        "prune": {**PRUNE, "sparsity": 0.9, "structure": "unstructured"},
        "train": TRAIN,
    },
    "residual_mlp-digits": {
        "model": {"name": f"{MODULE}:ResidualMLP", "args": {"hidden": 64, "side": 16}},
        "data": {"name": "digits"},
        "quant": {"weight_bits": 8, "act_bits": 8},
        "prune": {**PRUNE, "sparsity": 0.8, "structure": "channels"},
        "train": {**TRAIN, "batch_size": 64},
    },
    "feature_cnn-mnist1d": {
        "model": {"name": f"{MODULE}:FeatureCNN", "args": {"channels": 32}},
        "data": {"name": MNIST1D, "val": 0.15, "scale": "standard"},
        "quant": {"weight_bits": 8, "act_bits": 8},
        "prune": {**PRUNE, "sparsity": 0.8, "structure": "channels", "structure_args": {"round_to": 8}},
        "train": {**TRAIN, "batch_size": 128},
    },
    "resnet8-fashion": {
        "model": {"name": f"{MODULE}:ResNet8"},
        "data": {"name": "fashion_mnist", "train": 20000, "val": 2000, "test": 5000},
        "quant": {"weight_bits": 8, "act_bits": 8},
        "prune": {**PRUNE, "sparsity": 0.8, "structure": "channels", "structure_args": {"round_to": 8}},
        "train": {**TRAIN, "epochs": 30, "patience": 5},
    },
}
QUICK: dict[str, list[str]] = {  # a smoke run of the script: tiny data and budgets
    "residual_mlp-letter": ["data.train=2000", "data.val=500", "data.test=1000"],
    "residual_mlp-digits": [],
    "feature_cnn-mnist1d": ["data.train=800", "data.val=200", "data.test=300"],
    "resnet8-fashion": ["data.train=1000", "data.val=300", "data.test=500", "model.args.widths=[8, 16, 16]"],
}
QUICK_ALL = ["train.epochs=3", "train.patience=2", "prune.sparsity=0.2"]

RUN_COLUMNS = [
    ("run", "run", ""),
    ("reference_accuracy", "dense acc", ".4f"),
    ("accuracy", "delivered", ".4f"),
    ("drop_points", "drop (pts)", ".2f"),
    ("val_drop_points", "val drop", ".2f"),
    ("within_tolerance", "within", ""),
    ("step", "step", "d"),
    ("sparsity", "sparsity", ".3f"),
    ("bops_reduction", "BOPs red.", ".1f"),
    ("size_bytes", "bytes", "d"),
    ("flops_ratio", "FLOPs ratio", ".2f"),
    ("shrink_speedup", "shrink ORT", ".2f"),
    ("exports_ok", "exports", ""),
    ("seconds", "seconds", ".0f"),
]
LATENCY_COLUMNS = [
    ("run", "run", ""),
    ("backend", "backend", ""),
    ("batch", "batch", "d"),
    ("dense_ms", "dense ms", ".4f"),
    ("delivered_ms", "delivered ms", ".4f"),
    ("speedup", "speedup", ".2f"),
    ("int8_ms", "int8 ms", ".4f"),
    ("int8_speedup", "int8 speedup", ".2f"),
]


def write_mnist1d(folder: Path) -> Path:
    """MNIST-1D (4,000 training and 1,000 test sequences of 40 values, 10 classes), built offline
    from its templates with the package's default arguments (seeded), as a user .npz file."""
    from mnist1d.data import get_dataset_args, make_dataset

    path = folder / MNIST1D
    if not path.is_file():
        d = make_dataset(get_dataset_args())  # never get_dataset(): it downloads
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"x": d["x"], "y": d["y"], "x_test": d["x_test"], "y_test": d["y_test"]}
        np.savez(path, **{k: v.astype(np.float32 if k.startswith("x") else np.int64) for k, v in arrays.items()})
    return path


def recipe_for(name: str, args: argparse.Namespace, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe of run ``name``: ``spec`` (default: RUNS' entry), this folder as model.path, the
    MNIST-1D file (written when needed), ``--threads``, ``--quick`` budgets and ``--set`` overrides."""
    from qaprune.recipe import Recipe

    spec = copy.deepcopy(RUNS[name] if spec is None else spec)
    spec["name"] = name
    spec["model"]["path"] = str(HERE)
    if spec["data"]["name"] == MNIST1D:
        spec["data"]["name"] = str(write_mnist1d(Path(args.runs_dir) / "data"))
    spec["train"] = {**spec["train"], "threads": args.threads}
    sets = [*(QUICK_ALL + QUICK.get(name, []) if args.quick else []), *args.set]
    return Recipe.parse(spec).override(sets).to_dict()


def train(name: str, recipe: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """``qaprune.run`` of one recipe (kept with ``--reuse`` when the run directory holds a finished
    run of the same recipe) -> (results.json, facts about the run: dir, seconds, reference trained)."""
    import json

    import qaprune
    from qaprune.recipe import Recipe
    from qaprune.rundir import clean, resolve_recipe

    run_dir = Path(args.runs_dir) / name
    lines: list[str] = []

    def log(msg: str) -> None:
        lines.append(str(msg))
        if args.verbose:
            print(f"  {name}: {msg}", flush=True)

    t0 = time.perf_counter()
    done = (run_dir / "results.json").is_file() and (run_dir / "recipe.yaml").is_file()
    if args.reuse and done and Recipe.load(run_dir / "recipe.yaml") == resolve_recipe(recipe):
        return json.loads((run_dir / "results.json").read_text()), {"dir": run_dir, "seconds": 0.0, "reused": True}
    clean(run_dir)
    results = qaprune.run(recipe, out=run_dir, data_dir=args.data_dir, log=log).results
    trained = any(line.startswith("reference: training") for line in lines)
    facts = {"dir": run_dir, "seconds": time.perf_counter() - t0, "reused": False, "reference_trained": trained}
    return results, {**facts, "log_tail": lines[-3:]}


def export_all(run_dir: Path, data_dir: str | None) -> dict[str, dict[str, Any]]:
    """Every format of the delivered model, verified by ``qaprune.export``; a failure is recorded
    with its error text (and the file is not kept)."""
    from qaprune.errors import QapruneError
    from qaprune.export.api import export

    out: dict[str, dict[str, Any]] = {}
    for fmt in FORMATS:
        t0 = time.perf_counter()
        try:
            r = export(run_dir, format=fmt, data_dir=data_dir)
        except (QapruneError, Exception) as exc:  # recorded, not hidden
            out[fmt] = {"passed": False, "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}
            print(f"  export {fmt} FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        v = r.verification
        out[fmt] = {
            "passed": v.passed,
            "file": r.path.name,
            "bytes": r.size_bytes,
            "exported_with": r.how,
            "summary": v.summary(),
            "runtime": v.runtime,
            "samples": v.samples,
            "max_abs_diff": v.max_abs_diff,
            "top1_agreement": v.top1_agreement,
            "criterion": v.criterion,
            "kernels": v.kernels,
            "removed": r.removed,
            "not_shrunk": r.not_shrunk,
            "seconds": time.perf_counter() - t0,
        }
    return out


def shrunk(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``shrink_run``: pruned channels out, checked and its ONNX file verified; its own latency
    (same model with every channel kept against shrunk) at batch 1 and 256."""
    from qaprune.export.run_shrink import shrink_run

    t0 = time.perf_counter()
    try:
        s = shrink_run(run_dir, data_dir=args.data_dir, batch_sizes=(1, 256), threads=(args.threads,))
    except Exception as exc:  # recorded, not hidden
        print(f"  shrink FAILED: {type(exc).__name__}: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}
    keep = ("removed", "not_shrunk", "max_abs_diff", "top1_agreement", "flops_ratio", "macs_before", "macs_after")
    out = {k: s.get(k) for k in (*keep, "params_before", "params_after", "onnx_bytes", "latency")}
    out["verified"] = s["verification"]["passed"]
    out["seconds"] = time.perf_counter() - t0
    return out


def reference_file(results: dict[str, Any], run_dir: Path, data_dir: str | None) -> dict[str, Any]:
    """The 32-bit dense reference exported (``onnx``, verified) beside the run, for timing."""
    from qaprune.export.api import export

    ref = (results.get("reference") or {}).get("run_dir")
    if ref is None:
        return {"passed": False, "error": "the run has no reference (select.reference: none)"}
    try:
        r = export(ref, format="onnx", data_dir=data_dir, out=run_dir / "reference.onnx")
    except Exception as exc:
        return {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "passed": r.verification.passed,
        "file": r.path.name,
        "bytes": r.size_bytes,
        "summary": r.verification.summary(),
    }


def latency(
    name: str, results: dict[str, Any], run_dir: Path, files: dict[str, Path | None], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Dense reference against delivered: ONNX Runtime on the verified files and PyTorch in
    deployment form, batch 1 and 256, alternately for ``args.rounds`` rounds (median of medians)."""
    from qaprune.metrics.latency import measure_latency
    from qaprune.rundir import load_run
    from qaprune.select import deployed_latency_ms

    _, data, delivered = load_run(run_dir, data_dir=args.data_dir)
    _, _, dense = load_run(results["reference"]["run_dir"], data_dir=args.data_dir)
    torch.set_num_threads(args.threads)  # load_run's setup() may have changed it
    x, shape = data.x_test[:256].cpu(), tuple(data.input_shape)
    files, unverified = dict(files), {}
    if files.get("dense") is None:  # its export failed verification: torch.onnx's file, marked
        from qaprune.export.fold import fold_batchnorm
        from qaprune.metrics.latency import export_onnx

        files["dense"] = run_dir / "reference.unverified.onnx"
        plain, _ = fold_batchnorm(copy.deepcopy(dense).cpu().eval())
        unverified["dense"] = export_onnx(plain, shape, str(files["dense"]))
    samples: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(args.rounds):
        for model_name, path in files.items():
            if path is None:
                continue
            rows = measure_latency(path, shape, backend="ort", batch_sizes=(1, 256), threads=(args.threads,), **args.kw)
            for r in rows:
                samples.setdefault((model_name, "ort", r["batch"]), []).append(r["median_ms"])
        for model_name, model in (("dense", dense), ("delivered", delivered)):
            for b in (1, 256):
                ms = deployed_latency_ms(model, x, batch=b, threads=args.threads, repeats=args.kw["repeats"])
                samples.setdefault((model_name, "torch", b), []).append(ms)
    med = {k: statistics.median(v) for k, v in samples.items()}
    rows = []
    for backend in ("ort", "torch"):
        for b in (1, 256):
            d, s, q = (med.get((m, backend, b)) for m in ("dense", "delivered", "int8"))
            row = {"run": name, "backend": backend, "batch": b, "dense_ms": d, "delivered_ms": s, "int8_ms": q}
            row["speedup"] = d / s if d and s else None
            row["int8_speedup"] = d / q if d and q else None
            row["rounds"] = {m: samples.get((m, backend, b)) for m in ("dense", "delivered", "int8")}
            if backend == "ort" and unverified:
                row["unverified_export"] = unverified
            rows.append(row)
    return rows


def bench_run(name: str, recipe: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One user model on one dataset, end to end -> its row of details."""
    t0 = time.perf_counter()
    results, facts = train(name, recipe, args)
    run_dir = Path(facts["dir"])
    sel, m, ref = results["selected"], results["metrics"], results["reference"] or {}
    entry = next(e for e in results["history"] if e["step"] == sel["step"])
    print(
        f"{name}: step {sel['step']} accuracy {m['accuracy']:.4f} (reference {sel['reference_accuracy']:.4f}), "
        f"within tolerance {sel['within_tolerance']}, {m['bops_reduction']:.1f}x BOPs, in {facts['seconds']:.0f} s",
        flush=True,
    )
    t1 = time.perf_counter()
    exports = export_all(run_dir, args.data_dir)
    shrink = shrunk(run_dir, args)
    dense_file = reference_file(results, run_dir, args.data_dir)
    t2 = time.perf_counter()
    files = {
        "dense": run_dir / "reference.onnx" if dense_file["passed"] else None,
        "delivered": run_dir / exports["onnx"]["file"] if exports["onnx"]["passed"] else None,
        "int8": run_dir / exports["qdq"]["file"] if exports["qdq"]["passed"] else None,
    }
    lat = latency(name, results, run_dir, files, args) if ref.get("run_dir") else []
    ref_val = (ref.get("val") or {}).get("accuracy")
    row = {
        "run": name,
        "dir": os.path.relpath(run_dir, HERE.parent),
        "model": recipe["model"]["name"],
        "model_path": os.path.relpath(results["recipe"]["model"]["path"], HERE.parent),
        "data": results["data"] | {"name": _relative(recipe["data"]["name"])},
        "accuracy": m["accuracy"],
        "balanced_accuracy": m["balanced_accuracy"],
        "reference_accuracy": sel["reference_accuracy"],
        "drop_points": 100 * (sel["reference_accuracy"] - m["accuracy"]),
        "val_accuracy": entry.get("val_accuracy"),
        "reference_val_accuracy": ref_val,
        "val_drop_points": None if ref_val is None else 100 * (ref_val - entry["val_accuracy"]),
        "within_tolerance": sel["within_tolerance"],
        "selected": sel,
        "step": sel["step"],
        "steps_run": len(results["history"]),
        "sparsity": m["sparsity"],
        "bops_reduction": m["bops_reduction"],
        "size_bytes": m["size_bytes"],
        "reference_size_bytes": (ref.get("metrics") or {}).get("size_bytes"),
        "params": m["params"],
        "nonzero_params": m["nonzero_params"],
        "macs": m["macs"],
        "flops_ratio": shrink.get("flops_ratio"),
        "shrink_speedup": next(
            (x["speedup"] for x in shrink.get("latency") or [] if x["backend"] == "ort" and x["batch"] == 256), None
        ),
        "shrink": shrink,
        "exports": exports,
        "exports_ok": f"{sum(e['passed'] for e in exports.values())}/{len(exports)}",
        "reference_export": dense_file,
        "latency": lat,
        "history": [
            {k: e.get(k) for k in ("step", "sparsity", "val_accuracy", "accuracy", "bops_reduction", "epochs")}
            for e in results["history"]
        ],
        "warnings": results.get("warnings", []),
        "timing": {
            **results["timing"],
            "run_seconds": facts["seconds"],
            "export_shrink_seconds": t2 - t1,
            "latency_seconds": time.perf_counter() - t2,
        },
        "reused": facts["reused"],
        "reference_trained": facts.get("reference_trained"),
        "seconds": time.perf_counter() - t0,
    }
    return row


def _relative(name: str) -> str:
    """A data file's path relative to the checkout (a registry name as it is)."""
    return os.path.relpath(name, HERE.parent) if os.path.isabs(name) else name


def headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    exports = [(r["run"], f, e) for r in rows for f, e in r["exports"].items()]
    verified = sum(e["passed"] for _, _, e in exports)

    def speedups(backend: str, key: str, batch: int) -> dict[str, float | None]:
        return {
            r["run"]: next((x[key] for x in r["latency"] if x["backend"] == backend and x["batch"] == batch), None)
            for r in rows
        }

    h = {
        "exports_verified": verified,
        "exports_total": len(exports),
        "selected_within_tolerance": sum(bool(r["within_tolerance"]) for r in rows),
        "runs": len(rows),
        "failed_exports": [f"{run}/{fmt}" for run, fmt, e in exports if not e["passed"]],
        "outside_tolerance": [r["run"] for r in rows if not r["within_tolerance"]],
        "drop_points": {r["run"]: r["drop_points"] for r in rows},
        "bops_reduction": {r["run"]: r["bops_reduction"] for r in rows},
        "flops_ratio": {r["run"]: r["flops_ratio"] for r in rows},
        "speedup_ort_b1": speedups("ort", "speedup", 1),
        "speedup_ort_b256": speedups("ort", "speedup", 256),
        "int8_speedup_ort_b256": speedups("ort", "int8_speedup", 256),
        "speedup_torch_b256": speedups("torch", "speedup", 256),
    }
    h["targets_met"] = {
        "every_export_verified": verified == len(exports) and len(exports) >= 9,
        "every_run_within_tolerance": h["selected_within_tolerance"] == len(rows),
    }
    return h


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/datasets")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training and latency")
    ap.add_argument("--rounds", type=int, default=3, help="alternating latency rounds")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides for every recipe, key.path=value")
    ap.add_argument("--quick", action="store_true", help="tiny data and budgets: a smoke run of the script")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs of the same recipes")
    ap.add_argument("--verbose", action="store_true", help="print qaprune's log lines")
    ap.add_argument("--runs-dir", type=Path, default=HERE / "runs" / "user_models")
    ap.add_argument("--cache", type=Path, default=None, help="QAPRUNE_CACHE (dense references); default RUNS_DIR/cache")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.repeats, args.warmup = 1, 3, 1
    args.kw = {"warmup": args.warmup, "repeats": args.repeats}
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["QAPRUNE_CACHE"] = str(args.cache or Path(args.runs_dir) / "cache")
    t0 = time.perf_counter()
    rows = [bench_run(name, recipe_for(name, args), args) for name in args.runs]
    head = headline(rows)
    seconds = time.perf_counter() - t0
    print()
    print(table(rows, RUN_COLUMNS))
    print()
    print(table([x for r in rows for x in r["latency"]], LATENCY_COLUMNS))
    for r in rows:
        for fmt, e in r["exports"].items():
            print(f"{r['run']} {fmt}: {e.get('summary') or e.get('error')}")
    path = write_results(
        "user_models_quick" if args.quick else "user_models",
        {
            "benchmark": "user_models",
            "quick": args.quick,
            "machine": machine(),
            "threads": args.threads,
            "wall_seconds": seconds,
            "headline": head,
            "recipes": {name: recipe_for(name, args) for name in args.runs},
            "runs_detail": rows,
        },
    )
    print(f"\nheadline: {_fmt(head)}\nwrote {path} in {seconds:.0f} s")
    return head


def _fmt(head: dict[str, Any]) -> str:
    keys = ("exports_verified", "exports_total", "selected_within_tolerance", "runs", "failed_exports")
    return ", ".join(f"{k}={head[k]}" for k in keys)


if __name__ == "__main__":
    main()

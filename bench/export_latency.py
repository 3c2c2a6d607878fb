"""Deployment: bytes and measured ONNX Runtime latency of dense fp32, QAP-shrunk fp32 and int8 QDQ
exports of LeNet-300-100 (MNIST) and the small Fashion-MNIST CNN, every file verified.

    python bench/export_latency.py --data-dir ../shared/datasets

Models come from ``qaprune.run``: ``recipes/export_lenet300.yaml`` and
``recipes/export_fashion_cnn.yaml`` (8-bit weights and activations, 50% channel pruning over
dependency groups, kept counts rounded to 8), and the same recipes with ``prune.sparsity=0`` and
32-bit weights/activations for the dense fp32 baselines. The training budgets are deliberately
short (LeNet-300: 2 × 10 epochs on 9k samples; CNN: 2 × 1 epoch on a 20k subset): this benchmark
is about export exactness, file size and speed, not accuracy (the accuracies are reported but are
not the point). Each QAP run is exported with ``qaprune.export`` as ``onnx`` (shrunk: pruned
channels physically removed, float), ``onnx`` with ``shrink=False`` (``masked_fp32``: the same
model, every channel kept) and ``qdq`` (int8), the dense run as ``onnx``. The float exports of the
QAP model compute its 8-bit activation rounding (Mul, Round, Mul per quantizer) to match it
exactly, which the plain dense model does not have: the effect of shrinking alone is
masked → shrunk, and dense → shrunk mixes it with those extra operations. Every export is
verified by ``qaprune.export`` itself (float: |diff| ≤ 1e-5 + 1e-5·|ref| with activation
rounding ties teacher-forced; int8 QDQ: identical top-1 on ≥ 99.5% of the test samples). An export
that fails its verification is recorded as failed (``failed_exports``, ``targets_met``) and not
kept; its ORT row then times the shrunk PyTorch model through ``torch.onnx`` and is marked
``unverified_export``. ``--reuse`` keeps finished runs of the same recipes.

Latency: ``measure_latency`` (backend "ort" on the written files; PyTorch eager for reference),
batch 1 and 256, ``--threads``; the models of one network are measured alternately for
``--rounds`` rounds and the median of the round medians is kept. FLOPs ratio: dense MACs / MACs
of the shrunk model (``metrics.bops.profile``).

Writes bench/results/export_latency.json (``--quick``: export_latency_quick.json) whose
``headline`` holds ``int8_speedup_b256`` (the smaller of the two networks' int8 QDQ / shrunk fp32
ORT speedups at batch 256: same channels, so it isolates int8), ``int8_speedup_b256_lenet300``,
``int8_speedup_b256_cnn``, ``cnn_speedup`` (masked fp32 / shrunk fp32, ORT, batch 256: the
gain of removing the channels, same operations otherwise), ``cnn_flops_ratio`` (dense MACs /
shrunk MACs), ``cnn_speedup_vs_dense_fp32`` (dense fp32 / shrunk fp32), ``max_abs_diff_onnx``
(largest raw |ONNX − PyTorch| over the float exports),
``qdq_top1_agreement`` (smallest over the int8 exports) and ``targets_met``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import FIXED_STEP, machine, table, write_results

import qaprune
from qaprune.export.shrink import shrink
from qaprune.export.verify import VerificationError
from qaprune.metrics.bops import profile
from qaprune.metrics.latency import measure_latency
from qaprune.param import bake
from qaprune.recipe import Recipe
from qaprune.rundir import clean, load_run
from qaprune.runner import run

RECIPES = {
    "lenet300": HERE.parent / "recipes" / "export_lenet300.yaml",
    "cnn": HERE.parent / "recipes" / "export_fashion_cnn.yaml",
}
DENSE = ["prune.sparsity=0.0", "quant.weight_bits=32", "quant.act_bits=32", "quant.input_bits=null"]
QUICK = {"lenet300": ["train.epochs=2"], "cnn": ["data.train=3000", "data.val=500"]}
TARGET_INT8, TARGET_FLOPS_FRACTION, TARGET_TOP1 = 1.8, 0.8, 0.995
FILES = ("dense_fp32", "masked_fp32", "shrunk_fp32", "int8_qdq")
BYTES_COLUMNS = [
    ("net", "net", ""),
    ("model", "model", ""),
    ("bytes", "bytes", "d"),
    ("macs", "MACs", "d"),
    ("accuracy", "accuracy", ".4f"),
    ("max_abs_diff", "max|diff|", ".2e"),
    ("forced_max_abs_diff", "forced|diff|", ".2e"),
    ("top1_agreement", "top-1 agree", ".4f"),
    ("passed", "verified", ""),
]
LATENCY_COLUMNS = [
    ("net", "net", ""),
    ("model", "model", ""),
    ("backend", "backend", ""),
    ("batch", "batch", "d"),
    ("threads", "threads", "d"),
    ("median_ms", "median ms", ".4f"),
    ("p10_ms", "p10 ms", ".4f"),
    ("p90_ms", "p90 ms", ".4f"),
    ("speedup_vs_dense", "vs dense", ".2f"),
    ("speedup_vs_masked", "vs masked", ".2f"),
    ("speedup_vs_shrunk", "vs shrunk", ".2f"),
]


def train(net: str, recipe: Recipe, runs_dir: Path, data_dir: str | None, reuse: bool = False) -> dict[str, Any]:
    """Dense fp32 and QAP runs of one recipe: run directories, accuracies, seconds. ``reuse``:
    keep a finished run whose stored recipe is this one (``reused``: its accuracy and timing are
    that earlier run's, measured with the code it ran with, not this checkout's)."""
    out: dict[str, Any] = {}
    for kind, sets in (("dense", DENSE), ("qap", [])):
        r = recipe.override([*FIXED_STEP, *sets, f"name={recipe.name}-{kind}"])
        run_dir = runs_dir / f"{net}-{kind}"
        t0 = time.perf_counter()
        reused = reuse and (run_dir / "results.json").is_file() and Recipe.load(run_dir / "recipe.yaml") == r
        if reused:
            results = json.loads((run_dir / "results.json").read_text())
        else:
            clean(run_dir)
            results = run(r, out=run_dir, data_dir=data_dir, log=lambda *_: None).results
        m = results["metrics"]
        out[kind] = {
            "dir": run_dir,
            "accuracy": m["accuracy"],
            "seconds": time.perf_counter() - t0,
            "train_seconds": results["timing"]["train_seconds"],
            "epochs": results["timing"]["epochs"],
            "sparsity": m["sparsity"],
            "reused": reused,
        }
        res = argparse.Namespace(metrics=m)
        print(f"{net} {kind}: accuracy {res.metrics['accuracy']:.4f} in {out[kind]['seconds']:.0f} s", flush=True)
    return out


def exports(runs: dict[str, Any], data_dir: str | None) -> dict[str, dict[str, Any]]:
    """The three verified files of one network: path, bytes, verification, removed channels."""
    qap = Path(runs["qap"]["dir"])
    todo = {
        "dense_fp32": (runs["dense"]["dir"], "onnx", {}),
        "masked_fp32": (qap, "onnx", {"shrink": False, "out": qap / "model.masked.onnx"}),
        "shrunk_fp32": (qap, "onnx", {}),
        "int8_qdq": (qap, "qdq", {}),
    }
    out = {}
    for name, (run_dir, fmt, kw) in todo.items():
        try:
            r = qaprune.export(run_dir, format=fmt, data_dir=data_dir, **kw)
        except VerificationError as exc:  # recorded, not hidden: the file was not kept
            out[name] = {
                "path": None,
                "file": None,
                "format": fmt,
                "bytes": None,
                "passed": False,
                "max_abs_diff": None,
                "top1_agreement": None,
                "forced_max_abs_diff": None,
                "error": str(exc),
            }
            print(f"{name}: export FAILED verification: {exc}", flush=True)
            continue
        v = r.verification.to_dict()
        out[name] = {
            "path": r.path,
            "file": r.path.name,
            "format": fmt,
            "bytes": r.size_bytes,
            "passed": v["passed"],
            "max_abs_diff": v["max_abs_diff"],
            "top1_agreement": v["top1_agreement"],
            "forced_max_abs_diff": (v.get("activations") or {}).get("forced_max_abs_diff"),
            "criterion": v["criterion"],
            "kernels": v.get("kernels"),
            "removed": r.removed,
            "not_shrunk": r.not_shrunk,
            "verification": v,
        }
    return out


def torch_models(runs: dict[str, Any], data_dir: str | None) -> tuple[dict[str, torch.nn.Module], tuple, dict]:
    """PyTorch eager references (dense baked, QAP shrunk), the input shape, and MACs of each."""
    _, data, dense = load_run(runs["dense"]["dir"], data_dir=data_dir)
    _, _, qap = load_run(runs["qap"]["dir"], data_dir=data_dir)
    x = data.x_test[:64].cpu()
    dense = bake(copy.deepcopy(dense.cpu().eval()))
    small = shrink(qap.cpu().eval(), x, sparse="never").model.eval()
    masked = bake(copy.deepcopy(qap.cpu().eval()))
    macs = {name: sum(p.macs for p in profile(m, x[:1])) for name, m in (("dense", dense), ("shrunk", small))}
    return {"dense_fp32": dense, "masked_fp32": masked, "shrunk_fp32": small}, tuple(data.input_shape), macs


def latency(
    net: str, files: dict[str, dict], models: dict[str, torch.nn.Module], shape: tuple, args: argparse.Namespace
) -> list[dict]:
    """Median of ``args.rounds`` round medians per (model, backend, batch, threads); the models
    are measured alternately within each round so drifting load hits them alike."""
    samples: dict[tuple, list[dict]] = {}
    kw = {"batch_sizes": (1, 256), "threads": tuple(args.threads), "warmup": args.warmup, "repeats": args.repeats}
    for _ in range(args.rounds):
        # a file that failed verification was not kept: its torch model exported by torch.onnx, marked
        jobs = [
            (n, "ort", str(f["path"]) if f["path"] else models[n]) for n, f in files.items() if f["path"] or n in models
        ]
        jobs += [(n, "torch", m) for n, m in models.items()] if "torch" in args.backends else []
        for name, backend, target in jobs:
            for r in measure_latency(target, shape, backend=backend, **kw):
                samples.setdefault((name, backend, r["batch"], r["threads"]), []).append(r)
    rows = []
    for (name, backend, batch, threads), rs in samples.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("median_ms", "p10_ms", "p90_ms")}
        rows.append(
            {
                "net": net,
                "model": name,
                "backend": backend,
                "batch": batch,
                "threads": threads,
                **med,
                "rounds": len(rs),
                "round_medians_ms": [r["median_ms"] for r in rs],
                **({"unverified_export": rs[0]["export"]} if "export" in rs[0] and backend == "ort" else {}),
            }
        )
    ref = {(r["model"], r["backend"], r["batch"], r["threads"]): r["median_ms"] for r in rows}
    for r in rows:
        key = (r["backend"], r["batch"], r["threads"])
        if r["model"] != "dense_fp32" and ("dense_fp32", *key) in ref:
            r["speedup_vs_dense"] = ref[("dense_fp32", *key)] / r["median_ms"]
        if r["model"] == "int8_qdq" and ("shrunk_fp32", *key) in ref:
            r["speedup_vs_shrunk"] = ref[("shrunk_fp32", *key)] / r["median_ms"]
        if r["model"] == "shrunk_fp32" and ("masked_fp32", *key) in ref:
            r["speedup_vs_masked"] = ref[("masked_fp32", *key)] / r["median_ms"]
    return rows


def bench_net(net: str, recipe: Recipe, args: argparse.Namespace) -> dict[str, Any]:
    runs = train(net, recipe, args.runs_dir, args.data_dir, args.reuse)
    files = exports(runs, args.data_dir)
    models, shape, macs = torch_models(runs, args.data_dir)
    torch.set_num_threads(min(args.threads))  # load_run's setup() may have changed it
    lat = latency(net, files, models, shape, args)
    acc = {
        "dense_fp32": runs["dense"]["accuracy"],
        "masked_fp32": runs["qap"]["accuracy"],
        "shrunk_fp32": runs["qap"]["accuracy"],
        "int8_qdq": runs["qap"]["accuracy"],
    }
    mac = {
        "dense_fp32": macs["dense"],
        "masked_fp32": macs["dense"],
        "shrunk_fp32": macs["shrunk"],
        "int8_qdq": macs["shrunk"],
    }
    rows = [
        {"net": net, "model": n, "accuracy": acc[n], "macs": mac[n], **{k: v for k, v in f.items() if k != "path"}}
        for n, f in files.items()
    ]
    runs_out = {k: {**v, "dir": os.path.relpath(v["dir"], HERE.parent)} for k, v in runs.items()}
    return {
        "runs": runs_out,
        "files": rows,
        "latency": lat,
        "macs_dense": macs["dense"],
        "macs_shrunk": macs["shrunk"],
        "flops_ratio": macs["dense"] / macs["shrunk"],
    }


def _speed(lat: list[dict], model: str, key: str, batch: int, threads: int) -> float | None:
    hit = [
        r.get(key)
        for r in lat
        if r["model"] == model and r["backend"] == "ort" and r["batch"] == batch and r["threads"] == threads
    ]
    return hit[0] if hit else None


def _forced(f: dict[str, Any]) -> float:
    """|ONNX − PyTorch| with activation rounding ties teacher-forced, where the check did that."""
    return f["max_abs_diff"] if f["forced_max_abs_diff"] is None else f["forced_max_abs_diff"]


def headline(nets: dict[str, dict], threads: int) -> dict[str, Any]:
    int8 = {n: _speed(d["latency"], "int8_qdq", "speedup_vs_shrunk", 256, threads) for n, d in nets.items()}
    int8_dense = {n: _speed(d["latency"], "int8_qdq", "speedup_vs_dense", 256, threads) for n, d in nets.items()}
    files = [f for d in nets.values() for f in d["files"]]
    floats = [f for f in files if f["format"] == "onnx"]
    qdq = [f for f in files if f["format"] == "qdq"]
    cnn = nets.get("cnn", {})
    cnn_speedup = _speed(cnn.get("latency", []), "shrunk_fp32", "speedup_vs_masked", 256, threads)
    cnn_vs_dense = _speed(cnn.get("latency", []), "shrunk_fp32", "speedup_vs_dense", 256, threads)
    flops_ratio = cnn.get("flops_ratio")
    int8_min = min((v for v in int8.values() if v is not None), default=None)
    h = {
        "int8_speedup_b256": int8_min,
        **{f"int8_speedup_b256_{n}": v for n, v in int8.items()},
        **{f"int8_vs_dense_speedup_b256_{n}": v for n, v in int8_dense.items()},
        "cnn_speedup": cnn_speedup,
        "cnn_flops_ratio": flops_ratio,
        "cnn_speedup_vs_dense_fp32": cnn_vs_dense,
        "max_abs_diff_onnx": max((f["max_abs_diff"] for f in floats if f["passed"]), default=None),
        "max_abs_diff_onnx_forced": max((_forced(f) for f in floats if f["passed"]), default=None),
        "qdq_top1_agreement": min((f["top1_agreement"] for f in qdq if f["passed"]), default=None),
        "failed_exports": [f"{f['net']}/{f['model']}" for f in files if not f["passed"]],
        "threads": threads,
    }
    h["targets_met"] = {
        "int8_speedup": int8_min is not None and int8_min >= TARGET_INT8,
        "cnn_speedup_vs_flops": (
            cnn_speedup is not None and flops_ratio is not None and cnn_speedup >= TARGET_FLOPS_FRACTION * flops_ratio
        ),
        "all_exports_verified": all(f["passed"] for f in files),
        "qdq_top1": h["qdq_top1_agreement"] is not None and h["qdq_top1_agreement"] >= TARGET_TOP1,
    }
    return h


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/datasets")
    ap.add_argument("--nets", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="latency thread counts (training: 1)")
    ap.add_argument("--backends", nargs="+", default=["ort", "torch"], choices=["ort", "torch"])
    ap.add_argument("--rounds", type=int, default=3, help="alternating latency rounds")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides for both recipes, key.path=value")
    ap.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run of the script")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs of the same recipes")
    ap.add_argument("--runs-dir", type=Path, default=HERE / "runs" / "export_latency")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.repeats, args.warmup = 1, 5, 2
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    nets = {}
    for net in args.nets:
        recipe = Recipe.load(RECIPES[net]).override([*(QUICK[net] if args.quick else []), *args.set])
        nets[net] = bench_net(net, recipe, args)
    head = headline(nets, min(args.threads))
    seconds = time.perf_counter() - t0
    print()
    print(table([f for d in nets.values() for f in d["files"]], BYTES_COLUMNS))
    print()
    lat = sorted(
        (r for d in nets.values() for r in d["latency"]),
        key=lambda r: (r["net"], r["backend"], r["threads"], r["batch"], FILES.index(r["model"])),
    )
    print(table(lat, LATENCY_COLUMNS))
    info = machine()
    info["cpu_affinity"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    path = write_results(
        "export_latency_quick" if args.quick else "export_latency",
        {
            "benchmark": "export_latency",
            "quick": args.quick,
            "reused_runs": args.reuse,
            "machine": info,
            "threads": args.threads,
            "wall_seconds": seconds,
            "headline": head,
            "recipes": {
                n: Recipe.load(RECIPES[n]).override([*(QUICK[n] if args.quick else []), *args.set]).to_dict()
                for n in args.nets
            },
            "nets": nets,
        },
    )
    print(f"\nheadline: {_fmt(head)}\nwrote {path} in {seconds:.0f} s")
    return head


def _fmt(head: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in head.items())


if __name__ == "__main__":
    main()

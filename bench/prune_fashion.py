"""Channel pruning on Fashion-MNIST (60k/10k), small VGG-style CNN: every qaprune channel criterion
and, side by side, torch-pruning's own importances, at 50% and 75% uniform channel sparsity with
the same fine-tuning budget; accuracy, FLOPs (MACs), bytes and measured CPU latency (torch and
ONNX Runtime, 1 thread; PyTorch as TorchScript optimized for inference, and eager) of the
physically shrunk model against the dense one, in the same run.

    python bench/prune_fashion.py --data-dir ../shared/datasets

The dense model (recipes/fashion_vgg.yaml) is trained once, cached in --runs-dir and copied per point:
attach masks, collect the stats the criterion ``.needs``, ``prune_to`` (channels with an example
input: whole dependency groups, group-aware scores; ``--allocation``, ``--round-to``); torch-pruning's
importances pick each group's channels and ``mask_channels`` zeroes them; ``shrink`` (checked:
shrunk == masked), fine-tune
(``--finetune shrunk``, default: the shrunk model, same function class and gradients as the masked
one, far cheaper; ``masked``: before shrinking), measure against the dense model after the same
fine-tuning (or before, if better). ``--distill --append`` adds points fine-tuned with the dense
model as teacher (train.distill) to a finished run. PyTorch latency is timed on the deployment form of both models:
``speedup_torch`` with TorchScript (folded batch norms, frozen, ``optimize_for_inference``),
``speedup_torch_eager`` in eager mode with folded batch norms; ONNX Runtime folds them itself.
Writes bench/results/prune_fashion.json (``--quick``: prune_fashion_quick.json; ``--name``: another
file). A longer fine-tuning budget on a few criteria, and its merge into the main results (the
headline is then the better budget's, with its ``finetune_epochs``; every budget is in ``budgets``):

    python bench/prune_fashion.py --data-dir ../shared/datasets --threads 1 --ft-epochs 6 \
        --criteria lamp magnitude l2 hap --tp magnitude --name prune_fashion_ft6
    python bench/prune_fashion.py --merge prune_fashion_ft6
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, machine, merged_machine, parts_of, table, write_results

from qaprune.compress import attach
from qaprune.errors import RecipeError
from qaprune.export.fold import fold_batchnorm, for_inference
from qaprune.export.shrink import shrink
from qaprune.io import load_tensors, save_tensors
from qaprune.metrics.bops import profile
from qaprune.metrics.classification import accuracy, predict
from qaprune.metrics.latency import export_onnx, measure_latency
from qaprune.param import bake
from qaprune.prune import CRITERIA, prune_to
from qaprune.prune.groups import ChannelGroup, channel_groups, dependency_groups, mask_channels
from qaprune.prune.stats import MomentumTracker, collect_stats
from qaprune.recipe import Recipe, TrainSpec
from qaprune.rundir import load_data, setup
from qaprune.train import fit

RECIPE = HERE.parent / "recipes" / "fashion_vgg.yaml"
BATCHES, ROUNDS = (1, 64), 3
TOLERANCE_POINTS, EXACT_ATOL = 0.5, 1e-4
TP_CRITERIA = ("magnitude", "taylor", "fpgm")
COLUMNS = [
    ("criterion", "criterion   ", ""),
    ("sparsity", "sparsity", ".2f"),
    ("accuracy_before_ft", "acc no-FT", ".4f"),
    ("accuracy", "accuracy", ".4f"),
    ("accuracy_drop_points", "drop pts", "+.2f"),
    ("flops_reduction", "FLOPs red", ".3f"),
    ("flops_ratio", "FLOPs x", ".2f"),
    ("bytes", "bytes", "d"),
    ("speedup_torch", "torch x", ".2f"),
    ("speedup_ort", "ort x", ".2f"),
    ("speedup_torch_eager", "eager x", ".2f"),
    ("speedup_torch_b1", "torch b1 x", ".2f"),
    ("speedup_ort_b1", "ort b1 x", ".2f"),
    ("max_abs_diff", "shrink diff", ".1e"),
]


@dataclass
class Bench:
    """What every point shares: the recipe, data, dense weights and the dense reference."""

    recipe: Recipe
    data: Any
    dense_state: dict[str, Tensor]
    momentum: dict[str, Tensor]
    groups: list[ChannelGroup]
    ft_spec: TrainSpec
    mode: str  # "shrunk" | "masked": which model is fine-tuned
    work: Path  # scratch folder for ONNX files
    repeats: int  # timed latency calls per round
    allocation: str = "uniform"  # channel sparsity across groups
    round_to: int = 1  # kept channels per group: a multiple of this
    teacher: nn.Module | None = None  # --distill: the dense model, for knowledge distillation
    dense_model: nn.Module | None = None  # plain, eval mode: the paired latency reference
    dense_onnx: Path | None = None
    ref: dict | None = None  # see ``reference``

    @property
    def example(self) -> Tensor:  # traced, checked and profiled on
        return self.data.x_test[:64]


def build_dense(recipe: Recipe, data) -> nn.Module:
    """The plain (unattached) model of ``recipe`` for ``data``."""
    from qaprune.models import build_model

    torch.manual_seed(recipe.seed)
    return build_model(
        recipe.model.name, input_shape=data.input_shape, num_classes=data.num_classes, **recipe.model.args
    )


def accuracy_of(model: nn.Module, data) -> float:
    """Test accuracy (0..1)."""
    return accuracy(predict(model, data.x_test), data.y_test)


def train_dense(recipe: Recipe, data, runs_dir: Path) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
    """Train the dense model once (a MomentumTracker watching, for the momentum criterion), or reuse
    the weights cached in ``runs_dir`` for the same settings. -> (state dict, momentum, info)."""
    spec = {k: recipe.to_dict()[k] for k in ("seed", "data", "model", "train")}
    spec["train"].pop("threads")
    key, meta = json.dumps(spec, sort_keys=True), runs_dir / "dense.json"
    if meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        print(f"dense: reusing {runs_dir / 'dense.safetensors'}", flush=True)
        return (
            load_tensors(runs_dir / "dense.safetensors"),
            load_tensors(runs_dir / "momentum.safetensors"),
            json.loads(meta.read_text()),
        )
    model = build_dense(recipe, data)
    tracker = MomentumTracker(model)
    res = fit(
        model, data.x_train, data.y_train, data.x_val, data.y_val, spec=recipe.train, seed=recipe.seed, on_step=tracker
    )
    runs_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(runs_dir / "dense.safetensors", model.state_dict())
    save_tensors(runs_dir / "momentum.safetensors", tracker.average)
    info = {"key": key, "epochs": res.epochs, "train_seconds": res.train_seconds, "accuracy": accuracy_of(model, data)}
    meta.write_text(json.dumps(info, indent=2))
    print(f"dense: {res.epochs} epochs in {res.train_seconds:.0f} s, accuracy {info['accuracy']:.4f}", flush=True)
    return model.state_dict(), tracker.average, info


def masked_copy(b: Bench) -> nn.Module:
    """A fresh copy of the dense model with ``Mask`` parametrizations attached."""
    model = build_dense(b.recipe, b.data)
    model.load_state_dict(b.dense_state)
    return attach(model, b.recipe)


def prune_qaprune(model: nn.Module, name: str, sparsity: float, b: Bench) -> None:
    """Score with qaprune criterion ``name`` and ``prune_to`` whole dependency groups in place
    (channels with an example input: group-aware scores, biases/BN/consumers masked too)."""
    needs = set(getattr(CRITERIA.get(name), "needs", frozenset()))
    tracker = None
    if "momentum" in needs:  # the averages watched during dense training, on this copy
        tracker = MomentumTracker(model)
        tracker.average = {k: v.clone() for k, v in b.momentum.items()}
    stats = (
        collect_stats(
            model,
            b.data.x_train,
            b.data.y_train,
            needs=needs,
            momentum=tracker,
            generator=torch.Generator().manual_seed(b.recipe.seed),
        )
        if needs
        else None
    )
    prune_to(
        model,
        sparsity,
        criterion=name,
        structure="channels",
        allocation=b.allocation,
        stats=stats,
        generator=torch.Generator().manual_seed(b.recipe.seed),
        example_input=b.example[:2],
        structure_args={"round_to": b.round_to, "of": "channels"},  # the sparsity is a fraction of channels
    )


def top_keep(scores: Tensor, sparsity: float, round_to: int = 1) -> Tensor:
    """bool (n,): the ``round((1 − sparsity)·n)`` highest scores (at least one; the nearest
    multiple of ``round_to``), as the ``channels`` structure counts."""
    n = scores.numel()
    count = n - int(round(sparsity * n))
    if round_to > 1:
        count = max(round_to, round_to * int(count / round_to + 0.5))
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.topk(scores.detach().float().cpu(), max(1, min(n, count))).indices] = True
    return keep


def prune_tp(model: nn.Module, name: str, sparsity: float, b: Bench) -> dict[str, Tensor]:
    """torch-pruning's importance ``name`` (magnitude: L2 with group mean, taylor, fpgm) on each
    dependency group of a baked copy -> keeps."""
    from torch_pruning import importance as tpi

    imp = {
        "magnitude": lambda: tpi.MagnitudeImportance(p=2),
        "taylor": tpi.TaylorImportance,
        "fpgm": lambda: tpi.FPGMImportance(p=2),
    }[name]()
    plain = bake(copy.deepcopy(model))
    _, pairs = dependency_groups(plain, b.example)
    if name == "taylor":  # ∂L/∂w of the mean loss over 1024 calibration samples, as collect_stats
        idx = torch.randperm(len(b.data.x_train), generator=torch.Generator().manual_seed(b.recipe.seed))[:1024]
        plain.zero_grad()
        for i in range(0, len(idx), 256):
            xb, yb = b.data.x_train[idx[i : i + 256]], b.data.y_train[idx[i : i + 256]]
            (torch.nn.functional.cross_entropy(plain(xb), yb) * len(xb) / len(idx)).backward()
    keeps = {}
    for g, tp_group in pairs:
        scores = imp(tp_group) if g.prunable else None
        if scores is not None:
            keeps[g.root] = top_keep(scores, sparsity, b.round_to)
    return keeps


def apply_keeps(model: nn.Module, b: Bench, keeps: dict[str, Tensor]) -> None:
    """``mask_channels`` per group: weights, biases and batch norms of dropped channels zeroed."""
    for g in (g for g in b.groups if g.prunable and g.root in keeps):
        if not keeps[g.root].all():
            mask_channels(model, g, keeps[g.root])


def shrink_checked(model: nn.Module, b: Bench) -> tuple[nn.Module, float, dict[str, int]]:
    """Physically remove the zero channels -> (shrunk model, max |shrunk − masked| over 1024 test
    samples, removed channels per layer)."""
    res = shrink(model, b.example, sparse="never")
    x = b.data.x_test[:1024]
    diff = float((predict(res.model, x) - predict(model, x)).abs().max())
    if diff > EXACT_ATOL:
        print(f"WARNING: shrunk outputs differ from the masked model's by {diff:.2e}", flush=True)
    return res.model, diff, res.removed


def finetune(model: nn.Module, b: Bench) -> float:
    """The shared fine-tuning budget -> training seconds."""
    return fit(
        model,
        b.data.x_train,
        b.data.y_train,
        b.data.x_val,
        b.data.y_val,
        spec=b.ft_spec,
        seed=b.recipe.seed + 1,
        teacher=b.teacher,
    ).train_seconds


def state_bytes(model: nn.Module) -> int:
    """Length of the model's float32 state dict serialized with safetensors."""
    from safetensors.torch import save

    return len(save({k: v.detach().contiguous() for k, v in model.state_dict().items()}))


def macs(model: nn.Module, b: Bench) -> int:
    """MACs per sample of the Linear/Conv layers (FLOPs = 2 × MACs)."""
    return int(sum(p.macs for p in profile(model, b.example[:1])))


def latencies(model: nn.Module, onnx_path: Path, b: Bench) -> dict[str, float]:
    """Median ms, 1 thread: {"torch_b1", "torch_b64"} (eager, batch norms folded), {"jit_b1",
    "jit_b64"} (TorchScript frozen + optimize_for_inference), {"ort_b1", "ort_b64"}."""
    out = {}
    jit = for_inference(model, b.example)
    for backend, key, target in (("torch", "torch", model), ("torch", "jit", jit), ("ort", "ort", str(onnx_path))):
        rows = measure_latency(
            target, b.data.input_shape, batch_sizes=BATCHES, threads=(1,), backend=backend, warmup=5, repeats=b.repeats
        )
        out.update({f"{key}_b{r['batch']}": r["median_ms"] for r in rows})
    return out


def speedups(shrunk: nn.Module, b: Bench, tag: str) -> tuple[dict, dict]:
    """Paired latency: ``ROUNDS`` alternations of dense and shrunk, medians over the rounds (the
    machine's speed drifts) -> (shrunk ms, dense/shrunk speedups)."""
    path, dense, ours = b.work / f"{tag}.onnx", [], []
    shrunk, _ = fold_batchnorm(shrunk.eval())
    export_onnx(shrunk, b.data.input_shape, str(path))
    for _ in range(ROUNDS):
        dense.append(latencies(b.dense_model, b.dense_onnx, b))
        ours.append(latencies(shrunk, path, b))
    path.unlink(missing_ok=True)
    d, o = ({k: statistics.median(r[k] for r in rows) for k in rows[0]} for rows in (dense, ours))
    return o, {k: d[k] / o[k] for k in o}


def run_point(b: Bench, source: str, name: str, sparsity: float) -> dict:
    """One (criterion, sparsity) point, end to end -> a result row."""
    model, t0, ref = masked_copy(b), time.perf_counter(), b.ref
    if source == "qaprune":
        prune_qaprune(model, name, sparsity, b)
    else:
        apply_keeps(model, b, prune_tp(model, name, sparsity, b))
    prune_s = time.perf_counter() - t0
    if b.mode == "masked":
        acc0, ft_s = accuracy_of(model, b.data), finetune(model, b)
        shrunk, diff, removed = shrink_checked(model, b)
    else:
        shrunk, diff, removed = shrink_checked(model, b)
        acc0, ft_s = accuracy_of(shrunk, b.data), finetune(shrunk, b)
    acc, m, size = accuracy_of(shrunk, b.data), macs(shrunk, b), state_bytes(shrunk)
    ms, sp = speedups(shrunk, b, f"{source}-{name}-{sparsity}")
    tag = "+kd" if b.teacher is not None else ""
    return {
        "criterion": (name if source == "qaprune" else f"tp-{name}") + tag,
        "source": source,
        "sparsity": sparsity,
        "accuracy": acc,
        "accuracy_before_ft": acc0,
        "accuracy_drop_points": 100.0 * (ref["accuracy"] - acc),
        "macs": m,
        "flops_reduction": 1.0 - m / ref["macs"],
        "flops_ratio": ref["macs"] / m,
        "bytes": size,
        "bytes_ratio": ref["bytes"] / size,
        "speedup_torch": sp["jit_b64"],
        "speedup_ort": sp["ort_b64"],
        "speedup_torch_b1": sp["jit_b1"],
        "speedup_ort_b1": sp["ort_b1"],
        "speedup_torch_eager": sp["torch_b64"],
        "speedup_torch_eager_b1": sp["torch_b1"],
        "latency_ms": ms,
        "max_abs_diff": diff,
        "exact": diff <= EXACT_ATOL,
        "removed": removed,
        "prune_seconds": prune_s,
        "finetune_seconds": ft_s,
    }


def dense_reference_models(b: Bench) -> None:
    """The paired latency references: the dense model (batch norms folded) and its ONNX file."""
    dense = build_dense(b.recipe, b.data)
    dense.load_state_dict(b.dense_state)
    b.dense_model, b.dense_onnx = fold_batchnorm(copy.deepcopy(dense).eval())[0], b.work / "dense.onnx"
    export_onnx(b.dense_model, b.data.input_shape, str(b.dense_onnx))


def reference(b: Bench) -> dict:
    """The dense model: MACs, bytes, latency, ONNX file, its accuracy before and after the same
    fine-tuning budget, and the accuracy reference: the better of the two (the stricter bound)."""
    dense_reference_models(b)
    dense = build_dense(b.recipe, b.data)
    dense.load_state_dict(b.dense_state)
    acc0, ft_s = accuracy_of(dense, b.data), finetune(dense, b)
    acc1 = accuracy_of(dense, b.data)
    return {
        "accuracy": max(acc0, acc1),
        "accuracy_ft": acc1,
        "accuracy_no_ft": acc0,
        "macs": macs(dense, b),
        "bytes": state_bytes(dense),
        "latency_ms": latencies(b.dense_model, b.dense_onnx, b),
        "finetune_seconds": ft_s,
    }


def teacher_of(b: Bench) -> nn.Module:
    """The dense model, frozen, as the distillation teacher."""
    dense = build_dense(b.recipe, b.data)
    dense.load_state_dict(b.dense_state)
    for p in dense.parameters():
        p.requires_grad_(False)
    return dense.eval()


def best(points: list[dict]) -> dict | None:
    """The largest FLOPs reduction within the accuracy bound (ties: the more accurate), or None."""
    ok = [p for p in points if p["accuracy_drop_points"] <= TOLERANCE_POINTS + 1e-9]
    return max(ok, key=lambda p: (p["flops_reduction"], p["accuracy"])) if ok else None


def headline(points: list[dict], ref: dict) -> dict:
    """The issue's headline: qaprune's best criterion within the bound, the targets, the peer's best."""
    keys = (
        "criterion",
        "sparsity",
        "flops_reduction",
        "accuracy_drop_points",
        "flops_ratio",
        "speedup_torch",
        "speedup_ort",
        "speedup_torch_b1",
        "speedup_ort_b1",
        "speedup_torch_eager",
        "speedup_torch_eager_b1",
        "bytes_ratio",
    )
    top, peer = (best([p for p in points if (p["source"] == "qaprune") == ours]) for ours in (True, False))
    h: dict[str, Any] = {k: top[k] for k in keys} if top else {"criterion": None}
    h.update(
        dense_accuracy=ref["accuracy"],
        dense_accuracy_ft=ref["accuracy_ft"],
        dense_accuracy_no_ft=ref["accuracy_no_ft"],
        tolerance_points=TOLERANCE_POINTS,
        speedup_batch=64,
    )
    if top:
        h["flops_target_met"] = top["flops_reduction"] >= 0.6
        h["speedup_target_met_torch"] = top["speedup_torch"] >= 0.8 * top["flops_ratio"]
        h["speedup_target_met_ort"] = top["speedup_ort"] >= 0.8 * top["flops_ratio"]
        h["speedup_target_met_torch_eager"] = top["speedup_torch_eager"] >= 0.8 * top["flops_ratio"]
    h["peer"] = {k: peer[k] for k in keys} if peer else None
    ours = [p for p in points if p["source"] == "qaprune"]  # the smallest drop: how far from the bound
    near = min(ours, key=lambda p: (p["accuracy_drop_points"], -p["flops_reduction"]), default=None)
    h["closest"] = {k: near[k] for k in keys} if near else None
    return h


def save(
    args: argparse.Namespace,
    plan: dict,
    ref: dict,
    dense_info: dict,
    points: list[dict],
    skipped: list[dict],
    *,
    complete: bool,
    parts: dict[str, Any] | None = None,
) -> Path:
    """Write the results JSON (also after every point, with ``complete`` false). ``parts``: with
    --append, the machine block of each run whose points are in the file (``machine.parts``)."""
    dense = {**ref, "train_epochs": dense_info["epochs"], "train_seconds": dense_info["train_seconds"]}
    return write_results(
        args.name or ("prune_fashion_quick" if args.quick else "prune_fashion"),
        {
            "benchmark": "prune_fashion",
            "quick": args.quick,
            "complete": complete,
            "machine": machine() if parts is None else merged_machine(parts),
            "budget": plan,
            "headline": headline(points, ref),
            "dense": dense,
            "points": points,
            "skipped": skipped,
        },
    )


def run_all(
    b: Bench, args: argparse.Namespace, on_point: Callable[[list, list], None]
) -> tuple[list[dict], list[dict]]:
    """Every (sparsity, criterion) point; a criterion that cannot score channels is skipped, and a
    point that fails is recorded as such (the run goes on)."""
    jobs = [("qaprune", c) for c in args.criteria] + [("torch-pruning", c) for c in args.tp]
    points: list[dict] = []
    skipped: list[dict] = []
    for sparsity in args.sparsities:
        for source, name in jobs:
            t0 = time.perf_counter()
            try:
                p = run_point(b, source, name, sparsity)
            except Exception as exc:
                what = "skipped" if isinstance(exc, (RecipeError, ValueError)) else f"failed ({type(exc).__name__})"
                skipped.append(
                    {"criterion": name, "source": source, "sparsity": sparsity, "status": what, "reason": str(exc)}
                )
                print(f"{what}: {source}:{name} at {sparsity}: {exc}", flush=True)
                continue
            points.append(p)
            print(
                f"{p['criterion']:<14} {sparsity:.2f} acc {p['accuracy']:.4f} ({p['accuracy_drop_points']:+.2f}) "
                f"FLOPs x{p['flops_ratio']:.2f} torch x{p['speedup_torch']:.2f} ort x{p['speedup_ort']:.2f} "
                f"diff {p['max_abs_diff']:.1e}  {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            on_point(points, skipped)
    return points, skipped


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/datasets")
    ap.add_argument("--quick", action="store_true", help="5k/1k/2k samples, 1+1 epochs, 3 criteria: a smoke test")
    ap.add_argument("--criteria", nargs="*", default=None, help="qaprune criteria (default: all)")
    ap.add_argument("--tp", nargs="*", default=None, choices=TP_CRITERIA, help="torch-pruning importances")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--dense-epochs", type=int, default=None, help="default: the recipe's train.epochs")
    ap.add_argument("--ft-epochs", type=int, default=None, help="fine-tuning epochs, cosine (2; quick 1)")
    ap.add_argument("--ft-lr", type=float, default=3e-4)
    ap.add_argument("--finetune", choices=("shrunk", "masked"), default="shrunk")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training (latency: 1)")
    ap.add_argument("--repeats", type=int, default=None, help=f"timed calls per round, {ROUNDS} rounds (10)")
    ap.add_argument("--runs-dir", type=Path, default=None)
    ap.add_argument(
        "--distill",
        action="store_true",
        help="fine-tune with the dense model as teacher (KD: T=4, weight 0.5); criteria get '+kd'",
    )
    ap.add_argument(
        "--append", action="store_true", help="add these points to the finished results JSON (same dense reference)"
    )
    ap.add_argument("--allocation", choices=("uniform", "global", "lamp"), default="uniform")
    ap.add_argument("--round-to", type=int, default=1, help="kept channels per group: a multiple of this")
    ap.add_argument(
        "--merge",
        default=None,
        metavar="NAME",
        help="only merge the finished results NAME.json (another budget) into --name's file",
    )
    ap.add_argument(
        "--name",
        default=None,
        help="results file stem (default prune_fashion; a second budget "
        "on a subset of criteria goes to its own file, e.g. prune_fashion_ft6)",
    )
    args = ap.parse_args(argv)
    q = args.quick
    args.criteria = (["magnitude", "taylor"] if q else CRITERIA.names()) if args.criteria is None else args.criteria
    args.tp = (["magnitude"] if q else list(TP_CRITERIA)) if args.tp is None else args.tp
    args.repeats, args.ft_epochs = args.repeats or (4 if q else 10), args.ft_epochs or (1 if q else 2)
    args.runs_dir = args.runs_dir or HERE / "runs" / ("prune_fashion_quick" if q else "prune_fashion")
    return args


def configure(args: argparse.Namespace) -> tuple[Recipe, TrainSpec]:
    """The recipe (with --quick / --dense-epochs / --threads applied) and the fine-tuning spec."""
    sets = [f"train.threads={args.threads}"]
    if args.quick:
        sets += ["data.train=5000", "data.val=1000", "data.test=2000", "train.epochs=1"]
    if args.dense_epochs:
        sets.append(f"train.epochs={args.dense_epochs}")
    recipe = Recipe.load(RECIPE).override(sets)
    return recipe, TrainSpec(**{**recipe.train.model_dump(), "epochs": args.ft_epochs, "lr": args.ft_lr})


def budget(args: argparse.Namespace, recipe: Recipe, ft: TrainSpec, data) -> dict:
    """The settings of the run, for the JSON."""
    t = recipe.train
    return {
        "dense_epochs": t.epochs,
        "finetune_epochs": ft.epochs,
        "finetune_lr": ft.lr,
        "batch_size": t.batch_size,
        "optimizer": t.optimizer,
        "lr_schedule": t.lr_schedule,
        "train_samples": len(data.x_train),
        "val_samples": len(data.x_val),
        "test_samples": len(data.x_test),
        "finetune": args.finetune,
        "train_threads": args.threads,
        "latency_threads": 1,
        "latency_batches": list(BATCHES),
        "latency_repeats_per_round": args.repeats,
        "latency_rounds": ROUNDS,
        "structure": "channels",
        "allocation": args.allocation,
        "round_to": args.round_to,
        "batchnorm_folded_for_latency": True,
        "recipe": "recipes/fashion_vgg.yaml",
        "model_args": recipe.model.args,
    }


def main(argv: list[str] | None = None) -> None:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed"
    warnings.filterwarnings("ignore", category=FutureWarning)  # the exporter's LeafSpec notice
    args = parse_args(argv)
    if args.merge:
        print(f"wrote {merge(args.name or 'prune_fashion', args.merge)}")
        return
    recipe, ft_spec = configure(args)
    data = load_data(recipe, args.data_dir, setup(recipe))
    plan = budget(args, recipe, ft_spec, data)
    state, momentum, info = train_dense(recipe, data, args.runs_dir)
    groups = channel_groups(build_dense(recipe, data).eval(), data.x_test[:2])
    old = previous(args)
    parts = None
    if old is not None:
        plan = {**old["budget"], "appended": [*old["budget"].get("appended", []), appended(args, ft_spec)]}
        # which run measured which points: the earlier run(s), and this one as budget.appended[i]
        parts = {
            **parts_of(old.get("machine"), previous_path(args).stem),
            f"appended[{len(plan['appended']) - 1}]": machine(),
        }
    with tempfile.TemporaryDirectory() as tmp:
        b = Bench(
            recipe,
            data,
            state,
            momentum,
            groups,
            ft_spec,
            args.finetune,
            Path(tmp),
            args.repeats,
            args.allocation,
            args.round_to,
        )
        if old is not None:  # the same dense reference as the run appended to
            dense_reference_models(b)
            b.ref = {k: v for k, v in old["dense"].items() if k not in ("train_epochs", "train_seconds")}
        else:
            b.ref = reference(b)
        b.teacher = teacher_of(b) if args.distill else None
        if args.distill:
            b.ft_spec = TrainSpec(**{**ft_spec.model_dump(), "distill": {"temperature": 4.0, "weight": 0.5}})
        print(
            f"dense: accuracy {b.ref['accuracy_no_ft']:.4f}, after the fine-tuning budget "
            f"{b.ref['accuracy_ft']:.4f}; MACs {b.ref['macs']:,}; latency ms {b.ref['latency_ms']}",
            flush=True,
        )
        before = (old["points"], old["skipped"]) if old is not None else ([], [])
        points, skipped = run_all(
            b,
            args,
            lambda p, s: save(args, plan, b.ref, info, before[0] + p, before[1] + s, complete=False, parts=parts),
        )
    points, skipped = before[0] + points, before[1] + skipped
    path = save(args, plan, b.ref, info, points, skipped, complete=True, parts=parts)
    report(points, headline(points, b.ref), path)


def previous(args: argparse.Namespace) -> dict | None:
    """With --append: the finished results JSON to add points to (its dense reference is kept)."""
    if not args.append:
        return None
    path = previous_path(args)
    old = json.loads(path.read_text()) if path.is_file() else None
    if old is None or not old.get("complete"):
        raise SystemExit(f"--append: {path} is missing or incomplete; run the full benchmark first")
    return old


def previous_path(args: argparse.Namespace) -> Path:
    return HERE / "results" / ("prune_fashion_quick.json" if args.quick else "prune_fashion.json")


def appended(args: argparse.Namespace, ft: TrainSpec) -> dict:
    return {
        "criteria": args.criteria,
        "torch_pruning": args.tp,
        "sparsities": args.sparsities,
        "finetune_epochs": ft.epochs,
        "distill": {"teacher": "dense", "temperature": 4.0, "weight": 0.5} if args.distill else None,
    }


def merge(base: str, extra: str) -> Path:
    """Add the finished results ``extra`` (a longer fine-tuning budget on a subset of criteria,
    its own dense reference fine-tuned alike) to ``base`` under ``budgets``; the headline becomes
    the better of the two budgets' headlines (a criterion within the bound first, then the larger
    FLOPs reduction), with its ``finetune_epochs``. ``base``'s points stay the full table.
    ``machine`` is this merge's, with ``parts``: the machine block of each merged run, by name
    (the names of ``budgets``), so each budget's numbers keep the commit that measured them."""
    runs = [json.loads((RESULTS / f"{n}.json").read_text()) for n in (base, extra)]
    if not all(r.get("complete") for r in runs):
        raise SystemExit(f"--merge: {base}.json and {extra}.json must both be complete")
    budgets = [
        {
            "name": n,
            "finetune_epochs": r["budget"]["finetune_epochs"],
            "headline": r["headline"],
            "dense": r["dense"],
            **({"budget": r["budget"], "points": r["points"]} if n == extra else {}),
        }
        for n, r in zip((base, extra), runs)
    ]

    def rank(b: dict) -> tuple:
        h = b["headline"]
        return (h["criterion"] is not None, h.get("flops_reduction", 0.0), -h.get("accuracy_drop_points", 99.0))

    top = max(budgets, key=rank)
    out = {
        **runs[0],
        "machine": merged_machine(
            {**parts_of(runs[0].get("machine"), base), **parts_of(runs[1].get("machine"), extra)}
        ),
        "budgets": [b for b in budgets],
        "headline": {**top["headline"], "finetune_epochs": top["finetune_epochs"]},
    }
    return write_results(base, out)


def report(points: list[dict], h: dict, path: Path) -> None:
    print(table(points, COLUMNS))
    none = f"none within {TOLERANCE_POINTS} points; closest: {json.dumps(h['closest'])}"
    print(
        f"\nheadline (dense reference {h['dense_accuracy']:.4f}): "
        + (
            none
            if h["criterion"] is None
            else f"{h['criterion']} at {h['sparsity']:.2f}: {100 * h['flops_reduction']:.1f}% fewer FLOPs "
            f"(x{h['flops_ratio']:.2f}), {h['accuracy_drop_points']:+.2f} points; speedup (batch 64) torch "
            f"x{h['speedup_torch']:.2f}, ORT x{h['speedup_ort']:.2f}; met: FLOPs {h['flops_target_met']}, "
            f"speedup torch {h['speedup_target_met_torch']}, ORT {h['speedup_target_met_ort']}"
        )
        + f"\nwrote {path}"
    )


if __name__ == "__main__":
    main()

"""HSPG (group-sparse half-space proximal SGD) on the Fashion-MNIST CNN against magnitude channel
pruning: FLOPs reduction and accuracy at the same widths and the same training budget.

    python bench/hspg_fashion.py --data-dir ../shared/datasets

Starts from the dense model of bench/prune_fashion.py (trained once, cached in its runs folder).
For each λ: ``--hspg-epochs`` epochs of HSPG (train.optimizer hspg: f(x) + λ·Σ‖row‖₂ over every
conv/linear output channel but the classifier's, a proximal phase of one epoch then half-space
steps), the zero rows become masks (``groups_to_masks``), every dependency group whose producers
lost a channel loses it everywhere (``mask_channels``), the model is shrunk and fine-tuned with
the shared budget. The magnitude baseline keeps exactly the same number of channels per group
(group-aware magnitude, ``prune_to`` with fixed per-layer sparsities), so both have the same
FLOPs, and is fine-tuned for the HSPG epochs plus the same budget (equal epochs in total).
Writes bench/results/hspg_fashion.json (``--quick``: hspg_fashion_quick.json).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import prune_fashion as pf
from common import machine, table, write_results

from qaprune.prune import prune_to
from qaprune.prune.groups import channel_groups
from qaprune.prune.optim import groups_to_masks
from qaprune.recipe import SparseSpec, TrainSpec
from qaprune.rundir import load_data, setup
from qaprune.train import fit

COLUMNS = [
    ("method", "method     ", ""),
    ("lam", "lambda", ".3g"),
    ("channels_removed", "channels -", ".3f"),
    ("accuracy_before_ft", "acc no-FT", ".4f"),
    ("accuracy", "accuracy", ".4f"),
    ("accuracy_drop_points", "drop pts", "+.2f"),
    ("flops_reduction", "FLOPs red", ".3f"),
    ("flops_ratio", "FLOPs x", ".2f"),
    ("train_seconds", "train s", ".0f"),
]


def hspg_spec(args: argparse.Namespace, lam: float, n_train: int, base: TrainSpec) -> TrainSpec:
    steps = -(-n_train // base.batch_size)
    return TrainSpec(
        optimizer="hspg",
        lr=args.hspg_lr,
        momentum=0.9,
        batch_size=base.batch_size,
        epochs=args.hspg_epochs,
        patience=None,
        lr_schedule="none",
        threads=base.threads,
        sparse=SparseSpec(lam=lam, n_p=steps, epsilon=args.epsilon, groups="rows"),
    )


def kept_channels(model: nn.Module, b: pf.Bench) -> dict[str, torch.Tensor]:
    """Per free group, bool (size,): the channel survives unless HSPG zeroed it in every producer."""
    keeps = {}
    for g in (g for g in b.groups if g.prunable):
        keep = ~zero_rows(model, g)
        if not keep.any():
            keep[0] = True  # a layer needs one output
        keeps[g.root] = keep
    return keeps


def zero_rows(model: nn.Module, g) -> torch.Tensor:
    """bool (size,): every producer's weight row of the channel is exactly zero (biases aside)."""
    from qaprune.prune.groups import to_group

    zero = torch.ones(g.size, dtype=torch.bool)
    for c in (c for c in g.members if c.role == "out" and c.kind in ("linear", "conv")):
        w = model.get_submodule(c.name).weight
        zero &= to_group(c, (w.flatten(1) == 0).all(1), g.size)
    return zero


def finish(model: nn.Module, b: pf.Bench, spec: TrainSpec) -> dict:
    """Shrink (checked), fine-tune with ``spec``, measure -> a partial result row."""
    shrunk, diff, removed = pf.shrink_checked(model, b)
    acc0 = pf.accuracy_of(shrunk, b.data)
    ft = fit(shrunk, b.data.x_train, b.data.y_train, b.data.x_val, b.data.y_val, spec=spec, seed=b.recipe.seed + 1)
    m = pf.macs(shrunk, b)
    acc = pf.accuracy_of(shrunk, b.data)
    return {
        "accuracy_before_ft": acc0,
        "accuracy": acc,
        "accuracy_drop_points": 100.0 * (b.ref["accuracy"] - acc),
        "macs": m,
        "flops_reduction": 1.0 - m / b.ref["macs"],
        "flops_ratio": b.ref["macs"] / m,
        "removed": removed,
        "max_abs_diff": diff,
        "finetune_seconds": ft.train_seconds,
    }


def hspg_point(b: pf.Bench, args: argparse.Namespace, lam: float) -> tuple[dict, dict[str, torch.Tensor]]:
    model = pf.masked_copy(b)
    t0 = time.perf_counter()
    res = fit(
        model,
        b.data.x_train,
        b.data.y_train,
        b.data.x_val,
        b.data.y_val,
        spec=hspg_spec(args, lam, len(b.data.x_train), b.ft_spec),
        seed=b.recipe.seed,
    )
    groups_to_masks(model, res.optimizer)
    keeps = kept_channels(model, b)
    removed = sum(int((~k).sum()) for k in keeps.values()) / sum(k.numel() for k in keeps.values())
    pf.apply_keeps(model, b, keeps)
    row = {
        "method": "hspg",
        "lam": lam,
        "channels_removed": removed,
        "hspg_seconds": res.train_seconds,
        **finish(model, b, b.ft_spec),
    }
    row["train_seconds"] = time.perf_counter() - t0
    return row, keeps


def magnitude_point(b: pf.Bench, args: argparse.Namespace, lam: float, keeps: dict[str, torch.Tensor]) -> dict:
    """Group-aware magnitude with HSPG's per-group widths, fine-tuned for as many epochs in total."""
    model = pf.masked_copy(b)
    t0 = time.perf_counter()
    producers = {g.root: g.producers for g in b.groups if g.prunable}
    fixed = {p: 1.0 - float(k.sum()) / k.numel() for root, k in keeps.items() for p in producers[root]}
    prune_to(model, 0.0, structure="channels", allocation="uniform", fixed=fixed, example_input=b.example[:2])
    spec = TrainSpec(**{**b.ft_spec.model_dump(), "epochs": b.ft_spec.epochs + args.hspg_epochs})
    removed = sum(int((~k).sum()) for k in keeps.values()) / sum(k.numel() for k in keeps.values())
    row = {"method": "magnitude", "lam": lam, "channels_removed": removed, **finish(model, b, spec)}
    row["train_seconds"] = time.perf_counter() - t0
    return row


def headline(points: list[dict], ref: dict) -> dict:
    """Per λ: the pair at equal FLOPs; overall: the largest FLOPs reduction each method keeps
    within 0.5 points of dense, and how often HSPG is the more accurate of the pair."""

    def best(method: str) -> dict | None:
        ok = [p for p in points if p["method"] == method and p["accuracy_drop_points"] <= pf.TOLERANCE_POINTS]
        return max(ok, key=lambda p: p["flops_reduction"], default=None)

    pairs = [
        (h, m)
        for h in points
        if h["method"] == "hspg"
        for m in points
        if m["method"] == "magnitude" and m["lam"] == h["lam"]
    ]
    top = {m: best(m) for m in ("hspg", "magnitude")}
    return {
        "dense_accuracy": ref["accuracy"],
        "tolerance_points": pf.TOLERANCE_POINTS,
        "hspg_flops_reduction": top["hspg"]["flops_reduction"] if top["hspg"] else None,
        "magnitude_flops_reduction": top["magnitude"]["flops_reduction"] if top["magnitude"] else None,
        "pairs": [
            {
                "lam": h["lam"],
                "flops_reduction": h["flops_reduction"],
                "hspg_accuracy": h["accuracy"],
                "magnitude_accuracy": m["accuracy"],
            }
            for h, m in pairs
        ],
        "hspg_more_accurate": sum(h["accuracy"] > m["accuracy"] for h, m in pairs),
        "pairs_total": len(pairs),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/datasets")
    ap.add_argument("--quick", action="store_true", help="5k/1k/2k samples, 1 epoch each: a smoke test")
    ap.add_argument("--lams", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    ap.add_argument("--hspg-epochs", type=int, default=2)
    ap.add_argument("--hspg-lr", type=float, default=0.02)
    ap.add_argument("--epsilon", type=float, default=0.0)
    ap.add_argument("--ft-epochs", type=int, default=None, help="fine-tuning epochs after pruning (3; quick 1)")
    ap.add_argument("--ft-lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dense-epochs", type=int, default=None)
    args = ap.parse_args(argv)
    args.ft_epochs = args.ft_epochs or (1 if args.quick else 3)
    args.hspg_epochs = 1 if args.quick else args.hspg_epochs
    args.runs_dir = HERE / "runs" / ("prune_fashion_quick" if args.quick else "prune_fashion")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    recipe, ft_spec = pf.configure(args)
    data = load_data(recipe, args.data_dir, setup(recipe))
    state, momentum, info = pf.train_dense(recipe, data, args.runs_dir)
    groups = channel_groups(pf.build_dense(recipe, data).eval(), data.x_test[:2])
    b = pf.Bench(recipe, data, state, momentum, groups, ft_spec, "shrunk", HERE, 1)
    dense = pf.build_dense(recipe, data)
    dense.load_state_dict(state)
    b.ref = {"accuracy": pf.accuracy_of(dense, data), "macs": pf.macs(dense, b)}
    print(f"dense: accuracy {b.ref['accuracy']:.4f}, MACs {b.ref['macs']:,}", flush=True)
    points: list[dict] = []
    name = "hspg_fashion_quick" if args.quick else "hspg_fashion"
    for lam in args.lams:
        row, keeps = hspg_point(b, args, lam)
        points.append(row)
        points.append(magnitude_point(b, args, lam, keeps))
        for p in points[-2:]:
            print(
                f"{p['method']:<10} λ {lam:g}: channels -{p['channels_removed']:.3f} acc {p['accuracy']:.4f} "
                f"({p['accuracy_drop_points']:+.2f}) FLOPs x{p['flops_ratio']:.2f}",
                flush=True,
            )
        write_results(name, _payload(args, recipe, info, b, points, complete=False))
    path = write_results(name, _payload(args, recipe, info, b, points, complete=True))
    print(table(points, COLUMNS))
    print(f"headline: {headline(points, b.ref)}\nwrote {path}")


def _payload(args, recipe, info, b: pf.Bench, points: list[dict], *, complete: bool) -> dict:
    return {
        "benchmark": "hspg_fashion",
        "quick": args.quick,
        "complete": complete,
        "machine": machine(),
        "budget": {
            "hspg_epochs": args.hspg_epochs,
            "hspg_lr": args.hspg_lr,
            "epsilon": args.epsilon,
            "lams": args.lams,
            "finetune_epochs": args.ft_epochs,
            "finetune_lr": args.ft_lr,
            "magnitude_finetune_epochs": args.ft_epochs + args.hspg_epochs,
            "threads": args.threads,
            "dense_epochs": info["epochs"],
            "train_samples": len(b.data.x_train),
        },
        "headline": headline(points, b.ref),
        "dense": b.ref,
        "points": points,
    }


if __name__ == "__main__":
    main()

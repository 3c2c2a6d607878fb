"""The Ps-and-Qs study on UCI Letter: quantization-aware pruning against QAT only, pruning only
and 32-bit dense, with fine-tuning (FT) and lottery-ticket rewinding (LT), bits {4, 6, 8, 32};
in the same run the paper's own stack (Brevitas + torch.nn.utils.prune) as the peer.

    python bench/qap_letter.py --data-dir ../shared/datasets

Prints the accuracy/BOPs table and writes bench/results/qap_letter.json whose ``headline`` holds
``bops_reduction`` (largest BOPs reduction against 32-bit dense within 0.5 points of its
accuracy, over every pruning step of every qaprune run), ``peer_bops_reduction`` (the same for
the peer), ``epoch_ratio_qap_vs_fp32`` and ``epoch_ratio_qap_vs_peer`` (seconds per training
epoch of 6-bit QAP-FT against 32-bit dense training and against the peer's 6-bit QAP-FT).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import FIXED_STEP, best_within, machine, table, write_results

from qaprune.prune.schedules import steps
from qaprune.recipe import Recipe
from qaprune.rundir import clean
from qaprune.runner import run

RECIPES = HERE.parent / "recipes"
COLUMNS = [
    ("variant", "variant", ""),
    ("step", "step", "d"),
    ("sparsity", "sparsity", ".3f"),
    ("accuracy", "accuracy", ".4f"),
    ("bops", "BOPs", ".4g"),
    ("bops_reduction", "vs fp32", ".1f"),
    ("seconds_per_epoch", "s/epoch", ".4f"),
]


def variants(bits_list: list[int], lamp_bits: list[int]) -> dict[str, Recipe]:
    """Every qaprune variant: dense (fp32 or QAT-only), pruned FT and LT with the paper's global
    magnitude criterion per bit width, and FT with LAMP for ``lamp_bits``."""
    ft, lt = Recipe.load(RECIPES / "letter_qap.yaml"), Recipe.load(RECIPES / "letter_qap_lt.yaml")
    out = {}
    for b in bits_list:
        q = [f"quant.weight_bits={b}", f"quant.act_bits={b}", f"quant.input_bits={b}"]
        tag = "fp32" if b == 32 else f"{b}b"
        out["fp32" if b == 32 else f"qat-{tag}"] = ft.override(q + ["prune.sparsity=0.0", f"name=dense-{tag}"])
        out[f"prune-{tag}-ft" if b == 32 else f"qap-{tag}-ft"] = ft.override(q + [f"name=ft-{tag}"])
        out[f"prune-{tag}-lt" if b == 32 else f"qap-{tag}-lt"] = lt.override(q + [f"name=lt-{tag}"])
        if b in lamp_bits:  # qaprune's layer-adaptive criterion, same schedule
            out[f"prune-{tag}-ft-lamp" if b == 32 else f"qap-{tag}-ft-lamp"] = ft.override(
                q + ["prune.criterion=lamp", f"name=ft-lamp-{tag}"]
            )
    return out


def run_qaprune(recipes: dict[str, Recipe], *, data_dir: str, runs_dir: Path, overrides: list[str]) -> dict:
    results = {}
    for name, recipe in recipes.items():
        clean(runs_dir / name)
        t0 = time.perf_counter()
        res = run(
            recipe.override([*FIXED_STEP, *overrides]), out=runs_dir / name, data_dir=data_dir, log=lambda *_: None
        )
        results[name] = res.results
        print(
            f"{name:<16} {time.perf_counter() - t0:7.1f} s  final accuracy {res.metrics['accuracy']:.4f} "
            f"BOPs reduction {res.metrics['bops_reduction']:.1f}x",
            flush=True,
        )
    return results


def run_peers(bits_list: list[int], recipe: Recipe, *, data_dir: str) -> dict:
    from peer_brevitas import run_peer

    from qaprune.rundir import load_data, setup

    device = setup(recipe)
    data = load_data(recipe, data_dir, device)
    p, t = recipe.prune, recipe.train
    targets = steps("iterative", final=p.sparsity, rate=p.rate, of_=p.of)
    out = {}
    for b in bits_list:
        t0 = time.perf_counter()
        out[f"peer-{b}b-ft"] = run_peer(
            data.x_train,
            data.y_train,
            data.x_val,
            data.y_val,
            data.x_test,
            data.y_test,
            num_classes=data.num_classes,
            hidden=tuple(recipe.model.args["hidden"]),
            bits=b,
            sparsities=targets,
            rewind="ft",
            max_epochs=t.epochs,
            patience=t.patience,
            batch_size=t.batch_size,
            lr=t.lr,
            l1=t.l1,
            seed=recipe.seed,
            act_max=recipe.quant.act_max,
        )
        print(f"peer-{b}b-ft      {time.perf_counter() - t0:7.1f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/datasets")
    ap.add_argument("--bits", type=int, nargs="+", default=[32, 8, 6, 4])
    ap.add_argument("--peer-bits", type=int, nargs="*", default=[8, 6, 4])
    ap.add_argument("--lamp-bits", type=int, nargs="*", default=[8, 6, 4])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the fastest for this MLP)")
    ap.add_argument("--quick", action="store_true", help="few epochs: a smoke test of the script")
    ap.add_argument("--runs-dir", type=Path, default=HERE / "runs" / "qap_letter")
    args = ap.parse_args()
    overrides = [f"train.threads={args.threads}"] + (["train.epochs=3", "prune.rate=0.3"] if args.quick else [])
    import torch

    torch.set_num_threads(args.threads)
    recipes = variants(args.bits, args.lamp_bits)
    ours = run_qaprune(recipes, data_dir=args.data_dir, runs_dir=args.runs_dir, overrides=overrides)
    base = Recipe.load(RECIPES / "letter_qap.yaml").override(overrides)
    peers = run_peers(args.peer_bits, base, data_dir=args.data_dir) if args.peer_bits else {}
    report(ours, peers, args)


def _points(results: dict, *, fp32_bops: float) -> list[dict]:
    pts = []
    for name, res in results.items():
        hist = res["history"]
        spe = res["timing"]["seconds_per_epoch"] if "timing" in res else res["seconds_per_epoch"]
        for h in hist:
            red = h.get("bops_reduction") or fp32_bops / h["bops"]
            pts.append(
                {
                    "variant": name,
                    "step": h["step"],
                    "sparsity": h["sparsity"],
                    "accuracy": h["accuracy"],
                    "bops": h["bops"],
                    "bops_reduction": red,
                    "seconds_per_epoch": spe,
                }
            )
    return pts


def report(ours: dict, peers: dict, args) -> None:
    ref = ours["fp32"]["metrics"]
    fp32_bops = ref["bops_fp32_dense"]
    our_pts, peer_pts = _points(ours, fp32_bops=fp32_bops), _points(peers, fp32_bops=fp32_bops)
    print(table(our_pts + peer_pts, COLUMNS))
    best = best_within(our_pts, ref_accuracy=ref["accuracy"])
    best_peer = best_within(peer_pts, ref_accuracy=ref["accuracy"]) if peer_pts else None
    spe = {n: r["timing"]["seconds_per_epoch"] for n, r in ours.items()}
    spe_peer = {n: r["seconds_per_epoch"] for n, r in peers.items()}
    headline = {
        "bops_reduction": best["bops_reduction"] if best else 1.0,
        "accuracy_drop_points": 100 * (ref["accuracy"] - best["accuracy"]) if best else 0.0,
        "best": best,
        "peer_bops_reduction": best_peer["bops_reduction"] if best_peer else None,
        "peer_best": best_peer,
        "fp32_accuracy": ref["accuracy"],
        "fp32_bops": fp32_bops,
        "seconds_per_epoch_fp32": spe.get("fp32"),
        "seconds_per_epoch_qap": spe.get("qap-6b-ft"),
        "seconds_per_epoch_peer_qap": spe_peer.get("peer-6b-ft"),
    }
    if spe.get("fp32") and spe.get("qap-6b-ft"):
        headline["epoch_ratio_qap_vs_fp32"] = spe["qap-6b-ft"] / spe["fp32"]
    if spe_peer.get("peer-6b-ft") and spe.get("qap-6b-ft"):
        headline["epoch_ratio_qap_vs_peer"] = spe["qap-6b-ft"] / spe_peer["peer-6b-ft"]
    path = write_results(
        "qap_letter",
        {
            "benchmark": "qap_letter",
            "quick": args.quick,
            "machine": machine(),
            "threads": args.threads,
            "headline": headline,
            "points": our_pts,
            "peer_points": peer_pts,
            "runs": {n: {"metrics": r["metrics"], "timing": r["timing"]} for n, r in ours.items()},
            "peer_runs": {n: {k: v for k, v in r.items() if k != "history"} for n, r in peers.items()},
        },
    )
    print(
        f"\nheadline: {headline['bops_reduction']:.1f}x fewer BOPs than 32-bit dense within 0.5 points "
        f"(peer: {headline['peer_bops_reduction'] or float('nan'):.1f}x); epoch time QAP/fp32 "
        f"{headline.get('epoch_ratio_qap_vs_fp32', float('nan')):.2f}, QAP/peer "
        f"{headline.get('epoch_ratio_qap_vs_peer', float('nan')):.2f}\nwrote {path}"
    )


if __name__ == "__main__":
    main()

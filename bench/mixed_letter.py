"""Mixed precision against uniform bits on UCI Letter: BOPs at equal accuracy (within 0.5 points
of the 32-bit dense model trained in the same run), with max-based and learned (LSQ) weight
scales. Same data split, MLP and training as bench/qap_letter.py (recipes/letter_qap.yaml:
iterative magnitude pruning with fine-tuning), pruned to ``--sparsity`` only, since no uniform
run stays within 0.5 points much beyond 40% sparsity there.

    python bench/mixed_letter.py --data-dir ../shared/datasets

Configurations (weights fc1/fc2/fc3/fc4; activations input/act1/act2/act3, ``layers.fcK.act_bits``
setting the ReLU after fcK), each with ``quant.weight_scale`` max and learned:
- uniform ``u4 u5 u6 u8``: every weight, activation and the input at b bits (as qap_letter);
- mixed: wider first/last layers and narrower hidden ones, and the input at 4 bits (Letter's
  features are integers 0..15; after per-feature min-max scaling a 4-bit grid holds 14 of the
  16 exactly: two span only 0..14 in the training split and land on a 1/14 grid).

About 12 CPU-minutes on one core (19 runs). Measured (one seed; fp32 94.975%): mixed
``w8448-a4646-max`` 32.2x fewer BOPs than 32-bit dense at 94.775% (40% sparsity) against uniform
``u6-max`` 23.8x at 94.50% (20% sparsity); learned (LSQ) weight scales qualified in 2 of 9 configs.

Prints one row per configuration (its unpruned QAT accuracy, and the pruning step with the
largest BOPs reduction within 0.5 points) and writes bench/results/mixed_letter.json whose
``headline`` holds ``mixed_bops_reduction`` / ``uniform_bops_reduction`` (largest BOPs reduction
against 32-bit dense within 0.5 points, over every pruning step of every mixed / uniform run),
the accuracy drops of those points in percentage points, and ``best_mixed`` / ``best_uniform``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import FIXED_STEP, best_within, machine, table, write_results

from qaprune.recipe import Recipe
from qaprune.rundir import clean
from qaprune.runner import run

RECIPE = HERE.parent / "recipes" / "letter_qap.yaml"
FCS = ("fc1", "fc2", "fc3", "fc4")
# name: (weight bits fc1..fc4, activation bits input, act1, act2, act3)
MIXED = {
    "w6666-a4666": ((6, 6, 6, 6), (4, 6, 6, 6)),  # uniform 6 but a 4-bit input
    "w8448-a6666": ((8, 4, 4, 8), (6, 6, 6, 6)),
    "w8338-a6666": ((8, 3, 3, 8), (6, 6, 6, 6)),
    "w6446-a4666": ((6, 4, 4, 6), (4, 6, 6, 6)),
    "w8448-a4646": ((8, 4, 4, 8), (4, 6, 4, 6)),
}
COLUMNS = [
    ("config", f"{'config':>19}", ""),
    ("kind", "kind", ""),
    ("qat_accuracy", "QAT acc", ".4f"),
    ("qat_bops_reduction", "QAT vs fp32", ".1f"),
    ("step", "step", "d"),
    ("sparsity", "sparsity", ".2f"),
    ("accuracy", "accuracy", ".4f"),
    ("bops", "BOPs", ".4g"),
    ("bops_reduction", "vs fp32", ".1f"),
    ("cpu_seconds", "CPU s", ".0f"),
]


def configs(uniform_bits: list[int], scales: list[str]) -> dict[str, tuple[str, list[str]]]:
    """Every run: name -> (kind, recipe overrides)."""
    out = {"fp32": ("fp32", ["quant.weight_bits=32", "quant.act_bits=32", "quant.input_bits=32", "prune.sparsity=0.0"])}
    for scale in scales:
        for b in uniform_bits:
            out[f"u{b}-{scale}"] = (
                "uniform",
                [
                    f"quant.weight_bits={b}",
                    f"quant.act_bits={b}",
                    f"quant.input_bits={b}",
                    f"quant.weight_scale={scale}",
                ],
            )
        for name, (w, a) in MIXED.items():
            ov = [f"quant.weight_scale={scale}", "quant.weight_bits=6", "quant.act_bits=6", f"quant.input_bits={a[0]}"]
            ov += [f"layers.{fc}.weight_bits={b}" for fc, b in zip(FCS, w)]
            ov += [f"layers.{fc}.act_bits={b}" for fc, b in zip(FCS, a[1:])]  # the ReLU after fcK
            out[f"{name}-{scale}"] = ("mixed", ov)
    return out


def run_all(runs: dict, *, data_dir: str, runs_dir: Path, common: list[str]) -> dict:
    base, results = Recipe.load(RECIPE), {}
    for name, (kind, ov) in runs.items():
        clean(runs_dir / name)
        t0, c0 = time.perf_counter(), time.process_time()
        res = run(
            base.override(FIXED_STEP + common + ov + [f"name=mixed-{name}"]),
            out=runs_dir / name,
            data_dir=data_dir,
            log=lambda *_: None,
        )
        results[name] = {
            "kind": kind,
            "overrides": ov,
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            "results": res.results,
        }
        print(
            f"{name:<20} {results[name]['seconds']:6.1f} s ({results[name]['cpu_seconds']:.1f} s CPU)  QAT accuracy "
            f"{res.results['history'][0]['accuracy']:.4f}  final {res.metrics['accuracy']:.4f}",
            flush=True,
        )
    return results


def points(results: dict, fp32_bops: float) -> list[dict]:
    pts = []
    for name, r in results.items():
        layers = {e["name"]: (e["weight_bits"], e["act_bits"]) for e in r["results"].get("layers", [])}
        for h in r["results"]["history"]:
            pts.append(
                {
                    "config": name,
                    "kind": r["kind"],
                    "step": h["step"],
                    "sparsity": h["sparsity"],
                    "accuracy": h["accuracy"],
                    "bops": h["bops"],
                    "bops_reduction": fp32_bops / h["bops"],
                    "bits": layers,
                }
            )
    return pts


def report(results: dict, args) -> dict:
    ref = results["fp32"]["results"]["metrics"]
    fp32_bops, fp32_acc = ref["bops_fp32_dense"], ref["accuracy"]
    pts = points(results, fp32_bops)
    rows = []
    for name, r in results.items():
        mine = [p for p in pts if p["config"] == name]
        best = best_within(mine, ref_accuracy=fp32_acc) or {}
        rows.append(
            {
                "config": name,
                "kind": r["kind"],
                "qat_accuracy": mine[0]["accuracy"],
                "qat_bops_reduction": mine[0]["bops_reduction"],
                "cpu_seconds": r["cpu_seconds"],
                **{k: best.get(k) for k in ("step", "sparsity", "accuracy", "bops", "bops_reduction")},
            }
        )
    print(table(rows, COLUMNS))
    best = {
        kind: best_within([p for p in pts if p["kind"] == kind], ref_accuracy=fp32_acc) for kind in ("mixed", "uniform")
    }

    def drop(p: dict | None) -> float | None:
        return 100 * (fp32_acc - p["accuracy"]) if p else None

    def fmt(v: float | None) -> str:
        return "none" if v is None else f"{v:.1f}x"

    headline = {
        "mixed_bops_reduction": best["mixed"]["bops_reduction"] if best["mixed"] else None,
        "uniform_bops_reduction": best["uniform"]["bops_reduction"] if best["uniform"] else None,
        "mixed_accuracy_drop_points": drop(best["mixed"]),
        "uniform_accuracy_drop_points": drop(best["uniform"]),
        "best_mixed": best["mixed"]["config"] if best["mixed"] else None,
        "best_uniform": best["uniform"]["config"] if best["uniform"] else None,
        "best_mixed_point": best["mixed"],
        "best_uniform_point": best["uniform"],
        "fp32_accuracy": fp32_acc,
        "fp32_bops": fp32_bops,
        "tolerance_points": 0.5,
    }
    path = write_results(
        "mixed_letter_quick" if args.quick else "mixed_letter",
        {
            "benchmark": "mixed_letter",
            "quick": args.quick,
            "machine": machine(),
            "threads": args.threads,
            "sparsity": args.sparsity,
            "headline": headline,
            "rows": rows,
            "points": pts,
            "seconds": {
                "wall": sum(r["seconds"] for r in results.values()),
                "cpu": sum(r["cpu_seconds"] for r in results.values()),
            },
            "configs": {n: {"kind": r["kind"], "overrides": r["overrides"]} for n, r in results.items()},
            "runs": {
                n: {"metrics": r["results"]["metrics"], "timing": r["results"]["timing"]} for n, r in results.items()
            },
        },
    )
    print(
        f"\nheadline (within 0.5 points of fp32 {fp32_acc:.4f}): mixed {fmt(headline['mixed_bops_reduction'])} "
        f"({headline['best_mixed']}), uniform {fmt(headline['uniform_bops_reduction'])} "
        f"({headline['best_uniform']}) fewer BOPs than 32-bit dense\nwrote {path}"
    )
    return headline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/datasets")
    ap.add_argument("--uniform-bits", type=int, nargs="+", default=[4, 5, 6, 8])
    ap.add_argument("--scales", nargs="+", default=["max", "learned"], choices=["max", "learned"])
    ap.add_argument("--sparsity", type=float, default=0.6, help="final sparsity of the pruning rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the fastest for this MLP)")
    ap.add_argument("--quick", action="store_true", help="few epochs: a smoke test of the script")
    ap.add_argument("--runs-dir", type=Path, default=HERE / "runs" / "mixed_letter")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    common = [f"train.threads={args.threads}", f"prune.sparsity={args.sparsity}"]
    common += ["train.epochs=3", "prune.rate=0.3"] if args.quick else []
    runs = configs(args.uniform_bits, args.scales)  # their overrides come after `common`
    report(run_all(runs, data_dir=args.data_dir, runs_dir=args.runs_dir, common=common), args)


if __name__ == "__main__":
    main()

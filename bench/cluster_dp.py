"""Optimal 1-D k-means (``qaprune.quant.cluster.kmeans_1d``, a divide-and-conquer DP) against
Lloyd's k-means (scikit-learn ``KMeans``) on the weights a clustering step sees.

    OMP_NUM_THREADS=1 taskset -c 0 python bench/cluster_dp.py [--quick]

Data: ``--n`` (10^6) float32 weights drawn from Laplace(0, 0.05), the shape of trained weights,
seeded; and, when ``--weights`` exists (``bench/mpd_mnist.py`` writes it), a real trained
tensor: LeNet-300-100's ``fc1.weight`` (235,200 weights) trained on MNIST. For each k in
``--ks`` (4, 16, 64): the clustering SSE (float64, each method's own centroids) and the wall
and CPU seconds of the DP; of ``KMeans(n_init=1)``, which is scikit-learn's default
(``n_init="auto"`` runs k-means++ once); and of ``KMeans(n_init=10)``, its old default.
Wall seconds include whatever else runs on the core; CPU seconds (process time) do not.

Prints a table and writes bench/results/cluster_dp.json whose ``headline`` holds, for k = 16 on
the Laplace weights, ``sse_ratio_lloyd_vs_dp`` (Lloyd n_init=1 SSE / DP SSE, >= 1 since the DP
is optimal), ``dp_seconds`` and ``lloyd_seconds`` (wall) and their CPU seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine, table, write_results

from qaprune.quant.cluster import kmeans_1d

WEIGHTS = HERE / "runs" / "mpd_mnist" / "lenet300-dense-s0" / "model.safetensors"
COLUMNS = [
    ("data", "data", ""),
    ("n", "n", "d"),
    ("k", "k", "d"),
    ("method", "method", ""),
    ("sse", "SSE", ".6g"),
    ("sse_ratio", "SSE / DP", ".5f"),
    ("seconds", "wall s", ".2f"),
    ("cpu_seconds", "CPU s", ".2f"),
]


def datasets(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """name -> float32 weights (n,)."""
    gen = torch.Generator().manual_seed(args.seed)
    u = torch.rand(args.n, generator=gen, dtype=torch.float64) - 0.5  # inverse-CDF Laplace
    laplace = (-0.05 * torch.sign(u) * torch.log1p(-2 * u.abs())).float().numpy()
    out = {"laplace": laplace}
    if args.weights.is_file():
        from safetensors.torch import load_file

        out["lenet-fc1"] = load_file(str(args.weights))["fc1.weight"].reshape(-1).numpy()
    else:
        print(f"(no {args.weights}: run bench/mpd_mnist.py for the real-weights rows)")
    return out


def timed(fn) -> tuple[Any, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def sse_of(x: np.ndarray, centres: np.ndarray, labels: np.ndarray) -> float:
    return float(((x.astype(np.float64) - centres.astype(np.float64)[labels]) ** 2).sum())


def run_dp(x: np.ndarray, k: int) -> dict[str, Any]:
    (c, a, sse), wall, cpu = timed(lambda: kmeans_1d(torch.from_numpy(x), k))
    check = sse_of(x, c.numpy(), a.numpy())
    assert abs(check - sse) <= 1e-9 * max(check, 1e-300), (check, sse)
    return {"method": "dp (optimal)", "sse": sse, "seconds": wall, "cpu_seconds": cpu, "clusters": int(c.numel())}


def run_lloyd(x: np.ndarray, k: int, n_init: int, seed: int) -> dict[str, Any]:
    from sklearn.cluster import KMeans

    x64 = x.astype(np.float64)[:, None]
    km, wall, cpu = timed(lambda: KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x64))
    return {
        "method": f"lloyd n_init={n_init}",
        "sse": sse_of(x, km.cluster_centers_[:, 0], km.labels_),
        "seconds": wall,
        "cpu_seconds": cpu,
        "iterations": int(km.n_iter_),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--ks", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--n-init", type=int, nargs="+", default=[1, 10], help="Lloyd restarts to compare")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", type=Path, default=WEIGHTS)
    p.add_argument("--quick", action="store_true", help="10^5 weights, k 4 and 16, n_init 1")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.ks, args.n_init = 100_000, [4, 16], [1]
    t_start, rows = time.perf_counter(), []
    for name, x in datasets(args).items():
        for k in args.ks:
            dp = run_dp(x, k)
            found = [dp] + [run_lloyd(x, k, n, args.seed) for n in args.n_init]
            for r in found:
                rows.append({"data": name, "n": x.size, "k": k, **r, "sse_ratio": r["sse"] / dp["sse"]})
                print(table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    print("\n" + table(rows, COLUMNS))
    head = headline(rows, args.n_init[0])
    path = write_results(
        "cluster_dp_quick" if args.quick else "cluster_dp",
        {
            "benchmark": "cluster_dp",
            "quick": args.quick,
            "machine": machine(),
            "threads": torch.get_num_threads(),
            "wall_seconds": time.perf_counter() - t_start,
            "headline": head,
            "rows": rows,
        },
    )
    print(
        f"\nheadline (k={head['k']}, laplace): Lloyd SSE / DP SSE = {head['sse_ratio_lloyd_vs_dp']:.4f}, "
        f"DP {head['dp_seconds']:.2f} s, Lloyd {head['lloyd_seconds']:.2f} s (wall)\n{path}"
    )


def headline(rows: list[dict[str, Any]], n_init: int) -> dict[str, Any]:
    """k = 16 (or the nearest k run) on the Laplace weights: DP against Lloyd with ``n_init``."""
    ks = sorted({r["k"] for r in rows}, key=lambda k: abs(k - 16))
    pick = {r["method"]: r for r in rows if r["data"] == "laplace" and r["k"] == ks[0]}
    dp, lloyd = pick["dp (optimal)"], pick[f"lloyd n_init={n_init}"]
    return {
        "k": ks[0],
        "data": "laplace",
        "n": dp["n"],
        "lloyd": lloyd["method"],
        "sse_ratio_lloyd_vs_dp": lloyd["sse"] / dp["sse"],
        "dp_seconds": dp["seconds"],
        "lloyd_seconds": lloyd["seconds"],
        "dp_cpu_seconds": dp["cpu_seconds"],
        "lloyd_cpu_seconds": lloyd["cpu_seconds"],
        "dp_sse": dp["sse"],
        "lloyd_sse": lloyd["sse"],
    }


if __name__ == "__main__":
    main()

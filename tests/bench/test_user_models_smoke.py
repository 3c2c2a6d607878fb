"""Smoke test of bench/user_models.py on sklearn digits: the benchmark's own user models (residual
MLP, 1-D CNN over a user .npz file, ResNet-8-like CNN), ``--quick`` budgets, real runs, shrink,
exports and their verification, latency with one tiny round (speed claims live in bench/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "user_models.py"


@pytest.fixture(scope="module")
def um():
    spec = importlib.util.spec_from_file_location("bench_user_models", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def rows(um, tmp_path_factory):
    from sklearn.datasets import load_digits

    runs = tmp_path_factory.mktemp("runs")
    args = um.parse_args(["--quick", "--runs-dir", str(runs)])
    args.data_dir = None  # digits ships with scikit-learn
    bunch = load_digits()  # as a user's file of flat feature vectors (N, 64)
    flat = runs / "digits_flat.npz"
    np.savez(flat, x=bunch.data.astype(np.float32), y=bunch.target)
    specs = {
        "residual_mlp-digits": um.RUNS["residual_mlp-digits"],
        "feature_cnn-digits": {**um.RUNS["feature_cnn-mnist1d"], "data": {"name": str(flat), "scale": "standard"}},
        "resnet8-digits": {
            **um.RUNS["resnet8-fashion"],
            "model": {"name": "user_models:ResNet8", "args": {"widths": [4, 8, 8], "stem_stride": 1}},
            "data": {"name": "digits"},
        },
    }
    return [um.bench_run(name, um.recipe_for(name, args, spec), args) for name, spec in specs.items()]


def test_user_models_run_from_this_folder_and_deliver_a_step(um, rows):
    for r in rows:
        assert r["model"].startswith("user_models:") and (BENCH.parents[1] / r["model_path"]).resolve() == BENCH.parent
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 < r["reference_accuracy"] <= 1.0
        assert r["step"] in {h["step"] for h in r["history"]} and r["steps_run"] == 3  # quick: 2 pruning steps
        assert r["bops_reduction"] > 4.0 and r["size_bytes"] > 0 and r["reference_trained"]
        assert r["drop_points"] == pytest.approx(100 * (r["reference_accuracy"] - r["accuracy"]))


def test_every_export_is_verified_or_its_error_recorded(um, rows):
    for r in rows:
        assert set(r["exports"]) == set(um.FORMATS)
        assert r["reference_export"]["passed"]  # the 32-bit dense reference, exported for timing
        for fmt, e in r["exports"].items():
            assert e["passed"] or e["error"], (r["run"], fmt)
    mlp, cnn1d = rows[0], rows[1]
    for r in (mlp, cnn1d):
        assert all(e["passed"] for e in r["exports"].values()), r["exports"]
        assert r["exports"]["onnx"]["max_abs_diff"] < 0.1 and r["exports"]["qdq"]["top1_agreement"] >= 0.995
    assert cnn1d["flops_ratio"] > 1.0 and cnn1d["shrink"]["verified"] and cnn1d["shrink"]["removed"]


def test_latency_rows_pair_dense_and_delivered(rows):
    for r in rows:
        got = {(x["backend"], x["batch"]) for x in r["latency"]}
        assert got == {("ort", 1), ("ort", 256), ("torch", 1), ("torch", 256)}
        for x in r["latency"]:
            assert x["dense_ms"] > 0 and x["delivered_ms"] > 0
            assert x["speedup"] == pytest.approx(x["dense_ms"] / x["delivered_ms"])


def test_headline_counts_exports_and_runs(um, rows):
    h = um.headline(rows)
    assert h["runs"] == 3 and h["exports_total"] == 9
    assert h["exports_verified"] == 9 - len(h["failed_exports"]) >= 6
    assert h["selected_within_tolerance"] == 3 - len(h["outside_tolerance"])
    assert set(h["targets_met"]) == {"every_export_verified", "every_run_within_tolerance"}
    assert set(h["speedup_ort_b256"]) == {r["run"] for r in rows}


def test_mnist1d_is_written_as_a_user_file(um, tmp_path):
    pytest.importorskip("mnist1d")
    path = um.write_mnist1d(tmp_path)
    with np.load(path) as d:
        assert (
            d["x"].shape == (4000, 40) and d["x_test"].shape == (1000, 40) and set(np.unique(d["y"])) == set(range(10))
        )

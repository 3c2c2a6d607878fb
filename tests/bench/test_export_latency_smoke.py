"""Smoke test of bench/export_latency.py on sklearn digits: LeNet-300-style MLP, a couple of
epochs, real exports and verification, latency with one tiny round (speed claims live in bench/)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "export_latency.py"


@pytest.fixture(scope="module")
def el():
    spec = importlib.util.spec_from_file_location("bench_export_latency", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_digits_end_to_end(el, tmp_path):
    recipe = el.Recipe.load(el.RECIPES["lenet300"]).override(
        [
            "data.name=digits",
            "data.val=0.15",
            "data.test=0.2",
            "data.scale=minmax",
            "train.epochs=2",
            "train.batch_size=64",
        ]
    )
    args = argparse.Namespace(
        runs_dir=tmp_path,
        data_dir=None,
        threads=[1],
        backends=["ort", "torch"],
        rounds=1,
        repeats=2,
        warmup=1,
        reuse=False,
    )
    net = el.bench_net("lenet300", recipe, args)
    files = {f["model"]: f for f in net["files"]}
    assert set(files) == set(el.FILES) and all(f["passed"] for f in files.values())
    assert files["int8_qdq"]["bytes"] < files["shrunk_fp32"]["bytes"] < files["dense_fp32"]["bytes"]
    assert files["dense_fp32"]["max_abs_diff"] <= 1e-5 and files["int8_qdq"]["top1_agreement"] >= 0.995
    assert net["flops_ratio"] > 1.5 and files["shrunk_fp32"]["removed"]
    assert {(r["model"], r["backend"], r["batch"]) for r in net["latency"]} >= {
        (m, "ort", b) for m in el.FILES for b in (1, 256)
    }
    head = el.headline({"lenet300": net}, 1)
    assert head["int8_speedup_b256"] == head["int8_speedup_b256_lenet300"] > 0
    assert head["cnn_speedup"] is None and head["targets_met"]["all_exports_verified"]
    assert head["max_abs_diff_onnx_forced"] <= head["max_abs_diff_onnx"]

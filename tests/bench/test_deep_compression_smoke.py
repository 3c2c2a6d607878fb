"""Smoke test of bench/deep_compression_mnist.py's pieces on sklearn digits: tiny epochs, no
shared data; the artifact is measured for real and decoded back."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "deep_compression_mnist.py"
DIGITS = ["data.name=digits", "data.val=0.15", "data.test=0.2", "train.batch_size=64"]


@pytest.fixture(scope="module")
def dc():
    spec = importlib.util.spec_from_file_location("bench_deep_compression_mnist", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def rows(dc, tmp_path_factory):
    args = dc.parse_args(["--quick", "--runs-dir", str(tmp_path_factory.mktemp("runs")), "--set", *DIGITS])
    args.data_dir = None  # digits ships with scikit-learn
    picked = {"lenet300": ("dense", "dc-0.9"), "lenet5": ("qap-0.95-w6",)}
    out = [dc.run_variant(m, v, args) for m, names in picked.items() for v in dc.VARIANTS[m] if v.name in names]
    dc.add_references([r for r in out if r["model"] == "lenet300"])
    return {(r["model"], r["variant"]): r for r in out}


def test_the_measured_artifact_is_the_file_and_decodes_to_the_same_model(dc, rows):
    for r in rows.values():
        assert (
            r["size_bytes"] == r["size_bytes_metric"] == Path(dc.HERE.parent, r["run_dir"], "model.qap").stat().st_size
        )
        assert r["artifact_accuracy"] == pytest.approx(r["accuracy"], abs=1e-12)


def test_deep_compression_prunes_clusters_and_huffman_codes(rows):
    dense, pruned = rows[("lenet300", "dense")], rows[("lenet300", "dc-0.9")]
    assert dense["compression"] < 1.0 < 4.0 < pruned["compression"]  # dense: raw float32 plus a header
    assert dense["dense_fp32_bytes"] == 4 * sum(t["stored"] for t in dense["tensors"])  # weights and biases
    assert {t["encoding"] for t in dense["tensors"]} == {"raw"} and dense["drop_points"] == 0.0
    assert pruned["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert set(pruned["clusters"].values()) == {16} and set(dense["clusters"].values()) == {None}
    fc1 = next(t for t in pruned["tensors"] if t["name"] == "fc1.weight")
    assert fc1["encoding"] == "sparse" and fc1["unique"] <= 16 and fc1["index_bits"] is not None
    assert pruned["drop_points"] == pytest.approx(100 * (dense["accuracy"] - pruned["accuracy"]))


def test_qap_variant_quantizes_and_clusters_conv_layers_more_finely(rows):
    q = rows[("lenet5", "qap-0.95-w6")]
    assert q["weight_bits"] == 6 and q["bias_bits"] == 8
    assert q["clusters"]["features.0"] == 32 and q["clusters"]["fc1"] == 16
    assert q["size_bytes_fp32"] / q["size_bytes"] > 5.0
    assert all(t["unique"] is None or t["unique"] <= 33 for t in q["tensors"] if t["weight"])


def _row(model, variant, acc, comp, method="deep-compression"):
    return {
        "model": model,
        "variant": variant,
        "method": method,
        "accuracy": acc,
        "compression": comp,
        "size_bytes": 1000,
        "size_bytes_fp32": 50_000,
        "drop_points": None,
    }


def test_headline_takes_the_largest_compression_within_half_a_point(dc):
    rows = [
        _row("lenet300", "dense", 0.97, 0.99, "dense"),
        _row("lenet300", "a", 0.966, 45.0),
        _row("lenet300", "b", 0.9651, 60.0),
        _row("lenet300", "c", 0.96, 80.0),
        _row("lenet5", "dense", 0.985, 0.99, "dense"),
        _row("lenet5", "d", 0.975, 42.0),
        _row("lenet5", "e", 0.978, 30.0),
    ]
    for r in rows:
        r["drop_points"] = 100 * ((0.97 if r["model"] == "lenet300" else 0.985) - r["accuracy"])
    h = dc.headline(rows)
    assert h["lenet300_variant"] == "b" and h["lenet300_compression"] == 60.0
    assert h["lenet300_accuracy_drop_points"] == pytest.approx(0.49)
    assert h["lenet5_compression"] is None and h["lenet5_accuracy_drop_points"] is None
    assert h["lenet5_closest"]["variant"] == "e"
    assert h["targets_met"] == {"lenet300": True, "lenet5": False}
    assert h["lenet300_dense_accuracy"] == 0.97 and h["anchor_deep_compression"]["lenet5"] == 39.0

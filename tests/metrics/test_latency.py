"""measure_latency: sane numbers from PyTorch eager and ONNX Runtime (no speed claims here)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qaprune.metrics.latency import export_onnx, measure_latency
from qaprune.models import build_model

KEYS = {"batch", "threads", "backend", "median_ms", "p10_ms", "p90_ms", "throughput_per_s"}


def _check(rows, backend, batches=(1, 8), threads=(1,)):
    assert [(r["batch"], r["threads"]) for r in rows] == [(b, t) for t in threads for b in batches]
    for r in rows:
        assert KEYS <= set(r) and r["backend"] == backend
        assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] < 10_000
        assert r["throughput_per_s"] == pytest.approx(r["batch"] / r["median_ms"] * 1e3)


def test_torch_latency_restores_threads_and_mode():
    m = build_model("mlp", input_shape=(16,), num_classes=5).train()
    before = torch.get_num_threads()
    rows = measure_latency(m, (16,), batch_sizes=(1, 8), threads=(1, 2), repeats=3, warmup=1)
    _check(rows, "torch", threads=(1, 2))
    assert torch.get_num_threads() == before and m.training


def test_ort_latency_from_model_and_from_file(tmp_path):
    m = build_model("lenet5", input_shape=(1, 16, 16), num_classes=5)
    rows = measure_latency(m, (1, 16, 16), batch_sizes=(1, 8), threads=(1,), backend="ort", repeats=3, warmup=1)
    _check(rows, "ort")
    assert all(r["export"] == "dynamo" for r in rows)
    path = tmp_path / "m.onnx"
    export_onnx(m, (1, 16, 16), str(path))
    _check(
        measure_latency(path, (1, 16, 16), batch_sizes=(1, 8), threads=(1,), backend="ort", repeats=3, warmup=1), "ort"
    )


class _Branchy(nn.Module):
    """Data-dependent control flow: the dynamo exporter refuses it, TorchScript tracing does not."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_ort_export_falls_back_and_says_so():
    rows = measure_latency(_Branchy(), (4,), batch_sizes=(1,), threads=(1,), backend="ort", repeats=2, warmup=0)
    assert rows[0]["export"].startswith("torchscript (dynamo failed")
    assert rows[0]["median_ms"] > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend='tf'"):
        measure_latency(nn.Linear(2, 2), (2,), backend="tf")
    with pytest.raises(ValueError, match="needs an nn.Module"):
        measure_latency("model.onnx", (2,))

"""qaprune export and qaprune bench-latency on a run directory."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from qaprune.cli import app
from qaprune.io import copy_state, save_tensors
from qaprune.prune import prune_to
from qaprune.recipe import Recipe

RECIPE = {
    "name": "e",
    "data": {"name": "digits"},
    "model": {"name": "resnet8", "args": {"widths": [8, 16]}},
    "quant": {"weight_bits": 4, "act_bits": 4, "per_channel": True, "input_calibration": "max"},
    "prune": {"sparsity": 0.5},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as ``qaprune run`` leaves it (recipe.yaml, model.safetensors), trained briefly."""
    from qaprune.rundir import build, load_data

    out = tmp_path_factory.mktemp("runs") / "e"
    out.mkdir()
    recipe = Recipe(**RECIPE)
    recipe.dump(out / "recipe.yaml")
    data = load_data(recipe, None, torch.device("cpu"))
    model = build(recipe, data, torch.device("cpu"))
    prune_to(model, 0.5, structure="channels", example_input=data.x_train[:64])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for i in range(30):
        idx = torch.arange(i * 32, i * 32 + 32) % len(data.x_train)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_tensors(out / "model.safetensors", copy_state(model.eval()))
    return out


@pytest.mark.parametrize(
    "fmt,suffix", [("onnx", ".onnx"), ("qdq", ".qdq.onnx"), ("qonnx", ".qonnx.onnx"), ("qap", ".export.qap")]
)
def test_export_command(run_dir, fmt, suffix):
    res = CliRunner().invoke(app, ["export", str(run_dir), "--format", fmt, "--samples", "300"])
    assert res.exit_code == 0, res.output
    path = run_dir / f"model{suffix}"
    assert path.is_file() and f"wrote {path}" in res.output
    assert "top-1 agreement" in res.output and "passed" in res.output
    stored = json.loads((run_dir / f"model{suffix}.verify.json").read_text())
    v = stored["verification"]
    assert v["samples"] == 300 and v["passed"] and v["top1_agreement"] >= 0.995
    if fmt == "qdq":
        assert "integer kernels in ONNX Runtime: QGemm" in res.output or "QLinearConv" in res.output
        assert stored["removed_channels"] and stored["layers"]["layer1.conv1"].endswith("int8 kernel")


def test_export_command_errors(run_dir, tmp_path):
    from qaprune.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["export", str(run_dir), "--format", "tflite", "--out", str(tmp_path / "m")])
    assert exc.value.code == 2 and not (tmp_path / "m").exists()


def test_bench_latency(run_dir, tmp_path):
    out = tmp_path / "lat.json"
    qdq = run_dir / "model.bench.qdq.onnx"
    assert CliRunner().invoke(app, ["export", str(run_dir), "--format", "qdq", "--out", str(qdq)]).exit_code == 0
    res = CliRunner().invoke(
        app,
        [
            "bench-latency",
            str(run_dir),
            str(qdq),
            "--batch",
            "1",
            "--batch",
            "8",
            "--threads",
            "1",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["rows"]
    kinds = {(r["variant"], r["runtime"]) for r in rows}
    assert {
        ("dense", "torch eager fp32"),
        ("shrunk", "torch eager fp32"),
        ("dense", "ORT fp32"),
        ("shrunk", "ORT fp32"),
        ("shrunk", "ORT int8 QDQ"),
        (qdq.name, "ORT int8 QDQ"),
    } == kinds
    assert len(rows) == len(kinds) * 2 and all(r["median_ms"] > 0 and r["throughput_per_s"] > 0 for r in rows)
    dense = [r for r in rows if r["variant"] == "dense" and r["runtime"].startswith("torch")]
    assert all(r["speedup_vs_dense_torch"] == 1.0 for r in dense)
    assert "samples/s" in res.output and "ORT int8 QDQ" in res.output

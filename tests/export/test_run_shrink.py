"""qaprune run with channel pruning, then qaprune shrink: a smaller model with the same outputs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import qaprune.rundir as rundir
import qaprune.runner as runner
from qaprune.cli import app
from qaprune.export.run_shrink import shrink_run
from qaprune.io import load_tensors

CHANNELS = {
    "name": "c",
    "data": {"name": "digits"},
    "model": {"name": "mlp", "args": {"hidden": [32, 16]}},
    "quant": {"weight_bits": 6, "act_bits": 6},
    "prune": {
        "sparsity": 0.5,
        "rate": 0.25,
        "structure": "channels",
        "allocation": "global",
        "structure_args": {"round_to": 4},
    },
    "layers": {"fc2": {"structure_args": {"round_to": 8}}},
    "train": {"epochs": 2, "batch_size": 128, "patience": None},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "c"
    runner.run(CHANNELS, out=out, log=lambda *_: None)
    return out


def test_channel_run_prunes_whole_groups_and_reloads(run_dir):
    state = load_tensors(run_dir / "model.safetensors")
    assert any(k.endswith("bias.0.keep") for k in state)  # biases and batch norms masked too
    _, _, model = rundir.load_run(run_dir)  # rebuilds the channel masks
    kept = int((model.fc2.weight.flatten(1) != 0).any(1).sum())
    assert kept % 8 == 0 and kept < 16 or kept == 16 and int((model.fc1.weight != 0).any(1).sum()) < 32


def test_cli_shrink_writes_a_smaller_equivalent_model(run_dir, tmp_path):
    res = CliRunner().invoke(app, ["shrink", str(run_dir), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    assert "removed" in res.output and "not shrunk: fc3" in res.output
    s = json.loads((run_dir / "shrink.json").read_text())
    assert s["max_abs_diff"] <= 1e-4 and s["top1_agreement"] == 1.0
    assert sum(s["removed"].values()) > 0 and s["flops_ratio"] > 1.5
    assert s["params_after"] < s["params_before"]
    assert "model output" in s["not_shrunk"]["fc3"]
    assert (tmp_path / "m.onnx").stat().st_size == s["onnx_bytes"] > 0
    v = s["verification"]  # the file, run by ONNX Runtime, against the run's (masked) model
    assert v["passed"] and v["format"] == "onnx" and v["activations"]["unexplained"] == 0
    assert s["onnx_export"].startswith("qaprune lowering") and not list(tmp_path.glob(".*.tmp"))
    assert {r["backend"] for r in s["latency"]} == {"torch", "ort"} and all(r["speedup"] > 0 for r in s["latency"])


def test_shrink_keeps_no_file_that_fails_its_verification(run_dir, tmp_path, monkeypatch):
    import numpy as np
    from onnx import numpy_helper

    import qaprune.export.onnx_export as onnx_export
    from qaprune.export.verify import VerificationError

    real = onnx_export.float_onnx

    def corrupted(low):
        proto, notes = real(low)
        init = next(i for i in proto.graph.initializer if i.name.endswith("weight"))
        init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init).astype(np.float32), init.name))
        return proto, notes

    monkeypatch.setattr(onnx_export, "float_onnx", corrupted)
    before = (run_dir / "shrink.json").read_bytes() if (run_dir / "shrink.json").exists() else None
    with pytest.raises(VerificationError, match=r"shrink: onnx: the exported file does not compute .*FAILED"):
        shrink_run(run_dir, out=tmp_path / "bad.onnx", latency=False)
    assert not any(tmp_path.iterdir())
    after = (run_dir / "shrink.json").read_bytes() if (run_dir / "shrink.json").exists() else None
    assert after == before  # shrink.json only records verified files


def test_shrink_refuses_a_folder_without_a_run(tmp_path):
    with pytest.raises(Exception, match="recipe.yaml"):
        shrink_run(tmp_path)


class _Interrupt(Exception):
    pass


def test_resume_a_channel_run(tmp_path, monkeypatch):
    full = runner.run(CHANNELS, out=tmp_path / "full", log=lambda *_: None)
    real_fit, calls = runner.fit, {"n": 0}

    def flaky_fit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # killed during the second pruning round
            raise _Interrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(runner, "fit", flaky_fit)
    with pytest.raises(_Interrupt):
        runner.run(CHANNELS, out=tmp_path / "part", log=lambda *_: None)
    monkeypatch.setattr(runner, "fit", real_fit)
    resumed = runner.run(CHANNELS, out=tmp_path / "part", resume=True, log=lambda *_: None)
    assert [h["step"] for h in resumed.results["history"]] == [0, 1, 2]
    assert resumed.metrics["accuracy"] == full.metrics["accuracy"]

"""Smoke test of bench/prune_fashion.py's pieces on sklearn digits: a tiny VGG, no shared data,
latency stubbed (the latency module has its own tests)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "prune_fashion.py"
FAKE_MS = {"torch_b1": 1.0, "torch_b64": 8.0, "jit_b1": 0.8, "jit_b64": 6.0, "ort_b1": 0.5, "ort_b64": 4.0}


@pytest.fixture(scope="module")
def pf():
    spec = importlib.util.spec_from_file_location("bench_prune_fashion", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench(pf, tmp_path_factory):
    recipe = pf.Recipe.load(pf.RECIPE).override(
        [
            "data.name=digits",
            "data.train=null",
            "data.val=0.15",
            "data.test=0.2",
            "model.args.widths=[8, 16]",
            "model.args.hidden=16",
            "train.epochs=2",
            "train.threads=1",
            "train.batch_size=64",
        ]
    )
    data = pf.load_data(recipe, None, pf.setup(recipe))
    ft = pf.TrainSpec(**{**recipe.train.model_dump(), "epochs": 1})
    runs = tmp_path_factory.mktemp("runs")
    state, momentum, info = pf.train_dense(recipe, data, runs)
    assert info["epochs"] == 2 and (runs / "dense.safetensors").is_file()
    assert pf.train_dense(recipe, data, runs)[2]["key"] == info["key"]  # cached: reused
    groups = pf.channel_groups(pf.build_dense(recipe, data).eval(), data.x_test[:2])
    return pf.Bench(recipe, data, state, momentum, groups, ft, "shrunk", tmp_path_factory.mktemp("work"), 1)


@pytest.fixture
def stubbed(pf, bench, monkeypatch):
    monkeypatch.setattr(pf, "export_onnx", lambda model, shape, path: "stub")
    monkeypatch.setattr(pf, "latencies", lambda model, path, b: dict(FAKE_MS))
    if bench.ref is None:
        bench.ref = pf.reference(bench)
    return bench


@pytest.mark.parametrize(
    "source,name,mode",
    [("qaprune", "magnitude", "shrunk"), ("qaprune", "momentum", "shrunk"), ("torch-pruning", "taylor", "masked")],
)
def test_point_is_exact_and_half_as_wide(pf, stubbed, source, name, mode):
    stubbed.mode = mode
    p = pf.run_point(stubbed, source, name, 0.5)
    assert p["exact"] and p["max_abs_diff"] <= pf.EXACT_ATOL
    assert p["removed"] == {"conv1": 4, "conv2": 4, "conv3": 8, "conv4": 8, "fc1": 8}
    assert 0.6 < p["flops_reduction"] < 0.8 and p["flops_ratio"] == pytest.approx(1 / (1 - p["flops_reduction"]))
    assert p["bytes"] < stubbed.ref["bytes"] and p["speedup_torch"] == 1.0
    assert 0.0 <= p["accuracy"] <= 1.0


def test_headline_picks_the_largest_reduction_within_the_bound(pf):
    ref = {"accuracy": 0.9, "accuracy_ft": 0.9, "accuracy_no_ft": 0.88}
    row = {
        "speedup_torch": 3.0,
        "speedup_ort": 3.5,
        "speedup_torch_b1": 2.0,
        "speedup_ort_b1": 2.0,
        "bytes_ratio": 4.0,
        "speedup_torch_eager": 2.5,
        "speedup_torch_eager_b1": 1.5,
    }
    pts = [
        {
            **row,
            "criterion": "a",
            "source": "qaprune",
            "sparsity": 0.5,
            "accuracy": 0.898,
            "accuracy_drop_points": 0.2,
            "flops_reduction": 0.75,
            "flops_ratio": 4.0,
        },
        {
            **row,
            "criterion": "b",
            "source": "qaprune",
            "sparsity": 0.75,
            "accuracy": 0.85,
            "accuracy_drop_points": 5.0,
            "flops_reduction": 0.94,
            "flops_ratio": 16.0,
        },
    ]
    h = pf.headline(pts, ref)
    assert h["criterion"] == "a" and h["flops_target_met"] and not h["speedup_target_met_torch"]
    assert h["speedup_target_met_ort"] and not h["speedup_target_met_torch_eager"] and h["peer"] is None


def test_merge_keeps_the_machine_of_each_merged_run(pf, tmp_path, monkeypatch):
    def finished(commit: str, epochs: int, criterion: str | None) -> dict:
        head = {"criterion": criterion, "flops_reduction": 0.75, "accuracy_drop_points": 0.3}
        return {
            "complete": True,
            "machine": {"commit": commit, "dirty": False, "tree": "t" + commit, "command": f"python run {epochs}"},
            "budget": {"finetune_epochs": epochs},
            "headline": head,
            "dense": {"accuracy": 0.9},
            "points": [],
            "skipped": [],
        }

    base, extra = finished("a" * 40, 2, None), finished("b" * 40, 6, "lamp")
    for name, data in (("prune_fashion", base), ("prune_fashion_ft6", extra)):
        (tmp_path / f"{name}.json").write_text(pf.json.dumps(data))
    common = sys.modules["common"]
    monkeypatch.setattr(pf, "RESULTS", tmp_path)
    monkeypatch.setattr(pf, "write_results", lambda name, data: common.write_results(name, data, tmp_path))
    out = pf.json.loads(pf.merge("prune_fashion", "prune_fashion_ft6").read_text())
    assert out["headline"]["criterion"] == "lamp" and out["headline"]["finetune_epochs"] == 6
    assert out["machine"]["parts"] == {"prune_fashion": base["machine"], "prune_fashion_ft6": extra["machine"]}
    assert out["machine"]["command"].startswith("python ") and "tree" in out["machine"]
    assert [b["name"] for b in out["budgets"]] == list(out["machine"]["parts"])

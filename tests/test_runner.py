"""End-to-end runs on digits: the run-directory contract, resume, NaN stop, measure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import qaprune.rundir as rundir
import qaprune.runner as runner
from qaprune.errors import CheckpointError, NonFiniteError, RecipeError
from qaprune.io import load_tensors
from qaprune.recipe import Recipe

QAP = {
    "name": "t",
    "data": {"name": "digits", "val": 0.15, "test": 0.2},
    "model": {"name": "mlp", "args": {"hidden": [32, 16]}},
    "quant": {"weight_bits": 6, "act_bits": 6},
    "prune": {"sparsity": 0.6, "rate": 0.3},
    "train": {"epochs": 3, "batch_size": 128, "patience": None},
    # every step within tolerance: the last (most compressed) step is delivered; selection
    # against the dense reference has tests of its own below
    "select": {"reference": "none", "max_drop": 100.0},
}


def test_run_writes_the_contract(tmp_path):
    res = runner.run(QAP, out=tmp_path / "r", log=lambda *_: None)
    d = tmp_path / "r"
    for f in ("recipe.yaml", "results.json", "model.safetensors", "model.qap", "report.html"):
        assert (d / f).is_file(), f
    results = json.loads((d / "results.json").read_text())
    m = results["metrics"]
    for key in (
        "accuracy",
        "bops",
        "bops_fp32_dense",
        "params",
        "nonzero_params",
        "sparsity",
        "macs",
        "size_bytes",
        "neural_efficiency",
    ):
        assert key in m, key
    assert 0.0 <= m["accuracy"] <= 1.0
    assert [h["step"] for h in results["history"]] == [0, 1, 2]
    assert [h["target_sparsity"] for h in results["history"]] == pytest.approx([0.0, 0.3, 0.6])
    assert m["sparsity"] >= 0.6 - 1e-6 and m["bops"] < m["bops_fp32_dense"]
    assert m["size_bytes"] == (d / "model.qap").stat().st_size
    assert m["compression"] > 3  # 6-bit weights, 60% sparse, a tiny model: the header weighs
    assert results["timing"]["seconds_per_epoch"] > 0
    assert Recipe.load(d / "recipe.yaml").to_dict() == res.results["recipe"]


def test_existing_run_dir_is_not_overwritten(tmp_path):
    runner.run({**QAP, "prune": {"sparsity": 0.0}}, out=tmp_path / "r", log=lambda *_: None)
    with pytest.raises(RecipeError, match="--resume"):
        runner.run({**QAP, "prune": {"sparsity": 0.0}}, out=tmp_path / "r", log=lambda *_: None)


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted(tmp_path, monkeypatch):
    full = runner.run(QAP, out=tmp_path / "full", log=lambda *_: None)
    real_fit, calls = runner.fit, {"n": 0}

    def flaky_fit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # killed during the third round
            raise _Interrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(runner, "fit", flaky_fit)
    with pytest.raises(_Interrupt):
        runner.run(QAP, out=tmp_path / "part", log=lambda *_: None)
    state = json.loads((tmp_path / "part" / "checkpoints" / "state.json").read_text())
    assert state["step"] == 1 and len(state["history"]) == 2
    monkeypatch.setattr(runner, "fit", real_fit)
    resumed = runner.run(QAP, out=tmp_path / "part", resume=True, log=lambda *_: None)
    assert [h["step"] for h in resumed.results["history"]] == [0, 1, 2]
    assert resumed.results["history"][:2] == state["history"]  # finished work is kept, not redone
    assert resumed.metrics["accuracy"] == full.metrics["accuracy"]
    a = load_tensors(tmp_path / "full" / "model.safetensors")
    b = load_tensors(tmp_path / "part" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_recipe(tmp_path):
    runner.run({**QAP, "prune": {"sparsity": 0.0}}, out=tmp_path / "r", log=lambda *_: None)
    with pytest.raises(RecipeError, match="recipe differs"):
        runner.run({**QAP, "prune": {"sparsity": 0.0}, "seed": 3}, out=tmp_path / "r", resume=True, log=lambda *_: None)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_fit, calls = runner.fit, {"n": 0}

    def poisoned_fit(model, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(runner, "fit", poisoned_fit)
    with pytest.raises(NonFiniteError, match="NaN|nan"):
        runner.run(QAP, out=tmp_path / "r", log=lambda *_: None)
    ckpt = tmp_path / "r" / "checkpoints"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 0
    weights = load_tensors(ckpt / state["last_weights"])
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_corrupt_checkpoint_is_refused_on_resume(tmp_path, monkeypatch):
    real_fit, calls = runner.fit, {"n": 0}

    def flaky_fit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Interrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(runner, "fit", flaky_fit)
    with pytest.raises(_Interrupt):
        runner.run(QAP, out=tmp_path / "r", log=lambda *_: None)
    (tmp_path / "r" / "checkpoints" / "step_000.safetensors").write_bytes(b"\x80\x04not a tensor file")
    monkeypatch.setattr(runner, "fit", real_fit)
    with pytest.raises(CheckpointError, match="step_000"):
        runner.run(QAP, out=tmp_path / "r", resume=True, log=lambda *_: None)


def test_lottery_ticket_rewinds_to_initial_weights(tmp_path, monkeypatch):
    seen = []
    real_fit = runner.fit

    def spy_fit(model, *args, **kwargs):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(runner, "fit", spy_fit)
    recipe = {**QAP, "prune": {**QAP["prune"], "rewind": "lt"}}
    runner.run(recipe, out=tmp_path / "r", log=lambda *_: None)
    init = load_tensors(tmp_path / "r" / "checkpoints" / "init.safetensors")
    key = "fc1.parametrizations.weight.original"
    mask = seen[1]["fc1.parametrizations.weight.0.mask"]
    assert torch.equal(seen[1][key], init[key])  # rewound before retraining
    assert (mask == 0).float().mean() > 0.2  # while the mask is kept


def test_cubic_schedule_reaches_final_sparsity(tmp_path):
    recipe = {
        **QAP,
        "prune": {"sparsity": 0.5, "schedule": "cubic", "n_steps": 3, "start_epoch": 1},
        "train": {**QAP["train"], "epochs": 5},
    }
    res = runner.run(recipe, out=tmp_path / "r", log=lambda *_: None)
    assert res.metrics["sparsity"] >= 0.5 - 1e-6


def test_measure_saved_reproduces_results(tmp_path):
    res = runner.run(QAP, out=tmp_path / "r", log=lambda *_: None)
    again = rundir.measure_saved(tmp_path / "r")
    assert again["accuracy"] == res.metrics["accuracy"]
    assert again["bops"] == res.metrics["bops"]


@pytest.mark.parametrize("criterion", ["taylor", "momentum", "nuclear"])
def test_data_criteria_run_end_to_end(tmp_path, criterion):
    recipe = {**QAP, "prune": {**QAP["prune"], "criterion": criterion, "rate": 0.6}}
    res = runner.run(recipe, out=tmp_path / "r", log=lambda *_: None)
    assert res.metrics["sparsity"] >= 0.6 - 1e-6
    assert res.results["recipe"]["prune"]["criterion"] == criterion


CLUSTERED = {
    **QAP,
    "prune": {"sparsity": 0.5, "rate": 0.5},
    "quant": {"weight_bits": 8, "act_bits": 8, "clusters": 8, "cluster_epochs": 2, "cluster_reg": 1.0},
    "layers": {"fc1": {"clusters": 4}},
}


def test_weight_sharing_round_after_pruning(tmp_path):
    res = runner.run(CLUSTERED, out=tmp_path / "c", log=lambda *_: None)
    phases = [h["phase"] for h in res.results["history"]]
    assert phases == ["train", "prune", "cluster"]
    _, _, model = rundir.load_run(tmp_path / "c")  # clusters rebuilt from the weights file
    for name, k in (("fc1", 4), ("fc2", 8), ("fc3", 8)):
        w = model.get_submodule(name).weight
        assert len(torch.unique(w[w != 0])) <= k, name
    assert res.metrics["sparsity"] >= 0.5 - 1e-6  # pruned weights stayed zero
    before = res.results["history"][1]["accuracy"]
    assert res.metrics["accuracy"] > before - 0.1, (before, res.metrics["accuracy"])
    assert res.metrics["size_bytes"] == (tmp_path / "c" / "model.qap").stat().st_size


def test_distillation_from_the_round0_model(tmp_path, monkeypatch):
    seen = []
    real_fit = runner.fit

    def spy(*args, **kwargs):
        seen.append(kwargs.get("teacher"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(runner, "fit", spy)
    recipe = {**QAP, "train": {**QAP["train"], "distill": {"temperature": 3.0, "weight": 0.7}}}
    res = runner.run(recipe, out=tmp_path / "kd", log=lambda *_: None)
    assert seen[0] is None and all(t is not None and not t.training for t in seen[1:])
    assert len(seen) == 3 and 0.0 <= res.metrics["accuracy"] <= 1.0


def test_a_teacher_run_is_loaded_with_this_runs_data_dir(tmp_path, monkeypatch):
    teacher_dir = tmp_path / "teacher"
    runner.run({**QAP, "prune": {**QAP["prune"], "sparsity": 0.0}}, out=teacher_dir, log=lambda *_: None)
    calls, real = [], runner.load_run

    def spy(target, *, data_dir=None):
        calls.append((Path(target), data_dir))
        return real(target, data_dir=data_dir)

    monkeypatch.setattr(runner, "load_run", spy)
    recipe = {**QAP, "train": {**QAP["train"], "distill": {"teacher": str(teacher_dir)}}}
    runner.run(recipe, out=tmp_path / "student", data_dir=str(tmp_path / "data"), log=lambda *_: None)
    assert calls == [(teacher_dir, str(tmp_path / "data"))]  # where this run found its data


# --- the operating point: reference, selection, early stop, --step ------------------------------
SELECTING = {**QAP, "name": "sel", "prune": {"sparsity": 0.97, "rate": 0.45, "of": "remaining"}, "select": {}}


def _logged() -> tuple[list[str], object]:
    lines: list[str] = []
    return lines, lines.append


def test_the_run_delivers_the_selected_step_against_the_dense_reference(tmp_path):
    lines, log = _logged()
    res = runner.run(SELECTING, out=tmp_path / "r", log=log)
    results, d = res.results, tmp_path / "r"
    sel, ref = results["selected"], results["reference"]
    assert any("reference: training the 32-bit dense model" in line for line in lines)
    assert ref["metrics"]["accuracy"] == sel["reference_accuracy"] and 0 < ref["val"]["accuracy"] <= 1
    assert sel["max_drop"] == 0.5 and sel["metric"] == "accuracy"
    floor = ref["val"]["accuracy"] - 0.005
    entries = {e["step"]: e for e in results["history"]}
    within = [e for e in results["history"] if e["val_accuracy"] >= floor - 1e-12]
    if within:
        assert (
            sel["within_tolerance"]
            and sel["step"] == min(within, key=lambda e: (e["bops"], -e["val_accuracy"]))["step"]
        )
    else:
        assert not sel["within_tolerance"] and any("no step within 0.5 points" in line for line in lines)
    chosen = entries[sel["step"]]
    assert results["metrics"]["accuracy"] == pytest.approx(chosen["accuracy"]) == sel["accuracy"]
    assert results["metrics"]["bops"] == pytest.approx(chosen["bops"])
    delivered = load_tensors(d / "model.safetensors")
    step_file = load_tensors(d / "checkpoints" / f"step_{sel['step']:03d}.safetensors")
    assert delivered.keys() == step_file.keys() and all(torch.equal(delivered[k], step_file[k]) for k in delivered)
    again = rundir.measure_saved(d)
    assert again["accuracy"] == pytest.approx(results["metrics"]["accuracy"])
    last = max(entries)
    assert rundir.measure_saved(d, step=last)["accuracy"] == pytest.approx(entries[last]["accuracy"])
    with pytest.raises(RecipeError, match=r"--step 99: .* has no such step; steps: 0, 1"):
        rundir.load_run(d, step=99)


def test_the_reference_is_cached_and_shared_by_runs_of_the_same_base(tmp_path):
    runner.run(SELECTING, out=tmp_path / "a", log=lambda *_: None)
    lines, log = _logged()
    other = {**SELECTING, "quant": {"weight_bits": 4, "act_bits": 8}, "prune": {"sparsity": 0.5}}
    res = runner.run(other, out=tmp_path / "b", log=log)  # other bits and sparsity: the same dense model
    assert any(line.startswith("reference: reusing") for line in lines)
    assert not any("training the 32-bit dense" in line for line in lines)
    first = json.loads((tmp_path / "a" / "results.json").read_text())["reference"]
    assert res.results["reference"]["key"] == first["key"]
    longer = {**SELECTING, "train": {**SELECTING["train"], "epochs": 4}}  # another budget: another reference
    lines, log = _logged()
    assert runner.run(longer, out=tmp_path / "c", log=log).results["reference"]["key"] != first["key"]
    assert any("training the 32-bit dense" in line for line in lines)


def test_pruning_stops_once_validation_stays_outside_the_tolerance(tmp_path):
    recipe = {**SELECTING, "prune": {"sparsity": 0.99, "rate": 0.6, "of": "remaining", "stop_after": 1},
              "select": {"reference": "none", "max_drop": 0.0}}  # fmt: skip
    lines, log = _logged()
    res = runner.run(recipe, out=tmp_path / "r", log=log)
    steps = [e["step"] for e in res.results["history"]]
    first_out = next(
        e["step"] for e in res.results["history"][1:] if e["val_accuracy"] < res.results["history"][0]["val_accuracy"]
    )
    assert steps[-1] == first_out and len(steps) < 6  # the schedule had 6 steps to 0.99
    assert any(line.startswith(f"stopped after step {first_out}") for line in lines)
    resumed = runner.run(recipe, out=tmp_path / "r", resume=True, log=lambda *_: None)
    assert [e["step"] for e in resumed.results["history"]] == steps  # a resumed run stops there too


def test_selection_by_bytes_and_on_balanced_accuracy(tmp_path):
    recipe = {
        **QAP,
        "select": {"reference": "none", "max_drop": 100.0, "by": "size_bytes", "metric": "balanced_accuracy"},
    }
    res = runner.run(recipe, out=tmp_path / "r", log=lambda *_: None)
    sel, history = res.results["selected"], res.results["history"]
    assert sel["by"] == "size_bytes" and sel["metric"] == "balanced_accuracy"
    assert sel["step"] == min(history, key=lambda e: (e["size_bytes"], -e["val_balanced_accuracy"]))["step"]
    assert all(0 <= e["val_balanced_accuracy"] <= 1 for e in history) and sel["reference_accuracy"] is None


def test_one_qap_writer_and_exports_of_a_step_never_replace_the_run_files(tmp_path):
    from qaprune.export.api import export

    d = tmp_path / "r"
    res = runner.run(QAP, out=d, log=lambda *_: None)
    run_qap = (d / "model.qap").read_bytes()
    r = export(d, format="qap")
    assert r.path == d / "model.export.qap" and r.path.read_bytes() == run_qap  # same writer, same bytes
    assert res.metrics["size_bytes"] == len(run_qap) == rundir.measure_saved(d)["size_bytes"]
    out = export(d, format="qap", out=tmp_path / "elsewhere.qap")
    assert out.path == tmp_path / "elsewhere.qap" and (d / "model.qap").read_bytes() == run_qap
    first = export(d, format="onnx", step=0)
    assert first.path == d / "model.step_000.onnx" and first.verification.passed

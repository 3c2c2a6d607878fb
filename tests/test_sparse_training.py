"""Sparse optimizers from recipes: ``train.optimizer`` hspg / obproxsg with ``train.sparse``.
HSPG zeroes whole rows, the runner freezes them as masks (before the quantizers) so they stay
zero in later rounds, and results report the sparsity; biases and 1-D tensors are not
regularized; bad ``train.sparse`` fields get the field-naming error."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import qaprune.rundir as rundir
import qaprune.runner as runner
from qaprune.errors import RecipeError
from qaprune.io import load_tensors
from qaprune.prune.optim import HSPG, OBProxSG
from qaprune.recipe import Recipe, SparseSpec, TrainSpec
from qaprune.train import make_optimizer

LAYERS = ("fc1", "fc2", "fc3")


def _recipe(**train) -> dict:
    """A tiny 6-bit MLP on digits; HSPG with a large λ, then one oneshot pruning round."""
    return {
        "name": "hspg",
        "data": {"name": "digits"},
        "model": {"name": "mlp", "args": {"hidden": [32, 16], "batchnorm": "none"}},
        "quant": {"weight_bits": 6},
        "prune": {"sparsity": 0.8, "schedule": "oneshot"},
        "train": {
            "optimizer": "hspg",
            "lr": 0.05,
            "epochs": 4,
            "batch_size": 64,
            "patience": None,
            "sparse": {"lam": 0.2, "n_p": 20},
            **train,
        },
    }


def _weights(state: dict[str, torch.Tensor], layers: tuple[str, ...] = LAYERS) -> dict[str, torch.Tensor]:
    """Effective float weight (latent · mask) of each layer of a checkpoint."""
    return {
        n: state[f"{n}.parametrizations.weight.original"] * state[f"{n}.parametrizations.weight.0.mask"] for n in layers
    }


def test_hspg_zeroes_whole_rows_and_masks_keep_them(tmp_path) -> None:
    res = runner.run(_recipe(), out=tmp_path / "r", log=lambda *_: None)
    ckpt = tmp_path / "r" / "checkpoints"
    first, last = (_weights(load_tensors(ckpt / f"step_{i:03d}.safetensors")) for i in (0, 1))
    zero_rows = {n: (w == 0).all(1) for n, w in first.items()}
    assert sum(int(z.sum()) for z in zero_rows.values()) > 0
    for n, w in first.items():  # group sparsity: a row is all zero or has no zero at all
        assert torch.equal((w == 0).any(1), zero_rows[n]), n
    masks = load_tensors(ckpt / "step_001.safetensors")
    for n in LAYERS:  # after a further round: still zero, and masked
        assert (last[n][zero_rows[n]] == 0).all(), n
        assert (masks[f"{n}.parametrizations.weight.0.mask"][zero_rows[n]] == 0).all(), n
    step0 = res.results["history"][0]
    assert step0["sparsity"] > 0 and step0["target_sparsity"] == 0.0
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["metrics"]["sparsity"] >= 0.8 - 1e-6


def test_masks_sit_before_quantizers_without_pruning(tmp_path) -> None:
    recipe = _recipe(epochs=3)
    recipe["prune"] = {"sparsity": 0.0}
    res = runner.run(recipe, out=tmp_path / "r", log=lambda *_: None)
    assert [h["step"] for h in res.results["history"]] == [0]
    assert res.metrics["sparsity"] > 0
    r, cpu = Recipe.parse(recipe), torch.device("cpu")
    model = rundir.build(r, rundir.load_data(r, None, cpu), cpu)
    assert [type(p).__name__ for p in model.fc1.parametrizations.weight] == ["Mask", "FakeQuant"]
    again = rundir.measure_saved(tmp_path / "r")  # the recipe rebuilds the same state
    assert again["sparsity"] == pytest.approx(res.metrics["sparsity"])
    assert again["accuracy"] == pytest.approx(res.metrics["accuracy"])


def test_obproxsg_zeroes_single_weights(tmp_path) -> None:
    recipe = _recipe(optimizer="obproxsg", sparse={"lam": 0.01, "n_p": 20})
    recipe["prune"] = {"sparsity": 0.0}
    res = runner.run(recipe, out=tmp_path / "r", log=lambda *_: None)
    assert 0 < res.metrics["sparsity"] < 1


def test_layer_kept_dense_is_not_regularized(tmp_path) -> None:
    recipe = _recipe(epochs=3, sparse={"lam": 2.0, "n_p": 5})
    recipe["prune"], recipe["layers"] = {"sparsity": 0.0}, {"fc3": {"prune": False}}
    runner.run(recipe, out=tmp_path / "r", log=lambda *_: None)
    state = load_tensors(tmp_path / "r" / "model.safetensors")
    assert (state["fc3.parametrizations.weight.original"] != 0).all()  # no mask, no penalty
    assert "fc3.parametrizations.weight.0.mask" not in state
    assert (_weights(state, ("fc1",))["fc1"] == 0).all(1).any()


@pytest.mark.parametrize("name,cls", [("hspg", HSPG), ("obproxsg", OBProxSG)])
def test_make_optimizer_leaves_1d_tensors_unregularized(name: str, cls: type) -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    spec = TrainSpec(optimizer=name, lr=0.1, momentum=0.5, sparse=SparseSpec(lam=0.3, n_p=7))
    opt = make_optimizer(net.named_parameters(), spec, dense=["2.weight"])
    assert type(opt) is cls
    reg, free = opt.param_groups
    assert reg["param_names"] == ["0.weight"] and reg["lam"] == 0.3 and reg["n_p"] == 7
    assert free["param_names"] == ["0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    assert free["lam"] == 0.0 and free["lr"] == 0.1
    if name == "hspg":
        assert reg["momentum"] == 0.5 and reg["groups"] == "rows"


@pytest.mark.parametrize(
    "sparse,msg",
    [
        ({"lam": -1}, "recipe.train.sparse.lam: -1.0 is not >= 0"),
        ({"n_p": -3}, "recipe.train.sparse.n_p: -3 is not >= 0"),
        ({"n_o": -1}, "recipe.train.sparse.n_o: -1 is not >= 0"),
        ({"epsilon": 1.5}, "recipe.train.sparse.epsilon: 1.5 is not in [0, 1)"),
        ({"lamda": 1}, "recipe.train.sparse.lamda: unknown field; allowed: lam, n_p, n_o, epsilon, groups"),
    ],
)
def test_bad_sparse_fields_name_the_field(sparse: dict, msg: str) -> None:
    with pytest.raises(RecipeError) as info:
        Recipe.parse({"train": {"optimizer": "hspg", "sparse": sparse}})
    assert str(info.value) == msg


def test_bad_sparse_groups_lists_allowed() -> None:
    with pytest.raises(RecipeError) as info:
        Recipe.parse({"train": {"optimizer": "hspg", "sparse": {"groups": "diagonal"}}})
    msg = str(info.value)
    assert msg.startswith("recipe.train.sparse.groups: 'diagonal': ")
    assert all(f"'{g}'" in msg for g in ("rows", "columns", "all"))

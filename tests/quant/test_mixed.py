"""Tests of qaprune.quant.mixed and mixed precision through attach: per-layer weight and
activation bits from recipe patterns (every combination with per-channel and learned scales),
the levels each layer really has, bit_widths, BOPs per layer, and errors that name the layer."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import qaprune.rundir as rundir
from qaprune.compress import act_bits_plan, attach, weight_spec
from qaprune.errors import RecipeError
from qaprune.metrics.bops import layer_bops, profile
from qaprune.models import build_model
from qaprune.param import find
from qaprune.quant.activations import QuantReLU
from qaprune.quant.fake_quant import FakeQuant, LearnedFakeQuant
from qaprune.quant.mixed import bit_widths, relu_producers
from qaprune.recipe import LayerOverride, Recipe

FCS = ("fc1", "fc2", "fc3", "fc4")


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", input_shape=(16,), num_classes=5)


def _recipe(layers: dict, **quant) -> Recipe:
    return Recipe.parse({"quant": {"weight_bits": 6, "act_bits": 6, "input_bits": 8, **quant}, "layers": layers})


def _levels(t: torch.Tensor) -> int:
    return len(torch.unique(t.detach()))


MIXED = {
    "fc1": {"weight_bits": 8, "act_bits": 5},
    "fc2": {"weight_bits": 3, "act_bits": 3},
    "fc3": {"weight_bits": 2},
    "fc4": {"weight_bits": 1},
    "act3": {"act_bits": 4},
}


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("scale", ["max", "learned"])
def test_per_layer_bits_give_the_expected_levels(scale: str, per_channel: bool) -> None:
    model = attach(_mlp(), _recipe(MIXED, weight_scale=scale, per_channel=per_channel), sample=torch.randn(64, 16))
    bits = {"fc1": 8, "fc2": 3, "fc3": 2, "fc4": 1}
    for name, b in bits.items():
        w = getattr(model, name).weight
        fq = find(getattr(model, name), "weight", FakeQuant)
        assert (fq.bits, fq.per_channel, fq.learned) == (b, per_channel, scale == "learned")
        for r in list(w) if per_channel else [w]:  # a grid: at most 2^b − 1 levels; binary: ±α
            assert _levels(r) == 2 if b == 1 else 2 <= _levels(r) <= 2**b - 1
    assert [model.act1.act_bits, model.act2.act_bits, model.act3.act_bits] == [5, 3, 4]
    x = torch.randn(256, 16) * 3
    model.eval()
    h = model.act2(model.bn2(model.fc2(model.act1(model.bn1(model.fc1(model.input_quant(x)))))))
    assert _levels(h) <= 2**3  # 3-bit unsigned activations after fc2


@pytest.mark.parametrize(
    "scale,per_channel,w_bits,a_bits",
    itertools.product(["max", "learned"], [False, True], [1, 2, 4, 16, 32], [2, 7, 32]),
)
def test_every_combination_attaches_trains_and_reads_back(
    scale: str, per_channel: bool, w_bits: int, a_bits: int
) -> None:
    recipe = _recipe(
        {"fc2": {"weight_bits": w_bits, "act_bits": a_bits, "per_channel": per_channel}},
        weight_scale=scale,
        act_scale="learned" if scale == "learned" else "fixed",
    )
    model = attach(_mlp(), recipe, sample=torch.randn(32, 16))
    widths = bit_widths(model)
    assert widths["fc2"] == {
        "weight_bits": w_bits,
        "per_channel": per_channel and w_bits < 32,
        "weight_scale": None if w_bits == 32 else scale,
        "act_in_bits": 6,
        "act_out_bits": a_bits,
    }
    assert widths["fc1"]["act_in_bits"] == 8 and widths["fc4"]["act_out_bits"] == 32
    assert isinstance(model.act2, QuantReLU) == (a_bits < 32)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = model(torch.randn(32, 16)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(model(torch.randn(4, 16))).all()
    fq = find(model.fc2, "weight", FakeQuant)
    if w_bits == 32:
        assert fq is None
    else:
        assert fq.bits == w_bits and isinstance(fq, LearnedFakeQuant) == (scale == "learned")
        assert not fq.learned or fq.step.grad is not None


def test_layer_act_bits_set_the_relu_after_it_and_later_patterns_win() -> None:
    model = _mlp()
    assert relu_producers(model) == {"act1": "fc1", "act2": "fc2", "act3": "fc3"}
    plan = act_bits_plan(
        model, _recipe({"*": {"act_bits": 4}, "fc1": {"act_bits": 8}, "act2": {"act_bits": 3}, "fc2": {"act_bits": 7}})
    )
    assert plan == {"act1": 8, "act2": 7, "act3": 4}  # fc2 comes after act2: it wins
    plan = act_bits_plan(model, _recipe({"fc2": {"act_bits": 7}, "act2": {"act_bits": 3}}))
    assert plan == {"act1": 6, "act2": 3, "act3": 6}


def test_nested_conv_layer_act_bits() -> None:
    model = build_model("lenet5", input_shape=(1, 8, 8), num_classes=3)
    attach(
        model,
        Recipe.parse(
            {
                "quant": {"weight_bits": 4, "act_bits": 6, "input_bits": 32},
                "layers": {"features.0": {"act_bits": 3, "weight_bits": 2}, "fc1": {"act_bits": 5}},
            }
        ),
    )
    assert (model.features[2].act_bits, model.features[6].act_bits, model.act_fc1.act_bits) == (3, 6, 5)
    widths = bit_widths(model)
    assert widths["features.0"]["weight_bits"] == 2 and widths["features.0"]["act_out_bits"] == 3
    assert widths["features.4"]["act_in_bits"] == 3 and widths["fc2"]["act_in_bits"] == 5


def test_bops_follow_per_layer_bits() -> None:
    model = attach(_mlp(), _recipe(MIXED), sample=torch.randn(32, 16))
    layers = profile(model, torch.randn(4, 16))
    widths = bit_widths(model)
    assert [(p.weight_bits, p.act_bits) for p in layers] == [(8, 8), (3, 5), (2, 3), (1, 4)]
    for p in layers:
        assert (p.weight_bits, p.act_bits) == (widths[p.name]["weight_bits"], widths[p.name]["act_in_bits"])
        assert p.bops == layer_bops(p.m, p.n, sparsity=p.sparsity, act_bits=p.act_bits, weight_bits=p.weight_bits)
    fc4 = layers[-1]  # binary weights: no zeros, 5 · 32 · (4·1 + 4 + 1 + log2 32)
    assert fc4.nonzero == fc4.params and fc4.bops == 5 * 32 * (4 + 4 + 1 + math.log2(32))
    uniform = profile(attach(_mlp(), _recipe({}), sample=torch.randn(32, 16)), torch.randn(4, 16))
    assert sum(p.bops for p in layers) != sum(p.bops for p in uniform)


def test_bake_learned_and_binary_weights_keeps_outputs() -> None:
    import copy

    from qaprune.param import bake

    model = attach(_mlp(), _recipe(MIXED, weight_scale="learned", per_channel=True), sample=torch.randn(32, 16))
    x = torch.randn(16, 16)
    model.eval()
    expected = model(x).detach()
    weights = {n: getattr(model, n).weight.detach().clone() for n in FCS}
    baked = bake(copy.deepcopy(model))
    assert torch.equal(baked(x), expected) and torch.equal(model(x), expected)
    assert not any(k.endswith(".step") for k in baked.state_dict())
    assert all(torch.equal(getattr(baked, n).weight, weights[n]) for n in FCS)
    assert _levels(baked.fc4.weight) == 2 * 5  # binary, per channel: ±α_c for 5 outputs


# --- errors name the layer --------------------------------------------------------------------


@pytest.mark.parametrize(
    "layers,msg",
    [
        (
            {"fc1": {"weight_bits": 33}},
            "recipe.layers.fc1.weight_bits: 33 bits is not supported; allowed: 1..16 or 32 (float)",
        ),
        (
            {"fc*": {"weight_bits": 0}},
            "recipe.layers.fc*.weight_bits: 0 bits is not supported; allowed: 1..16 or 32 (float)",
        ),
        (
            {"act1": {"act_bits": 1}},
            "recipe.layers.act1.act_bits: 1 bits is not supported; "
            "allowed: 2..16 or 32 (float); 1 bit is for weights only",
        ),
    ],
)
def test_recipe_refuses_bits_naming_the_layer(layers: dict, msg: str) -> None:
    with pytest.raises(RecipeError) as err:
        Recipe.parse({"layers": layers})
    assert str(err.value) == msg


def test_recipe_refuses_one_bit_activations_inputs_and_biases() -> None:
    for field in ("act_bits", "input_bits", "bias_bits"):
        with pytest.raises(RecipeError, match=rf"^recipe\.quant\.{field}: 1 bits .* 1 bit is for weights only$"):
            Recipe.parse({"quant": {field: 1}})
    assert Recipe.parse({"quant": {"weight_bits": 1}}).quant.weight_bits == 1


def test_attach_names_the_module_of_a_bad_value() -> None:
    """Values that skipped validation (model_construct) are caught by attach, naming the module
    and the recipe field they came from."""
    recipe = _recipe({})
    recipe.layers["fc*"] = LayerOverride.model_construct(weight_bits=33)
    with pytest.raises(
        RecipeError,
        match=r"^module 'fc1': recipe\.layers\.fc\*\.weight_bits: 33 bits is not "
        r"supported; allowed: 1\.\.16 or 32 \(float\)$",
    ):
        attach(_mlp(), recipe, sample=torch.randn(8, 16))
    recipe.layers["fc*"] = LayerOverride.model_construct(act_bits=1)
    with pytest.raises(RecipeError, match=r"^module 'act1': recipe\.layers\.fc\*\.act_bits: 1 bits"):
        attach(_mlp(), recipe, sample=torch.randn(8, 16))
    bad = Recipe.model_construct(
        quant=recipe.quant.model_construct(**{**recipe.quant.__dict__, "weight_bits": 40}), layers={}
    )
    with pytest.raises(RecipeError, match=r"^module 'fc1': recipe\.quant\.weight_bits: 40 bits"):
        weight_spec(bad, "fc1")
    model = _mlp()
    with pytest.raises(RecipeError):
        attach(model, recipe, sample=torch.randn(8, 16))
    assert all(not hasattr(getattr(model, n), "parametrizations") for n in FCS)  # untouched
    assert type(model.act1) is nn.ReLU


@pytest.mark.parametrize(
    "layers,msg",
    [
        (
            {"fc9": {"weight_bits": 4}},
            "recipe.layers.fc9.weight_bits: matches no Linear/Conv layer; layers: fc1, fc2, fc3, fc4",
        ),
        ({"act*": {"per_channel": True}}, "recipe.layers.act*.per_channel: matches no Linear/Conv layer"),
        (
            {"relu1": {"act_bits": 4}},
            "recipe.layers.relu1.act_bits: matches no ReLU nor Linear/Conv layer; "
            "ReLUs: act1, act2, act3; layers: fc1, fc2, fc3, fc4",
        ),
    ],
)
def test_attach_refuses_overrides_that_reach_no_module(layers: dict, msg: str) -> None:
    with pytest.raises(RecipeError) as err:
        attach(_mlp(), _recipe(layers), sample=torch.randn(8, 16))
    assert str(err.value).startswith(msg)


def test_act_bits_on_every_layer_as_a_search_sets_them() -> None:
    """``layers.<each weight layer>.act_bits``: the classifier has no ReLU after it, so its
    setting changes nothing (the logits stay float) and is not an error."""
    layers = {f"fc{i}": {"act_bits": b} for i, b in zip(range(1, 5), (3, 4, 5, 2))}
    model = attach(_mlp(), _recipe(layers), sample=torch.randn(8, 16))
    assert [b["act_out_bits"] for b in bit_widths(model).values()] == [3, 4, 5, 32]


def test_run_end_to_end_with_learned_mixed_bits_and_reload(tmp_path) -> None:
    """A recipe with per-layer bits, binary and LSQ weights trains, reports the bits per layer
    and reloads (the learned steps travel in the weights file)."""
    from qaprune import runner

    recipe = {
        "data": {"name": "digits"},
        "model": {"name": "mlp", "args": {"hidden": [32, 16]}},
        "quant": {"weight_bits": 4, "act_bits": 6, "input_bits": 8, "weight_scale": "learned", "per_channel": True},
        "layers": {"fc1": {"weight_bits": 8, "act_bits": 4}, "fc3": {"weight_bits": 1}},
        "prune": {"sparsity": 0.3, "rate": 0.3},
        "train": {"epochs": 3, "patience": None},
    }
    res = runner.run(recipe, out=tmp_path / "r", log=lambda *_: None)
    bits = {e["name"]: (e["weight_bits"], e["act_bits"]) for e in res.results["layers"]}
    assert bits == {"fc1": (8, 8), "fc2": (4, 4), "fc3": (1, 6)}
    again = rundir.measure_saved(tmp_path / "r")
    assert again["accuracy"] == pytest.approx(res.metrics["accuracy"])
    assert again["bops"] == pytest.approx(res.metrics["bops"])

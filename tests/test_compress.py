"""Tests of qaprune.compress: attach (Mask then FakeQuant, QuantReLU with per-layer bits, the
input quantizer), bake (plain weights, identical outputs) and rewind (init weights, masks kept)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from qaprune.compress import attach, rewind
from qaprune.io import copy_state
from qaprune.models import build_model
from qaprune.param import bake, find, get_mask, latent_weight
from qaprune.prune import current_sparsity, prunable_layers, prune_to
from qaprune.quant.activations import QuantInput, QuantReLU
from qaprune.quant.fake_quant import FakeQuant, weight_bits
from qaprune.recipe import Recipe

FCS = ("fc1", "fc2", "fc3", "fc4")


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", input_shape=(16,), num_classes=5)


def _kinds(mod: nn.Module, tensor: str = "weight") -> list[str]:
    if not parametrize.is_parametrized(mod, tensor):
        return []
    return [type(p).__name__ for p in mod.parametrizations[tensor]]


def test_attach_mask_then_quant_everywhere() -> None:
    model = attach(
        _mlp(), Recipe(quant={"weight_bits": 6, "act_bits": 6}, prune={"sparsity": 0.5}), sample=torch.randn(32, 16)
    )
    for name in FCS:
        assert _kinds(getattr(model, name)) == ["Mask", "FakeQuant"]
        assert weight_bits(getattr(model, name)) == 6
        assert not parametrize.is_parametrized(getattr(model, name), "bias")
    assert list(prunable_layers(model)) == list(FCS)
    for i in (1, 2, 3):
        act = getattr(model, f"act{i}")
        assert isinstance(act, QuantReLU) and act.act_bits == 6 and act.max_value == 6.0
    assert isinstance(model.input_quant, QuantInput)
    assert model.input_quant.act_bits == 6  # input_bits defaults to act_bits
    assert model.input_quant.signed is True
    assert current_sparsity(model) == 0.0


def test_attach_without_pruning_or_quantization_is_a_no_op() -> None:
    model = _mlp()
    x = torch.randn(4, 16)
    model.eval()
    before = model(x)
    attach(model, Recipe())
    assert all(_kinds(getattr(model, n)) == [] for n in FCS)
    assert isinstance(model.input_quant, nn.Identity)
    assert all(isinstance(getattr(model, f"act{i}"), nn.ReLU) for i in (1, 2, 3))
    assert torch.equal(model(x), before)


def test_attach_pruning_only_float() -> None:
    model = attach(_mlp(), Recipe(prune={"sparsity": 0.3}))
    assert all(_kinds(getattr(model, n)) == ["Mask"] for n in FCS)
    assert isinstance(model.input_quant, nn.Identity)


def test_attach_per_layer_overrides() -> None:
    recipe = Recipe.parse(
        {
            "quant": {"weight_bits": 6, "act_bits": 6, "input_bits": 8, "input_max": 2.0, "per_channel": False},
            "prune": {"sparsity": 0.5},
            "layers": {
                "fc4": {"weight_bits": 32, "prune": False},
                "fc1": {"weight_bits": 4, "per_channel": True},
                "fc2": {"sparsity": 0.0},
                "act2": {"act_bits": 3},
                "act3": {"act_bits": 32},
            },
        }
    )
    model = attach(_mlp(), recipe)  # input_max given: no sample needed
    assert _kinds(model.fc1) == ["Mask", "FakeQuant"]
    fq1 = find(model.fc1, "weight", FakeQuant)
    assert (fq1.bits, fq1.per_channel) == (4, True)
    assert _kinds(model.fc2) == ["FakeQuant"]  # sparsity 0: never pruned, no mask
    assert _kinds(model.fc3) == ["Mask", "FakeQuant"]
    assert _kinds(model.fc4) == []  # 32 bits and prune: false
    assert [model.act1.act_bits, model.act2.act_bits] == [6, 3]
    assert isinstance(model.act3, nn.ReLU) and not isinstance(model.act3, QuantReLU)
    assert model.input_quant.act_bits == 8
    assert model.input_quant.max_value == pytest.approx(2.0)
    assert model.input_quant.signed is True  # a range but no sample: symmetric, signed


def test_attach_bias_bits() -> None:
    model = attach(_mlp(), Recipe(quant={"weight_bits": 8, "bias_bits": 4, "input_bits": 32}))
    for name in FCS:
        assert _kinds(getattr(model, name), "bias") == ["FakeQuant"]
        assert len(torch.unique(getattr(model, name).bias)) <= 2**4 - 1


def test_attach_relu6_and_act_max() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU6(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    attach(model, Recipe(quant={"act_bits": 4, "act_max": 2.5, "input_bits": 32}))
    assert isinstance(model[1], QuantReLU) and model[1].max_value == 6.0
    assert isinstance(model[3], QuantReLU) and model[3].max_value == 2.5


def test_attach_nested_relus() -> None:
    model = build_model("lenet5", input_shape=(1, 8, 8), num_classes=3)
    attach(model, Recipe.parse({"quant": {"act_bits": 5, "input_bits": 32}, "layers": {"features.2": {"act_bits": 7}}}))
    assert model.features[2].act_bits == 7
    assert model.features[6].act_bits == 5
    assert model.act_fc1.act_bits == 5
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


class _NoSlot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


X_RAW = torch.tensor([[0.4, 1.4, 2.6, 9.0]])
X_QUANT = torch.tensor([[0.0, 1.0, 3.0, 3.0]])  # 2 bits unsigned, max 3, scale 1: round(clamp(x, 0, 3))
CALIB = torch.tensor([[0.0, 1.0, 3.0, 2.0]])


def test_attach_input_pre_hook_without_slot() -> None:
    torch.manual_seed(0)
    model = attach(_NoSlot(), Recipe(quant={"input_bits": 2}), sample=CALIB)
    assert isinstance(model.input_quant, QuantInput)
    assert model.input_quant.signed is False and model.input_quant.max_value == pytest.approx(3.0)
    assert torch.equal(model(X_RAW), model.fc(X_QUANT))


def test_attach_input_quantizer_first_in_sequential_without_slot() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(4, 3)
    model = nn.Sequential(linear)
    attach(model, Recipe(quant={"input_bits": 2}), sample=CALIB)
    assert isinstance(model[0], QuantInput) and model[1] is linear
    assert torch.equal(model(X_RAW), linear(X_QUANT))  # the logits are not quantized


def test_attach_input_needs_sample_or_max() -> None:
    with pytest.raises(ValueError, match="needs a calibration sample or quant.input_max"):
        attach(_mlp(), Recipe(quant={"act_bits": 6}))


def test_forward_after_attach_uses_quantized_weights() -> None:
    model = attach(
        _mlp(), Recipe(quant={"weight_bits": 3, "act_bits": 4}, prune={"sparsity": 0.5}), sample=torch.randn(32, 16)
    )
    prune_to(model, 0.5)
    for name in FCS:
        w = getattr(model, name).weight
        assert len(torch.unique(w)) <= 2**3 - 1
        assert torch.all(w[get_mask(getattr(model, name)).mask == 0] == 0)


def _trained_compressed(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    model = attach(
        _mlp(seed),
        Recipe(quant={"weight_bits": 5, "act_bits": 4, "per_channel": True}, prune={"sparsity": 0.6}),
        sample=torch.randn(32, 16),
    )
    prune_to(model, 0.6)
    x = torch.randn(64, 16)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(x).logsumexp(1).mean().backward()
        opt.step()
    return model.eval(), x


def test_bake_removes_parametrizations_and_keeps_outputs() -> None:
    model, x = _trained_compressed()
    expected = model(x).detach()
    weights = {n: getattr(model, n).weight.detach().clone() for n in FCS}
    bake(model)
    for name in FCS:
        mod = getattr(model, name)
        assert not parametrize.is_parametrized(mod)
        assert type(mod) is nn.Linear
        assert isinstance(mod.weight, nn.Parameter)
        assert torch.equal(mod.weight, weights[name])
    assert not any(".parametrizations." in k or k.endswith(".mask") for k in model.state_dict())
    assert isinstance(model.act1, QuantReLU)  # activation quantizers stay
    assert torch.allclose(model(x), expected, atol=0, rtol=0)
    sparsity = sum(int((getattr(model, n).weight == 0).sum()) for n in FCS) / sum(
        getattr(model, n).weight.numel() for n in FCS
    )
    assert sparsity >= 0.6


def test_bake_quantized_bias() -> None:
    model = attach(_mlp(), Recipe(quant={"weight_bits": 8, "bias_bits": 6, "input_bits": 32}))
    x = torch.randn(5, 16)
    model.eval()
    expected = model(x).detach()
    bake(model)
    assert torch.equal(model(x), expected)
    assert len(torch.unique(model.fc1.bias)) <= 2**6 - 1


def test_bake_of_a_deep_copy_leaves_the_original_intact() -> None:
    model, x = _trained_compressed()
    expected = model(x).detach()
    baked = bake(copy.deepcopy(model))
    assert torch.equal(baked(x), expected)
    assert torch.equal(model(x), expected)  # AttributeError: no attribute 'weight'


def test_rewind_restores_init_weights_keeps_masks() -> None:
    model = attach(
        _mlp(), Recipe(quant={"weight_bits": 6, "act_bits": 6}, prune={"sparsity": 0.5}), sample=torch.randn(32, 16)
    )
    init = copy_state(model)
    x = torch.randn(64, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    prune_to(model, 0.5)
    masks = {n: get_mask(getattr(model, n)).mask.clone() for n in FCS}
    assert not torch.equal(latent_weight(model.fc1), init["fc1.parametrizations.weight.original"])
    rewind(model, init)
    for name in FCS:
        mod = getattr(model, name)
        assert torch.equal(latent_weight(mod), init[f"{name}.parametrizations.weight.original"])
        assert torch.equal(mod.bias, init[f"{name}.bias"])
        assert torch.equal(get_mask(mod).mask, masks[name])
        assert float((get_mask(mod).mask == 0).float().mean()) > 0
        assert torch.all(mod.weight[masks[name] == 0] == 0)
    assert torch.equal(model.bn1.running_mean, init["bn1.running_mean"])
    assert current_sparsity(model) == 0.5


@pytest.mark.parametrize(
    "recipe,masked",
    [
        ({}, []),
        ({"prune": {"sparsity": 0.5}}, ["fc1", "fc2", "fc3", "fc4"]),
        ({"prune": {"sparsity": 0.5}, "layers": {"fc4": {"prune": False}, "fc2": {"sparsity": 0.0}}}, ["fc1", "fc3"]),
        ({"layers": {"fc2": {"sparsity": 0.3}}}, ["fc1", "fc2", "fc3", "fc4"]),
        ({"train": {"optimizer": "hspg"}}, ["fc1", "fc2", "fc3", "fc4"]),  # its zeros become masks
        ({"train": {"optimizer": "obproxsg"}, "layers": {"fc4": {"prune": False}}}, ["fc1", "fc2", "fc3"]),
    ],
)
def test_one_rule_says_which_layers_get_a_mask(recipe: dict, masked: list[str]) -> None:
    from qaprune.compress import pruned_layers

    r = Recipe.parse({"quant": {"weight_bits": 4}, **recipe})
    model = build_model("mlp", input_shape=(16,), num_classes=5)
    assert pruned_layers(model, r) == masked
    attach(model, r, sample=torch.randn(8, 16))
    assert list(prunable_layers(model)) == masked
    for name in masked:  # the mask before the quantizer: quant(mask · w)
        assert [type(p).__name__ for p in getattr(model, name).parametrizations.weight] == ["Mask", "FakeQuant"]

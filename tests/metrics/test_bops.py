"""Tests of qaprune.metrics.bops: the per-layer formula by hand, the 32-bit dense MLP total,
a quantized + pruned MLP against the formula, and convolutions counted per output position."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qaprune.compress import attach
from qaprune.metrics.bops import LayerProfile, dense_fp32_bops, layer_bops, profile, total_bops
from qaprune.models import build_model
from qaprune.param import get_mask
from qaprune.prune import prune_to
from qaprune.quant.activations import QuantReLU
from qaprune.recipe import Recipe


def _formula(m: int, n: int, f_p: float, b_a: int, b_w: int, positions: int = 1) -> float:
    return positions * m * n * ((1 - f_p) * b_a * b_w + b_a + b_w + math.log2(n))


def test_layer_bops_hand_computed() -> None:
    # 64 · 16 · (32·32 + 32 + 32 + 4) = 1024 · 1092
    assert layer_bops(64, 16, sparsity=0.0, act_bits=32, weight_bits=32) == 1_118_208.0
    # 10 · 8 · (0.5·4·6 + 4 + 6 + 3) = 80 · 25
    assert layer_bops(10, 8, sparsity=0.5, act_bits=4, weight_bits=6) == 2000.0
    # fully pruned: only the accumulation terms remain, 3 · 4 · (2 + 2 + 2) · 9 positions
    assert layer_bops(3, 4, sparsity=1.0, act_bits=2, weight_bits=2, positions=9) == 648.0
    assert layer_bops(5, 27, sparsity=0.25, act_bits=8, weight_bits=3, positions=64) == pytest.approx(
        64 * 5 * 27 * (0.75 * 24 + 11 + math.log2(27))
    )


def test_dense_fp32_mlp_total_exact() -> None:
    model = build_model("mlp", input_shape=(16,), num_classes=5)
    layers = profile(model, torch.zeros(2, 16))
    assert [(p.name, p.m, p.n) for p in layers] == [("fc1", 64, 16), ("fc2", 32, 64), ("fc3", 32, 32), ("fc4", 5, 32)]
    assert [p.bops for p in layers] == [1_118_208.0, 2_240_512.0, 1_119_232.0, 174_880.0]
    assert sum(p.bops for p in layers) == 4_652_832.0
    assert total_bops(layers) == 4_652_832.0
    assert dense_fp32_bops(layers) == 4_652_832.0
    assert all(p.act_bits == 32 and p.weight_bits == 32 and p.sparsity == 0.0 for p in layers)
    assert [p.params for p in layers] == [1024, 2048, 1024, 160]
    assert [p.bias_params for p in layers] == [64, 32, 32, 5]
    assert sum(p.macs for p in layers) == 1024 + 2048 + 1024 + 160


def test_profile_restores_training_mode() -> None:
    model = build_model("mlp", input_shape=(16,), num_classes=5)
    model.train()
    profile(model, torch.zeros(4, 16))
    assert model.training
    model.eval()
    profile(model, torch.zeros(4, 16))
    assert not model.training


def test_quantized_pruned_mlp_matches_formula() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(16,), num_classes=5)
    recipe = Recipe(quant={"weight_bits": 6, "act_bits": 6, "input_bits": 6}, prune={"sparsity": 0.5})
    sample = torch.randn(32, 16)
    attach(model, recipe, sample=sample)
    achieved = prune_to(model, 0.5, allocation="uniform")
    assert achieved == {"fc1": 0.5, "fc2": 0.5, "fc3": 0.5, "fc4": 0.5}
    layers = profile(model, sample)
    assert [(p.weight_bits, p.act_bits) for p in layers] == [(6, 6)] * 4
    expected = 0.0
    for p in layers:
        mod = getattr(model, p.name)
        w = mod.weight.detach()
        measured = 1.0 - int(torch.count_nonzero(w)) / w.numel()
        assert measured >= 0.5  # the mask, plus weights that quantize to zero
        mask_zero = get_mask(mod).mask == 0
        assert torch.all(w[mask_zero] == 0)
        assert p.sparsity == pytest.approx(measured)
        expected += _formula(p.m, p.n, measured, 6, 6)
    assert total_bops(layers) == pytest.approx(expected, rel=1e-12)
    # and the reduction against the 32-bit dense model is large
    assert dense_fp32_bops(layers) == 4_652_832.0
    assert total_bops(layers) < 4_652_832.0 / 10


def test_act_bits_follow_execution_order() -> None:
    # fc_a sees the 4-bit input quantizer, fc_b a plain float ReLU, fc_c a 3-bit QuantReLU
    model = nn.Sequential()
    model.add_module("q_in", QuantReLU(4, max_value=1.0))
    model.add_module("fc_a", nn.Linear(4, 4))
    model.add_module("relu", nn.ReLU())
    model.add_module("fc_b", nn.Linear(4, 4))
    model.add_module("q", QuantReLU(3))
    model.add_module("fc_c", nn.Linear(4, 2))
    layers = profile(model, torch.rand(3, 4))
    assert [(p.name, p.act_bits) for p in layers] == [("fc_a", 4), ("fc_b", 32), ("fc_c", 3)]


def test_conv_counted_per_output_position() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    layers = profile(nn.Sequential(conv), torch.zeros(2, 3, 8, 8))
    (p,) = layers
    assert (p.kind, p.m, p.n, p.positions) == ("conv", 8, 3 * 3 * 3, 64)
    assert p.macs == 64 * 8 * 27
    assert p.params == 8 * 27
    assert p.bops == pytest.approx(64 * 8 * 27 * (32 * 32 + 64 + math.log2(27)))


def test_conv_without_padding_and_groups() -> None:
    conv = nn.Conv2d(4, 6, 3, groups=2)  # 8×8 → 6×6, fan-in 2·3·3 = 18
    (p,) = profile(nn.Sequential(conv), torch.zeros(1, 4, 8, 8))
    assert (p.m, p.n, p.positions) == (6, 18, 36)
    assert p.bops == pytest.approx(_formula(6, 18, 0.0, 32, 32, positions=36))


def test_profile_counts_pruned_zeros() -> None:
    lin = nn.Linear(10, 4)
    with torch.no_grad():
        lin.weight[:, :3] = 0.0  # 12 of 40
    (p,) = profile(nn.Sequential(lin), torch.zeros(1, 10))
    assert p.nonzero == 28
    assert p.sparsity == pytest.approx(0.3)
    assert p.bops == pytest.approx(_formula(4, 10, 0.3, 32, 32))


def test_layer_profile_to_dict() -> None:
    p = LayerProfile(name="fc", kind="linear", m=4, n=8, positions=1, params=32, nonzero=8, weight_bits=4, act_bits=8)
    d = p.to_dict()
    assert d["sparsity"] == 0.75 and d["macs"] == 32
    assert d["bops"] == pytest.approx(32 * (0.25 * 32 + 12 + 3))

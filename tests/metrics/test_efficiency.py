"""Tests of qaprune.metrics.efficiency: hand-computed η_l, geometric mean, aIQ, conv shapes."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn

from qaprune.metrics.efficiency import (
    EfficiencyResult,
    activation_layers,
    aiq,
    firing,
    geometric_mean,
    neural_efficiency,
)

SIGNS = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])


def _linear(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def _identity_relu() -> nn.Sequential:
    return nn.Sequential(_linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]), nn.ReLU())


def _naive_efficiency(fired: torch.Tensor) -> float:
    counts = Counter(tuple(row.tolist()) for row in fired)
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) / fired.shape[1]


def test_four_equally_likely_patterns_give_one() -> None:
    result = neural_efficiency(_identity_relu(), SIGNS)
    assert result.layers == {"1": pytest.approx(1.0)}
    assert result.efficiency == pytest.approx(1.0)
    assert result.neurons == {"1": 2}


def test_constant_pattern_gives_zero() -> None:
    result = neural_efficiency(_identity_relu(), SIGNS.abs())
    assert result.layers["1"] == 0.0
    assert result.efficiency == 0.0


def test_two_patterns_three_to_one() -> None:
    # patterns (1,1),(1,0),(1,0),(1,0): H = -(.25 log .25 + .75 log .75) = 0.8113 bits, N = 2
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [2.0, -1.0], [3.0, -2.0]])
    expected = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)) / 2
    assert neural_efficiency(_identity_relu(), x).efficiency == pytest.approx(expected)


def test_two_layers_geometric_mean() -> None:
    # layer 1: the 4 patterns (η=1); layer 2: neuron a = h1 - 0.5 fires for half, b always (η=.5)
    model = nn.Sequential(
        _linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]),
        nn.ReLU(),
        _linear([[1.0, 0.0], [0.0, 0.0]], [-0.5, 1.0]),
        nn.ReLU6(),
    )
    result = neural_efficiency(model, SIGNS)
    assert result.layers == {"1": pytest.approx(1.0), "3": pytest.approx(0.5)}
    assert result.efficiency == pytest.approx(math.sqrt(0.5))


def test_batching_does_not_change_result_and_matches_naive_count() -> None:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 20), nn.LeakyReLU(0.1), nn.Linear(20, 3), nn.ReLU())
    x = torch.randn(300, 6, generator=g)
    full = neural_efficiency(model, x)
    small = neural_efficiency(model, x, batch_size=7)
    assert small.layers == pytest.approx(full.layers)
    with torch.no_grad():
        h = model[1](model[0](x))
        out = model[3](model[2](h))
    assert full.layers["1"] == pytest.approx(_naive_efficiency(h > 0))  # 20 neurons: 3 bytes
    assert full.layers["3"] == pytest.approx(_naive_efficiency(out > 0))
    assert 0.0 < full.efficiency <= 1.0


def test_conv_neurons_are_channels_and_positions_are_observations() -> None:
    conv = nn.Conv2d(2, 2, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
    # one sample, 2x2 positions carrying the four sign patterns over the two channels
    x = SIGNS.T.reshape(1, 2, 2, 2)
    result = neural_efficiency(nn.Sequential(conv, nn.ReLU()), x)
    assert result.layers == {"1": pytest.approx(1.0)}
    assert result.neurons == {"1": 2}
    assert firing(torch.randn(5, 3, 4, 7)).shape == (5 * 4 * 7, 3)


def test_conv_matches_naive_count_per_position() -> None:
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.ReLU())
    x = torch.randn(8, 3, 6, 6, generator=g)
    with torch.no_grad():
        out = model(x)
    fired = out.permute(0, 2, 3, 1).reshape(-1, 10) > 0
    assert neural_efficiency(model, x, batch_size=3).layers["1"] == pytest.approx(_naive_efficiency(fired))


class QuantReLU(nn.Module):
    """Stand-in for qaprune's QuantReLU: an act_bits attribute and an inner nn.ReLU."""

    def __init__(self, act_bits: int = 4) -> None:
        super().__init__()
        self.act_bits = act_bits
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x)


class QuantInputReLU(QuantReLU):
    """An input quantizer: never counted."""


def test_activation_layer_selection() -> None:
    model = nn.Sequential(
        QuantInputReLU(), nn.Linear(2, 2), QuantReLU(), nn.Linear(2, 2), nn.Hardtanh(), nn.Linear(2, 2), nn.Sigmoid()
    )
    assert list(activation_layers(model)) == ["2", "4"]  # "2.relu" is inside a counted layer
    assert set(neural_efficiency(model, SIGNS).layers) == {"2", "4"}


def test_reused_module_counts_each_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = _linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
            self.fc2 = _linear([[0.0, 0.0], [0.0, 0.0]], [1.0, 1.0])
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.fc2(self.act(self.fc1(x))))

    result = neural_efficiency(Twice(), SIGNS, batch_size=3)
    assert result.layers == {"act": pytest.approx(1.0), "act:1": 0.0}


def test_train_eval_mode_restored_and_no_activations_is_nan() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.ReLU()).train()
    model[1].eval()
    neural_efficiency(model, SIGNS)
    assert model.training and model[0].training and not model[1].training
    assert model[0].weight.grad is None
    empty = neural_efficiency(nn.Linear(2, 2), SIGNS)
    assert empty.layers == {} and math.isnan(empty.efficiency)


def test_geometric_mean() -> None:
    assert geometric_mean([0.25, 1.0]) == pytest.approx(0.5)
    assert geometric_mean([0.5, 0.0, 1.0]) == 0.0
    assert math.isnan(geometric_mean([]))


def test_aiq_formula() -> None:
    # (0.5^2 * 0.8)^(1/3) = 0.2^(1/3)
    assert aiq(0.5, 0.8) == pytest.approx(0.2 ** (1 / 3))
    assert aiq(0.5, 0.8, beta=1.0) == pytest.approx(math.sqrt(0.4))
    assert aiq(0.3, 0.9, beta=0.0) == pytest.approx(0.9)
    assert aiq(0.0, 0.9) == 0.0
    assert EfficiencyResult({"a": 0.5}, 0.5).aiq(0.8) == pytest.approx(0.2 ** (1 / 3))
    with pytest.raises(ValueError, match="beta"):
        aiq(0.5, 0.8, beta=-1.0)

"""BOPs that follow the graph: a layer's input bits are those of the value that reaches it, traced
with torch.fx through residual sums, concatenations and pooling; execution order where the
model cannot be traced."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qaprune.compress import attach
from qaprune.metrics import measure
from qaprune.metrics.bops import dense_fp32_bops, graph_input_bits, profile, total_bops
from qaprune.models import build_model
from qaprune.quant.activations import QuantInput, QuantReLU
from qaprune.recipe import Recipe


def _formula(m: int, n: int, b_a: int, b_w: int = 32, positions: int = 1) -> float:
    return positions * m * n * (b_a * b_w + b_a + b_w + math.log2(n))


class Branchy(nn.Module):
    """A 16-bit input, a 6-bit path, a residual add of the two, a concatenation of 6- and
    4-bit values, an average-pooled and a max-pooled branch, a batch-normed branch."""

    def __init__(self, *, call_input_quant: bool = True) -> None:
        super().__init__()
        self.input_quant = QuantInput(16, max_value=4.0, signed=True)
        self.call_input_quant = call_input_quant
        self.a = nn.Linear(8, 8)  # reads the 16-bit input
        self.qa = QuantReLU(6)
        self.b = nn.Linear(8, 8)  # reads the 6-bit path
        self.qb = QuantReLU(4)
        self.res = nn.Linear(8, 4)  # reads input + 6-bit path: the wider, 16
        self.cat = nn.Linear(16, 4)  # reads cat(6-bit, 4-bit): 6
        self.avg = nn.Linear(4, 4)  # reads avg_pool(6-bit): float, 32
        self.max = nn.Linear(4, 4)  # reads max_pool(6-bit), flattened: 6
        self.bn = nn.BatchNorm1d(8)
        self.norm = nn.Linear(8, 2)  # reads batchnorm(6-bit): 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.call_input_quant:
            x = self.input_quant(x)
        h = self.qa(self.a(x))
        g = self.qb(self.b(h))
        r = self.res(x + h)
        c = self.cat(torch.cat([h, g], dim=1))
        p = self.avg(F.avg_pool1d(h.unsqueeze(1), 2).flatten(1))
        q = self.max(nn.functional.max_pool1d(h.unsqueeze(1), 2).view(h.shape[0], -1))
        n = self.norm(self.bn(h))
        return torch.cat([r, c, p, q, n], dim=1)


EXPECTED = {"a": 16, "b": 6, "res": 16, "cat": 6, "avg": 32, "max": 6, "norm": 32}
SHAPES = {"a": (8, 8), "b": (8, 8), "res": (4, 8), "cat": (4, 16), "avg": (4, 4), "max": (4, 4), "norm": (2, 8)}


def test_branched_model_bits_and_bops_by_hand() -> None:
    layers = profile(Branchy(), torch.randn(3, 8))
    assert {p.name: p.act_bits for p in layers} == EXPECTED
    assert all(p.act_bits_source == "graph" for p in layers)
    by_hand = sum(_formula(m, n, EXPECTED[name]) for name, (m, n) in SHAPES.items())
    assert total_bops(layers) == pytest.approx(by_hand, rel=1e-12)
    # 8·8·(16·32+16+32+3) + 8·8·(6·32+6+32+3) + 4·8·(16·32+51) + 4·16·(6·32+42) + 4·4·(32·32+66)
    #   + 4·4·(6·32+40) + 2·8·(32·32+67)
    assert by_hand == 36032 + 14912 + 18016 + 14976 + 17440 + 3712 + 17456
    assert dense_fp32_bops(layers) == pytest.approx(sum(_formula(m, n, 32) for m, n in SHAPES.values()))


def test_input_quant_in_a_forward_pre_hook_quantizes_the_input() -> None:
    model = Branchy(call_input_quant=False)
    model.register_forward_pre_hook(lambda mod, args: (mod.input_quant(args[0]), *args[1:]))
    layers = profile(model, torch.randn(3, 8))
    assert {p.name: p.act_bits for p in layers} == EXPECTED


def test_without_input_quantizer_the_input_is_float() -> None:
    model = Branchy(call_input_quant=False)  # input_quant exists but nothing calls it
    model.input_quant = nn.Identity()
    bits = {p.name: p.act_bits for p in profile(model, torch.randn(3, 8))}
    assert bits == EXPECTED | {"a": 32, "res": 32}


def test_shared_layer_counted_per_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = QuantReLU(3)
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.q(self.fc(x)))

    assert graph_input_bits(Twice()) == {"fc": [32, 3]}
    assert [p.act_bits for p in profile(Twice(), torch.randn(2, 4))] == [32, 3]


def test_untraceable_model_falls_back_to_execution_order() -> None:
    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = QuantReLU(5)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = x * 2
            return self.fc(self.q(x))

    (p,) = profile(Branching(), torch.ones(2, 4))
    assert p.act_bits == 5
    assert p.act_bits_source.startswith("execution order: torch.fx could not trace")
    assert p.to_dict()["act_bits_source"] == p.act_bits_source


def test_attached_resnet_shortcut_reads_the_block_input() -> None:
    torch.manual_seed(0)
    model = build_model("resnet8", input_shape=(3, 8, 8), num_classes=4)
    x = torch.randn(4, 3, 8, 8)
    attach(model, Recipe(quant={"weight_bits": 6, "act_bits": 6, "input_bits": 8}), sample=x)
    bits = {p.name: p.act_bits for p in profile(model, x)}
    assert bits["conv1"] == 8  # the quantized input
    assert bits["layer2.shortcut.conv"] == bits["layer2.conv1"] == 6  # both read layer1's output
    assert bits["fc"] == 32  # global average pooling: a float


@pytest.mark.parametrize(
    "name, shape",
    [("mlp", (16,)), ("lenet300", (1, 28, 28)), ("lenet5", (1, 28, 28)), ("lenet5", (1, 8, 8))],
)
def test_sequential_models_keep_execution_order_bits(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, input_shape=shape, num_classes=10)
    x = torch.randn(4, *shape)
    attach(model, Recipe(quant={"weight_bits": 6, "act_bits": 6, "input_bits": 8}), sample=x)
    layers = profile(model, x)
    assert [p.act_bits for p in layers] == [8] + [6] * (len(layers) - 1)
    assert all(p.act_bits_source == "graph" for p in layers)


def test_dense_mlp_total_unchanged_through_measure() -> None:
    model = build_model("mlp", input_shape=(16,), num_classes=5)
    out = measure(model, torch.randn(20, 16), torch.arange(20) % 5, efficiency=False)
    assert out["bops"] == out["bops_fp32_dense"] == 4_652_832.0
    assert [d["act_bits_source"] for d in out["layers"]] == ["graph"] * 4


def test_attached_input_quantizer_of_a_plain_module() -> None:
    class Residual(nn.Module):  # no input_quant slot: attach installs the quantizer itself
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(6, 6)
            self.act = nn.ReLU()
            self.fc2 = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(x + self.act(self.fc1(x)))

    torch.manual_seed(0)
    x = torch.randn(8, 6)
    model = attach(Residual(), Recipe(quant={"weight_bits": 6, "act_bits": 4, "input_bits": 10}), sample=x)
    assert [(p.name, p.act_bits) for p in profile(model, x)] == [("fc1", 10), ("fc2", 10)]  # 10-bit + 4-bit sum

"""Tests of qaprune.quant.fake_quant: quantizer invariants for every supported bit width,
per-tensor and per-channel, straight-through gradients, and Mask → FakeQuant composition."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from qaprune.errors import RecipeError
from qaprune.prune.pruner import Mask
from qaprune.quant.fake_quant import SUPPORTED_BITS, FakeQuant, check_bits, weight_bits

BITS = list(range(2, 17))


def _weight(seed: int = 0, shape: tuple[int, ...] = (6, 400)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    w.view(-1)[::7] = 0.0  # exact zeros must survive
    return w


def _scale_view(fq: FakeQuant, w: torch.Tensor) -> torch.Tensor:
    s = fq.scale(w)
    return s.reshape([-1] + [1] * (w.dim() - 1)) if fq.per_channel else s


def test_supported_bits_are_2_to_16_and_32() -> None:
    assert SUPPORTED_BITS == (*range(2, 17), 32)


@pytest.mark.parametrize("bits", BITS)
def test_per_tensor_levels_and_range(bits: int) -> None:
    w = _weight(bits)
    fq = FakeQuant(bits)
    q = fq(w)
    assert q.shape == w.shape
    assert len(torch.unique(q)) <= 2**bits - 1
    assert fq.scale(w).numel() == 1
    assert float(fq.scale(w)) == pytest.approx(float(w.abs().max()) / (2 ** (bits - 1) - 1), rel=1e-6)


@pytest.mark.parametrize("bits", BITS)
def test_per_channel_levels_per_channel(bits: int) -> None:
    w = _weight(bits)
    w[1] *= 100.0  # channels of very different ranges
    w[2] *= 0.01
    fq = FakeQuant(bits, per_channel=True)
    q = fq(w)
    assert fq.scale(w).shape == (w.shape[0],)
    for c in range(w.shape[0]):
        assert len(torch.unique(q[c])) <= 2**bits - 1
        assert float(q[c].abs().max()) == pytest.approx(float(w[c].abs().max()), rel=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_zeros_and_max_preserved(bits: int, per_channel: bool) -> None:
    w = _weight(100 + bits)
    q = FakeQuant(bits, per_channel=per_channel)(w)
    zeros = w == 0
    assert zeros.sum() > 0
    assert torch.all(q[zeros] == 0)
    assert float(q.abs().max()) == pytest.approx(float(w.abs().max()), rel=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_values_are_integer_multiples_of_scale(bits: int, per_channel: bool) -> None:
    w = _weight(200 + bits)
    fq = FakeQuant(bits, per_channel=per_channel)
    q = fq(w)
    s = _scale_view(fq, w)
    codes = torch.round(q / s)
    qmax = 2 ** (bits - 1) - 1
    assert int(codes.abs().max()) == qmax
    assert torch.equal(codes * s, q)
    # and the nearest level: |q - w| <= s/2 everywhere (w lies inside the range)
    slack = 4 * torch.finfo(torch.float32).eps * float(w.abs().max())
    assert torch.all((q - w).abs() <= s / 2 + slack)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_straight_through_gradient(bits: int, per_channel: bool) -> None:
    """d/dw of Σ s·round(w/s) with s = max|w|/qmax: 1 for every weight (straight through), plus
    the scale's gradient Σ(round(w/s) − w/s)·sign(w_max)/qmax on the largest weight (per row
    when per-channel)."""
    w = _weight(300 + bits, (4, 50)).double().requires_grad_(True)
    FakeQuant(bits, per_channel=per_channel)(w).sum().backward()
    qmax = 2 ** (bits - 1) - 1
    with torch.no_grad():
        rows = w if per_channel else w.reshape(1, -1)
        s = rows.abs().amax(dim=1, keepdim=True) / qmax
        extra = (torch.round(rows / s) - rows / s).sum(dim=1) / qmax
        expected = torch.ones_like(rows)
        top = rows.abs().argmax(dim=1)
        for r, c in enumerate(top.tolist()):
            expected[r, c] += extra[r] * torch.sign(rows[r, c])
    assert torch.allclose(w.grad, expected.reshape(w.shape), atol=1e-9)


def test_two_bits_is_ternary() -> None:
    # qmax = 1, scale = max|w| = 2: codes round(w / 2) in {-1, 0, 1} (half to even: -0.5 -> 0)
    q = FakeQuant(2)(torch.tensor([[-1.0, -0.4, 0.0, 0.3, 0.6, 2.0]]))
    assert q.tolist() == [[0.0, 0.0, 0.0, 0.0, 0.0, 2.0]]
    q2 = FakeQuant(2)(torch.tensor([[-2.0, -1.2, 0.9, 1.1, 2.0]]))
    assert q2.tolist() == [[-2.0, -2.0, 0.0, 2.0, 2.0]]


def test_three_bits_hand_computed() -> None:
    # qmax = 3, scale = 3/3 = 1: round to integers in [-3, 3]
    w = torch.tensor([[-3.0, -1.4, -0.6, 0.2, 1.5, 2.49]])
    assert FakeQuant(3)(w).tolist() == [[-3.0, -1.0, -1.0, 0.0, 2.0, 2.0]]


def test_all_zero_weight_stays_zero() -> None:
    for per_channel in (False, True):
        q = FakeQuant(4, per_channel=per_channel)(torch.zeros(3, 5))
        assert torch.equal(q, torch.zeros(3, 5))


def test_conv_weight_per_channel() -> None:
    w = _weight(7, (4, 3, 3, 3))
    fq = FakeQuant(5, per_channel=True)
    q = fq(w)
    assert fq.scale(w).shape == (4,)
    assert torch.equal(torch.round(q / _scale_view(fq, w)) * _scale_view(fq, w), q)


@pytest.mark.parametrize("bits", [0, 1, 17, 31, 33, 64, -4])
def test_bits_outside_range_refused(bits: int) -> None:
    with pytest.raises(RecipeError, match=r"^bits: "):
        FakeQuant(bits)
    with pytest.raises(RecipeError, match=rf"^weight_bits: {bits} bits is not supported; allowed: 2\.\.16 or 32"):
        check_bits(bits, field="weight_bits")


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_check_bits_accepts_supported(bits: int) -> None:
    assert check_bits(bits, field="x") == bits


def test_weight_bits_of_module() -> None:
    lin = nn.Linear(3, 2)
    assert weight_bits(lin) == 32
    parametrize.register_parametrization(lin, "weight", Mask(lin.weight.shape))
    assert weight_bits(lin) == 32
    parametrize.register_parametrization(lin, "weight", FakeQuant(5))
    assert weight_bits(lin) == 5


# --- Mask composed before FakeQuant on a Linear ---------------------------------------------

def _masked_quant_linear(bits: int = 4, seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(seed)
    lin = nn.Linear(8, 6)
    mask = Mask(lin.weight.shape)
    pruned = torch.rand(lin.weight.shape, generator=torch.Generator().manual_seed(seed)) < 0.5
    mask.mask[pruned] = 0.0
    parametrize.register_parametrization(lin, "weight", mask)
    parametrize.register_parametrization(lin, "weight", FakeQuant(bits))
    return lin, pruned


def test_mask_then_quant_order_and_zeros() -> None:
    lin, pruned = _masked_quant_linear()
    assert [type(p).__name__ for p in lin.parametrizations.weight] == ["Mask", "FakeQuant"]
    assert pruned.any() and (~pruned).any()
    assert torch.all(lin.weight[pruned] == 0)
    assert len(torch.unique(lin.weight)) <= 2**4 - 1


def test_pruned_entries_get_zero_gradient() -> None:
    lin, pruned = _masked_quant_linear()
    x = torch.randn(16, 8)
    lin(x).pow(2).sum().backward()
    grad = lin.parametrizations.weight.original.grad
    assert torch.all(grad[pruned] == 0)
    assert (grad[~pruned] != 0).any()


def test_adam_keeps_pruned_entries_zero() -> None:
    lin, pruned = _masked_quant_linear(bits=3, seed=1)
    latent_before = lin.parametrizations.weight.original.detach().clone()
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    x, y = torch.randn(32, 8), torch.randn(32, 6)
    for _ in range(5):
        opt.zero_grad()
        ((lin(x) - y) ** 2).mean().backward()
        opt.step()
    latent = lin.parametrizations.weight.original.detach()
    assert torch.all(lin.weight[pruned] == 0)
    assert torch.equal(latent[pruned], latent_before[pruned])  # zero gradient: Adam never moves them
    assert not torch.equal(latent[~pruned], latent_before[~pruned])

"""Tests of qaprune.quant.fake_quant: quantizer invariants for every supported bit width,
per-tensor and per-channel, straight-through gradients, Mask → FakeQuant composition, binary
(1-bit) and ternary (2-bit) weights, and the learned-scale (LSQ) ``LearnedFakeQuant``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from qaprune.errors import RecipeError
from qaprune.param import Mask, find
from qaprune.quant.bits import ACT_BITS, SUPPORTED_BITS, check_bits
from qaprune.quant.fake_quant import FakeQuant, LearnedFakeQuant, weight_bits, weight_quantizer

BITS = list(range(2, 17))  # the uniform grids; 1 bit (binary) has tests of its own below


def _weight(seed: int = 0, shape: tuple[int, ...] = (6, 400)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    w.view(-1)[::7] = 0.0  # exact zeros must survive
    return w


def _scale_view(fq: FakeQuant, w: torch.Tensor) -> torch.Tensor:
    s = fq.scale(w)
    return s.reshape([-1] + [1] * (w.dim() - 1)) if fq.per_channel else s


def test_supported_bits_are_1_to_16_and_32_for_weights_2_to_16_for_activations() -> None:
    assert SUPPORTED_BITS == (*range(1, 17), 32)
    assert ACT_BITS == (*range(2, 17), 32)


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


@pytest.mark.parametrize("bits", [0, 17, 31, 33, 64, -4])
def test_bits_outside_range_refused(bits: int) -> None:
    with pytest.raises(RecipeError, match=r"^bits: "):
        FakeQuant(bits)
    with pytest.raises(
        RecipeError, match=rf"^weight_bits: {bits} bits is not supported; allowed: 1\.\.16 or 32 \(float\)$"
    ):
        check_bits(bits, field="weight_bits")


@pytest.mark.parametrize("bits", [0, 1, 17, 33])
def test_activation_bits_outside_range_refused(bits: int) -> None:
    with pytest.raises(
        RecipeError,
        match=rf"^act_bits: {bits} bits is not supported; allowed: 2\.\.16 or 32 "
        r"\(float\); 1 bit is for weights only$",
    ):
        check_bits(bits, field="act_bits", weights=False)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_check_bits_accepts_supported(bits: int) -> None:
    assert check_bits(bits, field="x") == bits
    assert bits == 1 or check_bits(bits, field="x", weights=False) == bits


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


# --- 1 bit: binary sign(w) · α, α = mean|w| of the unpruned weights ------------------------------


@pytest.mark.parametrize("per_channel", [False, True])
def test_binary_has_two_values_plus_minus_mean_abs(per_channel: bool) -> None:
    w = torch.randn(6, 40, generator=torch.Generator().manual_seed(3))
    w[1] *= 50.0
    fq = FakeQuant(1, per_channel=per_channel)
    q = fq(w)
    assert torch.equal(torch.sign(q), torch.sign(w))
    rows = w if per_channel else w.reshape(1, -1)
    alphas = rows.abs().mean(dim=1)
    assert torch.allclose(fq.scale(w), alphas if per_channel else alphas[0])
    for r, a in zip(q if per_channel else q.reshape(1, -1), alphas):
        assert torch.allclose(torch.unique(r), torch.stack([-a, a]))
    assert len(torch.unique(q)) == (2 * w.shape[0] if per_channel else 2)


def test_binary_keeps_exact_zeros_and_ignores_them_in_alpha() -> None:
    w = torch.tensor([[0.0, -1.0, 3.0, 0.0, -2.0]])
    assert FakeQuant(1)(w).tolist() == [[0.0, -2.0, 2.0, 0.0, -2.0]]  # α = 6 / 3 non-zeros


def test_binary_gradient_straight_through_plus_alpha() -> None:
    """Σ α·sign(w): 1 for every weight (straight through) plus the α term
    sign(w_j)/n · Σ_i (sign(w_i) − w_i/α)."""
    w = _weight(11, (3, 30)).double()
    w[w == 0] = 0.5
    w.requires_grad_(True)
    FakeQuant(1)(w).sum().backward()
    with torch.no_grad():
        a = w.abs().mean()
        expected = 1 + torch.sign(w) / w.numel() * (torch.sign(w) - w / a).sum()
    assert torch.allclose(w.grad, expected, atol=1e-12)


def test_binary_conv_per_channel() -> None:
    w = _weight(8, (4, 3, 3, 3))
    w[w == 0] = 0.1
    q = FakeQuant(1, per_channel=True)(w)
    for c in range(4):
        assert torch.allclose(q[c].abs(), w[c].abs().mean().expand_as(q[c]))


def test_binary_with_mask_has_three_values() -> None:
    lin = nn.Linear(8, 6)
    mask = Mask(lin.weight.shape)
    mask.mask[:, ::3] = 0.0
    parametrize.register_parametrization(lin, "weight", mask)
    parametrize.register_parametrization(lin, "weight", FakeQuant(1))
    kept = lin.parametrizations.weight.original[mask.mask == 1]
    alpha = float(kept.abs().mean())
    assert torch.all(lin.weight[mask.mask == 0] == 0)
    assert torch.allclose(torch.unique(lin.weight), torch.tensor([-alpha, 0.0, alpha]))


def test_two_bits_keeps_weights_above_half_max() -> None:
    """Ternary threshold of the max-based scale: |w| > max|w|/2 survives (as ±max), the rest is 0."""
    w = _weight(12, (5, 60))
    q = FakeQuant(2)(w)
    top = float(w.abs().max())
    assert set(torch.unique(q).tolist()) <= {-top, 0.0, top}
    assert torch.equal(q != 0, w.abs() > top / 2)


# --- learned step size (LSQ) ------------------------------------------------------------------


def test_learned_quantizer_is_a_fake_quant() -> None:
    lin = nn.Linear(5, 3)
    fq = weight_quantizer(4, learned=True, weight=lin.weight, per_channel=True)
    parametrize.register_parametrization(lin, "weight", fq)
    assert isinstance(fq, LearnedFakeQuant) and find(lin, "weight", FakeQuant) is fq
    assert weight_bits(lin) == 4 and fq.learned and not FakeQuant(4).learned
    assert any(p is fq.step for p in lin.parameters())
    assert set(lin.state_dict()) == {
        "bias",
        "parametrizations.weight.original",
        "parametrizations.weight.0.step",
    }  # zero point: not state


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_learned_init_max_matches_fixed_quantizer(bits: int, per_channel: bool) -> None:
    w = _weight(20 + bits, (5, 30))
    fixed, learned = (
        FakeQuant(bits, per_channel=per_channel),
        LearnedFakeQuant(bits, weight=w, per_channel=per_channel, init="max"),
    )
    assert learned.scale(w).shape == fixed.scale(w).shape
    assert torch.allclose(learned.scale(w), fixed.scale(w))
    assert torch.allclose(learned(w), fixed(w), atol=1e-6)
    if bits <= 2:  # binary and ternary start from FakeQuant's scale whatever the init
        assert torch.equal(LearnedFakeQuant(bits, weight=w, per_channel=per_channel).step, learned.step)


@pytest.mark.parametrize("per_channel", [False, True])
def test_learned_init_lsq(per_channel: bool) -> None:
    w = _weight(31, (4, 50))
    fq = LearnedFakeQuant(4, weight=w, per_channel=per_channel)  # init="lsq" by default
    mean = w.abs().mean(dim=1) if per_channel else w.abs().mean()
    assert torch.allclose(fq.scale(w), 2 * mean / math.sqrt(7))
    with pytest.raises(RecipeError, match="^init: 'minmax' is unknown; known: max, lsq$"):
        LearnedFakeQuant(4, weight=w, init="minmax")
    with pytest.raises(ValueError, match="pass weight="):
        weight_quantizer(4, learned=True)


def test_learned_gradients_hand_computed_3_bits() -> None:
    """LSQ: inside the range w gets the upstream gradient and s gets (round(v) − v)·g; outside,
    w gets 0 and s gets ±qmax·g; g = 1/sqrt(numel · qmax)."""
    w = torch.tensor([[-2.0, -0.7, 0.2, 0.55, 1.0, 5.0]], requires_grad=True)
    fq = LearnedFakeQuant(3, weight=w, init="max")
    with torch.no_grad():
        fq.step.fill_(0.5)  # range ±1.5; v = w/s = [-4, -1.4, 0.4, 1.1, 2, 10]
    r = torch.arange(1.0, 7.0)
    q = fq(w)
    assert q.tolist() == [[-1.5, -0.5, 0.0, 0.5, 1.0, 1.5]]
    (q * r).sum().backward()
    assert w.grad.tolist() == [[0.0, 2.0, 3.0, 4.0, 5.0, 0.0]]
    g = 1 / math.sqrt(6 * 3)
    assert float(fq.step.grad) == pytest.approx((-3 * 1 + 0.4 * 2 - 0.4 * 3 - 0.1 * 4 + 0 + 3 * 6) * g, rel=1e-5)


def test_learned_binary_gradients_hand_computed() -> None:
    w = torch.tensor([[-2.0, -0.3, 0.2, 0.5, 3.0]], requires_grad=True)
    fq = LearnedFakeQuant(1, weight=w)
    with torch.no_grad():
        fq.step.fill_(1.0)
    r = torch.arange(1.0, 6.0)
    q = fq(w)
    assert q.tolist() == [[-1.0, -1.0, 1.0, 1.0, 1.0]]
    (q * r).sum().backward()
    assert w.grad.tolist() == [[0.0, 2.0, 3.0, 4.0, 0.0]]
    g = 1 / math.sqrt(5)
    assert float(fq.step.grad) == pytest.approx((-1 * 1 - 0.7 * 2 + 0.8 * 3 + 0.5 * 4 + 1 * 5) * g, rel=1e-5)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_learned_scale_and_weights_get_gradients_and_train(bits: int, per_channel: bool) -> None:
    torch.manual_seed(bits)
    lin = nn.Linear(12, 6)
    parametrize.register_parametrization(
        lin, "weight", LearnedFakeQuant(bits, weight=lin.weight, per_channel=per_channel)
    )
    fq = lin.parametrizations.weight[0]
    x, y = torch.randn(64, 12), torch.randn(64, 6)
    before, latent = fq.step.detach().clone(), lin.parametrizations.weight.original
    ((lin(x) - y) ** 2).mean().backward()
    assert fq.step.grad.shape == ((6,) if per_channel else (1,))
    assert torch.isfinite(fq.step.grad).all() and (fq.step.grad != 0).all()
    assert (latent.grad != 0).any()
    torch.optim.SGD(lin.parameters(), lr=0.1).step()
    assert not torch.equal(fq.step.detach(), before)
    assert torch.equal(fq.scale(lin.weight), fq.step.detach().abs().reshape(fq.scale(lin.weight).shape))
    codes = lin.weight / (fq.scale(lin.weight).reshape(-1, 1) if per_channel else fq.scale(lin.weight))
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert int(codes.round().abs().max()) <= max(2 ** (bits - 1) - 1, 1)
    levels = [len(torch.unique(row)) for row in lin.weight] if per_channel else [len(torch.unique(lin.weight))]
    assert max(levels) <= (2 if bits == 1 else 2**bits - 1)

"""Tests of qaprune.quant.activations: QuantReLU levels, clipping and gradient; QuantInput
calibration (signed / unsigned), saturation and its scale buffer."""

from __future__ import annotations

import pytest
import torch

from qaprune.errors import RecipeError
from qaprune.quant.activations import QuantInput, QuantReLU

BITS = list(range(2, 17))


@pytest.mark.parametrize("bits", BITS)
def test_quant_relu_levels_and_clip(bits: int) -> None:
    q = QuantReLU(bits, max_value=4.0)
    x = torch.linspace(-3.0, 7.0, 20001)
    y = q(x)
    assert q.act_bits == bits
    assert len(torch.unique(y)) <= 2**bits
    assert float(y.min()) == 0.0
    assert float(y.max()) == pytest.approx(4.0, rel=1e-6)
    assert torch.all(y[x <= 0] == 0)
    assert torch.all(y[x >= 4.0] == y.max())
    step = 4.0 / (2**bits - 1)
    assert q.step == pytest.approx(step)
    codes = torch.round(y / step)
    assert torch.allclose(codes * step, y, atol=1e-6, rtol=0)
    inside = (x > 0) & (x < 4.0)
    slack = 4 * torch.finfo(torch.float32).eps * 4.0
    assert torch.all((y[inside] - x[inside]).abs() <= step / 2 + slack)


def test_quant_relu_small_bits_saturate_levels() -> None:
    y = QuantReLU(2, max_value=3.0)(torch.linspace(-1.0, 5.0, 1000))
    assert sorted(torch.unique(y).tolist()) == [0.0, 1.0, 2.0, 3.0]


def test_quant_relu_hand_computed() -> None:
    q = QuantReLU(2, max_value=3.0)
    assert q(torch.tensor([-1.0, 0.4, 1.6, 2.4, 9.0])).tolist() == [0.0, 0.0, 2.0, 2.0, 3.0]


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_quant_relu_gradient(bits: int) -> None:
    q = QuantReLU(bits, max_value=2.0)
    x = torch.tensor([-5.0, -1.5, 0.3, 1.0, 1.7, 3.0, 10.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("bits", [1, 17, 0])
def test_quant_relu_refuses_bits(bits: int) -> None:
    with pytest.raises(RecipeError, match=rf"^act_bits: {bits} bits is not supported"):
        QuantReLU(bits)


def test_quant_relu_32_bits_is_not_a_quantizer() -> None:
    # 32 passes the bits check (it means float) but attach never builds a 32-bit QuantReLU
    assert QuantReLU(32).act_bits == 32


def test_quant_input_calibrate_unsigned() -> None:
    x = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    q = QuantInput.calibrate(4, x)
    assert q.signed is False
    assert (q.qmin, q.qmax) == (0, 15)
    assert q.max_value == pytest.approx(4.0)
    assert float(q.scale) == pytest.approx(4.0 / 15)
    y = q(torch.tensor([-1.0, 0.0, 1.0, 4.0, 100.0]))
    assert y[0] == 0.0 and y[1] == 0.0
    assert float(y[2]) == pytest.approx(4 * 4 / 15)  # 1.0 / (4/15) = 3.75 -> code 4
    assert float(y[3]) == pytest.approx(4.0)
    assert float(y[4]) == pytest.approx(4.0)  # saturates


def test_quant_input_calibrate_signed() -> None:
    x = torch.tensor([[-3.0, 1.0], [0.5, 2.0]])
    q = QuantInput.calibrate(4, x)
    assert q.signed is True
    assert (q.qmin, q.qmax) == (-7, 7)
    assert q.max_value == pytest.approx(3.0)
    y = q(torch.tensor([-50.0, -3.0, 0.0, 1.0, 3.0, 50.0]))
    assert float(y[0]) == pytest.approx(-3.0) and float(y[-1]) == pytest.approx(3.0)
    assert float(y[1]) == pytest.approx(-3.0) and float(y[4]) == pytest.approx(3.0)
    assert float(y[2]) == 0.0
    assert float(y[3]) == pytest.approx(round(1.0 / (3 / 7)) * 3 / 7)
    assert len(torch.unique(q(torch.linspace(-10, 10, 10001)))) == 2**4 - 1


def test_quant_input_explicit_max_overrides_data() -> None:
    q = QuantInput.calibrate(8, torch.tensor([0.0, 100.0]), max_value=1.0)
    assert q.signed is False
    assert q.max_value == pytest.approx(1.0)
    assert float(q(torch.tensor([100.0]))) == pytest.approx(1.0)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("signed", [False, True])
def test_quant_input_levels(bits: int, signed: bool) -> None:
    q = QuantInput(bits, max_value=2.0, signed=signed)
    y = q(torch.linspace(-4.0, 4.0, 20001))
    levels = 2**bits - 1 if signed else 2**bits
    assert len(torch.unique(y)) <= levels
    assert float(y.max()) == pytest.approx(2.0, rel=1e-6)
    assert float(y.min()) == (pytest.approx(-2.0, rel=1e-6) if signed else 0.0)


def test_quant_input_scale_is_a_buffer() -> None:
    q = QuantInput.calibrate(6, torch.tensor([0.0, 5.0]))
    state = q.state_dict()
    assert set(state) == {"scale", "zero_point"}
    assert float(state["scale"]) == pytest.approx(5.0 / 63)
    assert list(q.parameters()) == []
    other = QuantInput(6, max_value=1.0, signed=False)
    other.load_state_dict(state)
    assert other.max_value == pytest.approx(5.0)
    x = torch.linspace(0, 6, 101)
    assert torch.equal(other(x), q(x))


def test_quant_input_gradient_straight_through_inside() -> None:
    q = QuantInput(4, max_value=1.0, signed=True)
    x = torch.tensor([-3.0, -0.5, 0.2, 0.9, 3.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_quant_input_refuses_bits_naming_field() -> None:
    with pytest.raises(RecipeError, match=r"^input_bits: 1 bits is not supported"):
        QuantInput(1, max_value=1.0, signed=False)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_learned_quant_relu_matches_fixed_and_trains_its_step(bits: int) -> None:
    x = torch.linspace(-2, 8, 501)
    fixed, learned = QuantReLU(bits, max_value=6.0), QuantReLU(bits, max_value=6.0, learned=True)
    a, b = learned(x), fixed(x)  # x/s vs x·(1/s): exact ties may round to neighbouring levels
    assert float((a - b).abs().max()) <= fixed.step + 1e-6
    assert float(torch.isclose(a, b, atol=1e-6).float().mean()) > 0.98
    learned(x).square().sum().backward()
    assert learned.scale.grad is not None and float(learned.scale.grad.abs()) > 0
    assert learned.max_value == pytest.approx(6.0)


def test_learned_input_scale_is_a_log_domain_parameter_and_the_step_in_the_state_dict() -> None:
    q = QuantInput(4, max_value=1.0, signed=False, learned=True)
    assert "log_scale" in dict(q.named_parameters()) and set(q.state_dict()) == {"scale", "zero_point"}
    assert float(q.state_dict()["scale"]) == pytest.approx(1.0 / 15)  # the step itself, as when fixed
    out = q(torch.tensor([0.0, 0.5, 1.0, 2.0]))
    assert out.tolist()[3] == pytest.approx(1.0)
    out.sum().backward()
    assert q.log_scale.grad is not None
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    before = float(q.scale)
    opt.step()  # Adam's step of ~lr moves log(s): a relative change of ~0.1%, whatever the size of s
    assert abs(float(q.scale) / before - 1) == pytest.approx(1e-3, rel=0.01)
    twin = QuantInput(4, max_value=3.0, signed=False, learned=True)
    twin.load_state_dict(q.state_dict())
    assert float(twin.scale) == pytest.approx(float(q.scale)) and twin.max_value == pytest.approx(q.max_value)

"""Weight quantizers as parametrizations: ``FakeQuant`` (scale from the weights) and
``LearnedFakeQuant`` (LSQ: the scale is a trained parameter). Both are ``FakeQuant``s, so
``find(module, "weight", FakeQuant)``, ``weight_bits`` and the size/BOPs code see either.

Weights are quantized to signed integer codes in ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (narrow range,
so ``2^b - 1`` levels at most and zero is exactly representable) times a scale ``s``, per tensor
or per output channel. With ``FakeQuant`` the scale is ``max|w| / (2^(b-1) - 1)``; the forward is
``s · fake_quantize(w / s, scale=1)`` on PyTorch's native kernel: the weights get its
straight-through gradient, and the scale, which follows the weights at every forward, passes
the LSQ-like gradient ``round(w/s) − w/s`` back to the largest weights (as Brevitas' statistics
scaling does). On UCI Letter this lifts 4-bit QAT from 85.5% to 92.6% accuracy against a
detached scale. ``bits=32`` means float: no parametrization is registered for it.

The two smallest widths:

- ``bits=1``: **binary** weights ``sign(w) · α`` (BinaryConnect / XNOR-Net) with
  ``α = Σ|w| / #(w ≠ 0)`` per tensor or channel, the mean magnitude of the unpruned weights (the
  least-squares α for the codes ``sign(w)``). Exact zeros stay 0 (``sign(0) = 0``), so pruning
  masks compose; an unpruned tensor has exactly two values ``±α`` (per channel: ``±α_c``). The
  gradient is straight through for ``w``, plus ``sign(w) − w/α`` through α, as for the max scale.
- ``bits=2``: **ternary** weights ``{−s, 0, +s}``, simply the narrow 2-bit grid. With the max
  scale ``s = max|w|`` the zero threshold is ``max|w|/2``: harsh for Gaussian weights, but QAT
  moves the weights onto the grid, and after 2-bit training on UCI Letter 38–69% of each layer's
  weights are non-zero (57–87% with a learned scale). TWN's statistics (``s`` = mean of the
  ``|w| > 0.7·mean|w|``) were tried instead and trained worse there (63.9% vs 70.9% accuracy per
  tensor, 65.5% vs 69.5% per channel, 3 seeds). ``LearnedFakeQuant`` learns ``s``, hence the
  threshold.

Bias policy: biases stay float by default (they are added into the wide accumulator, as in
hls4ml and ONNX QDQ, where the bias is a 32-bit integer); ``bias_bits < 32`` fake-quantizes
them per-tensor like a weight (2 bits at least).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qaprune.errors import RecipeError
from qaprune.param import find
from qaprune.quant.bits import FLOAT_BITS, check_bits

EPS = 1e-12
__all__ = ["FakeQuant", "LearnedFakeQuant", "weight_bits", "weight_quantizer"]


def sign_ste(v: Tensor) -> Tensor:
    """``sign(v)`` with the identity gradient (straight through). v (...) -> (...)."""
    return v + (torch.sign(v) - v).detach()


class FakeQuant(nn.Module):
    """Weight fake-quantization parametrization, scale from the weights (max|w| / qmax; mean|w|
    at 1 bit). w (out, ...) -> quantized w, same shape. The base class of every weight
    quantizer: ``bits``, ``per_channel``, ``axis``, ``learned`` and ``scale(w)``.

    Example:
        >>> lin = nn.Linear(4, 3)
        >>> from qaprune.param import place
        >>> _ = place(lin, "weight", FakeQuant(bits=3))
        >>> len(torch.unique(lin.weight)) <= 2 ** 3 - 1
        True
        >>> len(torch.unique(FakeQuant(bits=1)(torch.randn(3, 8))))
        2
    """

    learned = False
    stage = "quant"  # qaprune.param: the last on a weight, quant(share(mask · w))

    def __init__(self, bits: int, *, per_channel: bool = False, axis: int = 0) -> None:
        super().__init__()
        self.bits = check_bits(bits, field="bits")
        self.per_channel, self.axis = per_channel, axis
        self.qmax = max(2 ** (bits - 1) - 1, 1)  # 1 bit: codes ±1 (and 0 for pruned weights)

    def forward(self, w: Tensor) -> Tensor:
        s = self._view(self._scale(w), w)
        q = (
            sign_ste(w / s)
            if self.bits == 1
            else torch.fake_quantize_per_tensor_affine(w / s, 1.0, 0, -self.qmax, self.qmax)
        )
        return q * s

    def _reduce(self, a: Tensor, op: str) -> Tensor:
        """``op`` ("amax" | "sum") of ``a`` over the whole tensor, or per channel (out,)."""
        dims = [d for d in range(a.dim()) if d != self.axis] if self.per_channel else list(range(a.dim()))
        return getattr(a, op)(dim=dims) if dims else a

    def _scale(self, w: Tensor) -> Tensor:
        a = w.abs()
        if self.bits == 1:  # α: mean magnitude of the non-zero (unpruned) weights
            return self._mean_where(a, a > 0)
        return (self._reduce(a, "amax") / self.qmax).clamp_min(EPS)

    def _mean_where(self, a: Tensor, keep: Tensor) -> Tensor:
        """Mean of ``a`` over the entries where ``keep``, per tensor () or per channel (out,)."""
        keep = keep.to(a.dtype)
        return (self._reduce(a * keep, "sum") / self._reduce(keep, "sum").clamp_min(1)).clamp_min(EPS)

    def _channels(self, w: Tensor) -> int:
        return w.shape[self.axis] if self.per_channel else 1

    def _shape(self, w: Tensor) -> list[int]:
        """The shape that broadcasts a () or (out,) scale against ``w``."""
        return [-1 if self.per_channel and d == self.axis else 1 for d in range(w.dim())]

    def _view(self, s: Tensor, w: Tensor) -> Tensor:
        return s.reshape(self._shape(w)) if self.per_channel else s

    @torch.no_grad()
    def scale(self, w: Tensor) -> Tensor:
        """The scale this quantizer uses for ``w``: shape () per-tensor, (out,) per-channel."""
        return self._scale(w)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}, learned={self.learned}"


class LearnedFakeQuant(FakeQuant):
    """LSQ weight quantizer (Esser et al. 2020): the scale ``s`` is an ``nn.Parameter``, trained
    with the weights, with LSQ's gradient scaling ``1/sqrt(numel · qmax)`` (numel per scale).
    Zero point fixed at 0, narrow symmetric range; PyTorch's native learnable fake-quantize
    kernels (per tensor or per channel). At 1 bit: ``s · sign(w)`` with the same LSQ gradients.
    w (out, ...) -> quantized w, same shape; ``weight`` (out, ...) initializes ``s``:
    ``init="lsq"`` (``2 · mean|w| / sqrt(qmax)``, the default) or ``"max"`` (``max|w| / qmax``, as
    ``FakeQuant``); at 1 and 2 bits always ``FakeQuant``'s scale (α = mean|w|; max|w|).
    LSQ's init is the default: in QAT on UCI Letter (3 seeds; 3, 4, 6, 8 bits per tensor, 3 and
    4 per channel) it averaged 91.0% accuracy against 90.8% from the max init and 90.5% for
    ``FakeQuant``, ahead at 3–4 bits and behind at 6 (93.7% vs 94.2% and 94.4%): differences
    within the ±1 point spread between seeds. Under Adam (the recipes' default) the gradient scale
    mostly cancels, as Adam normalizes each parameter's steps; it matters under SGD. A log-domain
    step (as in TQT) trained no better there (4, 6, 8 bits, 2 seeds).

    Example:
        >>> w = torch.randn(3, 8)
        >>> fq = LearnedFakeQuant(4, weight=w, per_channel=True)
        >>> fq(w).sum().backward()
        >>> fq.step.grad.shape, fq.scale(w).shape
        (torch.Size([3]), torch.Size([3]))
    """

    learned = True

    def __init__(
        self, bits: int, *, weight: Tensor, per_channel: bool = False, axis: int = 0, init: str = "lsq"
    ) -> None:
        super().__init__(bits, per_channel=per_channel, axis=axis)
        if init not in ("max", "lsq"):
            raise RecipeError(f"init: {init!r} is unknown; known: max, lsq")
        w = weight.detach()
        s = (
            FakeQuant._scale(self, w)
            if init == "max" or bits <= 2
            else (2 * self._reduce(w.abs(), "sum") / (w.numel() / self._channels(w)) / math.sqrt(self.qmax))
        )
        self.step = nn.Parameter(s.clamp_min(EPS).reshape(-1).clone())
        self.register_buffer("zero_point", torch.zeros_like(self.step), persistent=False)
        self.grad_factor = 1.0 / math.sqrt(w.numel() / self._channels(w) * self.qmax)

    def forward(self, w: Tensor) -> Tensor:
        s, q = self.step.abs().clamp_min(EPS), self.qmax
        if self.bits == 1:
            return _binary_lsq(w, self._view(s, w), self.grad_factor)
        if self.per_channel:
            return torch._fake_quantize_learnable_per_channel_affine(
                w, s, self.zero_point, self.axis, -q, q, self.grad_factor
            )
        return torch._fake_quantize_learnable_per_tensor_affine(w, s, self.zero_point, -q, q, self.grad_factor)

    def _scale(self, w: Tensor) -> Tensor:
        s = self.step.abs().clamp_min(EPS)
        return s if self.per_channel else s.reshape(())


def _binary_lsq(w: Tensor, s: Tensor, g: float) -> Tensor:
    """``s · sign(w)`` with LSQ's gradients for the grid {−1, +1}: w gets 1 inside ``[−s, s]``
    and 0 outside; s gets ``(sign(w) − w/s) · g`` inside and ``±g`` outside."""
    s = s * g + (s - s * g).detach()  # the value of s, the gradient scaled by g
    v = torch.nn.functional.hardtanh(w / s)
    return (v + (torch.sign(v) - v).detach()) * s


def weight_quantizer(
    bits: int,
    *,
    per_channel: bool = False,
    learned: bool = False,
    weight: Tensor | None = None,
    init: str = "lsq",
    axis: int = 0,
) -> FakeQuant:
    """The weight quantizer for ``bits``: ``LearnedFakeQuant`` (needs ``weight``) when
    ``learned``, else ``FakeQuant``.

    Example:
        >>> type(weight_quantizer(4, learned=True, weight=torch.ones(2, 3))).__name__
        'LearnedFakeQuant'
    """
    if not learned:
        return FakeQuant(bits, per_channel=per_channel, axis=axis)
    if weight is None:
        raise ValueError("weight_quantizer: a learned scale is initialized from the weight; pass weight=")
    return LearnedFakeQuant(bits, weight=weight, per_channel=per_channel, axis=axis, init=init)


def weight_bits(module: nn.Module) -> int:
    """Bits of ``module.weight``: those of its ``FakeQuant`` (learned or not), 32 when it has none."""
    fq = find(module, "weight", FakeQuant)
    return fq.bits if fq is not None else FLOAT_BITS

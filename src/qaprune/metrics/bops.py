"""Bit operations (Baskin et al.), MACs and a per-layer profile of any model.

BOPs of one layer with ``n`` inputs per output (fan-in), ``m`` outputs per position, a fraction
``f_p`` of pruned weights, ``b_a``-bit inputs and ``b_w``-bit weights::

    BOPs = positions · m · n · ((1 − f_p)·b_a·b_w + b_a + b_w + log2 n)

Convolutions are counted per output position (``positions = H_out · W_out``); a layer's input has
the bits of the activation quantizer in front of it (32 when there is none). For the 32-bit dense
16→64→32→32→5 MLP with 32-bit inputs this gives 4,652,832.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from qaprune.param import WEIGHT_LAYERS
from qaprune.quant.bits import FLOAT_BITS


def layer_bops(m: int, n: int, *, sparsity: float, act_bits: int, weight_bits: int, positions: int = 1) -> float:
    """BOPs of one layer (see module docstring).

    Example:
        >>> layer_bops(64, 16, sparsity=0.0, act_bits=32, weight_bits=32)
        1118208.0
    """
    per_mac = (1.0 - sparsity) * act_bits * weight_bits + act_bits + weight_bits + math.log2(n)
    return float(positions * m * n * per_mac)


@dataclass
class LayerProfile:
    """What the metrics need to know of one Linear/Conv layer, measured on a sample batch."""

    name: str
    kind: str  # "linear" | "conv"
    m: int  # outputs per position (out features / out channels)
    n: int  # fan-in: inputs per output (in features / in_ch/groups · kh · kw)
    positions: int  # output positions per sample (1 for linear)
    params: int  # weight entries (bias excluded)
    nonzero: int  # non-zero weight entries after masks and quantization
    weight_bits: int
    act_bits: int  # bits of the layer's input
    bias_params: int = 0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.params if self.params else 0.0

    @property
    def macs(self) -> int:
        return self.positions * self.m * self.n

    @property
    def bops(self) -> float:
        return layer_bops(
            self.m,
            self.n,
            sparsity=self.sparsity,
            act_bits=self.act_bits,
            weight_bits=self.weight_bits,
            positions=self.positions,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(sparsity=self.sparsity, macs=self.macs, bops=self.bops)
        return d


def _weight_bits(module: nn.Module) -> int:
    from qaprune.quant.fake_quant import weight_bits

    return weight_bits(module)


def _act_bits(module: nn.Module) -> int | None:
    """Bits of an activation quantizer module, None for modules that are not one."""
    bits = getattr(module, "act_bits", None)
    return int(bits) if bits is not None else None


@torch.no_grad()
def profile(model: nn.Module, sample: torch.Tensor) -> list[LayerProfile]:
    """Profile every Linear/Conv layer of ``model`` by running one batch ``sample`` (N, ...).

    Input bits follow execution order: the last activation quantizer that ran before a layer
    sets its input bits; a weight layer's own output is float (32 bits) until quantized again.

    Example:
        >>> from qaprune.models import build_model
        >>> m = build_model("mlp", input_shape=(16,), num_classes=5)
        >>> sum(p.bops for p in profile(m, torch.zeros(2, 16)))
        4652832.0
    """
    state = {"bits": FLOAT_BITS}
    layers: list[LayerProfile] = []
    hooks = []

    def on_quant(mod, _inp, _out):
        state["bits"] = _act_bits(mod)

    def on_layer(name):
        def hook(mod, _inp, out):
            layers.append(_layer_profile(name, mod, out, state["bits"]))
            state["bits"] = FLOAT_BITS

        return hook

    for name, mod in model.named_modules():
        if _act_bits(mod) is not None:
            hooks.append(mod.register_forward_hook(on_quant))
        elif isinstance(mod, WEIGHT_LAYERS):
            hooks.append(mod.register_forward_hook(on_layer(name)))
    was_training = model.training
    model.eval()
    try:
        model(sample[:1] if sample.shape[0] > 1 else sample)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return layers


def _layer_profile(name: str, mod: nn.Module, out: torch.Tensor, act_bits: int) -> LayerProfile:
    w = mod.weight
    if isinstance(mod, nn.Linear):
        kind, m, n, positions = "linear", mod.out_features, mod.in_features, 1
        positions = int(out[0].numel() // mod.out_features)  # >1 when applied per token
    else:
        kind, m = "conv", mod.out_channels
        n = (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        positions = int(out[0].numel() // mod.out_channels)
    bias = getattr(mod, "bias", None)
    return LayerProfile(
        name=name,
        kind=kind,
        m=m,
        n=n,
        positions=positions,
        params=w.numel(),
        nonzero=int(torch.count_nonzero(w)),
        weight_bits=_weight_bits(mod),
        act_bits=act_bits,
        bias_params=bias.numel() if bias is not None else 0,
    )


def total_bops(layers: list[LayerProfile]) -> float:
    return float(sum(p.bops for p in layers))


def dense_fp32_bops(layers: list[LayerProfile]) -> float:
    """BOPs of the same architecture at 32 bits everywhere, unpruned."""
    return float(
        sum(
            layer_bops(p.m, p.n, sparsity=0.0, act_bits=FLOAT_BITS, weight_bits=FLOAT_BITS, positions=p.positions)
            for p in layers
        )
    )

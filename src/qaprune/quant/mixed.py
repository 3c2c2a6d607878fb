"""Mixed precision, read back: ``bit_widths(model)`` says what each layer of a prepared model got,
and ``relu_producers`` which Linear/Conv feeds each ReLU (how ``layers.fc1.act_bits`` reaches the
ReLU after fc1). The recipe's per-layer rules are applied by ``qaprune.compress.attach``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from qaprune.param import WEIGHT_LAYERS, find
from qaprune.quant.bits import FLOAT_BITS
from qaprune.quant.fake_quant import FakeQuant

RELUS = (nn.ReLU, nn.ReLU6)


def relu_producers(model: nn.Module) -> dict[str, str | None]:
    """Each ReLU's name → the Linear/Conv right before it in module order (None when another
    ReLU or nothing came first).

    Example:
        >>> from qaprune.models import build_model
        >>> relu_producers(build_model("mlp", input_shape=(4,), num_classes=2, hidden=[3]))
        {'act1': 'fc1'}
    """
    out, last = {}, None
    for name, mod in model.named_modules():
        if isinstance(mod, WEIGHT_LAYERS):
            last = name
        elif isinstance(mod, RELUS):
            out[name], last = last, None
    return out


def bit_widths(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per Linear/Conv layer, in module order (``input_quant`` first): ``weight_bits``,
    ``per_channel``, ``weight_scale`` ("max" | "learned" | None for float), ``act_in_bits`` (the
    activation quantizer since the previous layer, 32 if none) and ``act_out_bits`` (the first one
    after it before the next layer, 32 if none).

    Example:
        >>> import torch
        >>> from qaprune.compress import attach
        >>> from qaprune.models import build_model
        >>> from qaprune.recipe import Recipe
        >>> m = attach(build_model("mlp", input_shape=(4,), num_classes=2, hidden=[3]),
        ...            Recipe.parse({"quant": {"weight_bits": 4, "act_bits": 6, "input_bits": 8},
        ...                          "layers": {"fc2": {"weight_bits": 8}}}), sample=torch.rand(5, 4))
        >>> [(n, b["weight_bits"], b["act_in_bits"], b["act_out_bits"]) for n, b in bit_widths(m).items()]
        [('fc1', 4, 8, 6), ('fc2', 8, 6, 32)]
    """
    mods = sorted(model.named_modules(), key=lambda item: item[0].split(".")[-1] != "input_quant")
    out: dict[str, dict[str, Any]] = {}
    act, last = FLOAT_BITS, None
    for name, mod in mods:
        bits = getattr(mod, "act_bits", None)
        if bits is not None:
            act = int(bits)
            if last is not None and out[last]["act_out_bits"] == FLOAT_BITS:
                out[last]["act_out_bits"] = act
        elif isinstance(mod, WEIGHT_LAYERS):
            fq = find(mod, "weight", FakeQuant)
            out[name] = {
                "weight_bits": fq.bits if fq else FLOAT_BITS,
                "per_channel": bool(fq and fq.per_channel),
                "weight_scale": None if fq is None else "learned" if fq.learned else "max",
                "act_in_bits": act,
                "act_out_bits": FLOAT_BITS,
            }
            act, last = FLOAT_BITS, name
    return out

"""Mixed precision: per-layer weight and activation bits from a recipe's ``layers`` patterns,
and ``bit_widths(model)`` to read them back from a prepared model.

How ``attach`` resolves a module's bits (patterns in recipe order, later ones win):

- a Linear/Conv weight: ``layers.<p>.weight_bits`` / ``per_channel`` of the patterns matching
  its name, else ``quant.weight_bits`` / ``quant.per_channel``;
- a ReLU (it becomes a ``QuantReLU``): ``layers.<p>.act_bits`` of the patterns matching its
  own name **or the name of the Linear/Conv right before it** in module order, so
  ``layers.fc1.act_bits`` sets the activation that fc1 feeds; else ``quant.act_bits``.

A bits override whose pattern matches no module it applies to (a typo) is refused naming the
pattern, and a bit width outside the supported range is refused naming the module it would be
used for. ``bit_widths`` shows what each layer got.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from torch import nn

from qaprune.errors import RecipeError
from qaprune.quant.fake_quant import FLOAT_BITS, FakeQuant, find
from qaprune.recipe import Recipe, bits_problem

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
RELUS = (nn.ReLU, nn.ReLU6)


def _last_match(recipe: Recipe, names: tuple[str, ...], field: str) -> tuple[Any, str | None]:
    """The value of ``layers.<p>.<field>`` of the last pattern matching any of ``names``, and p."""
    value, source = None, None
    for pattern, spec in recipe.layers.items():
        v = getattr(spec, field)
        if v is not None and _matches(pattern, names):
            value, source = v, pattern
    return value, source


def _matches(pattern: str, names) -> bool:
    return any(n and fnmatch.fnmatchcase(n, pattern) for n in names)


def _checked(value: int, source: str | None, module: str, field: str) -> int:
    problem = bits_problem(value, weights=field == "weight_bits")
    if problem:
        where = f"layers.{source}" if source is not None else "quant"
        raise RecipeError(f"module {module!r}: recipe.{where}.{field}: {problem}")
    return value


def weight_spec(recipe: Recipe, name: str) -> tuple[int, bool]:
    """(bits, per_channel) of the weight of module ``name``.

    Example:
        >>> weight_spec(Recipe.parse({"quant": {"weight_bits": 6}, "layers": {"fc1": {"weight_bits": 1}}}), "fc1")
        (1, False)
    """
    bits, src = _last_match(recipe, (name,), "weight_bits")
    if bits is None:
        bits = recipe.quant.weight_bits
    per_channel, _ = _last_match(recipe, (name,), "per_channel")
    return _checked(bits, src, name, "weight_bits"), (recipe.quant.per_channel if per_channel is None else per_channel)


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


def act_bits_plan(model: nn.Module, recipe: Recipe) -> dict[str, int]:
    """Bits of every ReLU of ``model`` (32: stays a float ReLU), by name."""
    plan = {}
    for relu, producer in relu_producers(model).items():
        bits, src = _last_match(recipe, (relu, producer), "act_bits")
        plan[relu] = _checked(recipe.quant.act_bits if bits is None else bits, src, relu, "act_bits")
    return plan


def check_patterns(model: nn.Module, recipe: Recipe) -> None:
    """Refuse bits overrides whose pattern matches no module they apply to, naming the pattern:
    ``weight_bits`` / ``per_channel`` need a Linear/Conv, ``act_bits`` a ReLU or a Linear/Conv.
    (``act_bits`` on a layer that no ReLU follows, such as the classifier, changes nothing: its
    output stays float. Searches set it on every layer, so it is not an error.)"""
    layers = [n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]
    relus = list(relu_producers(model))
    for pattern, spec in recipe.layers.items():
        for field in ("weight_bits", "per_channel"):
            if getattr(spec, field) is not None and not _matches(pattern, layers):
                raise RecipeError(
                    f"recipe.layers.{pattern}.{field}: matches no Linear/Conv layer; "
                    f"layers: {', '.join(layers) or 'none'}"
                )
        if spec.act_bits is not None and not _matches(pattern, [*relus, *layers]):
            raise RecipeError(
                f"recipe.layers.{pattern}.act_bits: matches no ReLU nor Linear/Conv layer; "
                f"ReLUs: {', '.join(relus) or 'none'}; layers: {', '.join(layers) or 'none'}"
            )


def bit_widths(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per Linear/Conv layer, in module order (``input_quant`` first): ``weight_bits``,
    ``per_channel``, ``weight_scale`` ("max" | "learned" | None for float), ``act_in_bits`` (the
    activation quantizer since the previous layer, 32 if none) and ``act_out_bits`` (the first one
    after it before the next layer, 32 if none).

    Example:
        >>> import torch
        >>> from qaprune.compress import attach
        >>> from qaprune.models import build_model
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

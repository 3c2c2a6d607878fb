"""prepare → train → convert: ``attach`` puts masks and quantizers on a model, ``bake`` turns
them into plain weights; ``rewind`` resets weights for lottery-ticket training.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torch.nn.utils import parametrize

from qaprune.prune.pruner import add_mask
from qaprune.quant.activations import QuantInput, QuantReLU
from qaprune.quant.fake_quant import FLOAT_BITS, FakeQuant, weight_quantizer
from qaprune.quant.mixed import RELUS, WEIGHT_LAYERS, act_bits_plan, check_patterns, weight_spec
from qaprune.recipe import Recipe


def attach(model: nn.Module, recipe: Recipe, *, sample: Tensor | None = None) -> nn.Module:
    """Prepare ``model`` in place for quantization-aware pruning as ``recipe`` says.

    Every Linear/Conv weight gets ``Mask`` (when it will be pruned) then ``FakeQuant`` (when
    below 32 bits; ``LearnedFakeQuant`` under ``quant.weight_scale: learned``):
    ``weight = quant(mask · w)``. ReLUs become ``QuantReLU``; a module named ``input_quant`` (or,
    failing that, a pre-hook on the model) quantizes the input, calibrated on ``sample`` (N, ...)
    unless ``quant.input_max`` is given. Per-layer bits follow ``quant.mixed`` (``layers.fc1.
    act_bits`` sets the ReLU after fc1); overrides that reach no module are refused.

    Example:
        >>> import torch
        >>> from qaprune.models import build_model
        >>> m = attach(build_model("mlp", input_shape=(16,), num_classes=5),
        ...            Recipe(quant={"weight_bits": 6, "act_bits": 6}, prune={"sparsity": 0.5}),
        ...            sample=torch.randn(8, 16))
        >>> type(m.act1).__name__, [type(p).__name__ for p in m.fc1.parametrizations.weight]
        ('QuantReLU', ['Mask', 'FakeQuant'])
    """
    q, pruning = recipe.quant, recipe.prune.sparsity > 0 or any(o.sparsity for o in recipe.layers.values())
    check_patterns(model, recipe)
    acts = act_bits_plan(model, recipe)  # every bit width is checked before the model changes
    weights = {n: weight_spec(recipe, n) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
    for name, mod in list(model.named_modules()):
        if isinstance(mod, WEIGHT_LAYERS):
            _attach_weight(mod, recipe, name, pruning, *weights[name])
    _replace_relus(model, recipe, acts)
    input_bits = q.input_bits if q.input_bits is not None else q.act_bits
    if input_bits < FLOAT_BITS:
        _attach_input(model, input_bits, sample, q.input_max, learned=q.act_scale == "learned")
    return model


def _attach_weight(mod: nn.Module, recipe: Recipe, name: str, pruning: bool, bits: int, per_channel: bool) -> None:
    over, q = recipe.layer(name), recipe.quant
    if pruning and over.prune is not False and (over.sparsity is None or over.sparsity > 0):
        add_mask(mod)
    if bits < FLOAT_BITS:
        quant = weight_quantizer(bits, per_channel=per_channel, learned=q.weight_scale == "learned", weight=mod.weight)
        parametrize.register_parametrization(mod, "weight", quant.to(mod.weight.device))
    if q.bias_bits < FLOAT_BITS and getattr(mod, "bias", None) is not None:
        parametrize.register_parametrization(mod, "bias", FakeQuant(q.bias_bits))


def _replace_relus(model: nn.Module, recipe: Recipe, plan: dict[str, int]) -> None:
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, RELUS) and plan.get(full, FLOAT_BITS) < FLOAT_BITS:
                top = 6.0 if isinstance(child, nn.ReLU6) else recipe.quant.act_max
                setattr(
                    parent,
                    child_name,
                    QuantReLU(plan[full], max_value=top, learned=recipe.quant.act_scale == "learned"),
                )


def _attach_input(
    model: nn.Module, bits: int, sample: Tensor | None, top: float | None, *, learned: bool = False
) -> None:
    if sample is None and top is None:
        raise ValueError("attach: the input quantizer needs a calibration sample or quant.input_max")
    if sample is None:  # a given range and no data: assume signed inputs
        quant = QuantInput(bits, max_value=top, signed=True, learned=learned)
    else:
        quant = QuantInput.calibrate(bits, sample, max_value=top, learned=learned)
    if isinstance(getattr(model, "input_quant", None), nn.Identity):
        model.input_quant = quant
    elif isinstance(model, nn.Sequential):  # becomes the first stage
        model._modules = OrderedDict([("input_quant", quant), *model._modules.items()])
    else:
        model.add_module("input_quant", quant)
        model.register_forward_pre_hook(lambda mod, args: (mod.input_quant(args[0]), *args[1:]))


def bake(model: nn.Module) -> nn.Module:
    """Turn every parametrization into a plain weight (masked, quantized values), in place.
    Activation quantizers stay: they are part of the model's function."""
    for mod in model.modules():
        names = list(getattr(mod, "parametrizations", {}) or {})
        if names:
            # copy.deepcopy shares the generated Parametrized* class between copies, and removal
            # deletes properties from that class: give this module a class of its own first.
            cls = mod.__class__
            mod.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        for tensor_name in names:
            parametrize.remove_parametrizations(mod, tensor_name, leave_parametrized=True)
    return model


def rewind(model: nn.Module, init_state: dict[str, Tensor]) -> None:
    """Lottery-ticket rewinding: every parameter and buffer back to ``init_state``, masks kept."""
    state = model.state_dict()
    for key, value in init_state.items():
        if key in state and not key.endswith(".mask"):
            state[key] = value
    model.load_state_dict(state)

"""prepare → train → convert: ``attach`` puts masks and quantizers on a model as a recipe says,
``bake`` (``qaprune.param``) turns them into plain weights; ``rewind`` resets weights for
lottery-ticket training.

This is where a recipe meets a model, so the per-layer rules live here:

- a Linear/Conv weight gets a ``Mask`` when the recipe prunes (``prune.sparsity`` > 0, a layer's
  ``sparsity``, or a sparse optimizer, ``train.optimizer: hspg | obproxsg``), unless its
  ``layers.<p>.prune`` is false or its own ``sparsity`` is 0 (``pruned_layers``);
- its bits: ``layers.<p>.weight_bits`` / ``per_channel`` of the patterns matching its name, else
  ``quant.weight_bits`` / ``quant.per_channel`` (``weight_spec``);
- a ReLU (it becomes a ``QuantReLU``): ``layers.<p>.act_bits`` of the patterns matching its own
  name **or the name of the Linear/Conv right before it** in module order, so
  ``layers.fc1.act_bits`` sets the activation that fc1 feeds; else ``quant.act_bits``
  (``act_bits_plan``);
- its number of shared values: ``layers.<p>.clusters``, else ``quant.clusters``
  (``recipe_clusters``).

Patterns apply in recipe order, later ones win. A bits override whose pattern matches no module
it applies to (a typo) is refused naming the pattern; a width outside ``quant.bits`` is refused
naming the module it would be used for.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import weakref
from collections import OrderedDict
from typing import Any, cast

from torch import Tensor, nn
from torch.nn.utils import parametrize

from qaprune.errors import RecipeError
from qaprune.param import add_mask, bake, place, weight_layers
from qaprune.quant.activations import QuantInput, QuantReLU, warn_if_coarse
from qaprune.quant.bits import FLOAT_BITS, check_bits
from qaprune.quant.fake_quant import FakeQuant, weight_quantizer
from qaprune.quant.mixed import RELUS, relu_producers
from qaprune.recipe import SPARSE_OPTIMIZERS, Recipe

__all__ = [
    "act_bits_plan",
    "attach",
    "bake",
    "check_patterns",
    "pruned_layers",
    "quantize_input",
    "recipe_clusters",
    "rewind",
    "weight_spec",
]


def attach(model: nn.Module, recipe: Recipe, *, sample: Tensor | None = None) -> nn.Module:
    """Prepare ``model`` in place for quantization-aware pruning as ``recipe`` says.

    Every Linear/Conv weight gets ``Mask`` (when it will be pruned) then ``FakeQuant`` (when
    below 32 bits; ``LearnedFakeQuant`` under ``quant.weight_scale: learned``):
    ``weight = quant(mask · w)``. ReLUs become ``QuantReLU``; a module named ``input_quant`` (the
    model's own slot, the first stage of a Sequential, or else called by the class
    ``quantize_input`` gives the model) quantizes the input, calibrated on ``sample`` (N, ...)
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
    q = recipe.quant
    check_patterns(model, recipe)
    acts = act_bits_plan(model, recipe)  # every bit width is checked before the model changes
    weights = {n: weight_spec(recipe, n) for n in weight_layers(model)}
    masked = set(pruned_layers(model, recipe))
    for name, mod in weight_layers(model).items():
        _attach_weight(mod, recipe, name in masked, *weights[name])
    _replace_relus(model, recipe, acts)
    input_bits = q.input_bits if q.input_bits is not None else q.act_bits
    if input_bits < FLOAT_BITS:
        _attach_input(
            model, input_bits, sample, q.input_max, learned=q.input_scale == "learned", method=q.input_calibration
        )
    return model


def pruned_layers(model: nn.Module, recipe: Recipe) -> list[str]:
    """The Linear/Conv layers ``attach`` gives a ``Mask``, by name, in module order.

    Example:
        >>> from qaprune.models import build_model
        >>> m = build_model("mlp", input_shape=(16,), num_classes=5)
        >>> pruned_layers(m, Recipe(prune={"sparsity": 0.5}, layers={"fc4": {"prune": False}}))
        ['fc1', 'fc2', 'fc3']
    """
    sparse = recipe.train.optimizer in SPARSE_OPTIMIZERS  # their zeros become masks after each round
    if not (sparse or recipe.prune.sparsity > 0 or any(o.sparsity for o in recipe.layers.values())):
        return []
    out = []
    for name in weight_layers(model):
        over = recipe.layer(name)
        if over.prune is not False and (over.sparsity is None or over.sparsity > 0):
            out.append(name)
    return out


def _attach_weight(mod: nn.Module, recipe: Recipe, masked: bool, bits: int, per_channel: bool) -> None:
    q = recipe.quant
    if masked:
        add_mask(mod)
    if bits < FLOAT_BITS:
        learned = q.weight_scale == "learned"
        place(mod, "weight", weight_quantizer(bits, per_channel=per_channel, learned=learned, weight=mod.weight))
    if q.bias_bits < FLOAT_BITS and getattr(mod, "bias", None) is not None:
        place(mod, "bias", FakeQuant(q.bias_bits))


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
    model: nn.Module,
    bits: int,
    sample: Tensor | None,
    top: float | None,
    *,
    learned: bool = False,
    method: str = "mae",
) -> None:
    """The input quantizer, in this order: into the model's ``input_quant`` slot (an
    ``nn.Identity`` its forward calls, or a quantizer attached before); as the first stage of a
    Sequential; else as a module ``input_quant`` that the model's class calls (``quantize_input``)."""
    if sample is None and top is None:
        raise ValueError("attach: the input quantizer needs a calibration sample or quant.input_max")
    if sample is None:  # a given range and no data: assume signed inputs
        quant = QuantInput(bits, max_value=top, signed=True, learned=learned)
    else:
        quant = QuantInput.calibrate(bits, sample, max_value=top, learned=learned, method=method)
        warn_if_coarse(quant, sample)
    slot = getattr(model, "input_quant", None)
    if isinstance(slot, (nn.Identity, QuantInput)):
        model.input_quant = quant
    elif slot is not None:
        raise RecipeError(
            f"attach: {type(model).__name__}.input_quant is a {type(slot).__name__}; the input quantizer "
            "needs that name (leave it free, or make it an nn.Identity that forward() calls first)"
        )
    elif isinstance(model, nn.Sequential):  # becomes the first stage
        model._modules = OrderedDict([("input_quant", quant), *model._modules.items()])
    else:
        model.add_module("input_quant", quant)
        quantize_input(model)


class InputQuantized:
    """Base of the classes ``quantize_input`` gives models: ``forward`` runs ``self.input_quant``
    on the first input, then the model's own forward. A class rather than a forward pre-hook, so
    that torch.fx, torch.export and the ONNX exporters see the quantizer as a module call."""

    def __reduce_ex__(self, protocol):  # deepcopy and pickle rebuild it from the user's class
        reduced = super().__reduce_ex__(protocol)  # type: ignore[misc]
        cls = type(self)
        if cls.__bases__[0] is not InputQuantized or not isinstance(reduced, tuple):
            return reduced
        return (_new_input_quantized, (cls.__bases__[1],), *reduced[2:])


_QUANTIZED: weakref.WeakKeyDictionary[type[nn.Module], type[nn.Module]] = weakref.WeakKeyDictionary()


def quantize_input(model: nn.Module) -> nn.Module:
    """Give ``model`` (which has a module ``input_quant``) a class of its own, a subclass of its
    class whose forward is ``forward(self.input_quant(x), ...)``; submodule names, state_dict
    keys and ``isinstance`` stay. A model that is itself a parametrized Linear/Conv keeps
    parametrize's class on top, so that removing parametrizations (``bake``) keeps this one.

    Example:
        >>> import torch
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = nn.Linear(2, 1)
        ...     def forward(self, x):
        ...         return self.fc(x)
        >>> net = Net()
        >>> net.input_quant = QuantInput(2, max_value=3.0, signed=False)
        >>> net = quantize_input(net)
        >>> x = torch.tensor([[0.4, 9.0]])
        >>> isinstance(net, Net), type(net).__name__, torch.equal(net(x), net.fc(torch.tensor([[0.0, 3.0]])))
        (True, 'Net', True)
    """
    cls = type(model)
    if isinstance(model, InputQuantized):
        return model
    if parametrize.is_parametrized(model):  # cls is parametrize's Parametrized<base>
        below = _input_quantized_class(cls.__bases__[0])
        model.__class__ = type(cls.__name__, (below,), dict(cls.__dict__))
    else:
        model.__class__ = _input_quantized_class(cls)
    return model


def _input_quantized_class(cls: type[nn.Module]) -> type[nn.Module]:
    """The subclass of ``cls`` with the input quantizer in front of its forward (one per class)."""
    if cls not in _QUANTIZED:
        inner = cls.forward
        params = list(inspect.signature(inner).parameters)
        first = params[1] if len(params) > 1 else None  # the first input's name, after self

        @functools.wraps(inner)  # torch.fx and torch.export read the original signature through it
        def forward(self, *args, **kwargs):
            if args:
                args = (self.input_quant(args[0]), *args[1:])
            elif first in kwargs:
                kwargs[first] = self.input_quant(kwargs[first])
            return inner(self, *args, **kwargs)

        attrs = {"forward": forward, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
        _QUANTIZED[cls] = type(cls.__name__, (InputQuantized, cls), attrs)
    return _QUANTIZED[cls]


def _new_input_quantized(cls: type[nn.Module]) -> nn.Module:
    new = _input_quantized_class(cls)
    return cast(nn.Module, object.__new__(new))


def rewind(model: nn.Module, init_state: dict[str, Tensor]) -> None:
    """Lottery-ticket rewinding: every parameter and buffer back to ``init_state``, masks kept."""
    state = model.state_dict()
    for key, value in init_state.items():
        if key in state and not key.endswith(".mask"):
            state[key] = value
    model.load_state_dict(state)


# --- what the recipe says for one layer ---------------------------------------------------------
def _last_match(recipe: Recipe, names: tuple[str | None, ...], field: str) -> tuple[Any, str | None]:
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
    """``quant.bits``' rule once more at attach time (a recipe built without validation)."""
    where = f"layers.{source}" if source is not None else "quant"
    return check_bits(value, field=f"module {module!r}: recipe.{where}.{field}", weights=field == "weight_bits")


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
    layers = list(weight_layers(model))
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


def cluster_k(recipe: Recipe, name: str) -> int | None:
    """The number of shared values of layer ``name``: its ``layers.<pattern>.clusters`` override,
    else ``quant.clusters``; None: not clustered."""
    over = recipe.layer(name).clusters
    return over if over is not None else recipe.quant.clusters


def recipe_clusters(model: nn.Module, recipe: Recipe) -> dict[str, int]:
    """``{layer: k}`` for every Linear/Conv layer the recipe clusters (``cluster_model``'s k)."""
    ks = {n: cluster_k(recipe, n) for n in weight_layers(model)}
    return {n: k for n, k in ks.items() if k is not None}

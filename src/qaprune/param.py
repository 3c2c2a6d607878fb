"""The ground floor: what sits on a weight, and in which order.

Every change to a tensor of a layer is a small ``torch.nn.utils.parametrize`` parametrization,
and the order in the chain is the meaning::

    weight = quant(share(mask · w))

- stage ``"mask"``: ``Mask`` (sparsity of any structure) on weights, ``ChannelMask`` on biases and
  batch-norm affine parameters (a removed channel);
- stage ``"share"``: weight sharing, ``quant.cluster.Cluster`` and ``quant.unify.Unified``;
- stage ``"quant"``: the fake quantizers of ``quant.fake_quant``.

A parametrization class says its stage in a class attribute ``stage``; ``place`` puts one where
its stage belongs, whatever is on the tensor already (a class without ``stage`` goes last).
``bake`` turns every chain into a plain tensor. Everything else in qaprune builds on this module;
it imports nothing of qaprune but the errors.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import ParametrizationList

from qaprune.errors import RecipeError

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layers whose weights qaprune prunes, shares and quantizes."""

STAGES = ("mask", "share", "quant")
"""The order of the parametrization chain, first applied first."""


class Mask(nn.Module):
    """Sparsity mask parametrization (any structure). w (out, ...) -> w · mask, same shape.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> m = Mask(lin.weight.shape); m.mask[0, 0] = 0
        >>> _ = place(lin, "weight", m)
        >>> lin.weight[0, 0].item() == 0
        True
    """

    stage = "mask"

    mask: Tensor

    def __init__(self, shape: torch.Size | tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(shape))

    def forward(self, w: Tensor) -> Tensor:
        return w * self.mask


class ChannelMask(nn.Module):
    """Per-channel zeroing parametrization for biases and batch-norm affine parameters.
    Not a ``Mask``, so these tensors never count as prunable layers. v (C, ...) -> v · keep.

    Example:
        >>> bn = nn.BatchNorm1d(3); cm = ChannelMask(3); cm.keep[1] = 0
        >>> _ = place(bn, "weight", cm)
        >>> (bn.weight == 0).tolist()
        [False, True, False]
    """

    stage = "mask"

    keep: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("keep", torch.ones(channels))

    def forward(self, v: Tensor) -> Tensor:
        return v * self.keep.reshape(-1, *([1] * (v.dim() - 1)))


def chain(module: nn.Module, tensor_name: str) -> ParametrizationList:
    """The parametrizations on ``module.<tensor_name>`` (it must be parametrized), in order."""
    return cast(ParametrizationList, cast(nn.ModuleDict, module.parametrizations)[tensor_name])


def _rank(p: nn.Module) -> int:
    stage = getattr(p, "stage", None)
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def place(module: nn.Module, tensor_name: str, p: nn.Module) -> nn.Module:
    """Put parametrization ``p`` on ``module.<tensor_name>`` after every one of its stage or an
    earlier one and before the later stages; returns ``p`` (moved to the tensor's device).

    Example:
        >>> lin = nn.Linear(3, 2)
        >>> class Quant(nn.Module):
        ...     stage = "quant"
        ...     def forward(self, w): return w.round()
        >>> _ = place(lin, "weight", Quant()); _ = place(lin, "weight", Mask((2, 3)))
        >>> [type(q).__name__ for q in lin.parametrizations.weight]
        ['Mask', 'Quant']
    """
    tensor = getattr(module, tensor_name)
    p = p.to(tensor.device)
    if not parametrize.is_parametrized(module, tensor_name):
        parametrize.register_parametrization(module, tensor_name, p)
        return p
    on = chain(module, tensor_name)
    at = next((i for i, q in enumerate(on) if _rank(q) > _rank(p)), len(on))
    if at == len(on):
        parametrize.register_parametrization(module, tensor_name, p)
    else:
        on.insert(at, p)
    return p


def find(module: nn.Module, tensor_name: str, kind: type) -> nn.Module | None:
    """The first parametrization of type ``kind`` on ``module.<tensor_name>``, else None."""
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    return next((p for p in chain(module, tensor_name) if isinstance(p, kind)), None)


def add_mask(module: nn.Module) -> Mask:
    """A ``Mask`` (all ones) first on ``module.weight``; refused when it already has one."""
    if get_mask(module) is not None:
        raise RecipeError(f"prune: {type(module).__name__} already carries a Mask")
    mask = Mask(cast(Tensor, module.weight).shape)
    place(module, "weight", mask)
    return mask


def get_mask(module: nn.Module) -> Mask | None:
    """The ``Mask`` on ``module.weight``, None when it has none."""
    found = find(module, "weight", Mask)
    return found if isinstance(found, Mask) else None


def latent_weight(module: nn.Module) -> Tensor:
    """The trained float weight under all parametrizations."""
    if parametrize.is_parametrized(module, "weight"):
        return cast(Tensor, chain(module, "weight").original)
    return cast(Tensor, module.weight)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers that carry a ``Mask``, by name, in module order."""
    return {n: m for n, m in model.named_modules() if get_mask(m) is not None}


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear/Conv layer (``WEIGHT_LAYERS``), by name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}


def bake(model: nn.Module) -> nn.Module:
    """Turn every parametrization into a plain tensor (masked, shared, quantized values), in
    place. Activation quantizers stay: they are modules, part of the model's function.

    Example:
        >>> lin = nn.Linear(2, 2); m = place(lin, "weight", Mask((2, 2))); m.mask[0] = 0
        >>> b = bake(lin)
        >>> parametrize.is_parametrized(b), (b.weight[0] == 0).tolist()
        (False, [True, True])
    """
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

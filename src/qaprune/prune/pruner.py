"""The ``Mask`` parametrization and ``prune_to``: criterion → allocation → structure → mask.

A mask sits first on a weight, before any quantizer: ``weight = quant(mask · w)``; a pruned
entry is exactly zero after quantization (zero is a quantization level) and gets no gradient.
Masks only grow: an entry pruned once stays pruned.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from qaprune.errors import RecipeError
from qaprune.prune.criteria import CRITERIA, LayerStats, lamp
from qaprune.prune.structures import STRUCTURES

ALLOCATIONS = ("global", "uniform", "lamp")


class Mask(nn.Module):
    """Sparsity mask parametrization (any structure). w (out, ...) -> w · mask, same shape.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> m = Mask(lin.weight.shape); m.mask[0, 0] = 0
        >>> _ = parametrize.register_parametrization(lin, "weight", m)
        >>> lin.weight[0, 0].item() == 0
        True
    """

    def __init__(self, shape: torch.Size | tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(shape))

    def forward(self, w: Tensor) -> Tensor:
        return w * self.mask


def add_mask(module: nn.Module) -> Mask:
    """Register a ``Mask`` on ``module.weight``; it must come before any other parametrization."""
    if parametrize.is_parametrized(module, "weight"):
        raise RecipeError("prune: a mask must be registered before quantizers (attach does this)")
    mask = Mask(module.weight.shape).to(module.weight.device)
    parametrize.register_parametrization(module, "weight", mask)
    return mask


def get_mask(module: nn.Module) -> Mask | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    first = module.parametrizations["weight"][0]
    return first if isinstance(first, Mask) else None


def latent_weight(module: nn.Module) -> Tensor:
    """The trained float weight under all parametrizations."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original
    return module.weight


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers that carry a ``Mask``, by name, in module order."""
    return {n: m for n, m in model.named_modules() if get_mask(m) is not None}


@torch.no_grad()
def current_sparsity(model: nn.Module) -> float:
    """Fraction of masked-out entries over all prunable layers."""
    masks = [get_mask(m).mask for m in prunable_layers(model).values()]
    total = sum(m.numel() for m in masks)
    return float(sum((m == 0).sum() for m in masks) / total) if total else 0.0


@torch.no_grad()
def prune_to(
    model: nn.Module,
    sparsity: float,
    *,
    criterion: str = "magnitude",
    structure: str = "unstructured",
    allocation: str = "global",
    fixed: dict[str, float] | None = None,
    stats: dict[str, LayerStats] | None = None,
    generator: torch.Generator | None = None,
    structure_args: dict | None = None,
    layer_args: dict[str, dict] | None = None,
    example_input: Tensor | None = None,
) -> dict[str, float]:
    """Prune every prunable layer of ``model`` so that the free layers reach ``sparsity``.

    ``allocation``: "global" ranks all free layers' scores together, "uniform" gives each free
    layer the same sparsity, "lamp" ranks the LAMP-normalized scores of the free layers together
    (s² / Σ of the layer's s_j² with s_j ≥ s: scale-free, the layer's top score is 1); layers in
    ``fixed`` (name → sparsity) get exactly theirs. The allocation fixes each layer's target;
    the structure (with ``structure_args``) picks the pattern. A structure that refuses a
    layer raises a ``RecipeError`` naming it, before any mask changes.
    Returns the achieved sparsity of every layer.
    """
    if allocation not in ALLOCATIONS:
        raise RecipeError(f"recipe.prune.allocation: {allocation!r}; allowed: {', '.join(ALLOCATIONS)}")
    score_fn = CRITERIA.get(criterion)
    STRUCTURES.get(structure)  # an unknown name fails before any work
    if structure == "channels" and example_input is not None:
        from qaprune.prune.channels import prune_channels

        return prune_channels(
            model,
            sparsity,
            example_input=example_input,
            criterion=criterion,
            allocation=allocation,
            fixed=fixed,
            stats=stats,
            generator=generator,
            structure_args=structure_args,
            layer_args=layer_args,
        )
    layers, fixed, stats = prunable_layers(model), fixed or {}, stats or {}
    scores = {}
    for name, mod in layers.items():
        mask = get_mask(mod).mask
        st = stats.get(name) or LayerStats(name=name, generator=generator)
        s = score_fn(latent_weight(mod) * mask, st).to(mask.dtype)
        scores[name] = s.masked_fill(mask == 0, float("-inf"))  # pruned stays pruned
    targets = {n: fixed[n] for n in layers if n in fixed}
    free = [n for n in layers if n not in fixed]
    targets.update(_allocate({n: scores[n] for n in free}, sparsity, allocation))
    args = {n: {**(structure_args or {}), **(layer_args or {}).get(n, {})} for n in layers}
    new = {
        name: _structure_mask(structure, name, scores[name], targets[name], args[name]) * get_mask(mod).mask
        for name, mod in layers.items()
    }
    achieved = {}
    for name, mod in layers.items():  # only once every layer's mask was computed
        get_mask(mod).mask.copy_(new[name])
        achieved[name] = float((new[name] == 0).sum()) / new[name].numel()
    return achieved


def _structure_mask(structure: str, layer: str, scores: Tensor, sparsity: float, args: dict) -> Tensor:
    """The structure's mask; a shape or argument it refuses becomes a RecipeError naming the layer."""
    try:
        return STRUCTURES.get(structure)(scores, sparsity, **args)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"prune.structure {structure}: layer {layer!r}: {exc}") from exc


def _lamp_scores(scores: Tensor) -> Tensor:
    """criteria.lamp of a layer's scores; entries pruned earlier (-inf) stay -inf."""
    pruned = scores == float("-inf")
    return lamp(scores.masked_fill(pruned, 0.0), LayerStats()).masked_fill(pruned, float("-inf"))


def _allocate(scores: dict[str, Tensor], sparsity: float, allocation: str) -> dict[str, float]:
    if not scores or allocation == "uniform":
        return {n: sparsity for n in scores}
    if allocation == "lamp":
        scores = {n: _lamp_scores(s) for n, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    n_prune = int(round(sparsity * flat.numel()))
    pruned = torch.zeros(flat.numel(), dtype=torch.bool)
    if n_prune:
        pruned[torch.topk(flat, n_prune, largest=False, sorted=False).indices] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = float(pruned[start : start + s.numel()].sum()) / s.numel()
        start += s.numel()
    return out

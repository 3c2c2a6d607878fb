"""``prune_to``: criterion → allocation → structure → mask, for every prunable layer at once.

A ``Mask`` (``qaprune.param``) sits first on a weight, before any quantizer: ``weight =
quant(mask · w)``; a pruned entry is exactly zero after quantization (zero is a quantization
level) and gets no gradient. Masks only grow: an entry pruned once stays pruned.

Structures that act on channel groups (``groups = True`` on the structure, as ``channels``)
prune whole dependency groups when ``prune_to`` is given an ``example_input`` the model accepts
(``qaprune.prune.channels``); without one they mask each layer's rows alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qaprune.param import get_mask, latent_weight, prunable_layers
from qaprune.prune.allocation import allocate
from qaprune.prune.criteria import CRITERIA, LayerStats
from qaprune.prune.structures import STRUCTURES, acts_on_groups, structure_mask


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

    ``allocation`` (``prune.allocation.ALLOCATIONS``: global, uniform, lamp) spreads
    ``sparsity`` over the free layers; layers in ``fixed`` (name → sparsity) get exactly theirs.
    The allocation fixes each layer's target; the structure (with ``structure_args``, per layer
    ``layer_args[name]``) picks the pattern. A structure that refuses a layer raises a
    ``RecipeError`` naming it, before any mask changes. example_input (N, ...): a batch the
    model accepts, for structures that act on channel groups (ignored by the others).
    Returns the achieved sparsity of every layer.

    Example:
        >>> from qaprune.param import add_mask
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)); _ = add_mask(m[0])
        >>> prune_to(m, 0.5)
        {'0': 0.5}
    """
    score_fn = CRITERIA.get(criterion)
    if acts_on_groups(STRUCTURES.get(structure)) and example_input is not None:
        from qaprune.prune.channels import prune_groups

        return prune_groups(
            model,
            sparsity,
            example_input=example_input,
            structure=structure,
            criterion=criterion,
            allocation=allocation,
            fixed=fixed,
            stats=stats,
            generator=generator,
            structure_args=structure_args,
            layer_args=layer_args,
        )
    layers, stats = prunable_layers(model), stats or {}
    scores = {}
    for name, mod in layers.items():
        mask = get_mask(mod).mask
        st = stats.get(name) or LayerStats(name=name, generator=generator)
        s = score_fn(latent_weight(mod) * mask, st).to(mask.dtype)
        scores[name] = s.masked_fill(mask == 0, float("-inf"))  # pruned stays pruned
    targets = allocate(scores, sparsity, allocation=allocation, fixed=fixed)
    args = {n: {**(structure_args or {}), **(layer_args or {}).get(n, {})} for n in layers}
    new = {
        name: structure_mask(structure, name, scores[name], targets[name], args[name]) * get_mask(mod).mask
        for name, mod in layers.items()
    }
    achieved = {}
    for name, mod in layers.items():  # only once every layer's mask was computed
        get_mask(mod).mask.copy_(new[name])
        achieved[name] = float((new[name] == 0).sum()) / new[name].numel()
    return achieved

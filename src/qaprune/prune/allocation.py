"""Allocation: how much of a target sparsity each layer, or each channel group, gets.

One implementation for weights and channel groups alike. A *unit* is a layer (its scores are
the weight's entries) or a channel group (its scores are the group's channels); an entry scored
``-inf`` was pruned earlier and counts as pruned. ``allocate`` gives every unit the fraction of
its entries to prune: units in ``fixed`` (per-layer sparsities of a recipe) get exactly theirs,
the free units share ``sparsity`` as the named allocation says:

- ``uniform``: every free unit the same fraction;
- ``global``: one threshold over the scores of all free units together;
- ``lamp``: one threshold over LAMP-normalized scores (Lee et al. 2021: each unit's scores
  divided as ``s² / Σ_{s_j ≥ s} s_j²``, so the top of every unit is 1 whatever its scale).

An allocation is ``fn(scores: dict[name, Tensor], sparsity) -> dict[name, fraction]``; the
fraction times a unit's size is a whole number of entries (``global`` and ``lamp`` count them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qaprune.errors import RecipeError
from qaprune.prune.criteria import LayerStats, lamp
from qaprune.registry import Registry

ALLOCATIONS: Registry = Registry("allocation")
_NEG_INF = float("-inf")


@ALLOCATIONS.register("uniform")
def uniform(scores: dict[str, Tensor], sparsity: float) -> dict[str, float]:
    """Every unit ``sparsity``.

    Example:
        >>> uniform({"a": torch.ones(4), "b": torch.ones(8)}, 0.5)
        {'a': 0.5, 'b': 0.5}
    """
    return {name: sparsity for name in scores}


@ALLOCATIONS.register("global")
def global_threshold(scores: dict[str, Tensor], sparsity: float) -> dict[str, float]:
    """Prune the ``round(sparsity · total)`` lowest scores over all units (earlier-pruned ``-inf``
    entries first); each unit's fraction is what fell below the threshold.

    Example:
        >>> global_threshold({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, 4.0, 0.5, 5.0])}, 0.5)
        {'a': 1.0, 'b': 0.25}
    """
    if not scores:
        return {}
    flat = torch.cat([s.detach().flatten().float().cpu() for s in scores.values()])
    n_prune = int(round(sparsity * flat.numel()))
    pruned = torch.zeros(flat.numel(), dtype=torch.bool)
    if n_prune:
        pruned[torch.topk(flat, n_prune, largest=False, sorted=False).indices] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = float(pruned[start : start + s.numel()].sum()) / max(s.numel(), 1)
        start += s.numel()
    return out


@ALLOCATIONS.register("lamp")
def lamp_threshold(scores: dict[str, Tensor], sparsity: float) -> dict[str, float]:
    """``global`` over the LAMP-normalized scores of each unit (scale-free across units).

    Example:
        >>> lamp_threshold({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([30.0, 40.0, 5.0, 50.0])}, 0.5)
        {'a': 0.5, 'b': 0.5}
    """
    return global_threshold({name: lamp_normalized(s) for name, s in scores.items()}, sparsity)


def lamp_normalized(scores: Tensor) -> Tensor:
    """``criteria.lamp`` of a unit's scores; entries pruned earlier (-inf) stay -inf."""
    pruned = scores == _NEG_INF
    return lamp(scores.masked_fill(pruned, 0.0), LayerStats()).masked_fill(pruned, _NEG_INF)


def allocate(
    scores: dict[str, Tensor], sparsity: float, *, allocation: str = "global", fixed: dict[str, float] | None = None
) -> dict[str, float]:
    """The fraction of entries to prune in every unit of ``scores`` (name -> scores, any shape).
    Units in ``fixed`` (name -> sparsity) get theirs; the others share ``sparsity`` by
    ``allocation`` (a name in ``ALLOCATIONS``).

    Example:
        >>> s = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, 4.0, 0.5, 5.0])}
        >>> allocate(s, 0.5, allocation="global", fixed={"a": 0.0})
        {'a': 0.0, 'b': 0.5}
    """
    if allocation not in ALLOCATIONS:
        raise RecipeError(f"recipe.prune.allocation: {allocation!r}; allowed: {', '.join(ALLOCATIONS.names())}")
    fixed = fixed or {}
    out = {name: fixed[name] for name in scores if name in fixed}
    free = {name: s for name, s in scores.items() if name not in fixed}
    out.update(ALLOCATIONS.get(allocation)(free, sparsity))
    return {name: out[name] for name in scores}

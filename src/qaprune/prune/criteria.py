"""Pruning criteria: ``scores = criterion(weight, stats)``; higher means keep.

A criterion only scores. Data it needs (gradients, activations, …) arrives in ``stats``,
collected by hooks, never by reaching into the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from qaprune.registry import Registry

CRITERIA: Registry = Registry("criterion")


@dataclass
class LayerStats:
    """Data-dependent statistics of one layer (all optional; criteria say what they need)."""

    name: str = ""
    grad: Tensor | None = None            # accumulated ∂L/∂w, same shape as the weight
    extra: dict[str, Tensor] = field(default_factory=dict)
    generator: torch.Generator | None = None


@CRITERIA.register("magnitude")
def magnitude(weight: Tensor, stats: LayerStats) -> Tensor:
    """|w|: higher means keep. weight (out, ...) -> scores, same shape."""
    return weight.abs()


@CRITERIA.register("l2")
def l2(weight: Tensor, stats: LayerStats) -> Tensor:
    """w²: the same ranking as magnitude within a layer, a different one across layers."""
    return weight.square()


@CRITERIA.register("random")
def random(weight: Tensor, stats: LayerStats) -> Tensor:
    """Uniform random scores: the baseline every criterion must beat."""
    return torch.rand(weight.shape, generator=stats.generator, dtype=weight.dtype)


@CRITERIA.register("lamp")
def lamp(weight: Tensor, stats: LayerStats) -> Tensor:
    """LAMP (Lee et al. 2021): w_i² / Σ_{j: |w_j| ≥ |w_i|} w_j², within the layer.

    Scores are comparable across layers, so a global threshold gives a layer-adaptive
    allocation that is blind to each layer's weight scale (which batch norm makes arbitrary).
    weight (out, ...) -> scores, same shape; the largest weight of a layer scores 1.

    Example:
        >>> lamp(torch.tensor([1.0, 2.0, 3.0]), LayerStats()).tolist()
        [0.0714285746216774, 0.3076923191547394, 1.0]
    """
    sq = weight.detach().flatten().square()
    order = torch.argsort(sq, descending=True)
    tail = torch.cumsum(sq[order], 0)  # Σ of squares of all weights at least as large
    scores = torch.empty_like(sq)
    scores[order] = sq[order] / tail.clamp_min(torch.finfo(sq.dtype).tiny)
    return scores.view_as(weight)

"""Structures turn scores into a mask: ``mask = structure(scores, sparsity, **args)``.

A structure decides the pattern only; how much to prune comes from the schedule and the
allocation across layers.
"""
from __future__ import annotations

import torch
from torch import Tensor

from qaprune.registry import Registry

STRUCTURES: Registry = Registry("structure")


@STRUCTURES.register("unstructured")
def unstructured(scores: Tensor, sparsity: float) -> Tensor:
    """Keep the ``round((1 − sparsity)·numel)`` highest scores; ties broken by position.
    scores (out, ...) -> float mask of 0/1, same shape.

    Example:
        >>> unstructured(torch.tensor([3.0, 1.0, 2.0, 0.5]), 0.5).tolist()
        [1.0, 0.0, 1.0, 0.0]
    """
    n = scores.numel()
    keep = n - int(round(sparsity * n))
    mask = torch.zeros(n, dtype=scores.dtype, device=scores.device)
    if keep > 0:
        idx = torch.topk(scores.flatten(), keep, sorted=False).indices
        mask[idx] = 1.0
    return mask.view_as(scores)

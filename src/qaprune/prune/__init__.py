"""Pruning: criteria score, structures turn scores into masks, schedules say how much when."""

from qaprune.param import Mask, prunable_layers
from qaprune.prune.criteria import CRITERIA, LayerStats
from qaprune.prune.pruner import current_sparsity, prune_to
from qaprune.prune.schedules import SCHEDULES
from qaprune.prune.structures import STRUCTURES

__all__ = [
    "CRITERIA",
    "STRUCTURES",
    "SCHEDULES",
    "LayerStats",
    "Mask",
    "prune_to",
    "prunable_layers",
    "current_sparsity",
]

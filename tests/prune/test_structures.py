"""Tests of qaprune.prune.structures: every structure yields a 0/1 mask of the scores' shape;
unstructured achieves round(s·n)/n and keeps the largest scores."""

from __future__ import annotations

import pytest
import torch

from qaprune.prune.structures import STRUCTURES

SHAPES = [(10,), (7, 3), (8, 16), (4, 3, 3, 3), (33, 31)]
SPARSITIES = [0.0, 0.1, 0.25, 0.5, 0.77, 0.9, 0.99]


@pytest.mark.parametrize("name", STRUCTURES.names())
@pytest.mark.parametrize("shape", SHAPES)
def test_every_structure_gives_binary_mask(name: str, shape: tuple[int, ...]) -> None:
    """A 0/1 mask of the scores' shape, or a ValueError for a shape the structure refuses
    (nm: inputs not divisible by m, periodic: no kernel dims, ...)."""
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    try:
        mask = STRUCTURES.get(name)(scores, 0.5)
    except ValueError as exc:
        assert str(exc) and name != "unstructured"
        return
    assert mask.shape == scores.shape
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", STRUCTURES.names())
def test_every_structure_zero_sparsity_keeps_all(name: str) -> None:
    scores = torch.rand(8, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(STRUCTURES.get(name)(scores, 0.0), torch.ones(8, 4, 3, 3))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_unstructured_achieved_sparsity(shape: tuple[int, ...], sparsity: float) -> None:
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    mask = STRUCTURES.get("unstructured")(scores, sparsity)
    n = scores.numel()
    achieved = float((mask == 0).sum()) / n
    assert achieved == round(sparsity * n) / n


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_unstructured_keeps_largest(sparsity: float) -> None:
    scores = torch.randn(12, 9, generator=torch.Generator().manual_seed(3))
    mask = STRUCTURES.get("unstructured")(scores, sparsity)
    kept, dropped = scores[mask == 1], scores[mask == 0]
    if kept.numel() and dropped.numel():
        assert float(kept.min()) >= float(dropped.max())
    keep = scores.numel() - round(sparsity * scores.numel())
    assert int(mask.sum()) == keep
    assert set(kept.tolist()) == set(torch.topk(scores.flatten(), keep).values.tolist())


def test_unstructured_hand_computed() -> None:
    mask = STRUCTURES.get("unstructured")(torch.tensor([[3.0, 1.0], [2.0, 0.5]]), 0.5)
    assert mask.tolist() == [[1.0, 0.0], [1.0, 0.0]]
    mask = STRUCTURES.get("unstructured")(torch.tensor([5.0, -1.0, 4.0, 0.0, 2.0]), 0.6)
    assert mask.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]


def test_unstructured_minus_inf_scores_pruned_first() -> None:
    scores = torch.tensor([float("-inf"), 0.1, 0.2, float("-inf")])
    assert STRUCTURES.get("unstructured")(scores, 0.5).tolist() == [0.0, 1.0, 1.0, 0.0]


def test_unstructured_everything_pruned_near_one() -> None:
    mask = STRUCTURES.get("unstructured")(torch.rand(4), 0.99)
    assert mask.sum() == 0

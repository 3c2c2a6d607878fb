"""Tests of qaprune.prune.criteria: every criterion scores with the weight's shape; magnitude
and l2 against hand-computed values; random is reproducible with a seeded generator."""

from __future__ import annotations

import pytest
import torch

from qaprune.prune.criteria import CRITERIA, LayerStats

W = torch.tensor([[1.5, -2.0, 0.0], [-0.5, 3.0, -1.0]])


def test_registry_has_the_basic_criteria() -> None:
    assert {"magnitude", "l2", "random"} <= set(CRITERIA.names())


@pytest.mark.parametrize("name", CRITERIA.names())
@pytest.mark.parametrize("shape", [(5,), (4, 3), (6, 3, 3, 3)])
def test_every_criterion_returns_weight_shape(name: str, shape: tuple[int, ...]) -> None:
    if CRITERIA.get(name).needs - {"grad"}:
        pytest.skip("needs collected stats: covered by test_criteria_data.py")
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    st = LayerStats(name="layer", grad=torch.randn(shape), generator=torch.Generator().manual_seed(1))
    scores = CRITERIA.get(name)(w, st)
    assert scores.shape == w.shape
    assert scores.dtype == w.dtype
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", CRITERIA.names())
def test_every_criterion_does_not_modify_weight(name: str) -> None:
    if CRITERIA.get(name).needs - {"grad"}:
        pytest.skip("needs collected stats: covered by test_criteria_data.py")
    w = W.clone()
    CRITERIA.get(name)(w, LayerStats(grad=torch.ones_like(w), generator=torch.Generator().manual_seed(0)))
    assert torch.equal(w, W)


def test_magnitude_hand_computed() -> None:
    assert CRITERIA.get("magnitude")(W, LayerStats()).tolist() == [[1.5, 2.0, 0.0], [0.5, 3.0, 1.0]]


def test_l2_hand_computed() -> None:
    assert CRITERIA.get("l2")(W, LayerStats()).tolist() == [[2.25, 4.0, 0.0], [0.25, 9.0, 1.0]]


def test_l2_ranks_like_magnitude_within_a_layer() -> None:
    w = torch.randn(50, generator=torch.Generator().manual_seed(3))
    mag, sq = CRITERIA.get("magnitude")(w, LayerStats()), CRITERIA.get("l2")(w, LayerStats())
    assert torch.equal(torch.argsort(mag), torch.argsort(sq))


def test_lamp_hand_computed() -> None:
    if "lamp" not in CRITERIA:
        pytest.skip("no lamp criterion registered")
    fn = CRITERIA.get("lamp")
    # squares 1, 4, 9: scores 1/(1+4+9), 4/(4+9), 9/9
    assert fn(torch.tensor([1.0, 2.0, 3.0]), LayerStats()).tolist() == pytest.approx([1 / 14, 4 / 13, 1.0])
    # W: squares 2.25, 4, 0, 0.25, 9, 1 -> sorted 9, 4, 2.25, 1, 0.25, 0; tails 9, 13, 15.25, 16.25, 16.5, 16.5
    expected = [[2.25 / 15.25, 4 / 13, 0.0], [0.25 / 16.5, 1.0, 1 / 16.25]]
    assert fn(W, LayerStats()).tolist() == [pytest.approx(row) for row in expected]
    # layer-scale invariant: multiplying a layer by a constant leaves its scores unchanged
    assert torch.allclose(fn(W * 37.0, LayerStats()), fn(W, LayerStats()))


def test_random_reproducible_with_seeded_generator() -> None:
    fn = CRITERIA.get("random")
    a = fn(W, LayerStats(generator=torch.Generator().manual_seed(42)))
    b = fn(W, LayerStats(generator=torch.Generator().manual_seed(42)))
    c = fn(W, LayerStats(generator=torch.Generator().manual_seed(43)))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) < 1.0
    assert torch.equal(a, torch.rand(W.shape, generator=torch.Generator().manual_seed(42)))


def test_random_ignores_weight_values() -> None:
    fn = CRITERIA.get("random")
    a = fn(W, LayerStats(generator=torch.Generator().manual_seed(7)))
    b = fn(W * 100, LayerStats(generator=torch.Generator().manual_seed(7)))
    assert torch.equal(a, b)

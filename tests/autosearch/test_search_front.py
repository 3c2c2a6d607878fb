"""Pareto fronts, hypervolumes and the sparsity bisection, against hand-computed numbers."""

from __future__ import annotations

import itertools
import random

import pytest

from qaprune.autosearch.bound import next_point
from qaprune.autosearch.front import best_so_far, dominates, hypervolume, hypervolume_curve, losses, non_dominated


def test_non_dominated_and_losses():
    pts = [[1.0, 5.0], [2.0, 2.0], [3.0, 3.0], [4.0, 1.0], [2.0, 2.0]]
    assert non_dominated(pts) == [0, 1, 3, 4]  # equal points are both kept
    assert losses([0.9, 100.0], ["maximize", "minimize"]) == [-0.9, 100.0]
    assert dominates([1, 1], [1, 2]) and not dominates([1, 2], [1, 2])


def test_hypervolume_2d_and_3d_by_hand():
    # union of [1,5]x[5,6], [2,5]x[2,6], [4,5]x[1,6]: 1*1 + 3*3 + 4*1
    assert hypervolume([[1.0, 5.0], [2.0, 2.0], [4.0, 1.0]], [5.0, 6.0]) == pytest.approx(14.0)
    assert hypervolume([[6.0, 1.0]], [5.0, 6.0]) == 0.0  # outside the reference box
    cube = hypervolume([[0.0, 0.0, 0.0]], [1.0, 2.0, 3.0])
    assert cube == pytest.approx(6.0)
    # two boxes in 3-D: their union by inclusion-exclusion
    a, b, ref = [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [2.0, 2.0, 2.0]
    assert hypervolume([a, b], ref) == pytest.approx(2 * 1 * 2 + 1 * 2 * 2 - 1 * 1 * 2)


def test_hypervolume_matches_a_grid_count():
    rng = random.Random(0)
    pts = [[rng.randint(0, 9) for _ in range(3)] for _ in range(6)]
    grid = sum(
        any(all(p[d] <= c[d] for d in range(3)) for p in pts) for c in itertools.product(range(10), repeat=3)
    )  # unit cells [c, c+1) below ref 10
    assert hypervolume(pts, [10, 10, 10]) == pytest.approx(grid)


def test_progress_curves_never_fall():
    curve = hypervolume_curve([[0.5, 0.5], [0.9, 0.1], [0.6, 0.6], [0.1, 0.9]])
    assert all(b >= a for a, b in zip(curve, curve[1:])) and curve[-1] > curve[0] > 0
    assert best_so_far([0.3, 0.2, 0.5, 0.4], "maximize") == [0.3, 0.3, 0.5, 0.5]
    assert best_so_far([3, 4, 1], "minimize") == [3, 3, 1]


def test_bisection_points():
    assert next_point(0.2, 1.0, []) == 1.0
    assert next_point(0.2, 1.0, [(1.0, True)]) is None  # the top is feasible
    assert next_point(0.2, 1.0, [(1.0, False)]) == pytest.approx(0.6)
    assert next_point(0.2, 1.0, [(1.0, False), (0.6, True)]) == pytest.approx(0.8)
    assert next_point(0.2, 1.0, [(1.0, False), (0.6, False)]) == pytest.approx(0.4)

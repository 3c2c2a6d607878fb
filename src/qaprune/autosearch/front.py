"""Pareto fronts and hypervolumes of trial results (plain Python, any number of objectives).

All functions take *losses*: every objective turned into "lower is better" (``losses``).

Example:
    >>> non_dominated([[1.0, 5.0], [2.0, 2.0], [3.0, 3.0], [4.0, 1.0]])
    [0, 1, 3]
    >>> hypervolume([[1.0, 5.0], [2.0, 2.0], [4.0, 1.0]], [5.0, 6.0])
    14.0
"""

from __future__ import annotations

from collections.abc import Sequence


def losses(values: Sequence[float], directions: Sequence[str]) -> list[float]:
    """Objective values as losses: maximized ones negated."""
    return [-v if d == "maximize" else v for v, d in zip(values, directions)]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` everywhere and better somewhere (losses)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (equal points are all kept)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def hypervolume(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Volume dominated by ``points`` and bounded by ``ref`` (losses; points not better than
    ``ref`` in every objective add nothing). Exact, by slicing along the last objective."""
    pts = [list(p) for p in points if all(x < r for x, r in zip(p, ref))]
    pts = [pts[i] for i in non_dominated(pts)]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return float(ref[0] - min(p[0] for p in pts))
    pts.sort(key=lambda p: p[-1])
    total = 0.0
    for i, p in enumerate(pts):
        top = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if top > p[-1]:
            total += (top - p[-1]) * hypervolume([q[:-1] for q in pts[: i + 1]], ref[:-1])
    return total


def normalizer(points: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """(ideal, span) per objective over ``points``, so that (p - ideal) / span lies in [0, 1];
    the reference point for hypervolumes is then 1.1 in every objective."""
    dims = range(len(points[0])) if points else range(0)
    ideal = [min(p[d] for p in points) for d in dims]
    span = [(max(p[d] for p in points) - ideal[d]) or 1.0 for d in dims]
    return ideal, span


def hypervolume_curve(points: Sequence[Sequence[float]]) -> list[float]:
    """Hypervolume of the first 1, 2, ... points (normalized losses, reference 1.1 each):
    how the search's front grew, trial after trial."""
    if not points:
        return []
    ideal, span = normalizer(points)
    scaled = [[(x - i) / s for x, i, s in zip(p, ideal, span)] for p in points]
    ref = [1.1] * len(ideal)
    return [hypervolume(scaled[: k + 1], ref) for k in range(len(scaled))]


def best_so_far(values: Sequence[float], direction: str) -> list[float]:
    """Running best of a single objective."""
    out: list[float] = []
    for v in values:
        out.append(v if not out else (max if direction == "maximize" else min)(out[-1], v))
    return out

"""Positions of non-zeros as relative (delta) indices of a fixed small width (Deep Compression).

Each non-zero is stored as its distance ``d`` from the previous one (the first from position
-1), in ``width`` bits. A distance above ``2**width - 1`` is bridged by filler entries, as in
Deep Compression; here a filler is the delta value 0 and means "advance ``2**width - 1``, no
value here", so fillers need no code of their own. Width 1 is a plain bitmap (1: a non-zero,
0: skip one position). Zeros after the last non-zero are implied by the tensor's size.
"""

from __future__ import annotations

import numpy as np

WIDTHS = tuple(range(1, 9))


def _gaps(positions: np.ndarray) -> np.ndarray:
    p = np.asarray(positions, dtype=np.int64).reshape(-1)
    gaps = np.diff(p, prepend=-1)
    if gaps.size and gaps.min() < 1:
        raise ValueError("positions must be strictly increasing and non-negative")
    return gaps


def entry_count(positions: np.ndarray, width: int) -> int:
    """How many ``width``-bit entries :func:`encode_positions` writes for ``positions``."""
    span = (1 << width) - 1
    return int(((_gaps(positions) - 1) // span + 1).sum())


def encode_positions(positions: np.ndarray, width: int) -> np.ndarray:
    """Delta entries (m,) in ``[0, 2**width)`` for strictly increasing ``positions`` (k,).

    Example:
        >>> encode_positions(np.array([0, 2, 12]), 2).tolist()
        [1, 2, 0, 0, 0, 1]
        >>> decode_positions(np.array([1, 2, 0, 0, 0, 1]), 2).tolist()
        [0, 2, 12]
    """
    if not 1 <= width <= 16:
        raise ValueError(f"width: {width} is not in [1, 16]")
    span = (1 << width) - 1
    gaps = _gaps(positions)
    fillers = (gaps - 1) // span
    out = np.zeros(int((fillers + 1).sum()), dtype=np.int64)
    out[np.cumsum(fillers + 1) - 1] = gaps - fillers * span  # each gap's last entry: 1..span
    return out


def decode_positions(entries: np.ndarray, width: int) -> np.ndarray:
    """The positions (k,) int64 written as delta ``entries`` (m,) by :func:`encode_positions`."""
    e = np.asarray(entries, dtype=np.int64).reshape(-1)
    span = (1 << width) - 1
    steps = np.where(e == 0, span, e)
    return (np.cumsum(steps) - 1)[e != 0]


def best_width(positions: np.ndarray, *, widths: tuple[int, ...] = WIDTHS) -> tuple[int, int]:
    """(width, entries) with the fewest index bits ``width · entries`` (the narrowest on ties).

    Example:
        >>> best_width(np.arange(0, 3000, 3))  # every third position: one 2-bit entry each
        (2, 1000)
    """
    gaps = _gaps(positions) - 1
    best = (widths[0], 0, -1)
    for w in widths:
        entries = int((gaps // ((1 << w) - 1) + 1).sum())
        if best[2] < 0 or w * entries < best[2]:
            best = (w, entries, w * entries)
    return best[0], best[1]

"""Scaled integers: a float tensor whose every row (slice along dim 0) is an integer multiple of
one scale, as per-channel quantization makes it. Found from the values alone and verified bit for
bit, so a tensor is only stored this way when ``codes.to(dtype) * scales`` gives it back exactly.

For a row quantized symmetrically to ``b`` bits, the largest magnitude is ``(2^(b-1) - 1) · s``,
so ``s`` is that maximum divided by ``2^j - 1`` for some ``j`` (up to rounding of the last bit,
hence the neighbours one unit in the last place either side). Candidates are tried on a few
columns first, so tensors that are not scaled integers are turned down cheaply.
"""

from __future__ import annotations

import torch
from torch import Tensor

DIVISORS = tuple(2**j - 1 for j in range(1, 16))
_INTS = {8: torch.int64, 4: torch.int32, 2: torch.int16}
SAMPLE = 64


def _exact(v: Tensor, pattern: Tensor, scale: Tensor) -> Tensor:
    """Which rows of ``v`` (..., R, C) ``round(v / scale) * scale`` gives back bit for bit, for
    ``scale`` (..., R): (..., R) bool."""
    back = torch.round(v / scale[..., None]) * scale[..., None]
    return (back.view(pattern.dtype) == pattern).all(dim=-1)


def _candidates(top: Tensor) -> Tensor:
    """Candidate scales (3 · len(DIVISORS), R), in the order they are tried."""
    base = top[None, :] / torch.tensor(DIVISORS, dtype=top.dtype)[:, None]
    up = torch.nextafter(base, torch.full_like(base, float("inf")))
    down = torch.nextafter(base, torch.zeros_like(base))
    return torch.stack([base, up, down], dim=1).reshape(-1, top.numel())


def scale_of(v: Tensor) -> Tensor | None:
    """One scale per row of ``v`` (R, C) such that every row is an exact integer multiple of its
    scale (|multiple| < 2^15), or None. All-zero rows get scale 1.

    Example:
        >>> w = torch.tensor([[3.0, -1.0, 0.0], [7.0, 2.0, -5.0]]) * torch.tensor([[0.1], [0.25]])
        >>> s = scale_of(w)  # row 0 on a 3-level grid (2 bits), row 1 on a 7-level one (3 bits)
        >>> torch.equal(torch.round(w / s[:, None]) * s[:, None], w), s.tolist()
        (True, [0.10000000149011612, 0.25])
    """
    if not v.is_floating_point() or v.element_size() not in _INTS or v.dim() != 2 or not v.numel():
        return None
    if not torch.isfinite(v).all():
        return None
    pattern = v.view(_INTS[v.element_size()])
    top = v.abs().amax(dim=1)
    cands = _candidates(top)
    hopeful = _exact(v[None, :, :SAMPLE], pattern[None, :, :SAMPLE], cands)  # on a few columns
    todo = top > 0
    if not hopeful[:, todo].any(dim=0).all():
        return None
    scales = torch.ones_like(top)
    for scale, ok in zip(cands, hopeful):
        rows = (todo & ok).nonzero().squeeze(1)
        rows = rows[_exact(v[rows], pattern[rows], scale[rows])]
        scales[rows], todo[rows] = scale[rows], False
        if not todo.any():
            return scales
    return None if todo.any() else scales


def split(t: Tensor, rows: int) -> tuple[Tensor, Tensor] | None:
    """(scales (rows,), int32 codes shaped like ``t``) with ``join(scales, codes, t.dtype)`` equal
    to ``t`` bit for bit, or None when ``t``, cut into ``rows`` rows, is not per-row scaled
    integers. The codes are zigzag-coded (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...): non-negative,
    small and still zero where ``t`` is zero."""
    if t.numel() == 0 or t.numel() % rows:
        return None
    v = t.detach().to("cpu").reshape(rows, -1)
    scales = scale_of(v)
    if scales is None:
        return None
    q = torch.round(v / scales[:, None]).to(torch.int32)
    return scales, ((q << 1) ^ (q >> 31)).reshape(t.shape)


def join(scales: Tensor, codes: Tensor, dtype: torch.dtype) -> Tensor:
    """``codes * scale`` per row (``len(scales)`` rows), in ``dtype``: the inverse of :func:`split`."""
    z = codes.to(torch.int32).reshape(scales.numel(), -1)
    q = (z >> 1) ^ -(z & 1)
    return (q.to(dtype) * scales.to(dtype)[:, None]).reshape(codes.shape)

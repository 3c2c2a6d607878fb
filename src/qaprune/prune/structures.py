"""Structures turn scores into a mask: ``mask = structure(scores, sparsity, **args)``.

A structure decides the pattern only; how much to prune comes from the schedule and the
allocation across layers. scores (out, ...), higher means keep -> float 0/1 mask, same shape.
- ``unstructured``: the highest scores anywhere.
- ``channels``: whole output channels (filters) by the sum / mean / max of their scores.
- ``blocks``: whole r×c tiles of the (out, in) view by the sum of their scores.
- ``nm``: N:M, the n highest of every m consecutive inputs (2:4).
- ``mpd``: MPDCompress, a permuted block-diagonal pattern (data-independent).
- ``periodic``: pre-defined periodic kernel patterns for convolutions (data-independent).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from qaprune.errors import RecipeError
from qaprune.registry import Registry

STRUCTURES: Registry = Registry("structure")
F = TypeVar("F", bound=Callable[..., Tensor])


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


def on_groups(fn: F) -> F:
    """Declare that a structure acts on channel dependency groups (``fn.groups = True``):
    ``prune_to`` given an example input then prunes coupled channels together."""
    fn.groups = True  # type: ignore[attr-defined]
    return fn


def acts_on_groups(fn: Callable) -> bool:
    """Whether structure ``fn`` was declared with ``on_groups``."""
    return bool(getattr(fn, "groups", False))


def structure_mask(structure: str, layer: str, scores: Tensor, sparsity: float, args: dict) -> Tensor:
    """``STRUCTURES[structure](scores, sparsity, **args)``; a shape or argument the structure
    refuses becomes a ``RecipeError`` naming ``layer``."""
    try:
        return STRUCTURES.get(structure)(scores, sparsity, **args)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"prune.structure {structure}: layer {layer!r}: {exc}") from exc


# --- structured patterns ---------------------------------------------------------------------
# Shared conventions: scores (out, ...) are seen as the (out, in) view ``scores.reshape(out, -1)``
# (a conv kernel flattened over in·kh·kw, in memory order; a vector is (out, 1)); entries pruned
# earlier arrive as -inf. Bad shapes or arguments raise ValueError naming the dimension;
# ``prune_to`` re-raises it as a RecipeError naming the layer.
#
# Fixed-pattern structures (``nm``, ``mpd``, ``periodic``) always achieve the sparsity of their
# pattern (1 − n/m, ≈ 1 − 1/k, 1 − keep/K): ``sparsity`` only switches them on (0 keeps every
# entry, anything above 0 applies the whole pattern). Use them with allocation "uniform" and a
# "oneshot" schedule; under "global"/"lamp" a layer allotted 0 stays dense.

_NEG_INF = float("-inf")


def _rows(scores: Tensor) -> Tensor:
    """The (out, in) view: scores (out, ...) -> (out, prod(...)); a vector (out,) -> (out, 1)."""
    if scores.dim() == 0:
        raise ValueError("a structure needs a weight of shape (out, ...), not a scalar")
    return scores.reshape(scores.shape[0], -1)


def _name(scores: Tensor) -> str:
    return f"weight {tuple(scores.shape)}"


def _check_ints(**values: object) -> None:
    for key, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{key}={v!r}: need a positive integer")


def _live(x: Tensor) -> tuple[Tensor, Tensor]:
    """(scores with earlier-pruned -inf entries set to 0, 0/1 indicator of live entries)."""
    alive = (x != _NEG_INF).to(x.dtype)
    return x.masked_fill(alive == 0, 0.0), alive


@STRUCTURES.register("channels")
@on_groups
def channels(
    scores: Tensor,
    sparsity: float,
    *,
    reduce: str = "sum",
    round_to: int = 1,
    coupled: bool = True,
    of: str = "weights",
) -> Tensor:
    """Whole output channels (filters, dim 0): keep the ``out − round(sparsity·out)`` channels
    whose scores have the highest ``reduce`` ("sum", "mean" or "max"), at least one (a layer
    without channels would cut the network); with ``round_to`` > 1 the kept count is the nearest
    multiple of it (at least ``round_to``, at most ``out``). Earlier-pruned (-inf) entries count
    as 0 in sum and mean; a fully pruned channel ranks last. scores (out, ...) -> mask, same shape.

    This structure acts on channel groups: ``prune_to(..., example_input=x)`` scores every
    dependency group's channels (``prune.channels``, which reads ``coupled`` and ``of``), allocates, and
    calls this function on each group's channel scores (out, 1); without an example input it
    masks each layer's rows alone.

    Example:
        >>> channels(torch.tensor([[1.0, 1.0], [5.0, 0.0], [0.0, 3.0]]), 0.34).tolist()
        [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    """
    if reduce not in ("sum", "mean", "max"):
        raise ValueError(f"reduce={reduce!r}; allowed: sum, mean, max")
    rows = _rows(scores)
    vals, alive = _live(rows)
    agg = rows.amax(1) if reduce == "max" else vals.sum(1) / (rows.shape[1] if reduce == "mean" else 1)
    agg = agg.masked_fill(alive.sum(1) == 0, _NEG_INF)
    _check_ints(round_to=round_to)
    keep = max(1, rows.shape[0] - int(round(sparsity * rows.shape[0])))
    if round_to > 1:
        keep = min(rows.shape[0], max(round_to, round_to * int(keep / round_to + 0.5)))
    kept = torch.zeros(rows.shape[0], dtype=scores.dtype, device=scores.device)
    kept[torch.topk(agg, keep, sorted=False).indices] = 1.0
    return kept[:, None].expand(rows.shape).contiguous().view(scores.shape)


@STRUCTURES.register("nm")
def nm(scores: Tensor, sparsity: float, *, n: int = 2, m: int = 4) -> Tensor:
    """N:M sparsity (2:4 by default): in every group of ``m`` consecutive inputs of the (out, in)
    view keep the ``n`` highest scores. Achieved sparsity 1 − n/m whatever ``sparsity`` asks
    above 0; ``sparsity`` 0 keeps all. scores (out, ...) with in = prod(dims 1..) divisible by
    ``m`` (else ValueError) -> mask, same shape.

    Example:
        >>> nm(torch.tensor([[0.1, 0.9, 0.5, 0.2, 3.0, 2.0, 1.0, 0.0]]), 0.5).tolist()
        [[0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]]
    """
    _check_ints(n=n, m=m)
    if n > m:
        raise ValueError(f"n={n} > m={m}: keep at most m of every m")
    rows = _rows(scores)
    if rows.shape[1] % m:
        raise ValueError(f"{_name(scores)} has {rows.shape[1]} inputs (dim 1), not divisible by m={m}")
    if sparsity <= 0:
        return torch.ones_like(scores)
    groups = rows.reshape(rows.shape[0], -1, m)
    mask = torch.zeros_like(groups).scatter_(-1, torch.topk(groups, n, dim=-1).indices, 1.0)
    return mask.view(scores.shape)


def _tile_sums(rows: Tensor, r: int, c: int) -> tuple[Tensor, Tensor]:
    """Per r×c tile of rows (out, in), zero-padded to whole tiles: (score sums, entry counts),
    both (ceil(out/r)·ceil(in/c),); a tile whose entries were all pruned sums to -inf."""
    R, C = -(-rows.shape[0] // r), -(-rows.shape[1] // c)
    pad = (0, C * c - rows.shape[1], 0, R * r - rows.shape[0])
    vals, alive = _live(rows)

    def tiles(x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x, pad).view(R, r, C, c).sum((1, 3)).flatten()

    sums = tiles(vals).masked_fill(tiles(alive) == 0, _NEG_INF)
    return sums, tiles(torch.ones_like(rows))


@STRUCTURES.register("blocks")
def blocks(scores: Tensor, sparsity: float, *, block: Sequence[int] = (4, 4)) -> Tensor:
    """Whole ``block=[r, c]`` tiles of the (out, in) view, the lowest score sums first. Edges that
    r or c does not divide form partial tiles (the weight zero-padded to whole tiles, as BSR
    storage pads), so they sum fewer entries. Prunes the number of tiles whose entries come
    closest to ``round(sparsity·numel)`` (fewer tiles on a tie). A block larger than the (out,
    in) view is refused. scores (out, ...) -> mask, same shape.

    Example:
        >>> s = torch.tensor([[1.0, 1.0, 9.0, 9.0], [1.0, 1.0, 9.0, 9.0]])
        >>> blocks(s, 0.5, block=[2, 2]).tolist()
        [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    """
    if not isinstance(block, (list, tuple)) or len(block) != 2:
        raise ValueError(f"block={block!r}: need [rows, cols]")
    r, c = block
    _check_ints(block_rows=r, block_cols=c)
    rows = _rows(scores)
    for size, have, dim in ((r, rows.shape[0], "outputs (dim 0)"), (c, rows.shape[1], "inputs (dim 1)")):
        if size > have:
            raise ValueError(f"block {[r, c]} is larger than {_name(scores)}: {size} > {have} {dim}")
    sums, sizes = _tile_sums(rows, r, c)
    order = torch.sort(sums, stable=True).indices
    cum = torch.cat([sizes.new_zeros(1), sizes[order].cumsum(0)])
    n_tiles = int(torch.argmin((cum - round(sparsity * scores.numel())).abs()))  # first minimum
    kept = torch.ones_like(sums)
    kept[order[:n_tiles]] = 0.0
    grid = kept.view(-(-rows.shape[0] // r), -1).repeat_interleave(r, 0).repeat_interleave(c, 1)
    return grid[: rows.shape[0], : rows.shape[1]].contiguous().view(scores.shape)


def _block_ids(size: int, k: int) -> Tensor:
    """Block index of each of ``size`` positions split into k near-equal runs (tensor_split)."""
    counts = [size // k + (i < size % k) for i in range(k)]
    return torch.repeat_interleave(torch.arange(k), torch.tensor(counts))


def mpd_permutations(shape: Sequence[int], k: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The seeded row and column permutations of the ``mpd`` pattern of a weight of ``shape``
    (out, ...): (row_perm (out,), col_perm (in,)), int64, in = prod(shape[1:]). Derived from
    ``seed`` and ``shape`` alone, so every call for a layer agrees. With ``m`` the mask's (out, in)
    view, ``m[row_perm][:, col_perm]`` is block-diagonal: block i spans positions
    ``torch.arange(n).tensor_split(k)[i]`` of rows and of columns.

    Example:
        >>> r, c = mpd_permutations((4, 6), 2, seed=0)
        >>> sorted(r.tolist()), sorted(c.tolist())
        ([0, 1, 2, 3], [0, 1, 2, 3, 4, 5])
    """
    _check_ints(k=k)
    out, cols = int(shape[0]), math.prod(int(d) for d in shape[1:])
    if k > min(out, cols):
        dim = "outputs (dim 0)" if out < cols else "inputs (dim 1)"
        raise ValueError(f"k={k} blocks need at least {k} {dim}; weight {tuple(shape)} has {min(out, cols)}")
    key = hashlib.sha256(f"mpd:{int(seed)}:{tuple(int(d) for d in shape)}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
    return torch.randperm(out, generator=gen), torch.randperm(cols, generator=gen)


@STRUCTURES.register("mpd")
def mpd(scores: Tensor, sparsity: float, *, k: int = 2, seed: int = 0) -> Tensor:
    """MPDCompress: ``k`` diagonal blocks of the (out, in) view, rows and columns shuffled by
    ``mpd_permutations(scores.shape, k, seed)``. Data-independent: scores only give the shape.
    Sparsity 1 − 1/k when k divides out and in (else blocks differ by one row or column), whatever
    ``sparsity`` asks above 0; 0 keeps all. k ≤ min(out, in). scores (out, ...) -> mask, same shape.

    Example:
        >>> mask = mpd(torch.zeros(4, 4), 0.5, k=2, seed=0)
        >>> r, c = mpd_permutations((4, 4), 2, seed=0)
        >>> mask[r][:, c].tolist()  # permuted back: block-diagonal
        [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]
    """
    rows = _rows(scores)
    row_perm, col_perm = mpd_permutations(scores.shape, k, seed)
    if sparsity <= 0:
        return torch.ones_like(scores)
    diag = _block_ids(rows.shape[0], k)[:, None] == _block_ids(rows.shape[1], k)[None, :]
    mask = torch.empty(rows.shape, dtype=scores.dtype, device=scores.device)
    mask[row_perm.to(mask.device)[:, None], col_perm.to(mask.device)[None, :]] = diag.to(mask)
    return mask.view(scores.shape)


@STRUCTURES.register("periodic")
def periodic(scores: Tensor, sparsity: float, *, period: int = 3, keep: int = 3) -> Tensor:
    """Pre-defined periodic kernel sparsity for conv weights (out, in, kh, kw) (any kernel rank):
    kernel (o, c) follows pattern p = (o + c) mod ``period``, which keeps the ``keep`` flattened
    kernel positions p·keep, p·keep + 1, … (mod K = kh·kw). The mask repeats every ``period``
    input and output channels. Sparsity 1 − keep/K whatever ``sparsity`` asks above 0; 0 keeps
    all. Data-independent. Linear weights (out, in) are refused. scores -> mask, same shape.

    Example:
        >>> periodic(torch.zeros(1, 3, 3, 3), 0.5)[0, :, :, 0].tolist()  # channel c keeps row c
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    if scores.dim() < 3:
        raise ValueError(
            f"{_name(scores)} has no kernel dims (2, 3, ...): periodic needs a conv "
            "weight (out, in, kh, kw); for Linear layers use nm or blocks"
        )
    _check_ints(period=period, keep=keep)
    out, cin, ksize = scores.shape[0], scores.shape[1], math.prod(scores.shape[2:])
    if keep > ksize:
        raise ValueError(f"keep={keep} > {ksize} kernel positions of {_name(scores)} (dims 2..)")
    if sparsity <= 0:
        return torch.ones_like(scores)
    pattern = (torch.arange(out)[:, None] + torch.arange(cin)[None, :]) % period
    pos = (pattern[..., None] * keep + torch.arange(keep)) % ksize  # (out, in, keep)
    mask = torch.zeros(out, cin, ksize, dtype=scores.dtype)
    return mask.scatter_(-1, pos, 1.0).view(scores.shape).to(scores.device)

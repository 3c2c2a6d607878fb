"""Pruning criteria: ``scores = criterion(weight, stats)``; higher means keep.

A criterion only scores. Data it needs (gradients, activations, …) arrives in ``stats``,
collected by hooks (``qaprune.prune.stats``), never by reaching into the model. Each criterion
declares what it reads in ``fn.needs`` (a frozenset of ``LayerStats`` field names) and raises a
``RecipeError`` naming the layer when that is missing. Channel-level criteria give one score
per output channel, broadcast over that channel's weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor

from qaprune.errors import RecipeError
from qaprune.registry import Registry

CRITERIA: Registry = Registry("criterion")
F = TypeVar("F", bound=Callable[..., Tensor])
_TINY = 1e-30


@dataclass
class LayerStats:
    """Data-dependent statistics of one layer (all optional; criteria say what they need).

    For a weight (out, ...): ``grad``, ``hessian`` and ``momentum`` have the weight's shape,
    ``activations`` is (N, out, *spatial).
    """

    name: str = ""
    grad: Tensor | None = None  # accumulated ∂L/∂w, same shape as the weight
    extra: dict[str, Tensor] = field(default_factory=dict)
    generator: torch.Generator | None = None
    activations: Tensor | None = None  # the layer's outputs on a calibration batch (N, out, ...)
    hessian: Tensor | None = None  # Hutchinson estimate of diag(∂²L/∂w²), weight's shape
    momentum: Tensor | None = None  # running (exponential) average of |w| over training steps


_HOW = {
    "grad": "qaprune.prune.stats.collect_stats(model, x, y, needs={'grad'})",
    "activations": "qaprune.prune.stats.collect_stats(model, x, y, needs={'activations'})",
    "hessian": "qaprune.prune.stats.collect_stats(model, x, y, needs={'hessian'})",
    "momentum": (
        "tracker = qaprune.prune.stats.MomentumTracker(model) passed as fit(..., on_step=tracker), then tracker.stats()"
    ),
}


def needs(*what: str) -> Callable[[F], F]:
    """Declare the ``LayerStats`` fields a criterion reads: sets ``fn.needs`` (a frozenset)."""

    def deco(fn: F) -> F:
        fn.needs = frozenset(what)  # type: ignore[attr-defined]
        return fn

    return deco


def require(stats: LayerStats, criterion: str, what: str, weight: Tensor) -> Tensor:
    """``stats.<what>``, checked against ``weight`` (out, ...); a clear RecipeError if missing."""
    value = getattr(stats, what)
    if value is None:
        raise RecipeError(
            f"criterion {criterion!r} needs {what} for layer {stats.name!r}: collect it "
            f"with {_HOW[what]} and pass the result as prune_to(..., stats=...)"
        )
    ok = (
        value.dim() >= 2 and value.shape[1] == weight.shape[0] if what == "activations" else value.shape == weight.shape
    )
    if not ok:
        raise RecipeError(
            f"criterion {criterion!r}: stats.{what} of layer {stats.name!r} has shape "
            f"{tuple(value.shape)}, which does not fit the weight {tuple(weight.shape)}"
        )
    return value.detach()


def per_channel(scores: Tensor, weight: Tensor) -> Tensor:
    """One score per output channel broadcast over its weights: scores (out,) -> weight's shape.

    Example:
        >>> per_channel(torch.tensor([1.0, 2.0]), torch.zeros(2, 3)).tolist()
        [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    """
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return scores.to(weight.dtype).reshape(shape).expand_as(weight).clone()


def _rows(weight: Tensor) -> Tensor:
    """weight (out, ...) -> (out, rest) detached float32 (or float64) filter matrix."""
    w = weight.detach().reshape(weight.shape[0], -1)
    return w if w.dtype == torch.float64 else w.float()


@CRITERIA.register("magnitude")
@needs()
def magnitude(weight: Tensor, stats: LayerStats) -> Tensor:
    """|w|: higher means keep. weight (out, ...) -> scores, same shape."""
    return weight.abs()


@CRITERIA.register("l2")
@needs()
def l2(weight: Tensor, stats: LayerStats) -> Tensor:
    """w²: the same ranking as magnitude within a layer, a different one across layers."""
    return weight.square()


@CRITERIA.register("random")
@needs()
def random(weight: Tensor, stats: LayerStats) -> Tensor:
    """Uniform random scores: the baseline every criterion must beat."""
    return torch.rand(weight.shape, generator=stats.generator, dtype=weight.dtype)


@CRITERIA.register("lamp")
@needs()
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


# --- criteria that need data (stats collected by qaprune.prune.stats) -----------------------


@CRITERIA.register("taylor")
@needs("grad")
def taylor(weight: Tensor, stats: LayerStats) -> Tensor:
    """First-order Taylor |w · ∂L/∂w| (Molchanov et al.): the loss change when w is removed.

    ``stats.grad`` (weight's shape): ∂L/∂w of the mean loss over the calibration batches.
    weight (out, ...) -> scores, same shape.

    Example:
        >>> taylor(torch.tensor([2.0, -1.0]), LayerStats(grad=torch.tensor([0.5, 3.0]))).tolist()
        [1.0, 3.0]
    """
    return (weight.detach() * require(stats, "taylor", "grad", weight)).abs().to(weight.dtype)


@CRITERIA.register("momentum")
@needs("momentum")
def momentum(weight: Tensor, stats: LayerStats) -> Tensor:
    """WeightMom: the running average of |w| over training steps (``stats.momentum``, filled by
    ``qaprune.prune.stats.MomentumTracker``); weights that were large for long are kept.
    weight (out, ...) -> scores, same shape."""
    return require(stats, "momentum", "momentum", weight).to(weight.dtype).clone()


@CRITERIA.register("hap")
@needs("hessian")
def hap(weight: Tensor, stats: LayerStats) -> Tensor:
    """Hessian-aware pruning (Yu et al. 2022): Tr(H_c) · ‖w_c‖² / |c| per output channel c.

    ``stats.hessian`` (weight's shape): a Hutchinson estimate of diag(H); its sum over a channel
    is Tr(H_c) = E[v_cᵀ H_cc v_c]. weight (out, ...) -> one score per channel, broadcast.

    Example:
        >>> w, h = torch.tensor([[1.0, 1.0], [2.0, 0.0]]), torch.tensor([[1.0, 3.0], [0.5, 0.5]])
        >>> hap(w, LayerStats(hessian=h)).tolist()  # 4·2/2, 1·4/2
        [[4.0, 4.0], [2.0, 2.0]]
    """
    h = require(stats, "hap", "hessian", weight)
    w = _rows(weight)
    trace = h.reshape(w.shape[0], -1).to(w.dtype).sum(1)
    return per_channel(trace * w.square().sum(1) / w.shape[1], weight)


@CRITERIA.register("nuclear")
@needs("activations")
def nuclear(weight: Tensor, stats: LayerStats) -> Tensor:
    """Energy-aware pruning (Yeom et al.): the nuclear norm of each channel's output maps.

    ``stats.activations`` (N, out, *spatial): channel c's maps as an (N, H·W) matrix → Σσ
    (a linear layer's (N,) vector → its L2 norm). weight (out, ...) -> broadcast per channel.

    Example:
        >>> acts = torch.tensor([[3.0, 1.0], [4.0, 0.0]])  # (N=2, out=2)
        >>> nuclear(torch.ones(2, 5), LayerStats(activations=acts))[:, 0].tolist()
        [5.0, 1.0]
    """
    a = require(stats, "nuclear", "activations", weight)
    maps = a.transpose(0, 1).reshape(a.shape[1], a.shape[0], -1)
    maps = maps if maps.dtype == torch.float64 else maps.float()
    return per_channel(torch.linalg.matrix_norm(maps, ord="nuc"), weight)


def histogram_entropy(values: Tensor, bins: int) -> Tensor:
    """Row-wise entropy (nats) of ``values`` (rows, N), each row histogrammed into ``bins`` equal
    bins between its min and max: 0 for a constant row, log(bins) at most. -> (rows,)

    Example:
        >>> histogram_entropy(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 3.0]]), 4).tolist()
        [0.0, 1.3862943649291992]
    """
    lo, hi = values.amin(1, keepdim=True), values.amax(1, keepdim=True)
    u = (values - lo) / (hi - lo).clamp_min(_TINY)
    idx = (u * bins).long().clamp_(0, bins - 1)
    counts = torch.zeros(values.shape[0], bins, device=values.device).scatter_add_(1, idx, torch.ones_like(u))
    p = counts / values.shape[1]
    return -(p * p.clamp_min(_TINY).log()).sum(1) + 0.0  # + 0.0: no -0.0


@CRITERIA.register("entropy")
@needs("activations")
def entropy(weight: Tensor, stats: LayerStats) -> Tensor:
    """Entropic sparsification (Luo & Wu 2017): entropy of each output channel's activations.

    Each channel of ``stats.activations`` (N, out, *spatial) is averaged over space, its N
    values histogrammed into ``stats.extra["bins"]`` bins (default 16); low entropy means the
    channel carries little information. weight (out, ...) -> broadcast per channel.
    """
    a = require(stats, "entropy", "activations", weight)
    values = a.reshape(a.shape[0], a.shape[1], -1).float().mean(2).T  # (out, N)
    return per_channel(histogram_entropy(values, int(stats.extra.get("bins", 16))), weight)


# --- data-free criteria on the filter matrix (out, in·k·k) ---------------------------------


def frequent_directions(A: Tensor, ell: int) -> Tensor:
    """Frequent Directions (Liberty 2013): a sketch B (ell, d) of A (n, d) with
    0 ⪯ AᵀA − BᵀB and ‖AᵀA − BᵀB‖₂ ≤ ‖A‖_F² / ell.

    Rows stream into a 2·ell buffer; when it is full, the SVD shrink subtracts the (ell+1)-th
    largest squared singular value from all of them, which zeroes at least ell rows.

    Example:
        >>> A = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
        >>> B = frequent_directions(A, 3)
        >>> B.shape, bool(torch.linalg.matrix_norm(A.T @ A - B.T @ B, 2) <= A.square().sum() / 3)
        (torch.Size([3, 6]), True)
    """
    if ell < 1:
        raise RecipeError(f"frequent_directions: ell must be ≥ 1, got {ell}")
    rows = A.detach()
    buf, filled, i = rows.new_zeros(2 * ell, rows.shape[1]), 0, 0
    while i < rows.shape[0]:
        take = min(2 * ell - filled, rows.shape[0] - i)
        buf[filled : filled + take] = rows[i : i + take]
        filled, i = filled + take, i + take
        if filled == 2 * ell:
            buf, filled = _fd_shrink(buf, ell), ell
    if filled > ell:
        buf = _fd_shrink(buf, ell)
    return buf[:ell].clone()


def _fd_shrink(buf: Tensor, ell: int) -> Tensor:
    """σ_i² ← max(σ_i² − σ_{ell+1}², 0): rows ell.. of the result are zero. buf (2·ell, d)."""
    _, s, vh = torch.linalg.svd(buf, full_matrices=False)
    delta = s[ell].square() if s.numel() > ell else s.new_zeros(())
    s = (s.square() - delta).clamp_min(0).sqrt()
    out = buf.new_zeros(buf.shape)
    out[: s.numel()] = s[:, None] * vh
    return out


@CRITERIA.register("filtersketch")
@needs()
def filtersketch(weight: Tensor, stats: LayerStats) -> Tensor:
    """FilterSketch (Lin et al. 2020): the share of each filter's energy in the row space of a
    Frequent-Directions sketch of the filter matrix W (out, in·k·k): ‖W_i VᵀV‖² / ‖W_i‖², in
    [0, 1], V the sketch's right singular vectors. Sketch size: ``stats.extra["ell"]``, default
    out // 2. weight (out, ...) -> broadcast per filter.
    """
    w = _rows(weight)
    ell = int(stats.extra.get("ell", max(w.shape[0] // 2, 1)))
    _, s, vh = torch.linalg.svd(frequent_directions(w, ell), full_matrices=False)
    basis = vh[s > s.max() * 1e-6] if s.max() > 0 else vh[:0]
    share = (w @ basis.T).square().sum(1) / w.square().sum(1).clamp_min(_TINY)
    return per_channel(share, weight)


def filtersketch_weights(weight: Tensor, keep: int) -> Tensor:
    """The sketched filters that replace the kept ones (FilterSketch's information-preserving
    step): the FD sketch of W with ell = keep, whose Gram matrix approximates WᵀW.
    weight (out, ...) -> (keep, ...).

    Example:
        >>> filtersketch_weights(torch.randn(8, 3, 3, 3), 4).shape
        torch.Size([4, 3, 3, 3])
    """
    if not 1 <= keep <= weight.shape[0]:
        raise RecipeError(f"filtersketch_weights: keep={keep} is not in [1, {weight.shape[0]}]")
    sketch = frequent_directions(_rows(weight), keep)
    return sketch.reshape(keep, *weight.shape[1:]).to(weight.dtype)


def haste_buckets(weight: Tensor, n_planes: int, generator: torch.Generator | None) -> list[list[int]]:
    """HASTE's locality-sensitive hashing: filters (mean-centred, L2-normalised rows of
    weight (out, ...)) with the same signs against ``n_planes`` random hyperplanes share a bucket.
    -> buckets of filter indices, each ascending, ordered by first index; duplicates share one.

    Example:
        >>> w = torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [0.0, -1.0, 5.0]])
        >>> haste_buckets(w, 8, torch.Generator().manual_seed(0))
        [[0, 1], [2]]
    """
    w = _rows(weight)
    w = w - w.mean(1, keepdim=True)
    w = w / w.norm(dim=1, keepdim=True).clamp_min(_TINY)
    device = generator.device if generator is not None else torch.device("cpu")
    planes = torch.randn(n_planes, w.shape[1], generator=generator, device=device, dtype=w.dtype)
    codes = (w @ planes.to(w.device).T > 0).to(torch.uint8)  # (out, n_planes)
    _, inverse = torch.unique(codes, dim=0, return_inverse=True)
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(inverse.tolist()):
        groups.setdefault(g, []).append(i)
    return sorted(groups.values(), key=lambda b: b[0])


HASTE_REDUNDANT = 1e-6  # factor on the score of a filter that another in its bucket represents


@CRITERIA.register("haste")
@needs()
def haste(weight: Tensor, stats: LayerStats) -> Tensor:
    """HASTE (data-free): in each ``haste_buckets`` bucket the filter with the largest L2 norm
    scores its norm, the others norm · 1e-6 / bucket size (redundant). Hyperplanes:
    ``stats.extra["n_planes"]`` (default 16), drawn from ``stats.generator`` (seed 0 if None).
    weight (out, ...) -> broadcast per filter.
    """
    norms = _rows(weight).norm(dim=1)
    gen = stats.generator if stats.generator is not None else torch.Generator().manual_seed(0)
    scores = norms.clone()
    for bucket in haste_buckets(weight, int(stats.extra.get("n_planes", 16)), gen):
        idx = torch.tensor(bucket, device=norms.device)
        rest = idx[idx != idx[norms[idx].argmax()]]
        scores[rest] = norms[rest] * (HASTE_REDUNDANT / len(bucket))
    return per_channel(scores, weight)

"""Dependency-aware channel pruning: whole channel groups, scored by any criterion, masked exactly.

``prune_to(model, s, structure="channels", example_input=x)`` lands here. The model is traced
once (``channel_groups``: torch-pruning's dependency graph), so a pruned channel is taken out of
every coupled tensor at once: the producing rows and biases, the batch norms that follow, the
layers tied by a residual addition, and (zero at their input) the consumers' columns. Groups whose
channels are the model's outputs, or whose producers carry no ``Mask`` (``prune: false`` in a
recipe), are never touched. The masked model can therefore be physically shrunk later
(``qaprune.export.shrink``) with identical outputs.

Scoring is group-aware: a channel's score is the mean, over the group's Linear/Conv members, of
the criterion's scores of that member's slice for the channel (a producer's row, and with
``coupled`` a consumer's input column), each member's vector first divided by its mean so that
layers of different scale weigh the same (torch-pruning's group importance with mean
normalization). Criteria that need data score producers only (their statistics describe a layer's
outputs).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qaprune.errors import RecipeError
from qaprune.param import get_mask, latent_weight, prunable_layers
from qaprune.prune.allocation import allocate
from qaprune.prune.criteria import CRITERIA, LayerStats
from qaprune.prune.groups import ChannelGroup, channel_groups, mask_channels, zero_channels
from qaprune.prune.structures import structure_mask

REDUCTIONS = ("sum", "mean", "max")
_NEG_INF = float("-inf")


@torch.no_grad()
def prune_groups(
    model: nn.Module,
    sparsity: float,
    *,
    example_input: Tensor,
    structure: str = "channels",
    criterion: str = "magnitude",
    allocation: str = "uniform",
    fixed: dict[str, float] | None = None,
    stats: dict[str, LayerStats] | None = None,
    generator: torch.Generator | None = None,
    structure_args: dict | None = None,
    layer_args: dict[str, dict] | None = None,
) -> dict[str, float]:
    """Prune whole channel groups of ``model`` to ``sparsity``: each free group's channels are
    scored (``group_scores``), the allocation (``prune.allocation``) gives each group its
    fraction ("uniform": the same for every group; "global"/"lamp": one threshold over all free
    channels), and the structure (``channels``) picks the channels to keep from the group's
    scores. ``fixed``: layer name -> the sparsity of the groups it produces. ``structure_args``
    (per layer: ``layer_args[root]``): ``reduce`` (sum|mean|max over a member's slice),
    ``round_to`` (kept channels a multiple of it: widths that vector units like), ``coupled``
    (score consumers' columns too, default True), and, for the whole model, ``of``: what
    ``sparsity`` counts, ``weights`` (default: the fraction of the weights of the prunable layers
    whose sparsity is not fixed, as for every other structure; met within one channel per layer)
    or ``channels`` (the fraction of channels, allocated as said). ``fixed`` sparsities are
    fractions of channels. example_input (N, ...): one batch the model accepts. Returns every
    prunable layer's sparsity.

    Example:
        >>> from qaprune.compress import attach
        >>> from qaprune.models import build_model
        >>> from qaprune.recipe import Recipe
        >>> m = attach(build_model("mlp", input_shape=(16,), num_classes=5), Recipe(prune={"sparsity": 0.5}))
        >>> r = prune_groups(m, 0.5, example_input=torch.zeros(2, 16), structure_args={"of": "channels"})
        >>> r["fc1"], r["fc2"], r["fc4"]  # fc2 loses half its rows and half its columns
        (0.5, 0.75, 0.5)
        >>> m = attach(build_model("mlp", input_shape=(16,), num_classes=5), Recipe(prune={"sparsity": 0.5}))
        >>> r = prune_groups(m, 0.5, example_input=torch.zeros(2, 16))  # half of all weights
        >>> sizes = {n: getattr(m, n).weight.numel() for n in r}
        >>> abs(sum(r[n] * sizes[n] for n in r) / sum(sizes.values()) - 0.5) < 0.01
        True
    """
    layers, fixed, layer_args = prunable_layers(model), fixed or {}, layer_args or {}
    common = dict(structure_args or {})
    target = _target(common.pop("of", "weights"))
    groups = [g for g in channel_groups(model, example_input) if _free(g, layers)]
    args = {g.root: _args({**common, **layer_args.get(g.root, {})}, g.root) for g in groups}
    scores = {g.root: group_scores(model, g, criterion, stats or {}, generator, **args[g.root]) for g in groups}
    fixed_groups = {g.root: _fixed(g, fixed) for g in groups if _fixed(g, fixed) is not None}

    def keeps(fraction: float) -> dict[str, Tensor]:
        fractions = allocate(scores, fraction, allocation=allocation, fixed=fixed_groups)
        rounding = {g.root: {"round_to": args[g.root]["round_to"]} for g in groups}
        return {
            r: structure_mask(structure, r, scores[r][:, None], fractions[r], rounding[r])[:, 0] > 0 for r in scores
        }

    measured = [n for n in layers if n not in fixed]
    fraction = (
        sparsity if target == "channels" or sparsity <= 0 else _fraction_for(model, groups, keeps, measured, sparsity)
    )
    chosen = keeps(fraction)
    for g in groups:
        _mask_group(model, g, chosen[g.root])
    return {n: float((get_mask(m).mask == 0).sum()) / get_mask(m).mask.numel() for n, m in layers.items()}


TARGETS = ("weights", "channels")


def _target(of: object) -> str:
    if of not in TARGETS:
        raise RecipeError(f"prune.structure_args.of: {of!r}; allowed: {', '.join(TARGETS)}")
    return str(of)


def _mask_group(model: nn.Module, group: ChannelGroup, keep: Tensor) -> None:
    mask_channels(model, group, keep)
    mask_columns(model, group, keep)


def _fraction_for(
    model: nn.Module, groups: list[ChannelGroup], keeps, measured: list[str], sparsity: float, iters: int = 30
) -> float:
    """The fraction of channels whose pruning brings the weights of the ``measured`` layers
    closest to ``sparsity`` (removing a channel takes its producers' rows and its consumers'
    columns, so half the channels is about three quarters of a middle layer's weights):
    bisection on the allocation's fraction, every candidate tried on the masks and undone."""

    def achieved(fraction: float) -> float:
        saved = {k: v.clone() for k, v in model.named_buffers()}
        try:
            chosen = keeps(fraction)
            for g in groups:
                _mask_group(model, g, chosen[g.root])
            masks = [m.mask for n in measured if (m := get_mask(model.get_submodule(n))) is not None]
            total = sum(m.numel() for m in masks)
            return float(sum((m == 0).sum() for m in masks)) / total if total else 0.0
        finally:  # undo: old buffers back, masks placed by this trial all ones again
            for k, buf in model.named_buffers():
                if k in saved:
                    buf.copy_(saved[k])
                elif k.endswith((".keep", ".mask")):
                    buf.fill_(1.0)

    lo, hi = 0.0, 1.0 - 1e-9
    if achieved(hi) <= sparsity:
        return hi
    for _ in range(iters):  # invariant: achieved(lo) < sparsity <= achieved(hi)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if achieved(mid) < sparsity else (lo, mid)
    return lo if sparsity - achieved(lo) < achieved(hi) - sparsity else hi


def prune_channels(model: nn.Module, sparsity: float, **options) -> dict[str, float]:
    """``prune_groups`` with the ``channels`` structure (same options)."""
    return prune_groups(model, sparsity, structure="channels", **options)


def mask_columns(model: nn.Module, group: ChannelGroup, keep: Tensor) -> None:
    """Zero the consumers' input columns of dropped channels where the consumer has a ``Mask``
    (they read exact zeros already; the mask makes parameter counts and BOPs say so)."""
    for c in (c for c in group.members if c.role == "in" and c.kind in ("linear", "conv")):
        mod = model.get_submodule(c.name)
        mask = get_mask(mod) if getattr(mod, "groups", 1) == 1 else None
        cols = [i for i, r in zip(c.idxs, c.root_idxs) if not keep[r]]
        if mask is not None and cols:
            mask.mask[:, cols] = 0


def _free(group: ChannelGroup, layers: dict[str, nn.Module]) -> bool:
    """A group is pruned only when it may be removed and every producer carries a ``Mask``."""
    return group.prunable and bool(group.producers) and all(p in layers for p in group.producers)


def _args(args: dict, root: str) -> dict:
    unknown = set(args) - {"reduce", "round_to", "coupled"}
    if unknown:
        raise RecipeError(
            f"prune.structure channels: layer {root!r}: unknown structure_args "
            f"{sorted(unknown)}; allowed: reduce, round_to, coupled (and, for the whole model, of)"
        )
    out = {
        "reduce": args.get("reduce", "sum"),
        "round_to": args.get("round_to", 1),
        "coupled": bool(args.get("coupled", True)),
    }
    if out["reduce"] not in REDUCTIONS:
        raise RecipeError(
            f"prune.structure channels: layer {root!r}: reduce={out['reduce']!r}; allowed: {', '.join(REDUCTIONS)}"
        )
    if not isinstance(out["round_to"], int) or isinstance(out["round_to"], bool) or out["round_to"] < 1:
        raise RecipeError(
            f"prune.structure channels: layer {root!r}: round_to={out['round_to']!r}; need a positive integer"
        )
    return out


def _fixed(group: ChannelGroup, fixed: dict[str, float]) -> float | None:
    values = [fixed[p] for p in group.producers if p in fixed]
    return max(values) if values else None


def group_scores(
    model: nn.Module,
    group: ChannelGroup,
    criterion: str,
    stats: dict[str, LayerStats],
    generator: torch.Generator | None = None,
    *,
    reduce: str = "sum",
    coupled: bool = True,
    round_to: int = 1,
) -> Tensor:
    """Scores of a group's channels -> (group.size,), higher means keep; channels that are already
    exactly zero score -inf (pruned stays pruned). ``round_to`` is accepted and ignored."""
    score_fn = CRITERIA.get(criterion)
    data_free = not getattr(score_fn, "needs", frozenset())
    parts = []
    for c in group.members:
        if c.kind not in ("linear", "conv") or (c.role == "in" and not (coupled and data_free)):
            continue
        mod = model.get_submodule(c.name)
        mask = get_mask(mod)
        w = latent_weight(mod) * mask.mask if mask is not None else latent_weight(mod)
        st = stats.get(c.name) or LayerStats(name=c.name, generator=generator)
        s = score_fn(w.detach(), st).float()
        per_index = _reduce(s if c.role == "out" else s.transpose(0, 1), reduce)
        parts.append(_normalized(_to_group(per_index, c.idxs, c.root_idxs, group.size)))
    total = torch.stack(parts).mean(0) if parts else torch.zeros(group.size)
    return total.masked_fill(zero_channels(model, group), _NEG_INF)


def _reduce(s: Tensor, how: str) -> Tensor:
    rows = s.reshape(s.shape[0], -1)
    return rows.amax(1) if how == "max" else rows.mean(1) if how == "mean" else rows.sum(1)


def _to_group(values: Tensor, idxs: list[int], root_idxs: list[int], size: int) -> Tensor:
    """Per-index values of a member -> per group channel (the mean over its indices)."""
    idx, root = torch.tensor(idxs, dtype=torch.long), torch.tensor(root_idxs, dtype=torch.long)
    total = torch.zeros(size).index_add_(0, root, values.cpu()[idx])
    count = torch.zeros(size).index_add_(0, root, torch.ones(len(idxs)))
    return total / count.clamp_min(1)


def _normalized(v: Tensor) -> Tensor:
    return v / v.abs().mean().clamp_min(1e-30)


def keep_count(scores: Tensor, sparsity: float) -> int:
    """Channels kept of ``scores`` (n,) at ``sparsity``: n − round(sparsity · n)."""
    return scores.numel() - int(round(sparsity * scores.numel()))


def top_channels(scores: Tensor, keep: int) -> Tensor:
    """bool (n,): True at the ``keep`` highest of ``scores`` (n,)."""
    out = torch.zeros(scores.numel(), dtype=torch.bool)
    out[torch.topk(scores, keep, sorted=False).indices] = True
    return out

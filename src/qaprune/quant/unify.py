"""Micro-structured weight unification: blocks of weights that share one magnitude.

The (out, in) view of a weight (out, ...) (a conv kernel flattened over in·kh·kw in memory
order, a vector as (out, 1), as the ``blocks`` structure sees it) is tiled into r×c blocks,
numbered row-major over the tile grid; edge tiles that r or c does not divide are partial. In a
*unified* block every entry has the block's magnitude m_b and keeps its sign:
``w = sign(w) · m_b`` (an exact zero counts as positive). With the signs fixed, the least-squares
magnitude is the mean of |w| over the block, and the block's unification error is
``Σ (|w| − mean|w|)²``. Pruning is the case m_b = 0.

Projection rule (``unify_project``): of the n blocks of a weight, ``round(ratio·n)`` are
unified and the others stay free. Pruning a block costs its energy ``Σ w² = error + n_b·mean²``,
never less than its unification error, so m_b = 0 is never the cheaper choice for a block on its
own; it is a budget instead. First the ``round(prune·n)`` blocks of least energy are pruned (they
count among the unified ones), then the ``round(ratio·n) − round(prune·n)`` remaining blocks of
least unification error are unified; ties go to the lower block index. With ``prune=0`` the
result is the closest tensor (Frobenius) with ``round(ratio·n)`` unified blocks; with
``prune > 0`` each stage is exact but the pair is a heuristic. Block statistics are computed in
float64, so projecting a projected weight returns it bit for bit.

Training toward the constraint is ADMM (``ADMMUnify``): W-step = the ordinary optimizer on
loss + (ρ/2)·||W − Z + U||², Z-step Z = Π(W + U), dual step U += W − Z, ρ grows geometrically.
At the end ``finalize`` projects W hard and registers a ``Unified`` parametrization, so that
fine-tuning keeps the chosen blocks unified; ``qaprune.methods.admm_unify`` runs the whole flow with
``fit``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from qaprune.errors import RecipeError
from qaprune.param import WEIGHT_LAYERS, latent_weight, place


def check_options(block: Sequence[int], ratio: float, *, prune: float = 0.0, layer: str = "weight") -> None:
    """Refuse a block that is not [rows, cols] of positive integers, a ratio outside [0, 1] or a
    prune fraction outside [0, ratio], with a RecipeError naming the field and ``layer``."""
    _check_block_arg(block, layer)
    _check_ratios(ratio, prune, layer)


def _check_block_arg(block: Sequence[int], layer: str) -> None:
    if (
        not isinstance(block, (list, tuple))
        or len(block) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)
    ):
        raise RecipeError(f"unify.block: {block!r} for layer {layer!r}; need [rows, cols] of positive integers")


def _check_block(shape: Sequence[int], block: Sequence[int], layer: str) -> tuple[int, int, int, int]:
    """(r, c, out, cols) for a weight of ``shape``; a RecipeError naming ``layer`` when wrong."""
    _check_block_arg(block, layer)
    if len(shape) == 0:
        raise RecipeError(f"unify: layer {layer!r} is a scalar; a weight (out, ...) is needed")
    (r, c), out, cols = block, int(shape[0]), math.prod(int(d) for d in shape[1:])
    if r > out or c > cols:
        raise RecipeError(
            f"unify.block: {[r, c]} is larger than the (out, in) view {(out, cols)} of layer {layer!r} {tuple(shape)}"
        )
    return r, c, out, cols


def _check_ratios(ratio: float, prune: float, layer: str) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise RecipeError(f"unify.ratio: {ratio} is not in [0, 1] (layer {layer!r})")
    if not 0.0 <= prune <= ratio:
        raise RecipeError(
            f"unify.prune: {prune} is not in [0, ratio={ratio}] (layer {layer!r}); "
            "pruned blocks count among the unified ones"
        )


def block_ids(shape: Sequence[int], block: Sequence[int], *, layer: str = "weight") -> tuple[Tensor, int]:
    """(ids (numel,) int64, n_blocks): the block of every entry of a weight of ``shape``, in
    memory order. Blocks are numbered row-major over the grid of r×c tiles of the (out, in) view.

    Example:
        >>> block_ids((2, 4), (1, 2))
        (tensor([0, 0, 1, 1, 2, 2, 3, 3]), 4)
    """
    r, c, out, cols = _check_block(shape, block, layer)
    grid_cols = -(-cols // c)
    ids = (torch.arange(out) // r).unsqueeze(1) * grid_cols + (torch.arange(cols) // c).unsqueeze(0)
    return ids.reshape(-1), -(-out // r) * grid_cols


def block_mean_abs(w: Tensor, ids: Tensor, counts: Tensor) -> Tensor:
    """Per entry, the mean |w| of its block (differentiable; summed in float64, so a block of
    equal magnitudes gives that magnitude back exactly). w (...) numel entries, ids (numel,),
    counts (n_blocks,) float64 -> (numel,) in w's dtype."""
    a = w.reshape(-1).abs().to(torch.float64)
    return (a.new_zeros(counts.numel()).index_add(0, ids, a) / counts)[ids].to(w.dtype)


def _unify(w: Tensor, ids: Tensor, counts: Tensor, unified: Tensor, pruned: Tensor) -> Tensor:
    """w with the ``unified`` blocks (n_blocks,) bool set to sign(w)·mean|w|, ``pruned`` ones to 0."""
    flat = w.reshape(-1)
    m = block_mean_abs(flat, ids, counts)
    m = torch.where(flat < 0, -m, m).masked_fill(pruned[ids], 0.0)
    return torch.where(unified[ids], m, flat).view_as(w)


def _smallest(values: Tensor, k: int) -> Tensor:
    """(n,) bool: the k smallest values, ties to the lower index."""
    chosen = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    chosen[torch.sort(values, stable=True).indices[:k]] = True
    return chosen


@torch.no_grad()
def block_errors(w: Tensor, block: Sequence[int], *, layer: str = "weight") -> tuple[Tensor, Tensor]:
    """(unification error (n_blocks,), energy (n_blocks,)), float64: Σ(|w| − mean|w|)² and Σw².

    Example:
        >>> err, energy = block_errors(torch.tensor([[1.0, -3.0, 2.0, 2.0]]), (1, 2))
        >>> err.tolist(), energy.tolist()
        ([2.0, 0.0], [10.0, 8.0])
    """
    ids, n = block_ids(w.shape, block, layer=layer)
    ids, counts = ids.to(w.device), torch.bincount(ids.to(w.device), minlength=n).to(torch.float64)
    a = w.detach().reshape(-1).abs().to(torch.float64)
    dev = (a - block_mean_abs(a, ids, counts)).square()
    return a.new_zeros(n).index_add(0, ids, dev), a.new_zeros(n).index_add(0, ids, a.square())


@torch.no_grad()
def choose_blocks(
    w: Tensor, block: Sequence[int], ratio: float, *, prune: float = 0.0, layer: str = "weight"
) -> tuple[Tensor, Tensor]:
    """(unified (n_blocks,) bool, pruned (n_blocks,) bool), pruned ⊆ unified, by the module's
    rule: the least-energy blocks pruned, then the least-error blocks unified.

    Example:
        >>> w = torch.tensor([[1.0, -1.0, 0.1, 3.0, 0.01, -0.02]])
        >>> [t.tolist() for t in choose_blocks(w, (1, 2), 2 / 3, prune=1 / 3)]
        [[True, False, True], [False, False, True]]
    """
    _check_ratios(ratio, prune, layer)
    err, energy = block_errors(w, block, layer=layer)
    n = err.numel()
    pruned = _smallest(energy, int(round(prune * n)))
    rest = _smallest(err.masked_fill(pruned, math.inf), int(round(ratio * n)) - int(pruned.sum()))
    return pruned | rest, pruned


@torch.no_grad()
def unify_project(
    w: Tensor, block: Sequence[int] = (1, 4), ratio: float = 0.5, *, prune: float = 0.0, layer: str = "weight"
) -> Tensor:
    """Π(w): the ``ratio`` fraction of r×c blocks with the least unification error get one
    shared magnitude (their mean |w|) with their signs kept; a ``prune`` fraction (of least energy)
    becomes 0. w (out, ...) -> same shape and dtype, detached; idempotent bit for bit.

    Example:
        >>> unify_project(torch.tensor([[1.0, -3.0, 2.0, 2.5]]), (1, 2), 0.5).tolist()
        [[1.0, -3.0, 2.25, 2.25]]
    """
    unified, pruned = choose_blocks(w, block, ratio, prune=prune, layer=layer)
    ids, n = block_ids(w.shape, block, layer=layer)
    ids = ids.to(w.device)
    return _unify(w.detach(), ids, torch.bincount(ids, minlength=n).to(torch.float64), unified, pruned)


class Unified(nn.Module):
    """Parametrization that keeps chosen blocks unified: w (out, ...) -> same shape, where the
    ``unified`` blocks (n_blocks,) bool are sign(w)·mean|w| and the ``pruned`` ones 0; gradients
    reach every entry of a unified block through its mean, none reach pruned entries. Register it
    before any quantizer; after a ``Mask``, a masked zero inside a unified block would read +m_b
    (prune through ``prune=`` instead).

    Example:
        >>> lin = nn.Linear(4, 2)
        >>> par = Unified.from_weight(lin.weight, (1, 4), 1.0)
        >>> from qaprune.param import place
        >>> _ = place(lin, "weight", par)
        >>> bool((lin.weight.abs() == lin.weight.abs()[:, :1]).all())
        True
    """

    stage = "share"  # qaprune.param: after the mask, before the quantizer

    def __init__(
        self, shape: Sequence[int], block: Sequence[int], unified: Tensor, pruned: Tensor, *, layer: str = "weight"
    ) -> None:
        super().__init__()
        ids, n = block_ids(shape, block, layer=layer)
        if unified.shape != (n,) or pruned.shape != (n,):
            raise RecipeError(
                f"unify: layer {layer!r} has {n} blocks of {list(block)}; got masks of "
                f"shapes {tuple(unified.shape)} and {tuple(pruned.shape)}"
            )
        self.block = tuple(block)
        self.register_buffer("unified", unified.to(torch.bool).clone())
        self.register_buffer("pruned", (pruned.to(torch.bool) & self.unified).clone())
        self.register_buffer("ids", ids.to(unified.device), persistent=False)
        counts = torch.bincount(self.ids, minlength=n).to(torch.float64)
        self.register_buffer("counts", counts, persistent=False)

    @classmethod
    def from_weight(
        cls, w: Tensor, block: Sequence[int], ratio: float, *, prune: float = 0.0, layer: str = "weight"
    ) -> Unified:
        """The parametrization whose blocks are those ``unify_project(w, ...)`` chooses."""
        unified, pruned = choose_blocks(w, block, ratio, prune=prune, layer=layer)
        return cls(w.shape, block, unified, pruned, layer=layer)

    def forward(self, w: Tensor) -> Tensor:
        return _unify(w, self.ids, self.counts, self.unified, self.pruned)

    def extra_repr(self) -> str:
        return f"block={list(self.block)}, unified={int(self.unified.sum())}/{self.unified.numel()}"


def weight_layers(
    model: nn.Module, names: Sequence[str] | None = None, *, field_name: str = "layers"
) -> dict[str, nn.Module]:
    """Linear/Conv layers of ``model`` by name, in module order; only ``names`` when given (an
    unknown name is a RecipeError listing the known ones)."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
    if names is None:
        return found
    unknown = [n for n in names if n not in found]
    if unknown:
        raise RecipeError(f"{field_name}: {unknown} are not Linear/Conv layers; known: {', '.join(found)}")
    return {n: found[n] for n in found if n in names}


class ADMMUnify:
    """ADMM toward unified blocks on every Linear/Conv weight W of ``model`` (or ``layers``).

    W-step: any optimizer. While started (``with admm:``), every backward adds ρ·(W − Z + U), the
    gradient of (ρ/2)·||W − Z + U||², to each W's gradient, exactly as if the penalty were in the
    loss: ``fit`` and hand-written loops work unchanged (``penalty()`` gives the value). ``update()``
    is the Z-step Z = Π(W + U) and the dual step U += W − Z; then ρ ← ρ·rho_factor and
    U ← U / rho_factor (U is the scaled dual λ/ρ, so λ is kept). ``on_epoch`` calls ``update``
    every ``every`` epochs (for ``fit(..., on_epoch=admm.on_epoch)`` with ``patience=None``).
    ``finalize()`` projects W hard and registers ``Unified`` on each layer. Z, U: W's shapes.

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 4))
        >>> x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> admm = ADMMUnify(model, block=(1, 4), ratio=0.5, rho=0.1)
        >>> with admm:
        ...     for _ in range(3):
        ...         opt.zero_grad()
        ...         nn.functional.cross_entropy(model(x), y).backward()
        ...         opt.step()
        ...         _ = admm.update()
        >>> _ = admm.finalize()
        >>> a = model[0].weight.abs().reshape(8, 4)  # the 8 blocks of 1×4
        >>> int((a == a[:, :1]).all(1).sum())
        4
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        block: Sequence[int] = (1, 4),
        ratio: float = 0.5,
        prune: float = 0.0,
        rho: float = 0.1,
        rho_factor: float = 2.0,
        every: int = 1,
        layers: Sequence[str] | None = None,
    ) -> None:
        if not rho > 0 or not rho_factor >= 1 or every < 1:
            raise RecipeError(f"unify.admm: rho={rho} must be > 0, rho_factor={rho_factor} >= 1, every={every} >= 1")
        check_options(block, ratio, prune=prune, layer="(all)")
        self.block, self.ratio, self.prune = tuple(block), ratio, prune
        self.rho, self.rho_factor, self.every = rho, rho_factor, every
        self.layers = weight_layers(model, layers, field_name="unify.layers")
        self.z = {
            n: unify_project(latent_weight(m), block, ratio, prune=prune, layer=n) for n, m in self.layers.items()
        }
        self.u = {n: torch.zeros_like(z) for n, z in self.z.items()}
        self.history: list[dict[str, float]] = []
        self._handles: list = []

    def _w(self, name: str) -> Tensor:
        return latent_weight(self.layers[name])

    def penalty(self) -> Tensor:
        """Σ over layers of (ρ/2)·||W − Z + U||²: a scalar with gradients to the weights."""
        return sum(
            ((self.rho / 2) * (self._w(n) - self.z[n] + self.u[n]).square().sum() for n in self.z), torch.zeros(())
        )

    def _grad_hook(self, name: str):
        w = self._w(name)
        return lambda g: g + self.rho * (w.detach() - self.z[name] + self.u[name])

    def start(self) -> ADMMUnify:
        """Add the penalty's gradient at every backward from now on (idempotent)."""
        if not self._handles:
            self._handles = [self._w(n).register_hook(self._grad_hook(n)) for n in self.z]
        return self

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> ADMMUnify:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @torch.no_grad()
    def residual(self) -> float:
        """The primal residual ||W − Z|| over all layers (Frobenius)."""
        return math.sqrt(sum(float((self._w(n) - self.z[n]).square().sum()) for n in self.z))

    @torch.no_grad()
    def update(self) -> float:
        """Z-step, dual step and ρ growth; returns (and logs in ``history``) ||W − Z||."""
        for n in self.z:
            w = self._w(n).detach()
            self.z[n] = unify_project(w + self.u[n], self.block, self.ratio, prune=self.prune, layer=n)
            self.u[n] += w - self.z[n]
        res = self.residual()
        self.history.append({"iteration": len(self.history) + 1, "rho": self.rho, "residual": res})
        self.rho *= self.rho_factor
        for u in self.u.values():
            u /= self.rho_factor
        return res

    def on_epoch(self, epoch: int) -> bool:
        """``fit``'s on_epoch hook (runs before each epoch): ``update`` after every ``every`` epochs."""
        if epoch and epoch % self.every == 0:
            self.update()
        return False

    @torch.no_grad()
    def finalize(self) -> dict[str, Unified]:
        """Stop the penalty, set W = Π(W) and register a ``Unified`` (those blocks) on each layer."""
        self.stop()
        out = {}
        for n, mod in self.layers.items():
            w = self._w(n)
            unified = Unified.from_weight(w, self.block, self.ratio, prune=self.prune, layer=n)
            w.copy_(unified(w))
            place(mod, "weight", unified)
            out[n] = unified
        return out


@dataclass
class ADMMResult:
    history: list[dict[str, float]] = field(default_factory=list)  # per iteration: rho, residual, ...
    accuracy: float = 0.0  # validation accuracy after the hard projection (and fine-tuning)
    parametrizations: dict[str, Unified] = field(default_factory=dict)

"""Statistics for data-dependent criteria, collected by hooks and autograd (criteria never
reach into the model; they read only the ``LayerStats`` made here).

- ``collect_stats(model, x, y, needs=CRITERIA.get(name).needs)``: gradients, Hutchinson
  Hessian diagonals and output activations on calibration batches, per Linear/Conv layer.
- ``MomentumTracker``: running averages of |w| during training (``fit(..., on_step=tracker)``).

Gradients and Hessians are taken w.r.t. the *latent* weight, ``latent_weight(module)`` (the
float tensor the optimizer trains): under a ``Mask`` they are zero at pruned entries, through a
``FakeQuant`` they are its straight-through gradient. This is the tensor ``prune_to`` scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qaprune.errors import RecipeError
from qaprune.param import WEIGHT_LAYERS, latent_weight
from qaprune.prune.criteria import LayerStats

COLLECTABLE = ("activations", "grad", "hessian", "momentum")


def scored_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear/Conv layer of ``model``, by its ``named_modules()`` name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}


def collect_stats(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    needs: set[str] | frozenset[str],
    batch_size: int = 256,
    batches: int = 4,
    hutchinson_samples: int = 4,
    generator: torch.Generator | None = None,
    momentum: MomentumTracker | None = None,
) -> dict[str, LayerStats]:
    """``LayerStats`` for every Linear/Conv layer of ``model``, keyed by module name.

    Calibration: ``batches`` batches of ``batch_size`` samples of x (N, ...), y (N,) int64,
    drawn without replacement with ``generator`` (seed 0 if None), the model in eval mode
    (restored after); parameters' ``.grad`` are left untouched. ``needs`` picks the fields:
    ``grad``: ∂L/∂w of the mean cross-entropy over all calibration samples (latent weight);
    ``hessian``: Hutchinson diag(∂²L/∂w²), ``hutchinson_samples`` Rademacher vectors per batch;
    ``activations``: the layer's outputs (N, out, *spatial) on the first batch (forward hooks);
    ``momentum``: copied from the ``momentum`` tracker that watched training.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> st = collect_stats(m, torch.randn(8, 4), torch.randint(0, 2, (8,)), needs={"grad"})
        >>> {n: tuple(s.grad.shape) for n, s in st.items()}
        {'0': (3, 4), '2': (2, 3)}
    """
    _check_needs(needs, momentum)
    layers = scored_layers(model)
    stats = {n: LayerStats(name=n, generator=generator) for n in layers}
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    idx = torch.randperm(len(x), generator=gen, device=gen.device)[: batch_size * batches].to(x.device)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        if "activations" in needs:
            _record_activations(model, layers, x[idx[:batch_size]], stats)
        if {"grad", "hessian"} & set(needs):
            _curvature(
                model,
                layers,
                x[idx],
                y[idx],
                stats,
                needs=needs,
                batch_size=batch_size,
                samples=hutchinson_samples,
                generator=gen,
            )
    finally:
        for m, training in modes.items():
            m.train(training)
    if "momentum" in needs and momentum is not None:
        momentum.stats(into=stats)
    return stats


def _check_needs(needs: set[str] | frozenset[str], momentum: MomentumTracker | None) -> None:
    unknown = sorted(set(needs) - set(COLLECTABLE))
    if unknown:
        raise RecipeError(f"collect_stats: needs {unknown} unknown; allowed: {', '.join(COLLECTABLE)}")
    if "momentum" in needs and momentum is None:
        raise RecipeError(
            "collect_stats: 'momentum' is gathered during training: pass "
            "tracker = MomentumTracker(model) as fit(..., on_step=tracker), then "
            "collect_stats(..., momentum=tracker)"
        )


@torch.no_grad()
def _record_activations(
    model: nn.Module, layers: dict[str, nn.Module], xb: Tensor, stats: dict[str, LayerStats]
) -> None:
    """Forward hooks keep each layer's first output, channels moved to dim 1: (N, out, ...)."""

    def hook(name: str):
        def keep(mod: nn.Module, inputs, out: Tensor) -> None:
            if stats[name].activations is None:
                a = out.detach()
                linear_nd = isinstance(mod, nn.Linear) and a.dim() > 2  # (N, ..., out)
                stats[name].activations = a.movedim(-1, 1) if linear_nd else a

        return keep

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        model(xb)
    finally:
        for h in handles:
            h.remove()


def _curvature(
    model: nn.Module,
    layers: dict[str, nn.Module],
    x: Tensor,
    y: Tensor,
    stats: dict[str, LayerStats],
    *,
    needs: set[str] | frozenset[str],
    batch_size: int,
    samples: int,
    generator: torch.Generator,
) -> None:
    """Fill ``grad`` / ``hessian``: sample-weighted means over the batches of (x, y)."""
    weights = [latent_weight(m) for m in layers.values()]
    frozen = [n for n, w in zip(layers, weights) if not w.requires_grad]
    if frozen:
        raise RecipeError(f"collect_stats: the weights of layers {frozen} do not require grad")
    want_h = "hessian" in needs
    g_sum = [torch.zeros_like(w, requires_grad=False) for w in weights]
    h_sum = [torch.zeros_like(w, requires_grad=False) for w in weights]
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        with torch.enable_grad():
            loss = F.cross_entropy(model(xb), yb)
            grads = torch.autograd.grad(loss, weights, create_graph=want_h, allow_unused=True)
            grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, weights)]
            hess = hutchinson_diagonal(grads, weights, samples=samples, generator=generator) if want_h else []
        for acc, g in zip(g_sum, grads):
            acc.add_(g.detach(), alpha=len(xb))
        for acc, h in zip(h_sum, hess):
            acc.add_(h, alpha=len(xb))
    for name, g, h in zip(layers, g_sum, h_sum):
        if "grad" in needs:
            stats[name].grad = g / len(x)
        if want_h:
            stats[name].hessian = h / len(x)


def hutchinson_diagonal(
    grads: Sequence[Tensor], weights: Sequence[Tensor], *, samples: int, generator: torch.Generator | None = None
) -> list[Tensor]:
    """Hutchinson estimate of diag(H) for each weight: the mean over ``samples`` Rademacher
    vectors v (over all weights together) of v ⊙ Hv, Hv by a second ``autograd.grad`` through
    ``grads`` (made with ``create_graph=True``). Its sum over an output channel c estimates
    Tr(H_cc) = E[v_cᵀ H_cc v_c]. -> one tensor per weight, of its shape.

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> g = torch.autograd.grad((3 * w[0] ** 2 + w[1] ** 2) / 2, [w], create_graph=True)
        >>> hutchinson_diagonal(g, [w], samples=1)[0].tolist()  # a diagonal H is exact
        [3.0, 1.0]
    """
    est = [torch.zeros_like(w, requires_grad=False) for w in weights]
    live = [i for i, g in enumerate(grads) if g.requires_grad]  # the others have H = 0
    if not live or samples < 1:
        return est
    device = generator.device if generator is not None else torch.device("cpu")
    for _ in range(samples):
        vs = [(torch.randint(0, 2, w.shape, generator=generator, device=device) * 2 - 1).to(w) for w in weights]
        hvs = torch.autograd.grad(
            [grads[i] for i in live],
            list(weights),
            grad_outputs=[vs[i] for i in live],
            retain_graph=True,
            allow_unused=True,
        )
        for e, v, hv in zip(est, vs, hvs):
            if hv is not None:
                e.add_(v * hv.detach())
    return [e / samples for e in est]


class MomentumTracker:
    """WeightMom statistics: per Linear/Conv layer, the running average of |w| (latent weight)
    over optimizer steps, m₁ = |w₁|, m_t = β·m_{t−1} + (1 − β)·|w_t|.

    Example:
        >>> from qaprune.recipe import TrainSpec
        >>> from qaprune.train import fit
        >>> m = nn.Sequential(nn.Linear(4, 3))
        >>> tracker = MomentumTracker(m, beta=0.9)
        >>> _ = fit(m, torch.randn(16, 4), torch.randint(0, 3, (16,)), torch.randn(8, 4),
        ...         torch.randint(0, 3, (8,)), spec=TrainSpec(epochs=1, batch_size=8), on_step=tracker)
        >>> tracker.steps, tuple(tracker.stats()["0"].momentum.shape)
        (2, (3, 4))
    """

    def __init__(self, model: nn.Module, beta: float = 0.9) -> None:
        if not 0.0 <= beta < 1.0:
            raise RecipeError(f"MomentumTracker: beta {beta} is not in [0, 1)")
        self.model, self.beta, self.steps = model, beta, 0
        self.layers = scored_layers(model)
        self.average: dict[str, Tensor] = {}

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> None:
        """Update after an optimizer step; ``model`` must be the tracked model (fit passes it)."""
        if model is not self.model:
            raise RecipeError("MomentumTracker: called with a different model than it tracks")
        for name, mod in self.layers.items():
            w = latent_weight(mod).detach().abs()
            if name in self.average:
                self.average[name].mul_(self.beta).add_(w, alpha=1.0 - self.beta)
            else:
                self.average[name] = w.clone()
        self.steps += 1

    def stats(self, into: dict[str, LayerStats] | None = None) -> dict[str, LayerStats]:
        """Set ``momentum`` on the ``LayerStats`` of ``into`` (created per layer where missing)."""
        out = into if into is not None else {}
        for name, avg in self.average.items():
            out.setdefault(name, LayerStats(name=name)).momentum = avg.clone()
        return out

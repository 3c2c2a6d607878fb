"""Learning-compression (LC, Carreira-Perpiñán 2017), the optimizer of Condensa.

Compress a trained model toward any scheme Π (``qaprune.schemes``: prune, quantize, cluster,
unify, composed) by the augmented Lagrangian of ``min loss(w) s.t. w = Δ(θ)``::

    loss(w) − λᵀ(w − Δ(θ)) + (μ/2)·||w − Δ(θ)||²
        = loss(w) + (μ/2)·||w − Δ(θ) − λ/μ||² + const

Start: w = the trained weights, Δ(θ) = Π(w) (direct compression), λ = 0. Iteration i, with
μ = μ0 · mu_factor^i:

- L step: minibatch Adam steps on loss(w) + (μ/2)·||w − Δ(θ) − λ/μ||² (every parameter trains;
  the penalty is on the scheme's weights);
- C step: Δ(θ) = Π(w − λ/μ);
- multipliers: λ ← λ − μ·(w − Δ(θ)).

After the last iteration the model's weights are set to Δ(θ): the model is exactly compressed
by the scheme. Data are in-memory tensors batched by index.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qaprune.errors import NonFiniteError, RecipeError
from qaprune.metrics.classification import accuracy, predict
from qaprune.schemes import Scheme

Weights = dict[str, Tensor]


@dataclass
class LCResult:
    """``history``: one entry per iteration with ``iteration``, ``mu``, ``accuracy`` (the
    compressed Δ(θ) on the validation data), ``accuracy_uncompressed`` (w) and ``distance``
    ||w − Δ(θ)||; ``direct_accuracy``: Π of the starting weights (no training); ``accuracy``: the
    returned, compressed model; ``uncompressed``: w after the last L step, by layer."""

    history: list[dict[str, float]] = field(default_factory=list)
    direct_accuracy: float = 0.0
    accuracy: float = 0.0
    uncompressed: Weights = field(default_factory=dict)


def lc_compress(
    model: nn.Module,
    scheme: Scheme,
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    *,
    mu0: float = 1e-3,
    mu_factor: float = 1.5,
    iterations: int = 10,
    steps_per_iteration: int | None = None,
    epochs_per_iteration: int = 1,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> LCResult:
    """Compress ``model`` in place by LC toward ``scheme``; x (N, ...) float, y (N,) int64 on the
    model's device. An L step is ``steps_per_iteration`` minibatch steps, or when that is None
    ``epochs_per_iteration`` passes over the training data.

    Example:
        >>> from qaprune.schemes import Prune
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(96, 8), torch.randint(0, 3, (96,))
        >>> r = lc_compress(model, Prune(0.75), x, y, x, y, iterations=3, steps_per_iteration=5)
        >>> len(r.history), float((model[0].weight == 0).float().mean()) > 0.5
        (3, True)
    """
    _check_options(mu0, mu_factor, iterations, steps_per_iteration, epochs_per_iteration, lr, batch_size)
    params = scheme.weights(model)
    theta = scheme.project(_detached(params))
    lam = {n: torch.zeros_like(t) for n, t in theta.items()}
    result = LCResult(direct_accuracy=_accuracy_with(model, params, theta, x_val, y_val))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    batches = _batches(len(x_train), batch_size, torch.Generator().manual_seed(seed), x_train.device)
    steps = steps_per_iteration or epochs_per_iteration * math.ceil(len(x_train) / batch_size)
    for i in range(iterations):
        mu = mu0 * mu_factor**i
        target = {n: theta[n] + lam[n] / mu for n in params}
        _l_step(model, opt, x_train, y_train, params, target, mu=mu, batches=batches, steps=steps)
        w = _detached(params)
        theta = scheme.project({n: w[n] - lam[n] / mu for n in params})
        lam = {n: lam[n] - mu * (w[n] - theta[n]) for n in params}
        result.history.append(
            {
                "iteration": i + 1,
                "mu": mu,
                "accuracy": _accuracy_with(model, params, theta, x_val, y_val),
                "accuracy_uncompressed": accuracy(predict(model, x_val), y_val),
                "distance": math.sqrt(sum(float((w[n] - theta[n]).square().sum()) for n in params)),
            }
        )
    result.uncompressed = {n: p.detach().clone() for n, p in params.items()}
    _load(params, theta)
    result.accuracy = accuracy(predict(model, x_val), y_val)
    return result


def _check_options(
    mu0: float, mu_factor: float, iterations: int, steps: int | None, epochs: int, lr: float, batch_size: int
) -> None:
    problems = [
        f"{k}={v}"
        for k, v, ok in (
            ("mu0", mu0, mu0 > 0),
            ("mu_factor", mu_factor, mu_factor >= 1),
            ("iterations", iterations, iterations >= 1),
            ("epochs_per_iteration", epochs, epochs >= 1),
            ("steps_per_iteration", steps, steps is None or steps >= 1),
            ("lr", lr, lr > 0),
            ("batch_size", batch_size, batch_size >= 1),
        )
        if not ok
    ]
    if problems:
        raise RecipeError(f"lc: {', '.join(problems)}; need mu0, lr > 0, mu_factor >= 1, the counts >= 1")


def _detached(params: Weights) -> Weights:
    return {n: p.detach().clone() for n, p in params.items()}


@torch.no_grad()
def _load(params: Weights, values: Weights) -> None:
    for n, p in params.items():
        p.copy_(values[n])


def _accuracy_with(model: nn.Module, params: Weights, values: Weights, x: Tensor, y: Tensor) -> float:
    """Validation accuracy with ``values`` in place of the weights, which are then put back."""
    kept = _detached(params)
    _load(params, values)
    try:
        return accuracy(predict(model, x), y)
    finally:
        _load(params, kept)


def _batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device) -> Iterator[Tensor]:
    """Index batches (≤ batch_size,) int64 forever, a fresh permutation every pass."""
    while True:
        perm = torch.randperm(n, generator=gen).to(device)
        yield from perm.split(batch_size)


def _l_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    params: Weights,
    target: Weights,
    *,
    mu: float,
    batches: Iterator[Tensor],
    steps: int,
) -> None:
    """``steps`` minibatch steps on cross-entropy + (μ/2)·Σ||w − target||²."""
    model.train()
    for _ in range(steps):
        idx = next(batches)
        penalty = sum((params[n] - target[n]).square().sum() for n in params)
        loss = F.cross_entropy(model(x[idx]), y[idx]) + (mu / 2) * penalty
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if not math.isfinite(float(loss.detach())):
        raise NonFiniteError(f"lc: the L-step loss is {float(loss)} at mu={mu} (try a lower lr or mu0)")

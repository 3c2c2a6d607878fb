"""Methods that drive training around a plug-in: they sit above ``fit`` and the recipe.

- ``genetic_prune_and_distill``: Hu et al.'s genetic channel selection (``prune.genetic``) then
  fine-tuning with knowledge distillation from the dense model;
- ``admm_unify``: micro-structured weight unification trained by ADMM (``quant.unify``), then the
  hard projection and fine-tuning under ``Unified``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import Tensor, nn

from qaprune.metrics.classification import accuracy, predict
from qaprune.param import bake
from qaprune.prune.genetic import GeneticResult, genetic_channels
from qaprune.quant.unify import ADMMResult, ADMMUnify
from qaprune.recipe import DistillSpec, TrainSpec
from qaprune.train import FitResult, fit

__all__ = ["admm_unify", "genetic_prune_and_distill"]


def genetic_prune_and_distill(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    *,
    sparsity: float,
    example_input: Tensor,
    spec: TrainSpec,
    teacher: nn.Module | None = None,
    seed: int = 0,
    **genetic_args,
) -> tuple[GeneticResult, FitResult]:
    """Hu et al.'s flow: genetic selection (``genetic_channels``, KD fitness), then ``fit`` with
    distillation from ``teacher`` (default: a frozen copy of ``model`` before pruning).
    ``spec``: a ``TrainSpec``; without ``distill`` the ``DistillSpec`` defaults are used. The
    default teacher is baked (plain weights): a deep copy of a parametrized model shares its
    generated classes, which masking the student's biases would change under the copy.
    Returns (GeneticResult, FitResult).

    Example:
        >>> import torch
        >>> from qaprune.models import build_model
        >>> m = build_model("mlp", input_shape=(16,), num_classes=5).eval()
        >>> x, y = torch.randn(64, 16), torch.randint(0, 5, (64,))
        >>> g, f = genetic_prune_and_distill(m, x, y, x, y, sparsity=0.5, example_input=x[:2],
        ...                                  spec=TrainSpec(epochs=1), generations=1)
        >>> g.fitness, f.epochs
        ('kd', 1)
    """
    if teacher is None:
        teacher = bake(copy.deepcopy(model)).eval()
    result = genetic_channels(
        model,
        x_train,
        y_train,
        sparsity=sparsity,
        example_input=example_input,
        seed=seed,
        teacher=teacher,
        **genetic_args,
    )
    if spec.distill is None:
        spec = spec.model_copy(update={"distill": DistillSpec()})
    return result, fit(model, x_train, y_train, x_val, y_val, spec=spec, seed=seed, teacher=teacher)


def admm_unify(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    *,
    block: Sequence[int] = (1, 4),
    ratio: float = 0.5,
    prune: float = 0.0,
    rho: float = 0.1,
    rho_factor: float = 2.0,
    iterations: int = 10,
    epochs_per_iteration: int = 1,
    lr: float = 1e-3,
    batch_size: int = 128,
    finetune_epochs: int = 0,
    seed: int = 0,
    layers: Sequence[str] | None = None,
) -> ADMMResult:
    """ADMM unification with ``fit`` (Adam): ``iterations`` Z-steps, one every
    ``epochs_per_iteration`` epochs, then the hard projection and ``finetune_epochs`` of training
    under ``Unified``. x (N, ...) float, y (N,) int64, on the model's device.

    Example:
        >>> import torch
        >>> model = nn.Sequential(nn.Linear(8, 4))
        >>> x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
        >>> r = admm_unify(model, x, y, x, y, block=(1, 4), ratio=1.0, iterations=3)
        >>> a = model[0].weight.abs().reshape(8, 4)  # every 1×4 block unified
        >>> len(r.history), bool((a == a[:, :1]).all())
        (3, True)
    """
    admm = ADMMUnify(
        model,
        block=block,
        ratio=ratio,
        prune=prune,
        rho=rho,
        rho_factor=rho_factor,
        every=epochs_per_iteration,
        layers=layers,
    )

    def on_epoch(epoch: int) -> bool:
        done = len(admm.history)
        admm.on_epoch(epoch)
        if len(admm.history) > done:
            admm.history[-1]["val_accuracy"] = accuracy(predict(model, x_val), y_val)
        return False

    spec = TrainSpec(epochs=iterations * epochs_per_iteration, lr=lr, batch_size=batch_size, patience=None)
    with admm:
        fit(model, x_train, y_train, x_val, y_val, spec=spec, seed=seed, on_epoch=on_epoch)
        on_epoch(spec.epochs)  # the last Z-step: fit calls on_epoch before epochs only
    found = admm.finalize()
    if finetune_epochs:
        fit(
            model,
            x_train,
            y_train,
            x_val,
            y_val,
            spec=spec.model_copy(update={"epochs": finetune_epochs}),
            seed=seed + 1,
        )
    return ADMMResult(admm.history, accuracy(predict(model, x_val), y_val), found)

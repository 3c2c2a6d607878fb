"""Tests of qaprune.train.fit on small in-memory tensors: learning a separable problem, early
stopping with restore of the best weights, NaN detection, reproducibility, QAP training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qaprune.compress import attach
from qaprune.errors import NonFiniteError
from qaprune.models import build_model
from qaprune.param import get_mask, latent_weight
from qaprune.prune import prune_to
from qaprune.recipe import Recipe, TrainSpec
from qaprune.train import evaluate_loss, fit, l1_penalty, make_optimizer


def _blobs(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two well separated Gaussian blobs in 4-D (centres ±2 on every axis)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 4, generator=gen) + (4.0 * y - 2.0).unsqueeze(1)
    return x, y


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _net(seed: int = 0, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def test_separable_problem_learned() -> None:
    x, y = _blobs(256, seed=0)
    xv, yv = _blobs(128, seed=1)
    model = _net()
    before = evaluate_loss(model, xv, yv)
    result = fit(model, x, y, xv, yv, spec=TrainSpec(epochs=5, lr=0.05, batch_size=32, patience=None))
    assert result.epochs == 5
    assert len(result.losses) == 5 and [r["epoch"] for r in result.losses] == [1, 2, 3, 4, 5]
    assert _accuracy(model, xv, yv) >= 0.97
    assert result.best_val_loss < before / 4
    assert result.losses[-1]["train_loss"] < result.losses[0]["train_loss"]
    assert result.train_seconds > 0 and result.seconds_per_epoch == pytest.approx(result.train_seconds / 5)


def test_early_stopping_restores_best_weights() -> None:
    # random labels and a wide net: the validation loss rises after the first epochs
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    xv, yv = torch.randn(64, 4, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    model = _net(hidden=128)
    spec = TrainSpec(epochs=60, lr=0.03, batch_size=16, patience=2)
    result = fit(model, x, y, xv, yv, spec=spec)
    assert result.epochs < 60
    assert result.epochs == result.best_epoch + 2
    vals = [r["val_loss"] for r in result.losses]
    assert result.best_val_loss == min(vals)
    assert vals[result.best_epoch - 1] == result.best_val_loss
    assert all(v >= result.best_val_loss for v in vals[result.best_epoch :])
    assert evaluate_loss(model, xv, yv) == result.best_val_loss
    assert vals[-1] > result.best_val_loss  # the last weights were worse: they were replaced


def test_patience_none_trains_all_epochs_and_keeps_last() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    xv, yv = torch.randn(64, 4, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    model = _net(hidden=64)
    result = fit(model, x, y, xv, yv, spec=TrainSpec(epochs=8, lr=0.03, batch_size=16, patience=None))
    assert result.epochs == 8
    assert evaluate_loss(model, xv, yv) == result.losses[-1]["val_loss"]


def test_min_delta() -> None:
    x, y = _blobs(64)
    model = _net()
    result = fit(model, x, y, x, y, spec=TrainSpec(epochs=20, lr=0.01, patience=1, min_delta=1e6))
    assert result.epochs == 2 and result.best_epoch == 1  # nothing beats inf - 1e6 after epoch 1


def test_nan_inputs_raise() -> None:
    x, y = _blobs(64)
    x[3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="training loss is nan"):
        fit(_net(), x, y, x, y, spec=TrainSpec(epochs=3))


def test_huge_learning_rate_raises() -> None:
    x, y = _blobs(64)
    with pytest.raises(NonFiniteError, match="diverged"):
        fit(_net(), x, y, x, y, spec=TrainSpec(epochs=5, lr=1e30, optimizer="sgd", batch_size=8))


def test_nan_validation_raises() -> None:
    x, y = _blobs(64)
    xv = x.clone()
    xv[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="validation loss at epoch 1"):
        fit(_net(), x, y, xv, y, spec=TrainSpec(epochs=3))


@pytest.mark.parametrize("optimizer,lr_schedule", [("adam", "none"), ("adamw", "cosine"), ("sgd", "step")])
def test_seeds_make_fits_identical(optimizer: str, lr_schedule: str) -> None:
    x, y = _blobs(96)
    spec = TrainSpec(epochs=3, batch_size=16, optimizer=optimizer, lr_schedule=lr_schedule, l1=1e-4)
    runs = []
    for _ in range(2):
        model = _net(seed=5)
        res = fit(model, x, y, x, y, spec=spec, seed=11)
        runs.append((model.state_dict(), res.losses))
    (a, la), (b, lb) = runs
    assert la == lb
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = _net(seed=5)
    res = fit(other, x, y, x, y, spec=spec, seed=12)  # another batch order
    assert res.losses != la


def test_on_epoch_hook_called_and_resets_early_stopping() -> None:
    x, y = _blobs(64)
    calls: list[int] = []

    def hook(epoch: int) -> bool:
        calls.append(epoch)
        return epoch == 3

    result = fit(_net(), x, y, x, y, spec=TrainSpec(epochs=6, lr=0.01, patience=None), on_epoch=hook)
    assert calls == [0, 1, 2, 3, 4, 5]
    assert result.best_epoch >= 4  # the best is searched again from epoch 4 (index 3) on


def test_l1_penalty_hand_computed() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        model[1].weight.copy_(torch.tensor([[-3.0, 0.25]]))
    assert float(l1_penalty(model).detach()) == pytest.approx(6.75)
    assert float(l1_penalty(nn.ReLU())) == 0.0


def test_make_optimizer_kinds() -> None:
    params = list(_net().parameters())
    assert type(make_optimizer(params, TrainSpec(optimizer="adam"))) is torch.optim.Adam
    assert type(make_optimizer(params, TrainSpec(optimizer="adamw"))) is torch.optim.AdamW
    sgd = make_optimizer(params, TrainSpec(optimizer="sgd", lr=0.2, momentum=0.5, weight_decay=0.01))
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["lr"] == 0.2 and sgd.defaults["momentum"] == 0.5
    assert sgd.defaults["weight_decay"] == 0.01


def test_evaluate_loss_hand_computed_and_keeps_mode() -> None:
    model = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()  # uniform logits: loss ln 2 everywhere
    model.train()
    loss = evaluate_loss(model, torch.randn(10, 1), torch.randint(0, 2, (10,)), batch_size=3)
    assert loss == pytest.approx(math.log(2))
    assert model.training


def test_qap_fit_keeps_pruned_weights_zero() -> None:
    x, y = _blobs(128)
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(4,), num_classes=2, hidden=(16, 8))
    attach(model, Recipe(quant={"weight_bits": 4, "act_bits": 4}, prune={"sparsity": 0.5}), sample=x)
    prune_to(model, 0.5)
    masks = {n: get_mask(getattr(model, n)).mask.clone() for n in ("fc1", "fc2", "fc3")}
    latent = {n: latent_weight(getattr(model, n)).detach().clone() for n in masks}
    fit(model, x, y, x, y, spec=TrainSpec(epochs=4, lr=0.02, batch_size=32, patience=None, l1=1e-4))
    assert _accuracy(model, x, y) >= 0.95
    for name, mask in masks.items():
        mod = getattr(model, name)
        assert torch.equal(get_mask(mod).mask, mask)
        assert torch.all(mod.weight[mask == 0] == 0)
        assert len(torch.unique(mod.weight)) <= 2**4 - 1
        # pruned latents still move under L1 (its gradient is on the latent), kept ones train
        assert not torch.equal(latent_weight(mod)[mask == 1], latent[name][mask == 1])


def test_penalty_enters_the_loss():
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    pull = lambda model: 10.0 * (model.weight - 1.0).pow(2).sum()  # noqa: E731
    dist = []
    for penalty in (None, pull):
        torch.manual_seed(0)
        m = nn.Linear(4, 3)
        fit(m, x, y, x, y, spec=TrainSpec(epochs=150, lr=0.05, patience=None), penalty=penalty)
        dist.append(float((m.weight - 1.0).abs().max()))
    assert dist[1] < 0.1 < dist[0]


def test_distillation_pulls_the_student_to_the_teacher():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    teacher = nn.Linear(8, 3).eval()
    y = torch.zeros(256, dtype=torch.long)  # labels that disagree with the teacher
    agree = []
    for distill in (None, {"weight": 1.0, "temperature": 2.0}):
        torch.manual_seed(1)
        student = nn.Linear(8, 3)
        fit(student, x, y, x, y, spec=TrainSpec(epochs=40, lr=0.05, patience=None, distill=distill), teacher=teacher)
        with torch.no_grad():
            agree.append(float((student(x).argmax(1) == teacher(x).argmax(1)).float().mean()))
    assert agree[1] > 0.9 > agree[0]

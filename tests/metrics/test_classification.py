"""Tests of qaprune.metrics.classification: accuracy, ROC AUC, batched predict, check_finite."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qaprune.errors import NonFiniteError, QapruneError
from qaprune.metrics.classification import accuracy, check_finite, predict, roc_auc


def test_accuracy_counts_argmax_hits() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1, 2, 1])) == pytest.approx(0.75)
    assert accuracy(logits, torch.tensor([0, 1, 2, 0])) == 1.0


def test_accuracy_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="y"):
        accuracy(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        accuracy(torch.zeros(4), torch.zeros(4, dtype=torch.long))


def test_roc_auc_perfect_and_inverted() -> None:
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    perfect = nn.functional.one_hot(y, 3).float() * 5
    assert roc_auc(perfect, y, num_classes=3) == pytest.approx(1.0)
    assert roc_auc(-perfect, y, num_classes=3) == pytest.approx(0.0)


def test_roc_auc_matches_sklearn_macro_ovr() -> None:
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 4, generator=g)
    y = torch.randint(0, 4, (200,), generator=g)
    expected = roc_auc_score(y.numpy(), torch.softmax(logits.double(), 1).numpy(), multi_class="ovr", average="macro")
    assert roc_auc(logits, y, num_classes=4) == pytest.approx(expected)


def test_roc_auc_binary_hand_computed() -> None:
    # p1 ranks: positives (y=1) at 0.9, 0.4; negatives at 0.6, 0.1 -> 3 of 4 pairs ordered.
    p1 = torch.tensor([0.9, 0.4, 0.6, 0.1])
    logits = torch.stack([torch.zeros(4), torch.log(p1 / (1 - p1))], dim=1)
    assert roc_auc(logits, torch.tensor([1, 1, 0, 0]), num_classes=2) == pytest.approx(0.75)


def test_roc_auc_skips_absent_classes_and_nan_for_one_class() -> None:
    y = torch.tensor([0, 1, 0, 1])
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [3.0, 0.0, 1.0], [0.0, 3.0, 1.0]])
    assert roc_auc(logits, y, num_classes=3) == pytest.approx(1.0)
    assert math.isnan(roc_auc(logits, torch.zeros(4, dtype=torch.long), num_classes=3))


def test_roc_auc_checks_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        roc_auc(torch.zeros(2, 3), torch.tensor([0, 1]), num_classes=4)
    with pytest.raises(ValueError, match="labels"):
        roc_auc(torch.zeros(2, 3), torch.tensor([0, 3]), num_classes=3)


class _Recorder(nn.Module):
    """Linear layer that records its batch sizes, the grad mode and its training flag."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.drop = nn.Dropout(0.9)
        self.seen: list[tuple[int, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.shape[0], torch.is_grad_enabled(), self.training))
        return self.drop(self.fc(x))


def test_predict_batches_in_eval_no_grad_and_restores_mode() -> None:
    model = _Recorder().train()
    model.drop.eval()  # a submodule in its own mode stays that way
    x = torch.randn(10, 3)
    out = predict(model, x, batch_size=4)
    assert [s[0] for s in model.seen] == [4, 4, 2]
    assert not any(s[1] or s[2] for s in model.seen)
    assert model.training and model.fc.training and not model.drop.training
    assert not out.requires_grad
    torch.testing.assert_close(out, model.fc(x).detach())  # dropout off in eval


def test_predict_rejects_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        predict(nn.Linear(3, 2), torch.zeros(2, 3), batch_size=0)


def test_check_finite() -> None:
    assert check_finite(0.25, "val loss") == 0.25
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(NonFiniteError, match="val loss is NaN/Inf") as info:
            check_finite(bad, "val loss")
        assert isinstance(info.value, QapruneError)

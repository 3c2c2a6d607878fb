"""Balanced accuracy, per-class recall and samples per class, on hand-made logits and through
``measure`` (class names from the Dataset, from the caller, or str(i))."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qaprune.data.dataset import Dataset
from qaprune.metrics import classification_metrics, measure
from qaprune.metrics.classification import balanced_accuracy, per_class_recall


def one_hot_logits(predicted: list[int], num_classes: int) -> torch.Tensor:
    return nn.functional.one_hot(torch.tensor(predicted), num_classes).float() * 3.0


# 10 samples: class 0 (6 samples, 5 right), class 1 (3 samples, 1 right), class 2 (1, right),
# class 3 absent from y but predicted once.
Y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
PRED = [0, 0, 0, 0, 0, 3, 1, 0, 2, 2]


def test_per_class_recall_by_hand() -> None:
    logits = one_hot_logits(PRED, 4)
    assert per_class_recall(logits, Y) == {"0": 5 / 6, "1": 1 / 3, "2": 1.0, "3": None}
    named = per_class_recall(logits, Y, class_names=["a", "b", "c", "d"])
    assert list(named) == ["a", "b", "c", "d"] and named["b"] == pytest.approx(1 / 3)


def test_balanced_accuracy_by_hand_and_against_sklearn() -> None:
    from sklearn.metrics import balanced_accuracy_score

    logits = one_hot_logits(PRED, 4)
    assert balanced_accuracy(logits, Y) == pytest.approx((5 / 6 + 1 / 3 + 1.0) / 3)  # 0.7222, accuracy 0.7
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(300, 5, generator=g), torch.randint(0, 5, (300,), generator=g)
    assert balanced_accuracy(logits, y) == pytest.approx(balanced_accuracy_score(y.numpy(), logits.argmax(1).numpy()))


def test_recall_checks_names_and_labels() -> None:
    with pytest.raises(ValueError, match="class_names: 2 names for 4 classes"):
        per_class_recall(one_hot_logits(PRED, 4), Y, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"y: labels must be in \[0, 4\)"):
        per_class_recall(one_hot_logits(PRED, 4), torch.tensor([0] * 9 + [4]))


def test_classification_metrics_counts_and_keys() -> None:
    out = classification_metrics(one_hot_logits(PRED, 4), Y, num_classes=4, class_names=list("wxyz"))
    assert out["accuracy"] == pytest.approx(0.7)
    assert out["balanced_accuracy"] == pytest.approx(0.7222222222)
    assert out["per_class_recall"]["z"] is None
    assert out["test_samples_per_class"] == {"w": 6, "x": 3, "y": 1, "z": 0}


class Fixed(nn.Module):
    """Returns preset logits for inputs x[:, 0] = sample index (and one Linear layer for BOPs)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(1, logits.shape[1])
        self.register_buffer("table", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 0 + self.table[x[:, 0].long()]


def test_measure_uses_dataset_class_names_and_given_ones() -> None:
    x = torch.arange(10.0).unsqueeze(1)
    model = Fixed(one_hot_logits(PRED, 4))
    data = Dataset("t", x, Y, x, Y, x, Y, num_classes=4, input_shape=(1,), classes=list("abcd"))
    out = measure(model, data, efficiency=False)
    assert out["per_class_recall"] == {"a": 5 / 6, "b": pytest.approx(1 / 3), "c": 1.0, "d": None}
    assert out["test_samples_per_class"] == {"a": 6, "b": 3, "c": 1, "d": 0}
    assert out["balanced_accuracy"] == pytest.approx(0.7222222222) and out["accuracy"] == pytest.approx(0.7)
    given = measure(model, x, Y, num_classes=4, class_names=list("pqrs"), efficiency=False)
    assert list(given["per_class_recall"]) == list("pqrs")
    default = measure(model, x, Y, num_classes=4, efficiency=False)
    assert list(default["test_samples_per_class"]) == ["0", "1", "2", "3"]


def test_docstring_examples() -> None:
    import doctest

    import qaprune.metrics.classification

    assert doctest.testmod(qaprune.metrics.classification).failed == 0

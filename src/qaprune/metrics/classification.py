"""Classification metrics (accuracy, balanced accuracy, per-class recall, macro one-vs-rest ROC
AUC) and batched inference.

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    >>> accuracy(logits, torch.tensor([0, 1, 1]))
    0.6666666666666666
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from qaprune.errors import NonFiniteError


def _check_logits(logits: Tensor, y: Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape (N, C), got {tuple(logits.shape)}")
    if y.ndim != 1 or y.shape[0] != logits.shape[0]:
        raise ValueError(f"y: expected shape ({logits.shape[0]},), got {tuple(y.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("logits: no samples (N = 0)")


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of samples whose arg-max class is the label. logits (N, C), y (N,) -> 0..1."""
    _check_logits(logits, y)
    return (logits.argmax(dim=1) == y.to(logits.device)).double().mean().item()


def per_class_recall(logits: Tensor, y: Tensor, *, class_names: list[str] | None = None) -> dict[str, float | None]:
    """Recall of each class: the fraction of its samples predicted as it. logits (N, C), y (N,).

    Keys are ``class_names`` (default str(i) for the C columns); None for a class absent from y.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
        >>> per_class_recall(logits, torch.tensor([0, 1, 1]), class_names=["a", "b", "c"])
        {'a': 1.0, 'b': 0.5, 'c': None}
    """
    _check_logits(logits, y)
    names = _names(class_names, logits.shape[1])
    y = y.detach().to(logits.device).long()
    if y.min() < 0 or y.max() >= len(names):
        raise ValueError(f"y: labels must be in [0, {len(names)}), got {int(y.min())}..{int(y.max())}")
    hits = (logits.argmax(dim=1) == y).long()
    total = torch.bincount(y, minlength=len(names)).tolist()
    correct = torch.bincount(y, weights=hits.double(), minlength=len(names)).tolist()
    return {name: (correct[i] / total[i] if total[i] else None) for i, name in enumerate(names)}


def balanced_accuracy(logits: Tensor, y: Tensor) -> float:
    """Mean recall over the classes present in y (sklearn's ``balanced_accuracy_score``).
    logits (N, C), y (N,) -> 0..1.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
        >>> balanced_accuracy(logits, torch.tensor([0, 0, 0, 1]))  # accuracy 1.0
        1.0
        >>> balanced_accuracy(logits, torch.tensor([0, 0, 1, 1]))  # (1 + 0.5) / 2
        0.75
    """
    recalls = [r for r in per_class_recall(logits, y).values() if r is not None]
    return float(sum(recalls) / len(recalls))


def _names(class_names: list[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names: {len(class_names)} names for {num_classes} classes (logit columns)")
    return [str(c) for c in class_names]


def roc_auc(logits: Tensor, y: Tensor, *, num_classes: int) -> float:
    """Macro one-vs-rest ROC AUC on softmax probabilities. logits (N, C), y (N,).

    Classes absent from ``y`` are skipped (their AUC is undefined); nan when fewer than two
    classes are present.

    Example:
        >>> import torch
        >>> roc_auc(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), num_classes=2)
        1.0
    """
    from sklearn.metrics import roc_auc_score

    _check_logits(logits, y)
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits: {logits.shape[1]} columns, but num_classes is {num_classes}")
    labels = y.detach().cpu().long().numpy()
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"y: labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    probs = torch.softmax(logits.detach().cpu().double(), dim=1).numpy()
    present = [c for c in range(num_classes) if (labels == c).any()]
    if len(present) < 2:
        return float("nan")
    scores = [roc_auc_score(labels == c, probs[:, c]) for c in present]
    return float(sum(scores) / len(scores))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with gradients off; restore every submodule's mode on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU when it has none)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def predict(model: nn.Module, x: Tensor, *, batch_size: int = 4096) -> Tensor:
    """Logits of ``model`` on ``x`` (N, ...), in batches, in eval mode without gradients.

    Batches are slices of the in-memory tensor, moved to the model's device; the logits come
    back on ``x``'s device. The model's train/eval mode is restored afterwards.

    Example:
        >>> import torch
        >>> predict(torch.nn.Linear(4, 3), torch.randn(10, 4), batch_size=4).shape
        torch.Size([10, 3])
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} is not >= 1")
    device = model_device(model)
    outs = []
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            outs.append(model(x[start : start + batch_size].to(device)).to(x.device))
    if not outs:
        raise ValueError("x: no samples (N = 0)")
    return torch.cat(outs)


def check_finite(value: float, what: str) -> float:
    """Return ``value`` if it is finite, else raise NonFiniteError naming ``what``.

    Example:
        >>> check_finite(0.5, "val loss")
        0.5
    """
    value = float(value)
    if not math.isfinite(value):
        raise NonFiniteError(f"{what} is NaN/Inf ({value})")
    return value

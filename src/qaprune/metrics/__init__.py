"""Metrics of a (compressed) model: accuracy, AUC, BOPs, MACs, sizes, neural efficiency."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from qaprune.metrics.bops import LayerProfile, dense_fp32_bops, layer_bops, profile, total_bops

__all__ = ["measure", "classification_metrics", "layer_bops", "profile", "LayerProfile", "summarize_layers"]


def summarize_layers(layers: list[LayerProfile]) -> dict[str, float]:
    """Counts over the Linear/Conv layers: params, non-zeros, sparsity, MACs, FLOPs, BOPs, bits."""
    params = sum(p.params for p in layers)
    nonzero = sum(p.nonzero for p in layers)
    macs = sum(p.macs for p in layers)
    macs_nz = sum(p.positions * p.nonzero for p in layers)
    bops, dense = total_bops(layers), dense_fp32_bops(layers)
    return {
        "params": params,
        "nonzero_params": nonzero,
        "sparsity": 1.0 - nonzero / params if params else 0.0,
        "macs": macs,
        "macs_nonzero": macs_nz,
        "flops": 2 * macs,
        "bops": bops,
        "bops_fp32_dense": dense,
        "bops_reduction": dense / bops if bops else 0.0,
        "weight_bits": sum(p.nonzero * p.weight_bits for p in layers),
    }


EFFICIENCY_SAMPLES = 2048


def classification_metrics(
    logits: Tensor, y: Tensor, *, num_classes: int, class_names: list[str] | None = None
) -> dict[str, Any]:
    """accuracy, balanced_accuracy, per_class_recall, test_samples_per_class, auc and loss of
    logits (N, C) against labels y (N,); class names default to str(i).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
        >>> m = classification_metrics(logits, torch.tensor([0, 1, 1]), num_classes=2, class_names=["no", "yes"])
        >>> m["balanced_accuracy"], m["per_class_recall"], m["test_samples_per_class"]
        (0.75, {'no': 1.0, 'yes': 0.5}, {'no': 1, 'yes': 2})
    """
    from qaprune.metrics.classification import accuracy, balanced_accuracy, check_finite, per_class_recall, roc_auc

    loss = check_finite(float(torch.nn.functional.cross_entropy(logits, y)), "test loss")
    recall = per_class_recall(logits, y, class_names=class_names)
    counts = torch.bincount(y.detach().cpu().long(), minlength=num_classes).tolist()
    return {
        "accuracy": accuracy(logits, y),
        "balanced_accuracy": balanced_accuracy(logits, y),
        "per_class_recall": recall,
        "test_samples_per_class": {name: int(c) for name, c in zip(recall, counts)},
        "auc": roc_auc(logits, y, num_classes=num_classes),
        "loss": loss,
    }


@torch.no_grad()
def measure(
    model: nn.Module,
    x: Any,
    y: Tensor | None = None,
    *,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    efficiency: bool = True,
) -> dict[str, Any]:
    """All metrics of ``model`` on (x (N, ...), y (N,)), or on a ``Dataset``'s test split:
    a flat dict plus ``layers``.

    ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present in y),
    ``per_class_recall`` (class name -> recall, None for a class absent from y),
    ``test_samples_per_class`` (class name -> count) and ``auc`` are on (x, y); class names are
    ``class_names``, else the Dataset's, else str(i). BOPs and MACs per sample; ``size_bytes``
    is the real size of the compressed artifact (see ``metrics.size``); neural efficiency and aIQ (β = 2)
    follow Schaub & Hotaling, on the first ``EFFICIENCY_SAMPLES`` inputs (firing-pattern counts
    over a CNN's every spatial position grow fast; 2,048 samples estimate them well).

    Example:
        >>> from qaprune.data import load_dataset
        >>> from qaprune.models import build_model
        >>> data = load_dataset("digits")
        >>> m = build_model("mlp", input_shape=data.input_shape, num_classes=10)
        >>> measure(m, data)["bops_reduction"]
        1.0
    """
    from qaprune.metrics.classification import predict
    from qaprune.metrics.size import fp32_bytes, size_bytes

    if y is None:  # a Dataset: its test split
        class_names = class_names or getattr(x, "class_names", None) or None
        x, y, num_classes = x.x_test, x.y_test, num_classes or x.num_classes
    if num_classes is None:
        num_classes = len(class_names) if class_names else int(y.max()) + 1
    out = classification_metrics(predict(model, x), y, num_classes=num_classes, class_names=class_names)
    layers = profile(model, x[:1])
    out.update(summarize_layers(layers))
    out["size_bytes"] = size_bytes(model)
    out["size_bytes_fp32"] = fp32_bytes(model)
    out["compression"] = out["size_bytes_fp32"] / out["size_bytes"]
    if efficiency:
        from qaprune.metrics.efficiency import aiq, neural_efficiency

        eff = neural_efficiency(model, x[:EFFICIENCY_SAMPLES])
        out["neural_efficiency"] = eff.efficiency
        out["aiq"] = aiq(eff.efficiency, out["accuracy"])
    out["layers"] = [p.to_dict() for p in layers]
    return out

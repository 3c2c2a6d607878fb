"""Metrics of a (compressed) model: accuracy, AUC, BOPs, MACs, sizes, neural efficiency."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from qaprune.metrics.bops import LayerProfile, dense_fp32_bops, layer_bops, profile, total_bops

__all__ = ["measure", "layer_bops", "profile", "LayerProfile", "summarize_layers"]


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


@torch.no_grad()
def measure(
    model: nn.Module, x: Any, y: Tensor | None = None, *, num_classes: int | None = None, efficiency: bool = True
) -> dict[str, Any]:
    """All metrics of ``model`` on (x (N, ...), y (N,)), or on a ``Dataset``'s test split:
    a flat dict plus ``layers``.

    ``accuracy`` and ``auc`` are on (x, y); BOPs and MACs per sample; ``size_bytes`` is the real
    size of the compressed artifact (see ``metrics.size``); neural efficiency and aIQ (β = 2)
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
    from qaprune.metrics.classification import accuracy, check_finite, predict, roc_auc
    from qaprune.metrics.size import fp32_bytes, size_bytes

    if y is None:  # a Dataset: its test split
        x, y, num_classes = x.x_test, x.y_test, num_classes or x.num_classes
    if num_classes is None:
        num_classes = int(y.max()) + 1

    logits = predict(model, x)
    loss = float(torch.nn.functional.cross_entropy(logits, y))
    check_finite(loss, "test loss")
    layers = profile(model, x[:1])
    out: dict[str, Any] = {
        "accuracy": accuracy(logits, y),
        "auc": roc_auc(logits, y, num_classes=num_classes),
        "loss": loss,
    }
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

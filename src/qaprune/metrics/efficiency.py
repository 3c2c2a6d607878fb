"""Neural efficiency and aIQ (Schaub & Hotaling 2020; used in Hawks et al. 2021, "Ps and Qs").

A neuron *fires* on an observation when its activation output is > 0. For one activation layer
with ``N_l`` neurons, ``H_l`` is the Shannon entropy (bits) of the distribution of distinct firing
patterns over the observations, and the layer's efficiency is ``η_l = H_l / N_l`` ∈ [0, 1]. For
conv outputs (N, C, H, W) the neurons are the C channels and every (sample, position) is an
observation. The network's efficiency ``η_N`` is the geometric mean of the ``η_l`` (0 when any
layer is 0), and ``aIQ = (η_N^β · accuracy)^(1/(β+1))``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.eye(2)), model[0].bias.zero_()
    >>> x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    >>> neural_efficiency(model, x).layers
    {'1': 1.0}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor, nn

from qaprune.metrics.classification import eval_mode, model_device

ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh)


def is_activation(module: nn.Module) -> bool:
    """True for ReLU-like activation layers: nn.ReLU/ReLU6/LeakyReLU/Hardtanh, or a module with
    an ``act_bits`` attribute whose class name contains "ReLU" (QuantReLU). Never "Input" ones."""
    cls = type(module).__name__
    if "Input" in cls:
        return False
    if isinstance(module, ACTIVATION_TYPES):
        return True
    return "ReLU" in cls and hasattr(module, "act_bits")


def activation_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module of the activation layers of ``model``. Nothing inside a counted layer
    (an nn.ReLU in a QuantReLU) or inside an "Input" quantizer is counted."""
    found: dict[str, nn.Module] = {}
    skip: list[str] = []
    for name, module in model.named_modules():
        if any(p == "" or name.startswith(p + ".") for p in skip):
            continue
        if is_activation(module):
            found[name] = module
        if name in found or "Input" in type(module).__name__:
            skip.append(name)
    return found


class PatternCounter:
    """Counts distinct binary firing patterns; rows are packed into bytes with np.packbits."""

    def __init__(self) -> None:
        self.neurons: int | None = None
        self._rows: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._stored = 0
        self._merged = 0

    def add(self, fired: Tensor) -> None:
        """Add observations: a bool tensor (observations, neurons)."""
        if self.neurons is None:
            self.neurons = int(fired.shape[1])
        elif fired.shape[1] != self.neurons:
            raise ValueError(f"activation width changed from {self.neurons} to {fired.shape[1]}")
        if fired.shape[0] == 0:
            return
        packed = np.packbits(fired.cpu().numpy(), axis=1)
        rows, counts = np.unique(packed, axis=0, return_counts=True)
        self._rows.append(rows)
        self._counts.append(counts.astype(np.int64))
        self._stored += len(rows)
        if self._stored > 2 * self._merged + (1 << 20):  # bound memory, merge rarely
            self._merge()

    def _merge(self) -> None:
        if len(self._rows) > 1:
            rows, inverse = np.unique(np.concatenate(self._rows), axis=0, return_inverse=True)
            counts = np.bincount(inverse.ravel(), weights=np.concatenate(self._counts))
            self._rows, self._counts = [rows], [counts.astype(np.int64)]
        self._stored = self._merged = sum(len(r) for r in self._rows)

    def counts(self) -> np.ndarray:
        """Number of observations of each distinct pattern."""
        self._merge()
        return self._counts[0] if self._counts else np.zeros(0, dtype=np.int64)

    def entropy(self) -> float:
        """Shannon entropy (bits) of the pattern distribution."""
        counts = self.counts()
        if counts.sum() == 0:
            return 0.0
        p = counts / counts.sum()
        return float(max(0.0, -(p * np.log2(p)).sum()))

    def efficiency(self) -> float:
        """Entropy per neuron, in [0, 1]."""
        return self.entropy() / self.neurons if self.neurons else 0.0


def firing(output: Tensor) -> Tensor:
    """Bool (observations, neurons): dim 1 is the neurons, all other dims are observations."""
    if output.ndim <= 1:
        return (output > 0).reshape(-1, 1)
    if output.ndim > 2:
        output = output.movedim(1, -1)
    return (output > 0).reshape(-1, output.shape[-1])


def geometric_mean(values: list[float]) -> float:
    """Plain geometric mean: 0 when any value is 0, nan for no values."""
    if not values:
        return float("nan")
    if min(values) <= 0.0:
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


def aiq(efficiency: float, accuracy: float, *, beta: float = 2.0) -> float:
    """aIQ = (η^β · accuracy)^(1/(β+1)).

    Example:
        >>> round(aiq(0.5, 0.8), 4)
        0.5848
    """
    if efficiency < 0 or accuracy < 0 or beta < 0:
        raise ValueError(f"aiq: efficiency {efficiency}, accuracy {accuracy} and beta {beta} must be >= 0")
    return float((efficiency**beta * accuracy) ** (1.0 / (beta + 1.0)))


@dataclass
class EfficiencyResult:
    """Per-layer efficiencies η_l (name -> value), their geometric mean, and neuron counts."""

    layers: dict[str, float]
    efficiency: float
    neurons: dict[str, int] = field(default_factory=dict)

    def aiq(self, accuracy: float, *, beta: float = 2.0) -> float:
        """aIQ of this network at ``accuracy`` (0..1)."""
        return aiq(self.efficiency, accuracy, beta=beta)

    def to_dict(self) -> dict:
        return {"layers": dict(self.layers), "efficiency": self.efficiency, "neurons": dict(self.neurons)}


def _hooks(model: nn.Module, counters: dict[str, PatternCounter], calls: dict[str, int]) -> list:
    """Forward hooks; a module called k > 0 more times in one forward counts as "name:k"."""

    def make(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if not isinstance(output, Tensor) or output.ndim == 0:
                return
            k = calls.get(name, 0)
            calls[name] = k + 1
            key = name if k == 0 else f"{name}:{k}"
            counters.setdefault(key, PatternCounter()).add(firing(output.detach()))

        return hook

    return [m.register_forward_hook(make(n or type(m).__name__)) for n, m in activation_layers(model).items()]


def neural_efficiency(model: nn.Module, x: Tensor, *, batch_size: int = 4096) -> EfficiencyResult:
    """Neural efficiency of ``model`` on inputs ``x`` (N, ...), batched, in eval mode.

    Returns η_l for every activation layer (see :func:`is_activation`) and their geometric
    mean; the efficiency is nan when the model has no activation layer. The model's train/eval
    modes are restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} is not >= 1")
    counters: dict[str, PatternCounter] = {}
    calls: dict[str, int] = {}
    handles = _hooks(model, counters, calls)
    device = model_device(model)
    try:
        with eval_mode(model):
            for start in range(0, x.shape[0], batch_size):
                calls.clear()
                model(x[start : start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
    layers = {name: c.efficiency() for name, c in counters.items()}
    neurons = {name: int(c.neurons or 0) for name, c in counters.items()}
    return EfficiencyResult(layers, geometric_mean(list(layers.values())), neurons)

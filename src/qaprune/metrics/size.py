"""Bytes of the compressed artifact: the ``.qap`` file of ``qaprune.storage``.

The model is baked on a copy and each tensor is stored in its smallest exact encoding
(codebook, Huffman-coded codebook indices, delta-indexed sparse, per-row scaled integers, or
raw). ``size_bytes`` is the real length of that file, header included; ``load_packed`` restores
the baked state dict exactly. ``fp32_bytes`` is the same model as dense float32.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor, nn

from qaprune.storage.qap import FORMAT, fp32_bytes, load_qap, qap_bytes, save_qap

__all__ = ["FORMAT", "pack", "packed_bytes", "size_bytes", "save_packed", "load_packed", "fp32_bytes"]


def pack(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The artifact's content: its tensors (one uint8 ``payload``) and its string metadata
    (``format``, ``version``, ``tensors`` descriptors as JSON, ``sha256``)."""
    from safetensors.torch import load

    data = packed_bytes(model)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return load(data), header["__metadata__"]


def packed_bytes(model: nn.Module) -> bytes:
    """The artifact's bytes (the ``.qap`` file of the baked model)."""
    return qap_bytes(model)


def size_bytes(model: nn.Module) -> int:
    """Bytes of the compressed artifact of ``model`` (its ``.qap`` file, header included).

    Example:
        >>> from qaprune.models import build_model
        >>> m = build_model("mlp", input_shape=(16,), num_classes=5)
        >>> size_bytes(m) < fp32_bytes(m)
        True
    """
    return len(packed_bytes(model))


def save_packed(model: nn.Module, path: str | Path) -> int:
    """Write the ``.qap`` artifact of ``model`` to ``path``; returns its size in bytes."""
    return save_qap(model, path)


def load_packed(path: str | Path) -> dict[str, Tensor]:
    """The baked state dict stored in an artifact written by ``save_packed`` (or ``save_qap``)."""
    return load_qap(path)[0]

"""Weights and checkpoints: safetensors for tensors, JSON for everything else; never pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qaprune.errors import CheckpointError


def save_tensors(path: str | Path, tensors: dict[str, Tensor], *, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` atomically (temporary name, then rename) as safetensors."""
    from safetensors.torch import save_file

    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(plain, str(tmp), metadata=metadata)
    os.replace(tmp, p)
    return p


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file; anything else (pickle, truncated, garbage) is refused."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such weights file")
    try:
        return load_file(str(p))
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{p}: not a valid safetensors file ({exc}); refusing to load it") from None


def write_json(path: str | Path, data: Any) -> Path:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=True))
    os.replace(tmp, p)
    return p


def read_json(path: str | Path) -> Any:
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{p}: missing") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p}: not valid JSON ({exc})") from None


def copy_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the model's state dict (for best-weights restore and rewinding)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def rng_state() -> Tensor:
    return torch.get_rng_state()

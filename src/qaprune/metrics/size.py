"""Bytes of the compressed artifact: a safetensors file of integer codes.

Each quantized weight is stored as its integer codes in the narrowest integer dtype that holds
them (int8 up to 8 bits, int16 up to 16) plus its scale; a weight that is mostly zeros is stored
as (flat index, code) pairs when that is smaller; everything else (biases, batch norm) stays
float32. ``size_bytes`` is the real length of this file, and ``load_packed`` restores the baked
weights bit-exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from qaprune.prune.pruner import get_mask
from qaprune.quant.fake_quant import FakeQuant, find

FORMAT = "qaprune-packed-v1"


def _codes_dtype(bits: int) -> torch.dtype:
    return torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.float32


@torch.no_grad()
def _pack_weight(key: str, w: Tensor, fq: FakeQuant | None, latent: Tensor) -> tuple[dict[str, Tensor], dict]:
    if fq is None:
        codes, scale, meta = w.float(), None, {"bits": 32}
    else:
        scale = fq.scale(latent)
        shape = [-1] + [1] * (w.dim() - 1) if fq.per_channel else [1] * w.dim()
        codes = torch.round(w / scale.reshape(shape)).to(_codes_dtype(fq.bits))
        meta = {"bits": fq.bits, "per_channel": fq.per_channel}
    out: dict[str, Tensor] = {}
    flat = codes.flatten()
    nz = torch.nonzero(flat).flatten()
    idx_dtype = torch.int16 if flat.numel() <= 32767 else torch.int32
    sparse_bytes = nz.numel() * (flat.element_size() + torch.tensor([], dtype=idx_dtype).element_size())
    if sparse_bytes < flat.numel() * flat.element_size():
        out[f"{key}.idx"], out[f"{key}.val"] = nz.to(idx_dtype), flat[nz]
        meta["layout"] = "sparse"
    else:
        out[f"{key}.codes"] = codes
        meta["layout"] = "dense"
    if scale is not None:
        out[f"{key}.scale"] = scale.float().reshape(-1)
    meta["shape"] = list(w.shape)
    return out, meta


def pack(model: nn.Module) -> tuple[dict[str, Tensor], dict]:
    """Compact tensors and JSON metadata for ``model`` (with or without parametrizations)."""
    tensors, meta = {}, {}
    weights = set()
    for name, mod in model.named_modules():
        if not parametrize.is_parametrized(mod, "weight"):
            continue
        key = f"{name}.weight" if name else "weight"
        mask = get_mask(mod)
        latent = mod.parametrizations["weight"].original * (mask.mask if mask is not None else 1)
        t, m = _pack_weight(key, mod.weight, find(mod, "weight", FakeQuant), latent)
        tensors.update(t)
        meta[key] = m
        weights.add(key)
    for key, value in _plain_state(model).items():
        if key not in weights:
            v = value.detach()
            tensors[key] = (v.float() if v.is_floating_point() else v).contiguous()
    return tensors, meta


def _plain_state(model: nn.Module) -> dict[str, Tensor]:
    """The state dict with parametrized tensors under their plain names (masks dropped)."""
    out = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            continue
        out[key] = value
    for name, mod in model.named_modules():
        for tname in getattr(mod, "parametrizations", {}) or {}:
            if tname != "weight":
                out[f"{name}.{tname}" if name else tname] = getattr(mod, tname)
    return out


def fp32_bytes(model: nn.Module) -> int:
    """Bytes of the same model's float32 tensors, unpruned (the raw payload, no header)."""
    state = _plain_state(model)
    floats = sum(v.numel() for k, v in state.items()
                 if v.is_floating_point() and not k.endswith("num_batches_tracked"))
    weights = sum(m.weight.numel() for m in model.modules() if parametrize.is_parametrized(m, "weight"))
    return 4 * (floats + weights)


def packed_bytes(model: nn.Module) -> bytes:
    """The artifact's bytes (safetensors with the metadata in its header)."""
    from safetensors.torch import save

    tensors, meta = pack(model)
    return save(tensors, metadata={"format": FORMAT, "layers": json.dumps(meta)})


def size_bytes(model: nn.Module) -> int:
    """Bytes of the compressed artifact of ``model``."""
    return len(packed_bytes(model))


def save_packed(model: nn.Module, path: str | Path) -> int:
    """Write the artifact; returns its size in bytes."""
    data = packed_bytes(model)
    Path(path).write_bytes(data)
    return len(data)


def load_packed(path: str | Path) -> dict[str, Tensor]:
    """A plain (baked) state dict from an artifact written by ``save_packed``."""
    from safetensors import safe_open

    from qaprune.errors import CheckpointError

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a valid packed artifact ({exc})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown artifact format {header.get('format')!r}; expected {FORMAT}")
    layers = json.loads(header["layers"])
    out = {k: v for k, v in tensors.items() if not any(k.startswith(w + ".") for w in layers)}
    for key, m in layers.items():
        out[key] = _unpack_weight(key, m, tensors)
    return out


def _unpack_weight(key: str, m: dict, t: dict[str, Tensor]) -> Tensor:
    shape = m["shape"]
    if m["layout"] == "sparse":
        flat = torch.zeros(int(torch.tensor(shape).prod()), dtype=t[f"{key}.val"].dtype)
        flat[t[f"{key}.idx"].long()] = t[f"{key}.val"]
        codes = flat.view(shape)
    else:
        codes = t[f"{key}.codes"]
    if m["bits"] >= 32:
        return codes.float()
    scale = t[f"{key}.scale"]
    view = [-1] + [1] * (len(shape) - 1) if m.get("per_channel") else [1] * len(shape)
    return codes.float() * scale.reshape(view)

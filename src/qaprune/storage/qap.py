"""The ``.qap`` artifact: a compact, exact file of a baked model (Deep Compression-style).

The model is baked (on a copy) and every tensor of its state dict gets the smallest exact
encoding among raw, bit-packed integers, codebook, codebook + Huffman, sparse (delta indices +
codes) and per-row scaled integers, see ``storage.codec``. Quantized weights have few distinct
values on a grid, clustered weights fewer, pruned weights many zeros, so the encodings need no
knowledge of how the model was compressed. Tensors come back bit for bit (but ``-0.0`` as
``+0.0``): outputs of the loaded model equal those of the baked one.

The file is a safetensors file with one uint8 tensor, ``payload`` (every tensor's parts, in
order), and string metadata:
- ``format``: ``"qaprune.qap"``; ``version``: ``"1"``;
- ``tensors``: JSON object, state-dict key -> descriptor, in payload order;
- ``meta``: JSON of the caller's dict (recipe, architecture), present only when given;
- ``sha256``: digest of format, version, tensors, meta and payload.
Loading reads JSON and bytes only (nothing is unpickled or executed) and refuses any file that
is not a ``.qap`` artifact, has an unknown version, a wrong checksum or an inconsistent layout,
with ``CheckpointError``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from qaprune.errors import CheckpointError
from qaprune.param import bake
from qaprune.storage.codec import Reader, decode_tensor, describe, encode_tensor

FORMAT = "qaprune.qap"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
_COMPACT = {"separators": (",", ":")}


def baked_state(model_or_state_dict: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict that an artifact stores: a module is baked on a copy first (its
    parametrizations become plain weights); a state dict is taken as it is."""
    if isinstance(model_or_state_dict, nn.Module):
        return bake(copy.deepcopy(model_or_state_dict)).state_dict()
    return dict(model_or_state_dict)


def _digest(tensors_json: str, meta_json: str, payload: bytes | memoryview, *, version: str = str(VERSION)) -> str:
    h = hashlib.sha256()
    for text in (FORMAT, version, tensors_json, meta_json):
        h.update(text.encode())
        h.update(b"\0")
    h.update(payload)
    return h.hexdigest()


def qap_bytes(model_or_state_dict: nn.Module | Mapping[str, Tensor], *, meta: dict[str, Any] | None = None) -> bytes:
    """The bytes of the ``.qap`` artifact of a model (baked on a copy) or of a state dict."""
    descriptors, parts = {}, []
    for name, tensor in baked_state(model_or_state_dict).items():
        descriptors[name], tensor_parts = encode_tensor(tensor)
        parts.extend(tensor_parts)
    payload = b"".join(parts)
    tensors_json = json.dumps(descriptors, **_COMPACT)
    metadata = {"format": FORMAT, "version": str(VERSION), "tensors": tensors_json}
    meta_json = ""
    if meta is not None:
        try:
            meta_json = metadata["meta"] = json.dumps(meta, **_COMPACT)
        except TypeError as exc:
            raise TypeError(f"meta: must be JSON-serializable ({exc})") from None
    metadata["sha256"] = _digest(tensors_json, meta_json, payload)
    return _safetensors(payload, metadata)


def _safetensors(payload: bytes, metadata: dict[str, str]) -> bytes:
    """A safetensors file of one uint8 tensor, ``payload``, written here rather than by the
    library, whose writer orders the metadata at random: the same model gives the same bytes."""
    header = {
        "__metadata__": metadata,
        "payload": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]},
    }
    text = json.dumps(header, **_COMPACT).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    return len(text).to_bytes(8, "little") + text + payload


def save_qap(
    model_or_state_dict: nn.Module | Mapping[str, Tensor], path: str | Path, *, meta: dict[str, Any] | None = None
) -> int:
    """Write the ``.qap`` artifact of a model (baked on a copy; the model is not changed) or of a
    plain state dict, atomically (a temporary name, then a rename). Returns the bytes written.

    Example:
        >>> import tempfile
        >>> from qaprune.models import build_model
        >>> model = build_model("mlp", input_shape=(16,), num_classes=5)
        >>> tmp = tempfile.TemporaryDirectory()
        >>> n = save_qap(model, Path(tmp.name) / "model.qap", meta={"model": "mlp"})
        >>> state, meta = load_qap(Path(tmp.name) / "model.qap")
        >>> meta, all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        ({'model': 'mlp'}, True)
        >>> tmp.cleanup()
    """
    data = qap_bytes(model_or_state_dict, meta=meta)
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, p)
    return len(data)


def _read_file(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise CheckpointError(f"{path}: no such .qap file") from None


def _open(data: bytes, source: str) -> tuple[dict[str, list], dict[str, Any], memoryview]:
    """(descriptors, caller's meta, payload) of a verified artifact."""
    from safetensors.torch import load

    try:
        tensors = load(data)
        header = json.loads(bytes(data[8 : 8 + int.from_bytes(data[:8], "little")]))
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{source}: not a .qap artifact (not a valid safetensors file: {exc})") from None
    info = header.get("__metadata__") or {}
    if info.get("format") != FORMAT:
        raise CheckpointError(f"{source}: not a .qap artifact (format {info.get('format')!r}, expected {FORMAT!r})")
    if info.get("version") not in {str(v) for v in SUPPORTED_VERSIONS}:
        raise CheckpointError(
            f"{source}: .qap version {info.get('version')!r} is not supported "
            f"(this qaprune reads versions {list(SUPPORTED_VERSIONS)})"
        )
    blob = tensors.get("payload")
    if set(tensors) != {"payload"} or blob.dtype != torch.uint8 or blob.dim() != 1:
        raise CheckpointError(f"{source}: corrupt .qap artifact (expected one uint8 payload, got {sorted(tensors)})")
    payload = memoryview(blob.numpy().tobytes())
    tensors_json, meta_json = info.get("tensors", ""), info.get("meta", "")
    if _digest(tensors_json, meta_json, payload, version=info["version"]) != info.get("sha256"):
        raise CheckpointError(f"{source}: corrupt .qap artifact (SHA-256 checksum mismatch)")
    try:
        descriptors, meta = json.loads(tensors_json), json.loads(meta_json) if meta_json else {}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{source}: corrupt .qap artifact (metadata is not JSON: {exc})") from None
    if not isinstance(descriptors, dict):
        raise CheckpointError(f"{source}: corrupt .qap artifact (tensors is not a JSON object)")
    return descriptors, meta, payload


def _decode(data: bytes, source: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    descriptors, meta, payload = _open(data, source)
    reader, state = Reader(payload), {}
    for name, desc in descriptors.items():
        try:
            state[name] = decode_tensor(desc, reader)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, MemoryError) as exc:
            raise CheckpointError(f"{source}: corrupt .qap artifact, tensor {name!r}: {exc}") from None
    if not reader.at_end():
        raise CheckpointError(f"{source}: corrupt .qap artifact ({len(payload) - reader.pos} bytes left over)")
    return state, meta


def load_qap(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(baked state dict, the ``meta`` given to ``save_qap``, ``{}`` if none) of a ``.qap`` file.
    The tensors are the saved ones bit for bit (dtype and shape too), except that a float
    ``-0.0`` comes back as ``+0.0``. Corrupt, truncated, foreign or unknown-version files raise
    ``CheckpointError``."""
    return _decode(_read_file(path), str(path))


def load_qap_into(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a ``.qap`` artifact into ``model`` (same architecture, with the same activation
    quantizers as the saved one) and return it. The artifact holds baked weights, so a model
    that still has parametrizations is baked first, in place.

    Example:
        >>> import tempfile
        >>> from qaprune.models import build_model
        >>> tmp = tempfile.TemporaryDirectory()
        >>> _ = save_qap(build_model("mlp", input_shape=(16,), num_classes=5), Path(tmp.name) / "m.qap")
        >>> m = load_qap_into(build_model("mlp", input_shape=(16,), num_classes=5), Path(tmp.name) / "m.qap")
        >>> tmp.cleanup()
    """
    from torch.nn.utils import parametrize

    from qaprune.param import bake

    state, _ = load_qap(path)
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        bake(model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not fit the model: {' '.join(str(exc).splitlines()[:3])}") from None
    return model


def qap_report(path: str | Path) -> list[dict[str, Any]]:
    """Per tensor of a verified ``.qap`` file: name, shape, dtype, encoding (raw, codebook,
    huffman, sparse, packed, scaled+...), values (how the stored values are coded), bits per
    stored value (mean code length for Huffman), index_bits (sparse), unique (codebook size),
    stored (values stored: all elements, or the non-zeros), scales (scaled) and payload bytes."""
    descriptors, _, _ = _open(_read_file(path), str(path))
    try:
        return [{"name": name, **describe(desc)} for name, desc in descriptors.items()]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise CheckpointError(f"{path}: corrupt .qap artifact ({exc})") from None


def compression_ratio(model: nn.Module) -> float:
    """Bytes of the model as dense float32 (unpruned, ``fp32_bytes``) over the
    bytes of its ``.qap`` artifact (header included).

    Example:
        >>> from qaprune.models import build_model
        >>> 0.9 < compression_ratio(build_model("lenet300", input_shape=(16,), num_classes=5)) < 1.0
        True
    """
    return fp32_bytes(model) / len(qap_bytes(model))


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
    floats = sum(v.numel() for k, v in state.items() if v.is_floating_point() and not k.endswith("num_batches_tracked"))
    weights = sum(m.weight.numel() for m in model.modules() if parametrize.is_parametrized(m, "weight"))
    return 4 * (floats + weights)

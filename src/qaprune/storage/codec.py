"""One tensor <-> (descriptor, bytes): the smallest exact encoding of its elements.

A tensor is handled as the unsigned-integer bit patterns of its elements, so every supported
dtype is treated alike and decoding is exact to the bit (NaN payloads included); "zero" is the
all-zero pattern. The descriptor is a JSON list ``[dtype, shape, *coding]``; ``coding`` is
- a value coding of all elements (``raw``, ``pk``, ``cb``, ``hf``; see ``storage.values``);
- ``["sp", w, m, k, *values]``: ``m`` delta entries of ``w`` bits that place the ``k``
  non-zeros (see ``storage.sparse``), then the ``k`` non-zero patterns coded by ``values``;
  the zeros are implied;
- ``["sc", r, *codes]`` (float tensors): the tensor cut into ``r`` rows (1, or its first
  dimension) is ``code * scale`` per row, as per-tensor or per-channel quantization makes it:
  ``r`` scales as raw elements, then the int32 zigzag codes (see ``storage.scaled``) encoded
  as a tensor of the same shape (dense or sparse).
Part sizes follow from the descriptor alone; parts are concatenated in order.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from torch import Tensor

from qaprune.storage.bitpack import nbytes, pack_bits, unpack_bits
from qaprune.storage.scaled import join, split
from qaprune.storage.sparse import best_width, decode_positions, encode_positions
from qaprune.storage.values import Choice, code_values, decode_values, value_bits, value_sizes

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_CODES = {v: k for k, v in DTYPES.items()}
NAMES = {"raw": "raw", "pk": "packed", "cb": "codebook", "hf": "huffman", "sp": "sparse", "sc": "scaled"}


def _json_len(x: list) -> int:
    return len(json.dumps(x, separators=(",", ":")))


def _patterns(t: Tensor) -> np.ndarray:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().view(f"<u{t.element_size()}")


def _sparse(p: np.ndarray, nz: np.ndarray) -> Choice:
    width, entries = best_width(nz)
    values, make_values, value_cost = code_values(p[nz])
    coding = ["sp", width, entries, int(nz.size)]
    cost = nbytes(width * entries) + value_cost + _json_len(coding)
    return coding + values, lambda: [pack_bits(encode_positions(nz, width), width), *make_values()], cost


def _scaled(t: Tensor, rows: int, bound: float) -> Choice | None:
    found = split(t, rows)
    if found is None:
        return None
    scales, codes = found
    inner, make_inner, inner_cost = _encode(codes, bound=bound)
    coding = ["sc", rows, *inner]
    cost = rows * t.element_size() + inner_cost + _json_len(["sc", rows])
    return coding, lambda: [_patterns(scales).tobytes(), *make_inner()], cost


def _encode(t: Tensor, *, bound: float = math.inf) -> Choice:
    """The smallest coding of ``t``: (coding, parts maker, cost in bytes)."""
    p = _patterns(t)
    nz = np.flatnonzero(p)
    best = _sparse(p, nz) if nz.size < p.size else None
    dense = code_values(p, bound=min(best[2] if best else math.inf, bound))
    best = dense if best is None or dense[2] <= best[2] else best
    if not t.is_floating_point():
        return best
    for rows in sorted({1, t.shape[0] if t.dim() > 1 else 1}):
        if rows * t.element_size() < best[2]:
            option = _scaled(t, rows, best[2])
            best = option if option is not None and option[2] < best[2] else best
    return best


def encode_tensor(t: Tensor) -> tuple[list, list[bytes]]:
    """(descriptor, parts) of the smallest exact encoding of ``t`` among raw, packed, codebook,
    Huffman, sparse and scaled integers. Any shape; dtypes: ``DTYPES``. Every element is kept
    bit for bit, except that a float ``-0.0`` is stored as ``+0.0`` (equal in value, as
    ``torch.equal`` sees it; masking a negative weight gives ``-0.0``, and keeping its sign
    would cost a bit per zero).

    Example:
        >>> w = torch.zeros(8, 8)
        >>> w[0, 1], w[7, 4] = 0.3, -0.3
        >>> desc, parts = encode_tensor(w)
        >>> desc, sum(len(b) for b in parts)
        (['F32', [8, 8], 'sp', 6, 2, 2, 'raw'], 10)
        >>> torch.equal(decode_tensor(desc, Reader(b"".join(parts))), w)
        True
    """
    if t.dtype not in _CODES:
        raise TypeError(f"cannot store dtype {t.dtype}; supported: {sorted(map(str, _CODES))}")
    t = t.detach().to("cpu")
    if t.is_floating_point():
        t = torch.where(t == 0, torch.zeros((), dtype=t.dtype), t)
    coding, make, _ = _encode(t)
    return [_CODES[t.dtype], list(t.shape), *coding], make()


class Reader:
    """Reads consecutive parts of a payload; refuses to read past its end."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"payload too short: needs {n} bytes at offset {self.pos} of {len(self.data)}")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def at_end(self) -> bool:
        return self.pos == len(self.data)


def _count(x: object, name: str, hi: int = 1 << 48) -> int:
    if type(x) is not int or not 0 <= x <= hi:
        raise ValueError(f"{name}: {x!r} is not an integer in [0, {hi}]")
    return x


def _head(desc: list) -> tuple[torch.dtype, list[int], int, int]:
    """dtype, shape, element count and element size of a descriptor."""
    if not isinstance(desc, list) or len(desc) < 3 or desc[0] not in DTYPES or not isinstance(desc[1], list):
        raise ValueError(f"malformed descriptor {desc!r}")
    shape = [_count(d, "shape") for d in desc[1]]
    dtype = DTYPES[desc[0]]
    return dtype, shape, _count(math.prod(shape), "numel"), torch.empty((), dtype=dtype).element_size()


def _rows(dtype: torch.dtype, shape: list[int], n: int, rows: object) -> int:
    if not dtype.is_floating_point or _count(rows, "rows") < 1 or n % rows or rows not in (1, *shape[:1]):
        raise ValueError(f"scaled coding: {rows!r} rows do not fit a {dtype} tensor of shape {shape}")
    return rows


def decode_tensor(desc: list, reader: Reader) -> Tensor:
    """The tensor that ``encode_tensor`` described by ``desc``, read from ``reader``."""
    dtype, shape, n, size = _head(desc)
    coding = desc[2:]
    if coding[0] == "sc":
        rows = _rows(dtype, shape, n, coding[1])
        scales = np.frombuffer(reader.take(rows * size), dtype=f"<u{size}")
        codes = decode_tensor(["I32", shape, *coding[2:]], reader)
        return join(torch.from_numpy(scales.copy()).view(dtype), codes, dtype)
    if coding[0] == "sp":
        width, entries = _count(coding[1], "index bits", 16), _count(coding[2], "index entries")
        k = _count(coding[3], "non-zeros", n)
        if width < 1:
            raise ValueError("index bits: 0 is not in [1, 16]")
        where = decode_positions(unpack_bits(reader.take(nbytes(width * entries)), width, entries), width)
        if where.size != k or (k and where[-1] >= n):
            raise ValueError(f"sparse index: {where.size} positions for {k} non-zeros in {n}")
        p = np.zeros(n, dtype=f"<u{size}")
        p[where] = decode_values(coding[4:], k, size, reader.take)
    else:
        p = decode_values(coding, n, size, reader.take)
    if n == 0:
        return torch.zeros(shape, dtype=dtype)
    return torch.from_numpy(p.view(np.uint8).copy()).view(dtype).reshape(shape)


def part_sizes(desc: list) -> list[int]:
    """Byte sizes of the parts of the tensor that ``desc`` describes, in payload order."""
    dtype, shape, n, size = _head(desc)
    coding = desc[2:]
    if coding[0] == "sc":
        return [coding[1] * size, *part_sizes(["I32", shape, *coding[2:]])]
    if coding[0] == "sp":
        return [nbytes(coding[1] * coding[2]), *value_sizes(coding[4:], coding[3], size)]
    return value_sizes(coding, n, size)


def describe(desc: list) -> dict:
    """A readable summary of a descriptor: encoding, bits per stored value, bytes."""
    dtype, shape, n, size = _head(desc)
    if desc[2] == "sc":  # scales, then the integer codes
        row = describe(["I32", shape, *desc[4:]])
        return {
            **row,
            "dtype": desc[0],
            "encoding": f"scaled+{row['encoding']}",
            "scales": desc[3],
            "bytes": sum(part_sizes(desc)),
        }
    coding, index_bits, count = desc[2:], None, n
    if coding[0] == "sp":
        index_bits, count, coding = coding[1], coding[3], coding[4:]
    return {
        "shape": shape,
        "dtype": desc[0],
        "encoding": NAMES.get(desc[2], desc[2]),
        "values": NAMES.get(coding[0], coding[0]),
        "bits": value_bits(coding, count, size),
        "index_bits": index_bits,
        "unique": coding[1] if coding[0] in ("cb", "hf") else None,
        "stored": count,
        "scales": 0,
        "bytes": sum(part_sizes(desc)),
    }

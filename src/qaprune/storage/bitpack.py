"""Fixed-width bit packing: n codes of ``bits`` bits each, most significant bit first, in
``ceil(n · bits / 8)`` bytes (the last byte padded with zero bits). Vectorized through
``np.unpackbits`` / ``np.packbits`` on a bit matrix.
"""

from __future__ import annotations

import numpy as np

MAX_BITS = 32


def nbytes(bits: int) -> int:
    """Bytes that hold ``bits`` bits."""
    return (int(bits) + 7) // 8


def bits_for(count: int) -> int:
    """Bits of a code that tells ``count`` symbols apart: ``ceil(log2 count)``, 0 for one symbol.

    Example:
        >>> [bits_for(u) for u in (1, 2, 3, 4, 5, 256, 257)]
        [0, 1, 2, 2, 3, 8, 9]
    """
    return max(int(count) - 1, 0).bit_length()


def _width(bits: int) -> int:
    if not 0 <= bits <= MAX_BITS:
        raise ValueError(f"bits: {bits} is not in [0, {MAX_BITS}]")
    return next(w for w in (1, 2, 4, 8) if 8 * w >= bits)


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integer ``codes`` (n,) below ``2**bits`` into ``ceil(n · bits / 8)`` bytes.
    ``bits`` is 0..32; 0 bits (a single symbol) takes no bytes.

    Example:
        >>> pack_bits(np.array([1, 2, 3]), 2).hex()
        '6c'
        >>> unpack_bits(pack_bits(np.array([5, 0, 7]), 3), 3, 3).tolist()
        [5, 0, 7]
    """
    width = _width(bits)
    v = np.asarray(codes).reshape(-1)
    if v.size and (v.min() < 0 or int(v.max()) >> bits):
        raise ValueError(f"pack_bits: codes must be in [0, 2**{bits}); got [{v.min()}, {v.max()}]")
    if bits == 0 or v.size == 0:
        return b""
    big = v.astype(f">u{width}").view(np.uint8).reshape(-1, width)
    matrix = np.unpackbits(big, axis=1)[:, 8 * width - bits :]
    return np.packbits(matrix.reshape(-1)).tobytes()


def unpack_bits(data: bytes | memoryview, bits: int, n: int) -> np.ndarray:
    """The ``n`` codes of ``bits`` bits packed in ``data`` by :func:`pack_bits`, as int64 (n,)."""
    width = _width(bits)
    if bits == 0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    need = nbytes(n * bits)
    if len(data) < need:
        raise ValueError(f"unpack_bits: {n} codes of {bits} bits need {need} bytes, got {len(data)}")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=need), count=n * bits)
    matrix = np.zeros((n, 8 * width), dtype=np.uint8)
    matrix[:, 8 * width - bits :] = flat.reshape(n, bits)
    return np.packbits(matrix, axis=1).view(f">u{width}").reshape(-1).astype(np.int64)

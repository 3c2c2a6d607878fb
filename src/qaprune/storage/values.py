"""Codings of a stream of element bit patterns (unsigned integers, one per element).

A coding is a JSON list, and the byte size of each of its parts follows from it and the count:
- ``["raw"]``: the patterns' little-endian bytes as they are;
- ``["pk", b]``: every pattern is below ``2**b`` (small non-negative integers): ``b`` bits each;
- ``["cb", u, bb]``: a codebook of the ``u`` distinct patterns (``bb`` bits each; ``bb`` equal
  to the element's width means its raw bytes), then each element's index into it in
  ``bits_for(u)`` bits (0 bits when ``u == 1``);
- ``["hf", u, bb, T]``: the codebook, one 5-bit Huffman code length per entry, the bit offset
  of every ``SYNC``-th symbol but the first (``max(1, T.bit_length())`` bits each), then the
  canonical Huffman stream of the indices (``T`` bits).
Each part starts on a byte boundary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np

from qaprune.storage.bitpack import MAX_BITS, bits_for, nbytes, pack_bits, unpack_bits
from qaprune.storage.huffman import SYNC, HuffmanCode, code_lengths, huffman_decode, huffman_encode

MAX_BOOK = 1 << 16
LENGTH_BITS = 5
Coding = list
Choice = tuple[Coding, Callable[[], list[bytes]], int]  # coding, parts maker, cost in bytes


def _offset_bits(total_bits: int) -> int:
    return max(int(total_bits).bit_length(), 1)


def _pattern_bits(p: np.ndarray) -> int:
    """Bits that hold every pattern of ``p``; the element's full width means raw bytes."""
    bits = int(p.max()).bit_length() if p.size else 0
    return bits if bits < 8 * p.dtype.itemsize and bits <= MAX_BITS else 8 * p.dtype.itemsize


def _book_bytes(u: int, book_bits: int, size: int) -> int:
    return u * size if book_bits == 8 * size else nbytes(u * book_bits)


def value_sizes(coding: Coding, n: int, size: int) -> list[int]:
    """Byte sizes of the parts that hold ``n`` patterns of ``size`` bytes coded by ``coding``."""
    kind, args = coding[0], coding[1:]
    if kind == "raw" and not args:
        return [n * size]
    if kind == "pk" and len(args) == 1:
        return [nbytes(n * args[0])]
    if kind == "cb" and len(args) == 2:
        return [_book_bytes(args[0], args[1], size), nbytes(n * bits_for(args[0]))]
    if kind == "hf" and len(args) == 3:
        u, book_bits, total = args
        syncs = -(-n // SYNC) - 1
        return [
            _book_bytes(u, book_bits, size),
            nbytes(LENGTH_BITS * u),
            nbytes(syncs * _offset_bits(total)),
            nbytes(total),
        ]
    raise ValueError(f"unknown coding {coding!r}; known: raw, pk, cb, hf")


def _cost(coding: Coding, n: int, size: int) -> int:
    return sum(value_sizes(coding, n, size)) + len(json.dumps(coding, separators=(",", ":")))


def _entropy_bytes(counts: np.ndarray) -> float:
    c = counts[counts > 0]
    return float(-(c * np.log2(c / c.sum())).sum()) / 8


def _store(p: np.ndarray, bits: int) -> bytes:
    return p.tobytes() if bits == 8 * p.dtype.itemsize else pack_bits(p, bits)


def code_values(p: np.ndarray, *, bound: float = math.inf) -> Choice:
    """The smallest exact coding of patterns ``p`` (n,) unsigned: (coding, parts maker, cost).
    Codings that cannot cost less than ``bound`` (another option's cost) are not worked out."""
    size, n = p.dtype.itemsize, p.size
    best: Choice = (["raw"], lambda: [p.tobytes()], _cost(["raw"], n, size))
    bits = _pattern_bits(p)
    if n and bits < 8 * size and _cost(["pk", bits], n, size) < best[2]:
        best = (["pk", bits], lambda: [pack_bits(p, bits)], _cost(["pk", bits], n, size))
    if n == 0 or min(best[2], bound) <= len('["cb",1,0]'):  # no codebook costs less
        return best
    book, inv = np.unique(p, return_inverse=True)
    u, inv = len(book), inv.reshape(-1)
    book_bits = _pattern_bits(book)
    if u > MAX_BOOK or _book_bytes(u, book_bits, size) >= min(best[2], bound):
        return best
    cb = ["cb", u, book_bits]
    if _cost(cb, n, size) < best[2]:
        best = (cb, lambda: [_store(book, book_bits), pack_bits(inv, bits_for(u))], _cost(cb, n, size))
    counts = np.bincount(inv, minlength=u)
    if u < 2 or _book_bytes(u, book_bits, size) + _entropy_bytes(counts) >= min(best[2], bound):
        return best
    hf = ["hf", u, book_bits, int(counts @ code_lengths(counts))]
    if _cost(hf, n, size) < best[2] and hf[3] < 1 << MAX_BITS:  # offsets fit in MAX_BITS
        best = (hf, lambda: _huffman_parts(book, book_bits, inv, u), _cost(hf, n, size))
    return best


def _huffman_parts(book: np.ndarray, book_bits: int, symbols: np.ndarray, u: int) -> list[bytes]:
    code = huffman_encode(symbols, alphabet=u)
    return [
        _store(book, book_bits),
        pack_bits(code.lengths, LENGTH_BITS),
        pack_bits(code.starts[1:], _offset_bits(code.total_bits)),
        code.stream,
    ]


def _count(x: object, name: str, hi: int = 1 << 48) -> int:
    if type(x) is not int or not 0 <= x <= hi:
        raise ValueError(f"{name}: {x!r} is not an integer in [0, {hi}]")
    return x


def _load(data: memoryview, bits: int, n: int, size: int) -> np.ndarray:
    if bits == 8 * size:
        return np.frombuffer(data, dtype=f"<u{size}")
    return unpack_bits(data, _count(bits, "bits", MAX_BITS), n).astype(f"<u{size}")


def decode_values(coding: Coding, n: int, size: int, take: Callable[[int], memoryview]) -> np.ndarray:
    """The ``n`` patterns (``<u{size}``) coded by ``coding``, reading parts with ``take(nbytes)``."""
    sizes = value_sizes(coding, n, size)
    kind = coding[0]
    if kind == "raw":
        return np.frombuffer(take(sizes[0]), dtype=f"<u{size}")
    if kind == "pk":
        return _load(take(sizes[0]), coding[1], n, size)
    u = _count(coding[1], "codebook size", MAX_BOOK)
    book = _load(take(sizes[0]), coding[2], u, size)
    if kind == "cb":
        codes = unpack_bits(take(sizes[1]), bits_for(u), n)
    else:
        total = _count(coding[3], "stream bits")
        lengths = unpack_bits(take(sizes[1]), LENGTH_BITS, u)
        starts = unpack_bits(take(sizes[2]), _offset_bits(total), -(-n // SYNC) - 1)
        code = HuffmanCode(lengths, bytes(take(sizes[3])), total, np.concatenate([[0], starts]), n, SYNC)
        codes = huffman_decode(code)
    if codes.size and codes.max() >= u:
        raise ValueError(f"code {codes.max()} outside the codebook of {u}")
    return book[codes]


def value_bits(coding: Coding, n: int, size: int) -> float:
    """Bits per stored value: element width (raw), packed width, index width, mean code length."""
    kind = coding[0]
    if kind == "raw":
        return 8 * size
    if kind == "pk":
        return coding[1]
    if kind == "cb":
        return bits_for(coding[1])
    return coding[3] / n if n else 0.0

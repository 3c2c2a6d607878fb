"""Canonical Huffman coding of integer symbol streams, vectorized with numpy.

A code is fully described by one length per symbol (0: the symbol does not occur); codes are
assigned canonically (shorter first, then by symbol), so only the lengths are stored. Lengths
are limited to ``MAX_LEN`` bits by flattening the counts until the tree is shallow enough.
A stream with one distinct symbol gets a 1-bit code.

Decoding is table-driven: a table of ``2**L`` entries (``L`` the longest code) maps the next
``L`` bits to (symbol, length). The encoder records the bit offset of every ``sync``-th symbol,
so the decoder walks all ``ceil(n / sync)`` chunks at once, one symbol per chunk per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_LEN = 20
SYNC = 512


@dataclass(frozen=True)
class HuffmanCode:
    """An encoded stream: ``lengths`` (u,) per symbol, the packed ``stream`` of ``total_bits``
    bits, the bit offset of every ``sync``-th symbol in ``starts`` (the first is 0), ``count``
    symbols."""

    lengths: np.ndarray
    stream: bytes
    total_bits: int
    starts: np.ndarray
    count: int
    sync: int = SYNC


def _tree_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths for positive ``counts`` (m,), m >= 2: leaf depths of the tree built
    by the two-queue method (leaves sorted by count; merged nodes come out in sorted order)."""
    m = len(counts)
    order = np.argsort(counts, kind="stable")
    weight = counts[order].tolist() + [0] * (m - 1)
    parent = [0] * (2 * m - 1)
    leaf, inner = 0, m
    for node in range(m, 2 * m - 1):
        for _ in range(2):  # take the lighter of the next leaf and the next merged node
            if leaf < m and (inner >= node or weight[leaf] <= weight[inner]):
                parent[leaf], weight[node], leaf = node, weight[node] + weight[leaf], leaf + 1
            else:
                parent[inner], weight[node], inner = node, weight[node] + weight[inner], inner + 1
    depth = [0] * (2 * m - 1)
    for i in range(2 * m - 3, -1, -1):  # parents come after their children
        depth[i] = depth[parent[i]] + 1
    lengths = np.empty(m, dtype=np.int64)
    lengths[order] = depth[:m]
    return lengths


def code_lengths(counts: np.ndarray, *, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code length per symbol from its count (u,) -> (u,): 0 where the count is 0,
    1 for a lone symbol, at most ``max_len``.

    Example:
        >>> code_lengths(np.array([5, 1, 1, 0, 2])).tolist()
        [1, 3, 3, 0, 2]
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.int64)
    present = np.flatnonzero(counts)
    if len(present) == 1:
        lengths[present] = 1
    if len(present) < 2:
        return lengths
    if (len(present) - 1).bit_length() > max_len:
        raise ValueError(f"max_len: {max_len} bits cannot code {len(present)} symbols")
    c = counts[present]
    while True:
        depth = _tree_lengths(c)
        if depth.max() <= max_len:
            lengths[present] = depth
            return lengths
        c = (c >> 1) | 1  # flatter counts give a shallower tree; all ones give a balanced one


def _canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Symbols in canonical order (length, then symbol), their left-aligned codes, longest length.
    The left-aligned code of a symbol is the sum of ``2**(L - l)`` over the symbols before it."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 0 or lengths.max() > MAX_LEN):
        raise ValueError(f"code lengths must be in [0, {MAX_LEN}]")
    used = np.flatnonzero(lengths)
    order = used[np.argsort(lengths[used], kind="stable")]
    longest = int(lengths.max()) if used.size else 0
    span = np.left_shift(1, longest - lengths[order])
    left = np.cumsum(span) - span
    if used.size and left[-1] + span[-1] > 1 << longest:
        raise ValueError("code lengths violate the Kraft inequality: not a prefix code")
    return order, left, longest


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code value per symbol (u,) (read on ``lengths[s]`` bits; 0 for unused symbols).

    Example:
        >>> canonical_codes(np.array([1, 3, 3, 0, 2])).tolist()
        [0, 6, 7, 0, 2]
    """
    order, left, longest = _canonical(lengths)
    codes = np.zeros(len(lengths), dtype=np.int64)
    codes[order] = left >> (longest - np.asarray(lengths, dtype=np.int64)[order])
    return codes


def huffman_encode(
    symbols: np.ndarray, *, alphabet: int | None = None, sync: int = SYNC, max_len: int = MAX_LEN
) -> HuffmanCode:
    """Huffman-code a stream of symbols in ``[0, alphabet)`` (n,) (alphabet: max + 1 by default).

    Example:
        >>> code = huffman_encode(np.array([0, 0, 0, 0, 1, 2, 0, 0]))
        >>> code.lengths.tolist(), code.total_bits
        ([1, 2, 2], 10)
        >>> huffman_decode(code).tolist()
        [0, 0, 0, 0, 1, 2, 0, 0]
    """
    s = np.asarray(symbols, dtype=np.int64).reshape(-1)
    u = int(alphabet) if alphabet is not None else (int(s.max()) + 1 if s.size else 0)
    if s.size and (s.min() < 0 or s.max() >= u):
        raise ValueError(f"symbols must be in [0, {u})")
    lengths = code_lengths(np.bincount(s, minlength=u), max_len=max_len)
    ls, codes = lengths[s], canonical_codes(lengths)[s]
    ends = np.cumsum(ls)
    total = int(ends[-1]) if s.size else 0
    left = (codes << (32 - ls)).astype(">u4")  # each code left-aligned in a 32-bit word
    matrix = np.unpackbits(left.view(np.uint8).reshape(-1, 4), axis=1)
    bits = matrix[np.arange(32)[None, :] < ls[:, None]]  # row-major: the codes in order
    starts = (ends - ls)[::sync]
    return HuffmanCode(lengths, np.packbits(bits).tobytes(), total, starts, int(s.size), sync)


def _tables(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(symbol, length) for each of the ``2**L`` possible next-``L``-bit windows."""
    order, _, longest = _canonical(lengths)
    reps = np.left_shift(1, longest - np.asarray(lengths, dtype=np.int64)[order])
    symbol = np.zeros(1 << longest, dtype=np.int64)
    length = np.full(1 << longest, max(longest, 1), dtype=np.int64)  # unused windows (lone symbol)
    used = int(reps.sum())
    symbol[:used] = np.repeat(order, reps)
    length[:used] = np.repeat(np.asarray(lengths, dtype=np.int64)[order], reps)
    return symbol, length, longest


def huffman_decode(code: HuffmanCode) -> np.ndarray:
    """The ``code.count`` symbols (n,) int64 of a stream made by :func:`huffman_encode`."""
    n, sync = code.count, code.sync
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    chunks = -(-n // sync)
    if sync < 1 or len(code.starts) != chunks or len(code.stream) * 8 < code.total_bits:
        raise ValueError("huffman stream: inconsistent sync offsets or stream length")
    symbol, length, longest = _tables(code.lengths)
    if longest == 0:
        raise ValueError("huffman stream: no symbol has a code")
    raw = np.frombuffer(code.stream, dtype=np.uint8).astype(np.uint64)
    raw = np.concatenate([raw, np.zeros(4, dtype=np.uint64)])
    words = (raw[:-3] << 24) | (raw[1:-2] << 16) | (raw[2:-1] << 8) | raw[3:]  # 32 bits from byte i
    pos = np.minimum(np.asarray(code.starts, dtype=np.int64), code.total_bits)
    out = np.empty((chunks, sync if chunks > 1 else n), dtype=np.int64)
    mask, top = np.uint64((1 << longest) - 1), 32 - longest
    for j in range(out.shape[1]):
        shift = (top - (pos & 7)).astype(np.uint64)
        window = ((words[pos >> 3] >> shift) & mask).astype(np.int64)
        out[:, j] = symbol[window]
        pos = np.minimum(pos + length[window], code.total_bits)
    return out.reshape(-1)[:n]

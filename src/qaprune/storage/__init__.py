"""Compact storage: the ``.qap`` artifact (bit packing, canonical Huffman, delta-index sparse).

``save_qap`` / ``load_qap`` write and read a bit-exact, compressed copy of a baked model;
``qap_report`` says how each tensor was stored; ``compression_ratio`` compares with float32.
"""

from __future__ import annotations

from qaprune.storage.bitpack import bits_for, pack_bits, unpack_bits
from qaprune.storage.huffman import HuffmanCode, code_lengths, huffman_decode, huffman_encode
from qaprune.storage.qap import (
    FORMAT,
    VERSION,
    compression_ratio,
    load_qap,
    load_qap_into,
    qap_bytes,
    qap_report,
    save_qap,
)
from qaprune.storage.sparse import best_width, decode_positions, encode_positions

__all__ = [
    "FORMAT",
    "VERSION",
    "save_qap",
    "load_qap",
    "load_qap_into",
    "qap_report",
    "qap_bytes",
    "compression_ratio",
    "pack_bits",
    "unpack_bits",
    "bits_for",
    "HuffmanCode",
    "code_lengths",
    "huffman_encode",
    "huffman_decode",
    "encode_positions",
    "decode_positions",
    "best_width",
]

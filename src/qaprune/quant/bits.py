"""Bit widths: which ones qaprune quantizes to, the one rule that checks them.

- weights: 1 (binary, ``sign(w)·α``), 2 (ternary) .. 16 bits, or 32 (float: no quantizer);
- activations, inputs and biases: 2 .. 16 bits, or 32; one bit is for weights only.

The recipe validates its fields with ``bits_problem``; the quantizers refuse a width with
``check_bits`` (for code that builds them directly), so both say the same thing.
"""

from __future__ import annotations

from qaprune.errors import RecipeError

FLOAT_BITS = 32
WEIGHT_BITS: tuple[int, ...] = (*range(1, 17), FLOAT_BITS)
ACT_BITS: tuple[int, ...] = (*range(2, 17), FLOAT_BITS)
SUPPORTED_BITS = WEIGHT_BITS


def bits_problem(bits: object, *, weights: bool) -> str | None:
    """Why ``bits`` is refused for weights (``weights=True``) or activations, None when fine.

    Example:
        >>> bits_problem(1, weights=False)
        '1 bits is not supported; allowed: 2..16 or 32 (float); 1 bit is for weights only'
        >>> bits_problem(6, weights=True) is None
        True
    """
    if not isinstance(bits, bool) and isinstance(bits, int) and bits in (WEIGHT_BITS if weights else ACT_BITS):
        return None
    if weights:
        return f"{bits} bits is not supported; allowed: 1..16 or 32 (float)"
    return f"{bits} bits is not supported; allowed: 2..16 or 32 (float); 1 bit is for weights only"


def check_bits(bits: int, *, field: str, weights: bool = True) -> int:
    """``bits`` when ``bits_problem`` finds nothing; else a ``RecipeError`` naming ``field``."""
    problem = bits_problem(bits, weights=weights)
    if problem:
        raise RecipeError(f"{field}: {problem}")
    return bits

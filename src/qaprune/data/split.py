"""Seeded train / val / test splits: sizes as fractions (0..1) or absolute counts, validated."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from qaprune.errors import RecipeError

Size = float | int | None


def _count(field: str, value: Size, n: int, where: str) -> int:
    """One split size -> a sample count out of n. Ints are counts, floats fractions of n."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise RecipeError(f"data.{field}: {value!r} is not a fraction in [0, 1] or a sample count")
    if isinstance(value, Integral):
        if value < 0:
            raise RecipeError(f"data.{field}: {value} is negative")
        if value > n:
            raise RecipeError(f"data.{field}: {value} samples requested but only {n} in the {where}")
        return int(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise RecipeError(f"data.{field}: {value} is not a fraction in [0, 1] (an int means a sample count)")
    return int(round(value * n))


def split_counts(n: int, *, train: Size, val: Size, test: Size, where: str = "dataset") -> tuple[int, int, int]:
    """(n_train, n_val, n_test) out of n samples; train=None means "the rest".

    Example: split_counts(20000, train=14000, val=2000, test=4000) -> (14000, 2000, 4000).
    """
    n_test = _count("test", test, n, where)
    n_val = _count("val", val, n, where)
    if train is not None:
        _count("train", train, n, where)  # checks the value before the sums below
    fractions = [float(v) for v in (train, val, test) if isinstance(v, float)]
    if sum(fractions) > 1.0 + 1e-9:
        raise RecipeError(f"data.train + data.val + data.test: fractions sum to {sum(fractions):g} > 1")
    if isinstance(val, float):  # rounding two fractions must not overshoot
        n_val = min(n_val, n - n_test)
    if n_val + n_test > n:
        raise RecipeError(f"data.val + data.test: {n_val + n_test} samples requested but only {n} in the {where}")
    left = n - n_val - n_test
    n_train = left if train is None else _count("train", train, n, where)
    if isinstance(train, float):
        n_train = min(n_train, left)
    if n_train > left:
        raise RecipeError(
            f"data.train: {n_train} samples requested but only {left} left in the {where} of {n} "
            f"after data.val ({n_val}) and data.test ({n_test})"
        )
    if n_train == 0:
        raise RecipeError(f"data.train: no training samples ({n} in the {where}, data.val {n_val}, data.test {n_test})")
    return n_train, n_val, n_test


def split_indices(
    n: int, *, train: Size, val: Size, test: Size, seed: int, n_official_test: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, val, test) from a numpy default_rng(seed) permutation.

    Without an official test set all three come from the n samples: test is the last n_test of
    the permutation, val the n_val before it, train the first n_train (so a smaller train does
    not change val or test). With an official test set (n_official_test samples) train and val
    come from the n-sample training pool and test indexes the official set: all of it, or a
    seeded subset when `test` is an int count (a fraction is ignored there).
    """
    rng = np.random.default_rng(seed)
    official = n_official_test is not None
    where = "training pool" if official else "dataset"
    n_train, n_val, n_test = split_counts(n, train=train, val=val, test=0 if official else test, where=where)
    perm = rng.permutation(n)
    idx_train = perm[:n_train]
    idx_val = perm[n - n_test - n_val : n - n_test]
    if not official:
        return idx_train, idx_val, perm[n - n_test :]
    k = _count("test", test, n_official_test, "official test set")
    if isinstance(test, Integral) and not isinstance(test, bool):
        return idx_train, idx_val, rng.permutation(n_official_test)[:k]
    return idx_train, idx_val, np.arange(n_official_test)

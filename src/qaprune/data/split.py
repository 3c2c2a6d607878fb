"""Seeded train / val / test splits, stratified by label by default: sizes as fractions (0..1)
or absolute counts, validated and exact."""

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
    n: int,
    *,
    train: Size,
    val: Size,
    test: Size,
    seed: int,
    n_official_test: int | None = None,
    y: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    stratify: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, val, test) from a seeded order of the n samples.

    The order is a numpy default_rng(seed) permutation, made stratified when ``stratify`` and
    labels ``y`` (n,) are given (`stratified_order`): then every contiguous run of the order
    holds each class in proportion (its share, within one sample for train and test, two for
    val), so a 10-sample class among 20,000 gets about 2 of a 20% test split, never 0. Test is the last n_test of the
    order, val the n_val before it, train the first n_train (so a smaller train does not change
    val or test). With an official test set (n_official_test samples) train and val come from the
    n-sample training pool and test indexes the official set: all of it, or a seeded subset
    (stratified by ``y_test`` when given) when `test` is an int count (a fraction is ignored
    there). ``stratify=False`` (or no labels) gives the plain permutation.

    Example:
        >>> y = np.array([0] * 90 + [1] * 10)
        >>> tr, va, te = split_indices(100, train=None, val=0.1, test=0.2, seed=0, y=y)
        >>> [int((y[i] == 1).sum()) for i in (tr, va, te)]
        [7, 1, 2]
    """
    rng = np.random.default_rng(seed)
    official = n_official_test is not None
    where = "training pool" if official else "dataset"
    n_train, n_val, n_test = split_counts(n, train=train, val=val, test=0 if official else test, where=where)
    perm = _order(n, y if stratify else None, rng, field="y")
    idx_train = perm[:n_train]
    idx_val = perm[n - n_test - n_val : n - n_test]
    if not official:
        return idx_train, idx_val, perm[n - n_test :]
    k = _count("test", test, n_official_test, "official test set")
    if isinstance(test, Integral) and not isinstance(test, bool):
        return idx_train, idx_val, _order(n_official_test, y_test if stratify else None, rng, field="y_test")[:k]
    return idx_train, idx_val, np.arange(n_official_test)


def _order(n: int, y: np.ndarray | None, rng: np.random.Generator, *, field: str) -> np.ndarray:
    """rng's permutation of n, stratified by the labels y (n,) when given."""
    if y is None:
        return rng.permutation(n)
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{field}: expected {n} labels, got shape {y.shape}")
    return stratified_order(y, rng)


def stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded order of the indices of labels y (N,) in which every prefix, suffix and
    contiguous run holds each class in proportion to its size.

    The samples of each class are shuffled; the j-th of a class of c samples gets the key
    (j + 0.5) / c, its position in [0, 1); indices sorted by key (ties in shuffled order). The
    first k of the order are then the Sainte-Laguë (Webster) apportionment of k seats to the
    classes, so each class gets its share ``k · c / N`` within one sample; the same holds for
    the last k, and a run between two cuts is within two samples of its share.

    Example:
        >>> y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
        >>> y[stratified_order(y, np.random.default_rng(0))].tolist()
        [0, 1, 0, 0, 1, 2, 0, 0, 1, 0]
    """
    perm = rng.permutation(len(y))
    _, codes, counts = np.unique(y[perm], return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)
    by_class = np.argsort(codes, kind="stable")  # positions in perm, grouped by class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(y), dtype=np.int64)
    rank[by_class] = np.arange(len(y)) - starts[codes[by_class]]
    keys = (rank + 0.5) / counts[codes]
    return perm[np.argsort(keys, kind="stable")]

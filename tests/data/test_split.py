"""Stratified, seeded splits: every class in every split in proportion, exact sizes, the plain
permutation on request, and class names carried from the raw data to the Dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qaprune.data import load_dataset
from qaprune.data.dataset import Dataset
from qaprune.data.split import split_counts, split_indices, stratified_order
from qaprune.recipe import Recipe


def imbalanced(n_big: int = 3000, n_small: int = 10, seed: int = 0) -> np.ndarray:
    """Labels: classes 0, 1, 2 with n_big samples each, class 3 with n_small, shuffled."""
    y = np.repeat([0, 1, 2, 3], [n_big, n_big, n_big, n_small])
    return np.random.default_rng(seed).permutation(y)


def per_class(y: np.ndarray, idx: np.ndarray) -> list[int]:
    return np.bincount(y[idx], minlength=int(y.max()) + 1).tolist()


@pytest.mark.parametrize("seed", range(8))
def test_small_class_in_every_split(seed: int) -> None:
    y = imbalanced()
    tr, va, te = split_indices(len(y), train=None, val=0.1, test=0.2, seed=seed, y=y)
    assert (len(tr), len(va), len(te)) == (6307, 901, 1802)
    assert per_class(y, te)[3] == 2 and per_class(y, va)[3] == 1 and per_class(y, tr)[3] == 7
    for idx, share in ((tr, 0.7), (va, 0.1), (te, 0.2)):
        assert all(abs(c - share * n) < 2 for c, n in zip(per_class(y, idx), [3000, 3000, 3000, 10]))


def test_plain_permutation_can_leave_a_class_out() -> None:
    # what stratifying prevents: some seeds give the 10-sample class no test sample at all
    y = imbalanced()
    tests = [split_indices(len(y), train=None, val=0.1, test=0.2, seed=s, y=y, stratify=False)[2] for s in range(40)]
    counts = [per_class(y, te)[3] for te in tests]
    assert min(counts) == 0 and max(counts) >= 4


def test_split_is_disjoint_complete_and_seeded() -> None:
    y = imbalanced(n_big=200)
    a = split_indices(len(y), train=None, val=0.15, test=0.2, seed=5, y=y)
    b = split_indices(len(y), train=None, val=0.15, test=0.2, seed=5, y=y)
    c = split_indices(len(y), train=None, val=0.15, test=0.2, seed=6, y=y)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(np.sort(a[2]), np.sort(c[2]))
    joined = np.concatenate(a)
    assert len(joined) == len(y) and set(joined.tolist()) == set(range(len(y)))


@pytest.mark.parametrize(
    "sizes", [dict(train=None, val=0.1, test=0.2), dict(train=500, val=61, test=97), dict(train=0.5, val=0.25, test=7)]
)
def test_sizes_exact_as_requested(sizes: dict) -> None:
    y = imbalanced(n_big=250, n_small=13)  # 763 samples
    got = tuple(len(i) for i in split_indices(763, **sizes, seed=0, y=y))
    assert got == split_counts(763, **sizes)


def test_smaller_train_keeps_val_and_test() -> None:
    y = imbalanced(n_big=300)
    full = split_indices(len(y), train=None, val=0.1, test=0.2, seed=2, y=y)
    small = split_indices(len(y), train=100, val=0.1, test=0.2, seed=2, y=y)
    assert np.array_equal(full[1], small[1]) and np.array_equal(full[2], small[2])
    assert set(small[0].tolist()) <= set(full[0].tolist())
    assert per_class(y, small[0])[:3] == [33, 33, 33]  # the smaller train is stratified too


@pytest.mark.parametrize("seed", [0, 7])
def test_stratify_false_is_the_old_plain_permutation(seed: int) -> None:
    y = imbalanced(n_big=100)
    tr, va, te = split_indices(len(y), train=200, val=31, test=0.2, seed=seed, y=y, stratify=False)
    perm = np.random.default_rng(seed).permutation(len(y))  # the rule before stratification
    n = len(y)
    assert np.array_equal(tr, perm[:200]) and np.array_equal(te, perm[n - 62 :])
    assert np.array_equal(va, perm[n - 62 - 31 : n - 62])
    assert all(
        np.array_equal(p, q) for p, q in zip(split_indices(n, train=200, val=31, test=0.2, seed=seed), (tr, va, te))
    )


def test_official_test_kept_and_pool_stratified() -> None:
    y, y_test = imbalanced(n_big=100), np.repeat([0, 1, 2, 3], [20, 20, 20, 4])
    tr, va, te = split_indices(len(y), train=None, val=0.2, test=0.5, seed=0, n_official_test=64, y=y, y_test=y_test)
    assert te.tolist() == list(range(64))  # a fraction: all of the official test set
    assert per_class(y, va) == [20, 20, 20, 2] and per_class(y, tr) == [80, 80, 80, 8]
    _, _, sub = split_indices(len(y), train=None, val=0.2, test=16, seed=0, n_official_test=64, y=y, y_test=y_test)
    assert len(sub) == 16 and per_class(y_test, sub) == [5, 5, 5, 1]  # an int: a stratified subset
    _, _, plain = split_indices(
        len(y), train=None, val=0.2, test=16, seed=0, n_official_test=64, y=y, y_test=y_test, stratify=False
    )
    rng = np.random.default_rng(0)
    rng.permutation(len(y))
    assert np.array_equal(plain, rng.permutation(64)[:16])


def test_stratified_order_runs_are_proportional() -> None:
    y = np.repeat([0, 1, 2], [50, 30, 20])
    order = stratified_order(y, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(100))
    for k in (10, 25, 50, 90):
        assert per_class(y, order[:k]) == pytest.approx([k * 0.5, k * 0.3, k * 0.2], abs=1)
        assert per_class(y, order[-k:]) == pytest.approx([k * 0.5, k * 0.3, k * 0.2], abs=1)


def test_split_checks_labels() -> None:
    with pytest.raises(ValueError, match="y: expected 10 labels"):
        split_indices(10, train=None, val=0.2, test=0.2, seed=0, y=np.zeros(9, dtype=np.int64))


def _npz(path, y, **extra) -> str:
    x = np.arange(len(y) * 2, dtype=np.float32).reshape(len(y), 2)
    np.savez(path, x=x, y=y, **extra)
    return str(path)


def test_load_dataset_stratified_by_default(tmp_path) -> None:
    path = _npz(tmp_path / "d.npz", imbalanced(n_big=400, n_small=10))
    ds = load_dataset(path, val=0.1, test=0.2, seed=3)
    assert ds.class_counts("test")["3"] == 2 and ds.class_counts("val")["3"] == 1
    plain = load_dataset(path, val=0.1, test=0.2, seed=3, stratify=False)
    assert (len(plain.y_train), len(plain.y_val), len(plain.y_test)) == (len(ds.y_train), len(ds.y_val), len(ds.y_test))
    assert not torch.equal(plain.x_test, ds.x_test)
    summary = ds.summary()
    assert summary["class_counts"]["test"] == {"0": 80, "1": 80, "2": 80, "3": 2}
    assert sum(summary["class_counts"]["train"].values()) == summary["train"]


def test_class_names_from_raw_labels(tmp_path) -> None:
    strings = load_dataset(_npz(tmp_path / "s.npz", np.array(["cat", "dog", "ant"] * 10)), val=0.2, test=0.2)
    assert strings.class_names == ["ant", "cat", "dog"] and strings.classes == ["ant", "cat", "dog"]
    ints = load_dataset(_npz(tmp_path / "i.npz", np.array([0, 1, 2, 3, 5] * 6)), val=0.2, test=0.2)
    assert ints.class_names == ["0", "1", "2", "3", "4", "5"] and ints.classes is None
    assert load_dataset("digits").class_names == [str(i) for i in range(10)]


def test_letter_integer_labels_are_letters(tmp_path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "uci"
    folder.mkdir()
    np.savez(folder / "letter.npz", x=rng.integers(0, 16, (260, 16)).astype(np.float32), y=np.arange(260) % 26)
    ds = load_dataset("letter", data_dir=tmp_path, val=0.2, test=0.2)
    assert ds.class_names[0] == "A" and ds.class_names[-1] == "Z" and len(ds.class_names) == 26
    assert min(ds.class_counts("test").values()) == 2  # 10 per letter, 20% each in test


def test_dataset_class_names_default_and_checked() -> None:
    t = torch.zeros(2, 1)
    y = torch.tensor([0, 2])
    ds = Dataset("t", t, y, t, y, t, y, num_classes=3, input_shape=(1,))
    assert ds.class_names == ["0", "1", "2"] and ds.class_counts("train") == {"0": 1, "1": 0, "2": 1}
    with pytest.raises(ValueError, match="class_names: 2 names for 3 classes"):
        Dataset("t", t, y, t, y, t, y, num_classes=3, input_shape=(1,), class_names=["a", "b"])
    with pytest.raises(ValueError, match="split"):
        ds.class_counts("dev")


def test_recipe_stratify_reaches_the_split(tmp_path) -> None:
    from qaprune.rundir import load_data

    path = _npz(tmp_path / "d.npz", imbalanced(n_big=100, n_small=10))
    assert Recipe().data.stratify is True
    for stratify in (True, False):
        recipe = Recipe(data={"name": path, "val": 0.1, "test": 0.2, "stratify": stratify})
        got = load_data(recipe, None, torch.device("cpu"))
        want = load_dataset(path, val=0.1, test=0.2, stratify=stratify, scale=recipe.data.scale)
        assert torch.equal(got.x_test, want.x_test) and torch.equal(got.y_train, want.y_train)


def test_docstring_examples() -> None:
    import doctest

    import qaprune.data.split

    assert doctest.testmod(qaprune.data.split).failed == 0

"""Splitting and scaling: seeded, disjoint, validated, and fitted on the training split only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qaprune.data import load_dataset
from qaprune.data.scale import fit_scaling
from qaprune.data.split import split_counts, split_indices
from qaprune.errors import RecipeError


def indexed_npz(path, n=200, *, test=None):
    """Tabular data whose first feature is the row index, so splits can be traced back."""
    x = np.stack([np.arange(n), np.arange(n) % 7 * 3.0, np.full(n, 5.0)], axis=1)
    arrays = {"x": x.astype(np.float32), "y": np.arange(n) % 4}
    if test is not None:
        arrays |= {"x_test": test.astype(np.float32), "y_test": np.zeros(len(test), np.int64)}
    np.savez(path, **arrays)
    return str(path)


def rows(ds, split):
    return sorted(getattr(ds, f"x_{split}")[:, 0].round().long().tolist())


def test_digits_shapes_and_unit_scale():
    ds = load_dataset("digits", seed=0)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert ds.x_train.shape == (1258, 1, 8, 8) and len(ds.x_val) == 180 and len(ds.x_test) == 359
    assert ds.x_train.dtype == torch.float32 and ds.y_test.dtype == torch.int64
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1.0  # auto: divided by 16
    assert ds.scaling["method"] == "unit" and float(ds.scaling["scale"].flatten()[0]) == 16.0


def test_splits_seeded_disjoint_and_complete(tmp_path):
    path = indexed_npz(tmp_path / "t.npz")
    a = load_dataset(path, seed=3, scale="none")
    b = load_dataset(path, seed=3, scale="none")
    c = load_dataset(path, seed=4, scale="none")
    assert all(rows(a, s) == rows(b, s) for s in ("train", "val", "test"))
    assert rows(a, "test") != rows(c, "test")
    parts = [set(rows(a, s)) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [140, 20, 40]
    assert set.union(*parts) == set(range(200)) and sum(len(p) for p in parts) == 200
    assert torch.equal(a.y_train, (a.x_train[:, 0].round().long() % 4))  # labels follow their rows


def test_smaller_train_keeps_val_and_test(tmp_path):
    path = indexed_npz(tmp_path / "t.npz")
    full = load_dataset(path, seed=1, scale="none")
    small = load_dataset(path, seed=1, scale="none", train=50)
    assert len(small.x_train) == 50 and set(rows(small, "train")) <= set(rows(full, "train"))
    assert rows(small, "val") == rows(full, "val") and rows(small, "test") == rows(full, "test")


def test_standard_scaling_fit_on_train_only(tmp_path):
    far_test = np.full((10, 3), 1e6)
    ds = load_dataset(indexed_npz(tmp_path / "t.npz", test=far_test), scale="standard", val=0.2)
    assert torch.allclose(ds.x_train.mean(0)[:2], torch.zeros(2), atol=1e-4)
    assert torch.allclose(ds.x_train.std(0, unbiased=False)[:2], torch.ones(2), atol=1e-4)
    assert torch.all(ds.x_train[:, 2] == 0)  # constant column: std 0 -> 1, no NaN
    raw_train = ds.x_train * ds.scaling["scale"] + ds.scaling["shift"]
    assert float(ds.scaling["shift"][0, 0]) == pytest.approx(float(raw_train[:, 0].mean()), rel=1e-5)
    assert ds.x_test[:, 0].min() > 1e3  # the test statistics were not used
    assert len(ds.x_test) == 10  # the official test set


def test_minmax_and_none(tmp_path):
    path = indexed_npz(tmp_path / "t.npz")
    ds = load_dataset(path, scale="minmax", seed=0)
    assert torch.allclose(ds.x_train[:, :2].min(0).values, torch.zeros(2))
    assert torch.allclose(ds.x_train[:, :2].max(0).values, torch.ones(2))
    raw = load_dataset(path, scale="none", seed=0)
    assert raw.x_train[:, 2].eq(5.0).all()


def test_image_scaling_is_per_channel():
    x = np.stack([np.zeros((5, 4, 4)), np.full((5, 4, 4), 2.0)], axis=1)
    x[:, 1, 0, 0] = 4.0
    shift, scale = fit_scaling(x, method="minmax")
    assert shift.shape == (1, 2, 1, 1) and shift.flatten().tolist() == [0.0, 2.0]
    assert scale.flatten().tolist() == [1.0, 2.0]
    shift, scale = fit_scaling(x.astype(np.uint8), method="unit")
    assert scale.flatten().tolist() == [255.0, 255.0] and not shift.any()


def test_split_counts_letter_and_rest():
    assert split_counts(20000, train=14000, val=2000, test=4000) == (14000, 2000, 4000)
    assert split_counts(20000, train=None, val=0.1, test=0.2) == (14000, 2000, 4000)
    assert split_counts(10, train=0.5, val=0.2, test=0.3) == (5, 2, 3)
    assert split_counts(9, train=None, val=0.5, test=0.45) == (1, 4, 4)  # rounding never overshoots


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(train=None, val=0.5, test=0.6), "fractions sum to 1.1 > 1"),
        (dict(train=0.8, val=0.1, test=0.2), "fractions sum to 1.1 > 1"),
        (dict(train=None, val=300, test=0.2), "data.val: 300 samples requested but only 200 in the dataset"),
        (dict(train=150, val=20, test=40), "data.train: 150 samples requested but only 140 left"),
        (dict(train=None, val=-1, test=0.2), "data.val: -1 is negative"),
        (dict(train=None, val=1.5, test=0.2), "data.val: 1.5 is not a fraction"),
        (dict(train=None, val=True, test=0.2), "data.val: True"),
        (dict(train=None, val=100, test=100), "data.train: no training samples"),
    ],
)
def test_split_validation(kwargs, message):
    with pytest.raises(RecipeError, match=message.replace("+", r"\+")):
        split_counts(200, **kwargs)
    assert issubclass(RecipeError, ValueError)


def test_official_test_subset_and_pool():
    tr, va, te = split_indices(100, train=None, val=10, test=0.2, seed=0, n_official_test=30)
    assert (len(tr), len(va), te.tolist()) == (90, 10, list(range(30)))
    _, _, te = split_indices(100, train=None, val=10, test=12, seed=0, n_official_test=30)
    assert len(te) == 12 and len(set(te.tolist())) == 12 and te.max() < 30
    with pytest.raises(RecipeError, match="data.test: 40 samples requested but only 30 in the official"):
        split_indices(100, train=None, val=10, test=40, seed=0, n_official_test=30)


def test_bad_scale_name():
    with pytest.raises(RecipeError, match="data.scale: 'zscore' is not one of auto, standard"):
        load_dataset("digits", scale="zscore")

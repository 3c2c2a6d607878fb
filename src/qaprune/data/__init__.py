"""Datasets: registry loaders (digits, mnist, fashion_mnist, letter, jets) and user files,
split with a seed and scaled on the training split, as in-memory tensors.

Example:
    >>> from qaprune.data import DATASETS, load_dataset
    >>> ds = load_dataset("digits", val=0.1, test=0.2, seed=0)
    >>> ds.x_train.dtype, ds.x_train.shape[1:], ds.num_classes
    (torch.float32, torch.Size([1, 8, 8]), 10)
"""

from __future__ import annotations

from qaprune.data.dataset import Dataset, RawData
from qaprune.data.loaders import DATASETS, load_user_file
from qaprune.data.prepare import load_dataset, load_raw
from qaprune.data.resolve import cache_dir, search_roots

__all__ = [
    "DATASETS",
    "Dataset",
    "RawData",
    "cache_dir",
    "load_dataset",
    "load_raw",
    "load_user_file",
    "search_roots",
]

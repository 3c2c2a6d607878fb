"""The two data containers: `RawData` (what a loader reads) and `Dataset` (split, scaled tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

KINDS = ("tabular", "image")


@dataclass
class RawData:
    """What a raw loader returns: arrays as read from disk, before any split or scaling.

    x: (N, F) for tabular data, (N, H, W) or (N, C, H, W) for images; y: (N,) integer labels.
    x_test / y_test: the official test set when the dataset has one (MNIST), else None.
    value_max: the largest possible raw value (255 for uint8 images, 16 for digits); `scale="unit"`
    divides by it. source: the file or folder the data came from.
    """

    x: np.ndarray
    y: np.ndarray
    kind: str
    classes: list[str] | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    value_max: float | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"RawData.kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if (self.x_test is None) != (self.y_test is None):
            raise ValueError("RawData: x_test and y_test must both be given or both be None")


@dataclass
class Dataset:
    """Split, scaled tensors, ready to be batched by index.

    x_*: float32, (N, *input_shape); y_*: int64, (N,). input_shape is (16,) for tabular data,
    (1, 28, 28) for MNIST. `scaling` holds how x was scaled, x = (raw - shift) / scale, with
    shift and scale broadcastable to (1, *input_shape). `classes`: the names the raw data
    declares (None when it has none); `class_names`: always one name per class, label i ->
    class_names[i] (the declared names, else str(i)).

    Example:
        >>> ds = load_dataset("digits", seed=0)
        >>> ds.x_train.shape[1:], ds.num_classes, ds.class_names[:3]
        (torch.Size([1, 8, 8]), 10, ['0', '1', '2'])
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    classes: list[str] | None = None
    source: str | None = None
    scaling: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = list(self.classes) if self.classes else [str(i) for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"Dataset.class_names: {len(self.class_names)} names for {self.num_classes} classes")

    def summary(self) -> dict[str, Any]:
        """Sizes and shapes as plain JSON values: name, train, val, test, num_classes, input_shape,
        and class_counts: per split, samples per class name."""
        return {
            "name": self.name,
            "train": int(self.x_train.shape[0]),
            "val": int(self.x_val.shape[0]),
            "test": int(self.x_test.shape[0]),
            "num_classes": int(self.num_classes),
            "input_shape": list(self.input_shape),
            "class_counts": {split: self.class_counts(split) for split in ("train", "val", "test")},
        }

    def class_counts(self, split: str = "test") -> dict[str, int]:
        """Samples per class name in ``split`` ("train", "val" or "test"), zeros included."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: {split!r} is not one of train, val, test")
        y = getattr(self, f"y_{split}").detach().cpu().long()
        counts = torch.bincount(y, minlength=self.num_classes).tolist() if y.numel() else [0] * self.num_classes
        return {name: int(c) for name, c in zip(self.class_names, counts)}

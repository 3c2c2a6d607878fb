"""`load_dataset`: raw loader -> seeded split -> scaling fitted on train -> float32 / int64 tensors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from qaprune.data.dataset import Dataset, RawData
from qaprune.data.loaders import DATASETS, USER_SUFFIXES, load_user_file
from qaprune.data.scale import apply_scaling, fit_scaling, resolve_scale
from qaprune.data.split import Size, split_indices
from qaprune.errors import DataFormatError, RecipeError
from qaprune.registry import UnknownNameError


def load_dataset(
    name: str,
    *,
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    train: Size = None,
    val: float | int = 0.1,
    test: float | int = 0.2,
    scale: str = "auto",
    seed: int = 0,
    label_column: str | None = None,
    stratify: bool = True,
) -> Dataset:
    """Load, split and scale a dataset: a registry name (`DATASETS.names()`) or a user file
    (.npz with x, y; .csv with a header; .arff).

    path: an explicit file or folder for a registry dataset. data_dir: a data folder, searched
    before $QAPRUNE_DATA, system locations and the cache (qaprune.data.resolve). train / val /
    test: fractions of the data (0..1) or sample counts; train=None takes the rest. The split is
    seeded and, when `stratify`, stratified by label: every split holds each class in
    proportion (qaprune.data.split); stratify=False takes a plain permutation. Datasets with an
    official test set (MNIST, Fashion-MNIST) use it as the test split (an int `test` takes a
    seeded subset of it) and split train / val from the training pool. scale: "auto"
    (standard for tabular, unit for images), "standard", "minmax", "unit" or "none", fitted on
    the training split only. label_column: the label column of a user CSV / ARFF file.

    Example:
        >>> ds = load_dataset("letter", data_dir="../shared/datasets", train=14000, val=2000, test=4000)
        >>> ds.summary()["train"], ds.input_shape
        (14000, (16,))
    """
    raw = load_raw(name, path=path, data_dir=data_dir, label_column=label_column)
    x, x_official = _model_layout(raw.x, raw.kind), None
    if raw.x_test is not None:
        x_official = _model_layout(raw.x_test, raw.kind)
        if x_official.shape[1:] != x.shape[1:]:
            raise DataFormatError(f"{raw.source}: test samples {x_official.shape[1:]} but train {x.shape[1:]}")
    n_official = None if x_official is None else len(x_official)
    i_tr, i_va, i_te = split_indices(
        len(x),
        train=train,
        val=val,
        test=test,
        seed=seed,
        n_official_test=n_official,
        y=raw.y,
        y_test=raw.y_test,
        stratify=stratify,
    )
    method = resolve_scale(scale, kind=raw.kind)
    shift, factor = fit_scaling(x[i_tr], method=method, value_max=raw.value_max)
    x_te, y_te = (x, raw.y) if x_official is None else (x_official, raw.y_test)

    def tensors(xs: np.ndarray, ys: np.ndarray, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xt = torch.from_numpy(np.ascontiguousarray(apply_scaling(xs[idx], shift, factor)))
        return xt, torch.from_numpy(np.asarray(ys[idx], dtype=np.int64))

    (xa, ya), (xb, yb), (xc, yc) = tensors(x, raw.y, i_tr), tensors(x, raw.y, i_va), tensors(x_te, y_te, i_te)
    return Dataset(
        name=str(name),
        x_train=xa,
        y_train=ya,
        x_val=xb,
        y_val=yb,
        x_test=xc,
        y_test=yc,
        num_classes=_num_classes(raw),
        input_shape=tuple(x.shape[1:]),
        classes=raw.classes,
        class_names=_class_names(raw),
        source=raw.source,
        scaling={"method": method, "shift": torch.from_numpy(shift), "scale": torch.from_numpy(factor)},
    )


def load_raw(
    name: str,
    *,
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    label_column: str | None = None,
) -> RawData:
    """The RawData of a registry dataset or of a user file, before splitting and scaling."""
    if name in DATASETS:
        return DATASETS.get(name)(path=path, data_dir=data_dir)
    if _looks_like_file(name):
        if path is not None:
            raise RecipeError(f"data.path: only for registry datasets; {name!r} is already a file")
        return load_user_file(name, label_column=label_column)
    try:
        DATASETS.get(name)
    except UnknownNameError as exc:
        raise UnknownNameError(f"{exc}; or a path to a data file ({', '.join(USER_SUFFIXES)})") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _looks_like_file(name: str | os.PathLike) -> bool:
    text = str(name)
    return text.lower().endswith(USER_SUFFIXES) or os.sep in text or "/" in text or Path(text).expanduser().is_file()


def _model_layout(x: np.ndarray, kind: str) -> np.ndarray:
    """Tabular (N, F) as is; images (N, H, W) -> (N, 1, H, W), (N, C, H, W) as is."""
    if kind == "tabular":
        if x.ndim != 2:
            raise DataFormatError(f"tabular data must be (N, F), got shape {x.shape}")
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise DataFormatError(f"images must be (N, H, W) or (N, C, H, W), got shape {x.shape}")
    return x


def _num_classes(raw: RawData) -> int:
    if raw.classes is not None:
        return len(raw.classes)
    top = int(raw.y.max(initial=-1))
    if raw.y_test is not None:
        top = max(top, int(raw.y_test.max(initial=-1)))
    return top + 1


def _class_names(raw: RawData) -> list[str]:
    """One name per class: the raw data's declared classes, else str(label) (integer labels)."""
    return list(raw.classes) if raw.classes is not None else [str(i) for i in range(_num_classes(raw))]

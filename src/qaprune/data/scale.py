"""Feature scaling fitted on the training split only, then applied to every split."""

from __future__ import annotations

import numpy as np

from qaprune.errors import RecipeError

SCALES = ("auto", "standard", "minmax", "unit", "none")


def resolve_scale(scale: str, *, kind: str) -> str:
    """ "auto" -> "standard" for tabular data, "unit" for images; checks the name."""
    if scale not in SCALES:
        raise RecipeError(f"data.scale: {scale!r} is not one of {', '.join(SCALES)}")
    if scale == "auto":
        return "standard" if kind == "tabular" else "unit"
    return scale


def fit_scaling(x_train: np.ndarray, *, method: str, value_max: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) so that x' = (x - shift) / scale, from the training split only.

    x_train: (N, F) tabular or (N, C, H, W) images. Statistics are per feature for tabular
    data and per channel for images; shift and scale have shape (1, F) or (1, C, 1, 1).
    standard: mean / std (std 0 -> 1). minmax: min / (max - min) (0 -> 1) into [0, 1] on train.
    unit: 0 / value_max (else 255 for uint8 data, else the largest |x| on train). none: 0 / 1.
    """
    axes = (0,) if x_train.ndim == 2 else tuple(i for i in range(x_train.ndim) if i != 1)
    shape = [1] * x_train.ndim
    shape[1] = x_train.shape[1]
    x = x_train
    shift, scale = np.zeros(shape), np.ones(shape)
    if method == "standard":
        shift = x.mean(axis=axes, keepdims=True, dtype=np.float64)
        scale = x.std(axis=axes, keepdims=True, dtype=np.float64)
    elif method == "minmax":
        shift = x.min(axis=axes, keepdims=True).astype(np.float64)
        scale = x.max(axis=axes, keepdims=True).astype(np.float64) - shift
    elif method == "unit":
        top = value_max or (255.0 if x_train.dtype == np.uint8 else float(np.abs(x).max(initial=0)))
        scale = np.full(shape, top)
    elif method != "none":
        raise RecipeError(f"data.scale: {method!r} is not one of {', '.join(SCALES)}")
    scale = np.where(scale == 0, 1.0, scale)
    return shift.astype(np.float32), scale.astype(np.float32)


def apply_scaling(x: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(x - shift) / scale as float32, x of the same layout the scaling was fitted on."""
    return ((x.astype(np.float32, copy=False) - shift) / scale).astype(np.float32, copy=False)

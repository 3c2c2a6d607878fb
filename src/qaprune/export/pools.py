"""Pooling lowerings (registered in ``export.ops.LOWERINGS``): max and average pooling, 1-D to
3-D, as modules and as functions; adaptive pooling where the output size divides the input size
(global pooling for an output of 1); ``mean`` over all dimensions after the channels. Max
pooling keeps the activation grid of its input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from qaprune.export.ops import Lowering, Walk, arg, label, ndim, register

MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
ADAPTIVE_MAX = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
ADAPTIVE_AVG = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


@register(*MAX_POOLS, *AVG_POOLS, *ADAPTIVE_MAX, *ADAPTIVE_AVG)
def _pool_module(w: Walk, node: fx.Node) -> str:
    return pool(w, node, w.module(node))


def pool(w: Walk, node: fx.Node, mod: Any) -> str:
    """A pooling module's ONNX node; max pooling keeps the activation grid."""
    name, x, d = label(node), w.x(node), ndim(w, node) - 2
    if getattr(mod, "return_indices", False) or getattr(mod, "divisor_override", None):
        raise w.unsupported(node, "pooling with return_indices or divisor_override")
    if isinstance(mod, (*ADAPTIVE_MAX, *ADAPTIVE_AVG)):
        return _adaptive(w, node, x, isinstance(mod, ADAPTIVE_MAX))
    if isinstance(mod, MAX_POOLS):
        y = w.b.op("MaxPool", [x], name, **_pool_attrs(mod, d), dilations=_tuple(mod.dilation, d))
        return w.on_grid(y, w.grids.get(x), name)
    include = int(mod.count_include_pad)
    return w.b.op("AveragePool", [x], name, **_pool_attrs(mod, d), count_include_pad=include)


def _adaptive(w: Walk, node: fx.Node, x: str, is_max: bool) -> str:
    name, grid = label(node), w.grids.get(x) if is_max else None
    size_in, size_out = w.shape(w.input(node))[2:], w.shape(node)[2:]
    if all(o == 1 for o in size_out):
        return w.on_grid(w.b.op("GlobalMaxPool" if is_max else "GlobalAveragePool", [x], name), grid, name)
    if any(i % o for i, o in zip(size_in, size_out)):
        raise w.unsupported(
            node,
            f"adaptive pooling {tuple(size_in)} -> {tuple(size_out)} (only where the output size divides the input)",
        )
    k = [i // o for i, o in zip(size_in, size_out)]
    attrs: dict[str, Any] = {"kernel_shape": k, "strides": k, "pads": [0] * 2 * len(k)}
    return w.on_grid(w.b.op("MaxPool" if is_max else "AveragePool", [x], name, **attrs), grid, name)


def _functional_pool(cls: type[nn.Module], params: tuple[str, ...]) -> Lowering:
    """A pooling function as the module ``cls`` with the call's arguments (``params`` in order)."""

    def lower(w: Walk, node: fx.Node) -> str:
        given = {p: arg(node, i + 1, p) for i, p in enumerate(params)}
        return pool(w, node, cls(**{p: v for p, v in given.items() if v is not None}))

    return lower


_MAX = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
for _d, _fns in enumerate(
    (
        (F.max_pool1d, F.avg_pool1d, F.adaptive_max_pool1d, F.adaptive_avg_pool1d),
        (F.max_pool2d, F.avg_pool2d, F.adaptive_max_pool2d, F.adaptive_avg_pool2d),
        (F.max_pool3d, F.avg_pool3d, F.adaptive_max_pool3d, F.adaptive_avg_pool3d),
    )
):
    register(_fns[0])(_functional_pool(MAX_POOLS[_d], _MAX))
    register(_fns[1])(_functional_pool(AVG_POOLS[_d], _AVG[: 5 if _d == 0 else 6]))
    register(_fns[2])(_functional_pool(ADAPTIVE_MAX[_d], ("output_size", "return_indices")))
    register(_fns[3])(_functional_pool(ADAPTIVE_AVG[_d], ("output_size",)))


@register(torch.mean, "mean")
def _mean(w: Walk, node: fx.Node) -> str:
    dim, keep = arg(node, 1, "dim"), arg(node, 2, "keepdim", False)
    rank = ndim(w, w.input(node))
    dims = sorted({d % rank for d in ((dim,) if isinstance(dim, int) else dim or ())})
    if rank < 3 or dims != list(range(2, rank)) or node.kwargs.get("dtype") is not None:
        raise w.unsupported(node, f"a mean over dims {dim} (only over all dimensions after the channels)")
    x = w.x(node)
    y = w.b.op("GlobalAveragePool", [x], node.name)
    return y if keep else _squeezed(w, node, y)


def _squeezed(w: Walk, node: fx.Node, y: str) -> str:
    return w.b.op("Reshape", [y, w.b.ints(f"{node.name}.shape", [0, *w.shape(node)[1:]])], node.name)


def _tuple(v, d: int) -> list[int]:
    return [int(i) for i in v] if isinstance(v, (tuple, list)) else [int(v)] * d


def _pool_attrs(mod: Any, d: int) -> dict:
    k = _tuple(mod.kernel_size, d)
    stride = _tuple(mod.stride if mod.stride is not None else mod.kernel_size, d)
    return {"kernel_shape": k, "strides": stride, "pads": _tuple(mod.padding, d) * 2, "ceil_mode": int(mod.ceil_mode)}

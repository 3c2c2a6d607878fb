"""The ONNX lowerings of the operations between layers, shared by the onnx, qdq and qonnx formats.

``LOWERINGS`` maps torch.fx targets to functions ``lower(walk, node) -> ONNX value``: functions
(``torch.cat``, ``operator.add``, ``F.max_pool1d``, ...), tensor methods by name (``"view"``,
``"unsqueeze"``, ...) and module classes (``nn.Identity``, ``nn.MaxPool2d``, ...; a subclass
with its own ``forward`` is not taken for its parent). What is lowered:

- sums, differences, products and quotients of tensors and numbers (residual adds of tensors
  on different activation grids included: the sum is a float tensor);
- ``cat`` along any dimension but the batch (on one grid when all inputs are on it);
- ``flatten``, ``reshape``/``view``/``unsqueeze``/``squeeze``/``unflatten``, ``permute``/
  ``transpose`` and slicing ``x[:, a:b]``, where the batch stays the first dimension;
- max and average pooling (1-D to 3-D, modules and functions), adaptive pooling where the
  output size divides the input size, ``mean`` over all dimensions after the channels (these
  live in ``export.pools``);
- parameter-free modules and functions: Identity, Dropout (eval), Flatten, Unflatten, ReLU,
  ReLU6, Hardtanh, LeakyReLU, ELU, SiLU, Sigmoid, Tanh, Softmax, LogSoftmax, neg, abs; a float
  tensor attribute used in forward (``x * self.scale``) becomes a constant.

Operations that keep values on the grid of an activation quantizer (max pooling, reshapes,
slices, concatenations of one grid) pass it on (``Walk.on_grid``), so the qdq format keeps its
integer kernels behind them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import fx, nn

from qaprune.export.lower import ALIASES


class Walk(Protocol):
    """What a lowering sees of the walk over the graph (``export.graph.Walk``): ``b`` (the
    ``GraphBuilder``), ``grids`` (ONNX value → the activation grid it is on) and these helpers."""

    b: Any
    grids: dict[str, Any]

    def shape(self, node: fx.Node) -> tuple[int, ...]: ...
    def module(self, node: fx.Node) -> Any: ...
    def input(self, node: fx.Node, i: int = 0) -> fx.Node: ...
    def x(self, node: fx.Node) -> str: ...
    def value(self, node: fx.Node, arg: Any) -> str: ...
    def operand(self, node: fx.Node, arg: Any) -> str: ...
    def unsupported(self, node: fx.Node, what: str) -> Exception: ...
    def on_grid(self, y: str, grid: Any, name: str) -> str: ...
    def clip(self, x: str, name: str, lo: float | None, hi: float | None) -> str: ...


Lowering = Callable[[Walk, fx.Node], str]
INT64_MAX = 2**63 - 1


class Lowerings:
    """The lowerings by target: ``functions`` (the function object), ``methods`` (the method's
    name), ``modules`` (the module class). ``register(*targets)`` decorates a lowering."""

    def __init__(self) -> None:
        self.functions: dict[Any, Lowering] = {}
        self.methods: dict[str, Lowering] = {}
        self.modules: dict[type, Lowering] = {}

    def register(self, *targets: Any) -> Callable[[Lowering], Lowering]:
        def deco(fn: Lowering) -> Lowering:
            for t in targets:
                if isinstance(t, str):
                    self.methods[t] = fn
                elif isinstance(t, type):
                    self.modules[t] = fn
                else:
                    self.functions[t] = fn
            return fn

        return deco


LOWERINGS = Lowerings()
register = LOWERINGS.register


def module_lowering(mod: nn.Module) -> Lowering | None:
    """The lowering of a module's class, or of a base class whose ``forward`` it keeps.

    Example:
        >>> module_lowering(nn.ReLU6()) is module_lowering(nn.Hardtanh()), module_lowering(nn.GRU(2, 2))
        (True, None)
    """
    for cls in type(mod).__mro__:
        if cls in LOWERINGS.modules and type(mod).forward is getattr(cls, "forward", None):
            return LOWERINGS.modules[cls]
    return None


def arg(node: fx.Node, i: int, key: str, default: Any = None) -> Any:
    """Argument ``i`` (counting the input tensor as 0) of a call, given by position or by ``key``."""
    return node.args[i] if len(node.args) > i else node.kwargs.get(key, default)


def label(node: fx.Node) -> str:
    """The base name of a node's ONNX values: the module path of a module, else the node's name."""
    return str(node.target) if node.op == "call_module" else node.name


def ndim(w: Walk, node: fx.Node) -> int:
    return len(w.shape(node))


# ---- parameter-free modules and elementwise functions -------------------------------------
@register(*ALIASES, nn.AlphaDropout, "contiguous", "clone", "detach", torch.clone)
def passthrough(w: Walk, node: fx.Node) -> str:
    return w.x(node)


@register("float")
def _float(w: Walk, node: fx.Node) -> str:
    if node.meta["tensor_meta"].dtype != torch.float32:
        raise w.unsupported(node, f"a conversion to {node.meta['tensor_meta'].dtype} (only float32)")
    return passthrough(w, node)


def _dropout(training_default: bool) -> Lowering:
    """Functional dropout: the identity when its ``training`` argument (the third) is False."""

    def lower(w: Walk, node: fx.Node) -> str:
        if arg(node, 2, "training", node.kwargs.get("train", training_default)):
            raise w.unsupported(node, "dropout with training=True (random at inference); pass self.training")
        return passthrough(w, node)

    return lower


register(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, torch.dropout)(_dropout(True))
register(F.alpha_dropout, F.feature_alpha_dropout)(_dropout(False))


@register(nn.ReLU, F.relu, torch.relu, "relu")
def _relu(w: Walk, node: fx.Node) -> str:
    return w.clip(w.x(node), label(node), 0.0, None)


@register(nn.Hardtanh)
def _hardtanh_module(w: Walk, node: fx.Node) -> str:
    mod = w.module(node)
    return w.clip(w.x(node), label(node), float(mod.min_val), float(mod.max_val))


@register(F.hardtanh, F.relu6)
def _hardtanh(w: Walk, node: fx.Node) -> str:
    lo, hi = (0.0, 6.0) if node.target is F.relu6 else (arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0))
    return w.clip(w.x(node), node.name, float(lo), float(hi))


def _unary(op_type: str) -> Lowering:
    def lower(w: Walk, node: fx.Node) -> str:
        return w.b.op(op_type, [w.x(node)], label(node))

    return lower


register(nn.Sigmoid, torch.sigmoid, F.sigmoid, "sigmoid")(_unary("Sigmoid"))
register(nn.Tanh, torch.tanh, F.tanh, "tanh")(_unary("Tanh"))
register(operator.neg, torch.neg, "neg")(_unary("Neg"))
register(torch.abs, "abs")(_unary("Abs"))


@register(nn.SiLU, F.silu)
def _silu(w: Walk, node: fx.Node) -> str:
    x = w.x(node)
    return w.b.op("Mul", [x, w.b.op("Sigmoid", [x], label(node))], label(node))


@register(nn.LeakyReLU, F.leaky_relu, nn.ELU, F.elu)
def _leaky(w: Walk, node: fx.Node) -> str:
    elu = node.target is F.elu or (node.op == "call_module" and isinstance(w.module(node), nn.ELU))
    key = "alpha" if elu else "negative_slope"
    alpha = getattr(w.module(node), key) if node.op == "call_module" else arg(node, 1, key, 1.0 if elu else 0.01)
    return w.b.op("Elu" if elu else "LeakyRelu", [w.x(node)], label(node), alpha=float(alpha))


@register(
    nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax", "log_softmax"
)
def _softmax(w: Walk, node: fx.Node) -> str:
    mod = w.module(node) if node.op == "call_module" else None
    dim = mod.dim if mod is not None else arg(node, 1, "dim")
    if dim is None or node.kwargs.get("dtype") is not None:
        raise w.unsupported(node, "softmax without an explicit dim (or with a dtype)")
    log = isinstance(mod, nn.LogSoftmax) or "log" in str(getattr(node.target, "__name__", node.target))
    return w.b.op("LogSoftmax" if log else "Softmax", [w.x(node)], label(node), axis=int(dim))


# ---- arithmetic and concatenation ---------------------------------------------------------
def _binary(op_type: str) -> Lowering:
    def lower(w: Walk, node: fx.Node) -> str:
        if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("rounding_mode") is not None:
            raise w.unsupported(node, f"{op_type.lower()} with alpha or rounding_mode")
        a, b = (w.operand(node, arg(node, i, k)) for i, k in ((0, "input"), (1, "other")))
        return w.b.op(op_type, [a, b], node.name)

    return lower


register(operator.add, operator.iadd, torch.add, "add")(_binary("Add"))
register(operator.sub, operator.isub, torch.sub, "sub")(_binary("Sub"))
register(operator.mul, operator.imul, torch.mul, "mul")(_binary("Mul"))
register(operator.truediv, operator.itruediv, torch.div, "div")(_binary("Div"))


@register(torch.cat, torch.concat, torch.concatenate)
def _cat(w: Walk, node: fx.Node) -> str:
    tensors, dim = arg(node, 0, "tensors"), arg(node, 1, "dim", arg(node, 1, "axis", 0))
    if not isinstance(tensors, (list, tuple)):
        raise w.unsupported(node, "a concatenation of something other than a list of tensors")
    d = dim % ndim(w, node)
    if d == 0 or not node.meta["batch_major"]:
        raise w.unsupported(node, "a concatenation along the batch dimension")
    xs = [w.value(node, t) for t in tensors]
    y = w.b.op("Concat", xs, node.name, axis=d)
    grids = {w.grids.get(x) for x in xs}
    return w.on_grid(y, grids.pop() if len(grids) == 1 else None, node.name)


# ---- layout: flatten, reshape, permute, slices ---------------------------------------------
def reshaped(w: Walk, node: fx.Node, x: str, src: fx.Node) -> str:
    """``x`` (the value of ``src``) as the node's shape, the batch first: Reshape [0, ...]."""
    if not (node.meta["batch_major"] and src.meta.get("batch_major")):
        raise w.unsupported(node, f"a reshape {w.shape(src)} -> {w.shape(node)} (at batch 2) that moves the batch")
    if w.shape(node) == w.shape(src):
        return x
    y = w.b.op("Reshape", [x, w.b.ints(f"{label(node)}.shape", [0, *w.shape(node)[1:]])], label(node))
    return w.on_grid(y, w.grids.get(x), label(node))


@register(torch.reshape, torch.unsqueeze, torch.squeeze, torch.unflatten, nn.Unflatten)
@register("reshape", "view", "unsqueeze", "squeeze", "unflatten", "view_as", "reshape_as")
def _reshape(w: Walk, node: fx.Node) -> str:
    return reshaped(w, node, w.x(node), w.input(node))


@register(nn.Flatten, torch.flatten, "flatten")
def _flatten(w: Walk, node: fx.Node) -> str:
    if node.op == "call_module":
        start, end = w.module(node).start_dim, w.module(node).end_dim
    else:
        start, end = arg(node, 1, "start_dim", 0), arg(node, 2, "end_dim", -1)
    src, x = w.input(node), w.x(node)
    rank = ndim(w, src)
    if start % rank == 0:
        raise w.unsupported(node, f"flatten(start_dim={start}) merges the batch into the features")
    if start % rank != 1 or end % rank != rank - 1:
        return reshaped(w, node, x, src)
    return w.on_grid(w.b.op("Flatten", [x], label(node), axis=1), w.grids.get(x), label(node))


@register(torch.permute, torch.transpose, "permute", "transpose")
def _permute(w: Walk, node: fx.Node) -> str:
    rank, x = ndim(w, node), w.x(node)
    rest: list[Any] = list(node.args[1:])
    if node.target == "transpose" or node.target is torch.transpose:
        a, b = (arg(node, i, k) % rank for i, k in ((1, "dim0"), (2, "dim1")))
        perm = list(range(rank))
        perm[a], perm[b] = b, a
    else:
        dims: Any = (
            rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest or node.kwargs.get("dims")
        )
        perm = [int(d) % rank for d in dims]
    if perm[0] != 0:
        raise w.unsupported(node, f"a permutation {perm} that moves the batch dimension")
    if perm == list(range(rank)):
        return x
    return w.on_grid(w.b.op("Transpose", [x], node.name, perm=perm), w.grids.get(x), node.name)


@register(operator.getitem)
def _getitem(w: Walk, node: fx.Node) -> str:
    src, index = w.input(node), node.args[1]
    x = w.value(node, src)
    idx = index if isinstance(index, tuple) else (index,)
    if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in idx) or any(
        isinstance(v, fx.Node) for i in idx if isinstance(i, slice) for v in (i.start, i.stop, i.step)
    ):
        raise w.unsupported(node, "indexing with tensors or computed bounds (only constant slices and integers)")
    real = [i for i in idx if i is not None and i is not Ellipsis]
    if Ellipsis in idx:
        at = idx.index(Ellipsis)
        idx = (*idx[:at], *[slice(None)] * (ndim(w, src) - len(real)), *idx[at + 1 :])
    dims = [i for i in idx if i is not None]
    if dims and dims[0] != slice(None):
        raise w.unsupported(node, "indexing the batch dimension")
    y = _slice(w, node, x, dims)
    return reshaped(w, node, y, src) if any(isinstance(i, int) for i in dims) or None in idx else y


def _slice(w: Walk, node: fx.Node, x: str, dims: list) -> str:
    starts: list[int] = []
    ends: list[int] = []
    axes: list[int] = []
    steps: list[int] = []
    for axis, i in enumerate(dims):
        if isinstance(i, int):
            s, e, st = i, (i + 1 if i != -1 else INT64_MAX), 1
        elif i == slice(None):
            continue
        else:
            s, e, st = i.start or 0, INT64_MAX if i.stop is None else i.stop, i.step or 1
        if st <= 0:
            raise w.unsupported(node, "a slice with a step below 1")
        starts, ends, axes, steps = [*starts, s], [*ends, e], [*axes, axis], [*steps, st]
    if not axes:
        return x
    bounds = [
        w.b.ints(f"{node.name}.{k}", v)
        for k, v in zip(("starts", "ends", "axes", "steps"), (starts, ends, axes, steps))
    ]
    return w.on_grid(w.b.op("Slice", [x, *bounds], node.name), w.grids.get(x), node.name)

"""ONNX graphs of lowered models, and the ``onnx`` format (float).

``build_graph`` walks the torch.fx graph of a lowered model (``export.lower``) and writes Conv,
Gemm, batch norms, pools, adds and reshapes itself; an ``Emitter`` decides how a format writes
weights and activation quantizers (float here, ``qdq``, ``qonnx``). A module or function it does
not know raises ``Unsupported`` naming the layer.

The ``onnx`` format: the baked float model, pruned channels removed, batch norms folded.
Activation quantizers are part of the model's function, so they stay in the graph as float
operations that compute what PyTorch computes (``Clip → Mul(1/step) → Round → Mul(step)``; with a
learned step ``Div → Clip → Round → Mul``); where a Linear/Conv is the quantizer's only input,
``1/step`` is folded into its weights and bias (``Clip(lo, hi) → Round → Mul(step)``: the same
values but at a rounding tie, which the verification allows). Models the lowering does not cover
are exported with ``torch.onnx.export`` (dynamo) instead. The TorchScript exporter is not a fallback here: it drops
the in-place rounding of the activation quantizers and silently exports a different function.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from onnx import ModelProto, TensorProto, helper, numpy_helper
from torch import Tensor, fx, nn

from qaprune.export.lower import (
    ACT_QUANTS,
    ALIASES,
    BATCHNORMS,
    ActGrid,
    Lowered,
    Unsupported,
    WeightGrid,
    act_grid,
    fused,
)
from qaprune.param import WEIGHT_LAYERS
from qaprune.quant.activations import QuantReLU

TAPS_KEY = "qaprune.activation_quantizers"  # model property: JSON, quantizer module → its output value


class GraphBuilder:
    """Nodes and initializers of one ONNX graph, with unique value names."""

    def __init__(self, *, reserved: tuple[str, ...] = ("input", "output")) -> None:
        self.nodes: list = []
        self.inits: list[TensorProto] = []
        self._used: set[str] = set(reserved)  # the graph's input and output names

    def name(self, base: str) -> str:
        base, n = base.replace("/", "."), 0
        out = base
        while out in self._used:
            n += 1
            out = f"{base}_{n}"
        self._used.add(out)
        return out

    def const(self, base: str, value) -> str:
        """An initializer from a numpy array / tensor (kept dtype) or a TensorProto."""
        name = self.name(base)
        if isinstance(value, TensorProto):
            value.name = name
            self.inits.append(value)
        else:
            arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def scalar(self, base: str, value: float) -> str:
        return self.const(base, np.array(value, dtype=np.float32))

    def op(self, op_type: str, inputs: list[str], base: str, *, domain: str = "", **attrs) -> str:
        out = self.name(base)
        self.nodes.append(
            helper.make_node(
                op_type, inputs, [out], name=self.name(f"{base}.{op_type}"), domain=domain or None, **attrs
            )
        )
        return out


@dataclass(frozen=True)
class Site:
    """One Linear/Conv as an emitter sees it: the module, the batch norm folded into it (or None),
    its weight and bias grids (None: float), the grid its input is on (None: a float input) and
    the grid of the activation quantizer that alone reads its output (None: anything else)."""

    name: str
    mod: nn.Module
    bn: nn.Module | None
    weight: WeightGrid | None
    bias: WeightGrid | None
    x_grid: ActGrid | None
    y_grid: ActGrid | None


class Emitter:
    """How a format writes weights and activation quantizers. ``fold_bn``: batch norms after a
    Linear/Conv are folded into it (else written as BatchNormalization)."""

    fold_bn = True
    opset = 17
    domains: dict[str, int] = {}

    def params(self, b: GraphBuilder, site: Site) -> tuple[str, str | None]:
        """(weight value, bias value or None) of a Linear/Conv."""
        raise NotImplementedError

    def produced(self, site: Site, y: str) -> None:
        """Called with the value a Linear/Conv writes (after ``params``)."""

    def act(self, b: GraphBuilder, x: str, grid: ActGrid, name: str, relu: bool) -> tuple[str, ActGrid]:
        """The quantized activation and the grid its values are on as the next layer reads them."""
        raise NotImplementedError

    def keep(self, b: GraphBuilder, x: str, grid: ActGrid, name: str) -> str:
        """After an operation that keeps values on ``grid`` (max pool, flatten)."""
        return x


def build_graph(low: Lowered, em: Emitter, *, batch: int | str = "batch", name: str = "qaprune") -> ModelProto:
    """The ONNX model of ``low`` as ``em`` writes it: input ``input`` (batch, ...), output ``output``."""
    return _Walk(low, em, batch).run(name)


class _Walk:
    def __init__(self, low: Lowered, em: Emitter, batch: int | str) -> None:
        self.low, self.em, self.batch, self.b = low, em, batch, GraphBuilder()
        self.values: dict[fx.Node, str] = {}
        self.grids: dict[str, ActGrid] = {}
        self.folded: set[fx.Node] = set()
        self.taps: dict[str, str] = {}  # activation quantizer → the value its output is

    def run(self, name: str) -> ModelProto:
        out = None
        for node in self.low.graph.graph.nodes:
            if node.op == "output":
                out = node.args[0]
            elif node not in self.folded:
                getattr(self, f"_{node.op}")(node)
        if not isinstance(out, fx.Node):
            raise Unsupported("output", "the model must return a single tensor")
        if self.values[out] == "input":
            raise Unsupported("output", "the model returns its input")
        self._rename(self.values[out], "output")
        inp = next(n for n in self.low.graph.graph.nodes if n.op == "placeholder")
        graph = helper.make_graph(
            self.b.nodes, name, [self._info("input", inp)], [self._info("output", out)], self.b.inits
        )
        opsets = [helper.make_opsetid("", self.em.opset)] + [
            helper.make_opsetid(d, v) for d, v in self.em.domains.items()
        ]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="qaprune")
        model.ir_version = 10 if self.em.opset >= 21 else 8
        helper.set_model_props(model, {TAPS_KEY: json.dumps(self.taps, separators=(",", ":"))})
        return model

    def _info(self, value: str, node: fx.Node):
        shape = [self.batch, *node.meta["tensor_meta"].shape[1:]]
        return helper.make_tensor_value_info(value, TensorProto.FLOAT, shape)

    def _rename(self, value: str, new: str) -> None:
        for n in self.b.nodes:
            n.output[:] = [new if o == value else o for o in n.output]
            n.input[:] = [new if i == value else i for i in n.input]
        self.taps = {k: new if v == value else v for k, v in self.taps.items()}

    def _placeholder(self, node: fx.Node) -> None:
        if self.values:
            raise Unsupported(node.name, "models with more than one input are not exported")
        self.values[node] = "input"
        if self.low.input_quant:
            mod = self.low.model.get_submodule(self.low.input_quant)
            self.values[node] = self._act("input", mod, self.low.input_quant, self._numel(node))

    def _numel(self, node: fx.Node) -> int:
        return math.prod(node.meta["tensor_meta"].shape[1:])

    def _in(self, node: fx.Node, i: int = 0) -> str:
        arg = node.args[i]
        if not isinstance(arg, fx.Node) or arg not in self.values:
            raise Unsupported(self._where(node), f"input {i} is not a tensor the export knows")
        return self.values[arg]

    def _where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack") or {}
        return f"{list(stack)[-1]}:{node.name}" if stack else node.name

    def _act(self, x: str, mod: nn.Module, name: str, numel: int) -> str:
        y, grid = self.em.act(self.b, x, act_grid(mod, numel), name, isinstance(mod, QuantReLU))
        self.grids[y] = grid
        self.taps[name] = y
        return y

    # ---- modules -------------------------------------------------------------------------
    def _call_module(self, node: fx.Node) -> None:
        mod, name = self.low.graph.get_submodule(node.target), str(node.target)
        x = self._in(node)
        if isinstance(mod, ACT_QUANTS):
            self.values[node] = self._act(x, mod, name, self._numel(node.args[0]))
        elif isinstance(mod, WEIGHT_LAYERS):
            self.values[node] = self._weight_layer(node, mod, name, x)
        elif isinstance(mod, BATCHNORMS):
            self.values[node] = self._batchnorm(mod, name, x)
        elif isinstance(mod, ALIASES):
            self.values[node] = x
        elif isinstance(mod, (nn.ReLU, nn.ReLU6)):
            self.values[node] = self._relu(x, name, 6.0 if isinstance(mod, nn.ReLU6) else None)
        elif isinstance(mod, nn.Flatten):
            self.values[node] = self._flatten(node, x, name, mod.start_dim, mod.end_dim)
        else:
            self.values[node] = self._pool(node, mod, name, x)

    def _weight_layer(self, node: fx.Node, mod: nn.Module, name: str, x: str) -> str:
        rank = len(node.args[0].meta["tensor_meta"].shape)
        if isinstance(mod, nn.Linear) and rank != 2:
            raise Unsupported(name, f"a Linear on a rank-{rank} input (only (N, features) is lowered)")
        if not isinstance(mod, nn.Linear) and mod.padding_mode != "zeros":
            raise Unsupported(name, f"padding_mode={mod.padding_mode!r} (only zeros)")
        bn_node = self._only_user(node, BATCHNORMS) if self.em.fold_bn else None
        bn = self.low.graph.get_submodule(bn_node.target) if bn_node is not None else None
        if bn is not None and not bn.track_running_stats:
            bn_node = bn = None
        reader = self._only_user(bn_node or node, ACT_QUANTS)
        y_grid = (
            None
            if reader is None
            else act_grid(self.low.graph.get_submodule(reader.target), self._numel(bn_node or node))
        )
        site = Site(name, mod, bn, self.low.weights.get(name), self.low.biases.get(name), self.grids.get(x), y_grid)
        w, bias = self.em.params(self.b, site)
        inputs = [x, w] + ([bias] if bias else [])
        if isinstance(mod, nn.Linear):
            y = self.b.op("Gemm", inputs, name, transB=1)
        else:
            y = self.b.op("Conv", inputs, name, **_conv_attrs(mod, name))
        self.em.produced(site, y)
        if bn_node is not None:
            self.folded.add(bn_node)
            self.values[bn_node] = y
        return y

    def _only_user(self, node: fx.Node, kinds: tuple) -> fx.Node | None:
        users = list(node.users)
        if (
            len(users) == 1
            and users[0].op == "call_module"
            and isinstance(self.low.graph.get_submodule(users[0].target), kinds)
        ):
            return users[0]
        return None

    def _batchnorm(self, mod: nn.Module, name: str, x: str) -> str:
        if not mod.track_running_stats:
            raise Unsupported(name, "a batch norm without running statistics")
        c = mod.num_features
        gamma = mod.weight.detach() if mod.weight is not None else torch.ones(c)
        beta = mod.bias.detach() if mod.bias is not None else torch.zeros(c)
        ins = [
            self.b.const(f"{name}.{k}", v.float())
            for k, v in (
                ("weight", gamma),
                ("bias", beta),
                ("running_mean", mod.running_mean),
                ("running_var", mod.running_var),
            )
        ]
        return self.b.op("BatchNormalization", [x, *ins], name, epsilon=float(mod.eps))

    def _relu(self, x: str, name: str, top: float | None) -> str:
        grid = self.grids.get(x)
        if grid is not None and not grid.signed and (top is None or grid.hi * grid.step <= top):
            return x  # already non-negative (and below the top): the ReLU does nothing
        if top is None:
            return self.b.op("Relu", [x], name)
        return self.b.op("Clip", [x, self.b.scalar(f"{name}.min", 0.0), self.b.scalar(f"{name}.max", top)], name)

    def _flatten(self, node: fx.Node, x: str, name: str, start: int, end: int) -> str:
        rank = len(node.args[0].meta["tensor_meta"].shape)
        if start != 1 or end not in (-1, rank - 1):
            raise Unsupported(name, f"flatten(start_dim={start}, end_dim={end}) (only 1, -1)")
        y = self.b.op("Flatten", [x], name, axis=1)
        return self._keep(x, y, name)

    def _keep(self, x: str, y: str, name: str) -> str:
        grid = self.grids.get(x)
        if grid is None:
            return y
        y = self.em.keep(self.b, y, grid, name)
        self.grids[y] = grid
        return y

    def _pool(self, node: fx.Node, mod: nn.Module, name: str, x: str) -> str:
        if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            if mod.return_indices:
                raise Unsupported(name, "max pooling with return_indices")
            d = len(node.args[0].meta["tensor_meta"].shape) - 2
            y = self.b.op("MaxPool", [x], name, **_pool_attrs(mod, d), dilations=_tuple(mod.dilation, d))
            return self._keep(x, y, name)
        if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            if getattr(mod, "divisor_override", None):
                raise Unsupported(name, "average pooling with divisor_override")
            d = len(node.args[0].meta["tensor_meta"].shape) - 2
            return self.b.op(
                "AveragePool", [x], name, **_pool_attrs(mod, d), count_include_pad=int(mod.count_include_pad)
            )
        if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)) and all(
            s == 1 for s in node.meta["tensor_meta"].shape[2:]
        ):
            return self.b.op("GlobalAveragePool", [x], name)
        raise Unsupported(name, f"{type(mod).__name__} has no ONNX lowering here")

    # ---- functions and methods -----------------------------------------------------------
    def _call_function(self, node: fx.Node) -> None:
        fn, where = node.target, self._where(node)
        if fn in (operator.add, torch.add) and len(node.args) == 2 and not node.kwargs:
            a, c = (
                self._in(node, i)
                if isinstance(node.args[i], fx.Node)
                else self.b.scalar(f"{node.name}.c", float(node.args[i]))
                for i in (0, 1)
            )
            self.values[node] = self.b.op("Add", [a, c], node.name)
        elif fn in (torch.relu, F.relu) and not node.kwargs.get("inplace", False) and len(node.args) == 1:
            self.values[node] = self._relu(self._in(node), node.name, None)
        elif fn is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            self.values[node] = self._flatten(node, self._in(node), node.name, start, end)
        else:
            raise Unsupported(where, f"function {getattr(fn, '__name__', fn)} has no ONNX lowering here")

    def _call_method(self, node: fx.Node) -> None:
        method, where = node.target, self._where(node)
        if method == "size":
            return  # its users read shapes from the propagated metadata
        x = self._in(node)
        if method == "relu":
            self.values[node] = self._relu(x, node.name, None)
        elif method == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            self.values[node] = self._flatten(node, x, node.name, start, node.kwargs.get("end_dim", -1))
        elif method in ("view", "reshape") and self._keeps_batch(node):
            shape = self.b.const(f"{node.name}.shape", np.array([0, *node.meta["tensor_meta"].shape[1:]], np.int64))
            self.values[node] = self._keep(x, self.b.op("Reshape", [x, shape], node.name), node.name)
        else:
            raise Unsupported(where, f"method .{method}() has no ONNX lowering here")

    def _keeps_batch(self, node: fx.Node) -> bool:
        return node.meta["tensor_meta"].shape[0] == node.args[0].meta["tensor_meta"].shape[0]

    def _get_attr(self, node: fx.Node) -> None:
        raise Unsupported(node.name, "a tensor attribute used directly in forward()")


def _tuple(v, d: int) -> list[int]:
    return [int(i) for i in v] if isinstance(v, (tuple, list)) else [int(v)] * d


def _conv_attrs(mod: nn.Module, name: str) -> dict:
    k = list(mod.kernel_size)
    d, dil = len(k), list(mod.dilation)
    if isinstance(mod.padding, str):
        total = [0] * d if mod.padding == "valid" else [dl * (kk - 1) for dl, kk in zip(dil, k)]
        pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    else:
        pads = list(mod.padding) * 2
    return {"kernel_shape": k, "strides": list(mod.stride), "dilations": dil, "group": mod.groups, "pads": pads}


def _pool_attrs(mod: nn.Module, d: int) -> dict:
    k = _tuple(mod.kernel_size, d)
    stride = _tuple(mod.stride if mod.stride is not None else mod.kernel_size, d)
    return {"kernel_shape": k, "strides": stride, "pads": _tuple(mod.padding, d) * 2, "ceil_mode": int(mod.ceil_mode)}


class FloatEmitter(Emitter):
    """Float weights with batch norms folded in; activation quantizers as float operations."""

    fold_bn = True
    opset = 17

    def __init__(self) -> None:
        self.notes: dict[str, str] = {}
        self.prescaled: set[str] = set()  # values already divided by the step of their quantizer

    def params(self, b: GraphBuilder, site: Site) -> tuple[str, str | None]:
        w, bias, _ = fused(site.mod, site.bn)
        g = site.weight
        self.notes[site.name] = ("float" if g is None else f"{g.bits}-bit values in float") + (
            "" if site.bn is None else ", batch norm folded"
        )
        if site.y_grid is not None:  # 1/step of the quantizer reading the output, folded in
            w, bias = w / site.y_grid.step, None if bias is None else bias / site.y_grid.step
            self.notes[site.name] += ", output in activation steps"
        return b.const(f"{site.name}.weight", w.float()), None if bias is None else b.const(
            f"{site.name}.bias", bias.float()
        )

    def produced(self, site: Site, y: str) -> None:
        if site.y_grid is not None:
            self.prescaled.add(y)

    def act(self, b: GraphBuilder, x: str, grid: ActGrid, name: str, relu: bool) -> tuple[str, ActGrid]:
        return float_act(b, x, grid, name, prescaled=x in self.prescaled), grid


def float_act(b: GraphBuilder, x: str, g: ActGrid, name: str, *, prescaled: bool = False) -> str:
    """The float operations of an activation quantizer, in PyTorch's order and float32 constants.
    ``prescaled``: ``x`` is already in steps (``1/step`` folded into the layer before), so
    ``Clip(lo, hi) → Round → Mul(step)``: one memory pass fewer."""
    if prescaled:
        y = b.op("Clip", [x, b.scalar(f"{name}.min", float(g.lo)), b.scalar(f"{name}.max", float(g.hi))], name)
    elif g.form == "ste":
        y = b.op("Clip", [x, b.scalar(f"{name}.min", g.lo * g.step), b.scalar(f"{name}.max", g.hi * g.step)], name)
        y = b.op("Mul", [y, b.scalar(f"{name}.inv_step", 1.0 / g.step)], name)
    else:
        y = b.op("Div", [x, b.scalar(f"{name}.step", g.step)], name)
        y = b.op("Clip", [y, b.scalar(f"{name}.min", float(g.lo)), b.scalar(f"{name}.max", float(g.hi))], name)
    y = b.op("Round", [y], name)
    return b.op("Mul", [y, b.scalar(f"{name}.step", g.step)], name)


def float_onnx(low: Lowered) -> tuple[ModelProto, dict[str, str]]:
    """The float ONNX model of a lowered model (dynamic batch) and, per layer, how it was written.

    Example:
        >>> import torch
        >>> from qaprune.export.lower import lower
        >>> from qaprune.models import build_model
        >>> m, notes = float_onnx(lower(build_model("mlp", input_shape=(16,), num_classes=5).eval(),
        ...                             torch.randn(8, 16)))
        >>> [n.op_type for n in m.graph.node][:3], notes["fc1"]
        (['Flatten', 'Gemm', 'Relu'], 'float, batch norm folded')
    """
    em = FloatEmitter()
    return build_graph(low, em), em.notes


def torch_onnx(low: Lowered, path: str) -> str:
    """Export the lowered model with ``torch.onnx.export`` (dynamo), for models the lowering does
    not cover; batch norms folded first. -> how it was exported."""
    from qaprune.export.fold import fold_batchnorm
    from qaprune.metrics.latency import export_onnx

    folded, _ = fold_batchnorm(low.model)
    return export_onnx(folded, low.input_shape, path)

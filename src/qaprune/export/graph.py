"""ONNX graphs of lowered models: the walk over the torch.fx graph that onnx, qdq and qonnx share.

``build_graph`` visits the nodes of a lowered model (``export.lower``) in order. Linear/Conv
layers (with the batch norm after them), batch norms and activation quantizers are written here;
every other module, function and method is looked up in ``export.ops.LOWERINGS`` (pooling,
concatenation, sums, reshapes, parameter-free modules, ...). An ``Emitter`` decides how a format
writes weights and activation quantizers (float, ``qdq``, ``qonnx``). A node without a lowering
raises ``Unsupported`` naming the fx node and its module path.

Values carry the grid of the activation quantizer they are on (``Walk.grids``): operations
that keep values on it (max pooling, reshapes, a concatenation of tensors on one grid) pass it
on, so that the next Linear/Conv knows its input is quantized.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np
import torch
from onnx import ModelProto, TensorProto, helper, numpy_helper
from torch import Tensor, fx, nn

from qaprune.export import ops, pools  # noqa: F401 (pools registers its lowerings in ops)
from qaprune.export.lower import ACT_QUANTS, BATCHNORMS, ActGrid, Lowered, Unsupported, WeightGrid, act_grid
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

    def ints(self, base: str, values) -> str:
        """A 1-D int64 initializer (shapes, axes, slice bounds)."""
        return self.const(base, np.array(list(values), dtype=np.int64))

    def op(self, op_type: str, inputs: list[str], base: str, *, domain: str = "", **attrs: Any) -> str:
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
        """After an operation that keeps values on ``grid`` (max pool, flatten, concatenation)."""
        return x


def build_graph(low: Lowered, em: Emitter, *, batch: int | str = "batch", name: str = "qaprune") -> ModelProto:
    """The ONNX model of ``low`` as ``em`` writes it: input ``input`` (batch, ...), output ``output``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from qaprune.export.lower import lower
        >>> from qaprune.export.onnx_export import FloatEmitter
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv, self.fc = nn.Conv1d(1, 2, 3), nn.Linear(16, 2)
        ...     def forward(self, x):
        ...         h = self.conv(x.unsqueeze(1))
        ...         return self.fc(torch.cat([h.flatten(1), x[:, :4]], dim=1))
        >>> proto = build_graph(lower(Net().eval(), torch.randn(4, 8)), FloatEmitter())
        >>> [n.op_type for n in proto.graph.node]
        ['Reshape', 'Conv', 'Flatten', 'Slice', 'Concat', 'Gemm']
    """
    if low.graph is None:
        raise Unsupported(type(low.model).__name__, "the model was lowered without tracing it")
    return Walk(low, em, batch).run(name)


class Walk:
    """One pass over the fx graph of ``low``: ``values`` (fx node → ONNX value), ``grids``
    (value → the activation grid it is on), ``taps`` (activation quantizer → its output value).
    ``export.ops`` lowers nodes through the helpers below."""

    def __init__(self, low: Lowered, em: Emitter, batch: int | str) -> None:
        self.low, self.em, self.batch, self.b = low, em, batch, GraphBuilder()
        self.values: dict[fx.Node, str] = {}
        self.grids: dict[str, ActGrid] = {}
        self.folded: set[fx.Node] = set()
        self.taps: dict[str, str] = {}

    def run(self, name: str) -> ModelProto:
        out = None
        for node in self.low.graph.graph.nodes:
            if node.op == "output":
                out = node.args[0]
            elif node not in self.folded:
                getattr(self, f"_{node.op}")(node)
        if not isinstance(out, fx.Node) or out not in self.values:
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
        shape = [self.batch, *self.shape(node)[1:]]
        return helper.make_tensor_value_info(value, TensorProto.FLOAT, shape)

    def _rename(self, value: str, new: str) -> None:
        for n in self.b.nodes:
            n.output[:] = [new if o == value else o for o in n.output]
            n.input[:] = [new if i == value else i for i in n.input]
        self.taps = {k: new if v == value else v for k, v in self.taps.items()}

    # ---- helpers for the lowerings --------------------------------------------------------
    def shape(self, node: fx.Node) -> tuple[int, ...]:
        """The node's tensor shape at batch 2."""
        return tuple(int(d) for d in node.meta["tensor_meta"].shape)

    def numel(self, node: fx.Node) -> int:
        """Elements per sample of the node's tensor."""
        return reduce(operator.mul, self.shape(node)[1:], 1)

    def module(self, node: fx.Node) -> Any:
        """The module a ``call_module`` node calls (typed loosely: lowerings read its attributes)."""
        return self.low.graph.get_submodule(str(node.target))

    def input(self, node: fx.Node, i: int = 0) -> fx.Node:
        """Argument ``i`` of ``node``, which must be a tensor of the graph."""
        arg = node.args[i] if len(node.args) > i else None
        if not isinstance(arg, fx.Node):
            raise self.unsupported(node, f"its argument {i} ({arg!r}) is not a tensor of the graph")
        return arg

    def x(self, node: fx.Node) -> str:
        """The ONNX value of the node's first input."""
        return self.value(node, self.input(node))

    def value(self, node: fx.Node, arg) -> str:
        """The ONNX value of ``arg``, a tensor input of ``node``."""
        if not isinstance(arg, fx.Node) or arg not in self.values:
            raise self.unsupported(node, f"its input {arg} is not a tensor the export knows")
        return self.values[arg]

    def operand(self, node: fx.Node, arg) -> str:
        """A tensor input, or a Python number as a float32 scalar."""
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return self.b.scalar(f"{node.name}.c", float(arg))
        return self.value(node, arg)

    def unsupported(self, node: fx.Node, what: str) -> Unsupported:
        if node.op == "call_module":
            return Unsupported(str(node.target), what)
        stack = node.meta.get("nn_module_stack") or {}
        call = f".{node.target}()" if node.op == "call_method" else _function_name(node)
        return Unsupported(list(stack)[-1] if stack else "", what, node=node.name, call=call)

    def on_grid(self, y: str, grid: ActGrid | None, name: str) -> str:
        """``y`` holds values on ``grid`` (None: float values): the emitter marks it so."""
        if grid is None:
            return y
        y = self.em.keep(self.b, y, grid, name)
        self.grids[y] = grid
        return y

    def clip(self, x: str, name: str, lo: float | None, hi: float | None) -> str:
        """``clamp(x, lo, hi)``; nothing when ``x`` is on a grid within the range already."""
        grid = self.grids.get(x)
        if grid is not None and (lo is None or grid.lo * grid.step >= lo) and (hi is None or grid.hi * grid.step <= hi):
            return x
        if lo == 0.0 and hi is None:
            return self.b.op("Relu", [x], name)
        bounds = [self.b.scalar(f"{name}.min", lo) if lo is not None else ""]
        if hi is not None:
            bounds.append(self.b.scalar(f"{name}.max", hi))
        return self.b.op("Clip", [x, *bounds], name)

    # ---- nodes ----------------------------------------------------------------------------
    def _placeholder(self, node: fx.Node) -> None:
        if self.values:
            raise Unsupported(node.name, "models with more than one input are not exported")
        self.values[node] = "input"

    def _get_attr(self, node: fx.Node) -> None:
        t = reduce(getattr, str(node.target).split("."), self.low.graph)
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise self.unsupported(node, f"the attribute {node.target} is not a float tensor")
        self.values[node] = self.b.const(str(node.target), t.detach().float())

    def _call_module(self, node: fx.Node) -> None:
        mod, name = self.module(node), str(node.target)
        if isinstance(mod, ACT_QUANTS):
            self.values[node] = self._act(self.x(node), mod, name, self.numel(self.input(node)))
        elif isinstance(mod, WEIGHT_LAYERS):
            self.values[node] = self._weight_layer(node, mod, name, self.x(node))
        elif isinstance(mod, BATCHNORMS):
            self.values[node] = self._batchnorm(mod, name, self.x(node))
        else:
            self._lower(node, ops.module_lowering(mod), f"{type(mod).__name__} has no ONNX lowering here")

    def _call_function(self, node: fx.Node) -> None:
        what = f"function {_function_name(node)} has no ONNX lowering here"
        self._lower(node, ops.LOWERINGS.functions.get(node.target), what)

    def _call_method(self, node: fx.Node) -> None:
        self._lower(
            node, ops.LOWERINGS.methods.get(str(node.target)), f"method .{node.target}() has no ONNX lowering here"
        )

    def _lower(self, node: fx.Node, fn, what: str) -> None:
        if "tensor_meta" not in node.meta and node.op != "call_module":
            return  # not a tensor (sizes, shapes): its users read shapes from the propagated metadata
        if fn is None:
            raise self.unsupported(node, what)
        self.values[node] = fn(self, node)

    def _act(self, x: str, mod: nn.Module, name: str, numel: int) -> str:
        y, grid = self.em.act(self.b, x, act_grid(mod, numel), name, isinstance(mod, QuantReLU))
        self.grids[y] = grid
        self.taps[name] = y
        return y

    def _weight_layer(self, node: fx.Node, mod: Any, name: str, x: str) -> str:
        rank = len(self.shape(self.input(node)))
        if isinstance(mod, nn.Linear) and rank != 2:
            raise Unsupported(name, f"a Linear on a rank-{rank} input (only (N, features) is lowered)")
        if not isinstance(mod, nn.Linear) and mod.padding_mode != "zeros":
            raise Unsupported(name, f"padding_mode={mod.padding_mode!r} (only zeros)")
        bn_node = self._only_user(node, BATCHNORMS) if self.em.fold_bn else None
        bn = self.module(bn_node) if bn_node is not None else None
        if bn is not None and not bn.track_running_stats:
            bn_node = bn = None
        reader = self._only_user(bn_node or node, ACT_QUANTS)
        y_grid = None if reader is None else act_grid(self.module(reader), self.numel(bn_node or node))
        site = Site(name, mod, bn, self.low.weights.get(name), self.low.biases.get(name), self.grids.get(x), y_grid)
        w, bias = self.em.params(self.b, site)
        inputs = [x, w] + ([bias] if bias else [])
        if isinstance(mod, nn.Linear):
            y = self.b.op("Gemm", inputs, name, transB=1)
        else:
            y = self.b.op("Conv", inputs, name, **_conv_attrs(mod))
        self.em.produced(site, y)
        if bn_node is not None:
            self.folded.add(bn_node)
            self.values[bn_node] = y
        return y

    def _only_user(self, node: fx.Node, kinds: tuple) -> fx.Node | None:
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(self.module(users[0]), kinds):
            return users[0]
        return None

    def _batchnorm(self, mod: Any, name: str, x: str) -> str:
        if not mod.track_running_stats:
            raise Unsupported(name, "a batch norm without running statistics")
        c = mod.num_features
        gamma = mod.weight.detach() if mod.weight is not None else torch.ones(c)
        beta = mod.bias.detach() if mod.bias is not None else torch.zeros(c)
        stats = (
            ("weight", gamma),
            ("bias", beta),
            ("running_mean", mod.running_mean),
            ("running_var", mod.running_var),
        )
        ins = [self.b.const(f"{name}.{k}", v.float()) for k, v in stats]
        return self.b.op("BatchNormalization", [x, *ins], name, epsilon=float(mod.eps))


def _function_name(node: fx.Node) -> str:
    fn = node.target
    name = getattr(fn, "__name__", str(fn))
    if name == "fn":  # torch.nn.functional's boolean dispatch (max_pool1d, ...)
        name = node.name.rstrip("_0123456789")
    module = getattr(fn, "__module__", None) or "torch"
    module = {"_operator": "operator", "torch._C._nn": "torch.nn.functional"}.get(module, module)
    return f"{module}.{name}"


def _conv_attrs(mod: Any) -> dict:
    k = list(mod.kernel_size)
    d, dil = len(k), list(mod.dilation)
    if isinstance(mod.padding, str):
        total = [0] * d if mod.padding == "valid" else [dl * (kk - 1) for dl, kk in zip(dil, k)]
        pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    else:
        pads = list(mod.padding) * 2
    return {"kernel_shape": k, "strides": list(mod.stride), "dilations": dil, "group": mod.groups, "pads": pads}

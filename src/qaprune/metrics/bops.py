"""Bit operations (Baskin et al.), MACs and a per-layer profile of any model.

BOPs of one layer with ``n`` inputs per output (fan-in), ``m`` outputs per position, a fraction
``f_p`` of pruned weights, ``b_a``-bit inputs and ``b_w``-bit weights::

    BOPs = positions · m · n · ((1 − f_p)·b_a·b_w + b_a + b_w + log2 n)

Convolutions are counted per output position (``positions = H_out · W_out``). For the 32-bit
dense 16→64→32→32→5 MLP with 32-bit inputs this gives 4,652,832.

``b_a``, a layer's input bits, is the width of the value that actually reaches it, found by
tracing the data flow (torch.fx, activation quantizers and Linear/Conv layers as leaves):

- the model input is 32 bits, unless a top-level ``input_quant`` (``QuantInput``) that the
  traced forward does not call (a forward pre-hook) quantizes it;
- an activation quantizer (a module with ``act_bits``: ``QuantReLU``, ``QuantInput``) outputs
  its ``act_bits``; a Linear/Conv layer outputs a float (32 bits);
- shape ops (flatten, reshape, view, (un)squeeze, permute, transpose, indexing, ``.to``),
  identity, dropout, max pooling and ReLU pass their input's width on unchanged (they only
  move, select or clamp values already on the quantizer's grid);
- a sum or difference of tensors, a concatenation or a stack takes the **wider** of its
  inputs' widths;
- anything else (average pooling, batch norm, products, means, arithmetic with a constant or a
  parameter, unknown modules) outputs a float (32 bits) until a quantizer follows.

When the model cannot be traced, the rule falls back to execution order (the last activation
quantizer that ran before the layer, 32 after a Linear/Conv) and ``act_bits_source`` says so.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from qaprune.param import WEIGHT_LAYERS
from qaprune.quant.activations import QuantInput
from qaprune.quant.bits import FLOAT_BITS


def layer_bops(m: int, n: int, *, sparsity: float, act_bits: int, weight_bits: int, positions: int = 1) -> float:
    """BOPs of one layer (see module docstring).

    Example:
        >>> layer_bops(64, 16, sparsity=0.0, act_bits=32, weight_bits=32)
        1118208.0
    """
    per_mac = (1.0 - sparsity) * act_bits * weight_bits + act_bits + weight_bits + math.log2(n)
    return float(positions * m * n * per_mac)


@dataclass
class LayerProfile:
    """What the metrics need to know of one Linear/Conv layer, measured on a sample batch."""

    name: str
    kind: str  # "linear" | "conv"
    m: int  # outputs per position (out features / out channels)
    n: int  # fan-in: inputs per output (in features / in_ch/groups · kh · kw)
    positions: int  # output positions per sample (1 for linear)
    params: int  # weight entries (bias excluded)
    nonzero: int  # non-zero weight entries after masks and quantization
    weight_bits: int
    act_bits: int  # bits of the layer's input
    bias_params: int = 0
    act_bits_source: str = "graph"  # how act_bits was found: "graph", or why execution order was used

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.params if self.params else 0.0

    @property
    def macs(self) -> int:
        return self.positions * self.m * self.n

    @property
    def bops(self) -> float:
        return layer_bops(
            self.m,
            self.n,
            sparsity=self.sparsity,
            act_bits=self.act_bits,
            weight_bits=self.weight_bits,
            positions=self.positions,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(sparsity=self.sparsity, macs=self.macs, bops=self.bops)
        return d


def _weight_bits(module: nn.Module) -> int:
    from qaprune.quant.fake_quant import weight_bits

    return weight_bits(module)


def _act_bits(module: nn.Module) -> int | None:
    """Bits of an activation quantizer module, None for modules that are not one."""
    bits = getattr(module, "act_bits", None)
    return int(bits) if bits is not None else None


@torch.no_grad()
def profile(model: nn.Module, sample: torch.Tensor) -> list[LayerProfile]:
    """Profile every Linear/Conv layer of ``model`` by running one batch ``sample`` (N, ...).

    Shapes come from the run; input bits from the traced data flow (module docstring), or from
    execution order where the model cannot be traced (``act_bits_source`` says why).

    Example:
        >>> from qaprune.models import build_model
        >>> m = build_model("mlp", input_shape=(16,), num_classes=5)
        >>> layers = profile(m, torch.zeros(2, 16))
        >>> sum(p.bops for p in layers), layers[0].act_bits_source
        (4652832.0, 'graph')
    """
    layers = _run_profile(model, sample)
    try:
        feeds = graph_input_bits(model)
    except Exception as exc:  # any trace failure: keep the execution-order bits
        reason = f"execution order: torch.fx could not trace the model ({type(exc).__name__})"
        for p in layers:
            p.act_bits_source = reason
        return layers
    seen: dict[str, int] = {}
    for p in layers:
        calls = feeds.get(p.name, [])
        k = seen[p.name] = seen.get(p.name, -1) + 1
        if k < len(calls):
            p.act_bits = calls[k]
        else:
            p.act_bits_source = "execution order: the layer is not a node of the traced graph"
    return layers


def _run_profile(model: nn.Module, sample: torch.Tensor) -> list[LayerProfile]:
    """Layer profiles from one forward pass, input bits by execution order: the last activation
    quantizer that ran before a layer; a weight layer's own output is float (32 bits)."""
    state = {"bits": FLOAT_BITS}
    layers: list[LayerProfile] = []
    hooks = []

    def on_quant(mod, _inp, _out):
        state["bits"] = _act_bits(mod)

    def on_layer(name):
        def hook(mod, _inp, out):
            layers.append(_layer_profile(name, mod, out, state["bits"]))
            state["bits"] = FLOAT_BITS

        return hook

    for name, mod in model.named_modules():
        if _act_bits(mod) is not None:
            hooks.append(mod.register_forward_hook(on_quant))
        elif isinstance(mod, WEIGHT_LAYERS):
            hooks.append(mod.register_forward_hook(on_layer(name)))
    was_training = model.training
    model.eval()
    try:
        model(sample[:1] if sample.shape[0] > 1 else sample)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return layers


_PASS_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Flatten,
    nn.Unflatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.ReLU,
)
_PASS_FUNCTIONS = {
    operator.getitem,
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.permute,
    torch.transpose,
    torch.relu,
    torch.max_pool1d,
    torch.max_pool2d,
    torch.max_pool3d,
    F.relu,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.max_pool1d_with_indices,
    F.max_pool2d_with_indices,
    F.max_pool3d_with_indices,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
_PASS_METHODS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute", "transpose"}
_PASS_METHODS |= {"t", "contiguous", "clone", "detach", "to", "float", "relu", "__getitem__", "view_as", "reshape_as"}
_SUMS = {operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub, "add", "sub", "add_", "sub_"}
_JOINS = {torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack, torch.vstack}


class _Tracer(fx.Tracer):
    """Activation quantizers, Linear/Conv layers and modules without children are leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _act_bits(m) is not None or isinstance(m, WEIGHT_LAYERS) or not any(True for _ in m.children())


def graph_input_bits(model: nn.Module) -> dict[str, list[int]]:
    """Per Linear/Conv layer name, the input bits of each of its calls, from the data flow of
    ``model`` traced by torch.fx (rules in the module docstring). Raises when tracing fails.

    Example:
        >>> from qaprune.quant.activations import QuantReLU
        >>> graph_input_bits(nn.Sequential(QuantReLU(4), nn.Linear(3, 3), nn.Linear(3, 2)))
        {'1': [4], '2': [32]}
    """
    graph = _Tracer().trace(model)
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    width: dict[fx.Node, int] = {n: FLOAT_BITS for n in inputs}
    if inputs:
        width[inputs[0]] = _hooked_input_bits(model, graph)
    feeds: dict[str, list[int]] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "call_module" and isinstance(model.get_submodule(str(node.target)), WEIGHT_LAYERS):
            feeds.setdefault(str(node.target), []).append(_width(_first(node), width))
            width[node] = FLOAT_BITS
        else:
            width[node] = _node_bits(node, model, width)
    return feeds


def _hooked_input_bits(model: nn.Module, graph: fx.Graph) -> int:
    """Bits of the model input: a top-level ``input_quant`` QuantInput that the traced forward
    does not call (it runs in a forward pre-hook) quantizes it; else 32."""
    quant = getattr(model, "input_quant", None)
    called = any(n.op == "call_module" and n.target == "input_quant" for n in graph.nodes)
    return int(quant.act_bits) if isinstance(quant, QuantInput) and not called else FLOAT_BITS


def _first(node: fx.Node) -> object:
    """The first argument of a call (its data input), positional or ``input=``."""
    return node.args[0] if node.args else next(iter(node.kwargs.values()), None)


def _width(arg: object, width: dict[fx.Node, int]) -> int:
    """Bits of a node argument; constants are float (32 bits), as are parameters (get_attr)."""
    return width.get(arg, FLOAT_BITS) if isinstance(arg, fx.Node) else FLOAT_BITS


def _node_bits(node: fx.Node, model: nn.Module, width: dict[fx.Node, int]) -> int:
    """Output bits of one traced node that is not a Linear/Conv layer (rules: module docstring)."""
    if node.op == "call_module":
        mod = model.get_submodule(str(node.target))
        bits = _act_bits(mod)
        if bits is not None:
            return bits
        return _width(_first(node), width) if isinstance(mod, _PASS_MODULES) else FLOAT_BITS
    if node.op not in ("call_function", "call_method"):
        return FLOAT_BITS  # get_attr (parameters, buffers, constants)
    passes = _PASS_METHODS if node.op == "call_method" else _PASS_FUNCTIONS
    if node.target in passes:
        return _width(_first(node), width)
    if node.target in _SUMS:
        return max((_width(a, width) for a in node.args[:2]), default=FLOAT_BITS)
    joined = _first(node)
    if node.target in _JOINS and isinstance(joined, (list, tuple)):
        return max((_width(a, width) for a in joined), default=FLOAT_BITS)
    return FLOAT_BITS


def _layer_profile(name: str, mod: nn.Module, out: torch.Tensor, act_bits: int) -> LayerProfile:
    w = mod.weight
    if isinstance(mod, nn.Linear):
        kind, m, n, positions = "linear", mod.out_features, mod.in_features, 1
        positions = int(out[0].numel() // mod.out_features)  # >1 when applied per token
    else:
        kind, m = "conv", mod.out_channels
        n = (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        positions = int(out[0].numel() // mod.out_channels)
    bias = getattr(mod, "bias", None)
    return LayerProfile(
        name=name,
        kind=kind,
        m=m,
        n=n,
        positions=positions,
        params=w.numel(),
        nonzero=int(torch.count_nonzero(w)),
        weight_bits=_weight_bits(mod),
        act_bits=act_bits,
        bias_params=bias.numel() if bias is not None else 0,
    )


def total_bops(layers: list[LayerProfile]) -> float:
    return float(sum(p.bops for p in layers))


def dense_fp32_bops(layers: list[LayerProfile]) -> float:
    """BOPs of the same architecture at 32 bits everywhere, unpruned."""
    return float(
        sum(
            layer_bops(p.m, p.n, sparsity=0.0, act_bits=FLOAT_BITS, weight_bits=FLOAT_BITS, positions=p.positions)
            for p in layers
        )
    )

"""Lowering a compressed model for export: the part the onnx, qdq and qonnx formats share.

``lower`` bakes a copy of the model, physically removes its pruned channels (``shrink``), traces
it with torch.fx (shapes propagated) and records, per layer, the integer grid of its trained
weight quantizer: bits and scale, per tensor or per output channel, as the quantizer computes
it, never recalibrated. ``act_grid`` reads an activation quantizer's step and code range.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

from qaprune.errors import QapruneError
from qaprune.export.shrink import unrounded
from qaprune.param import WEIGHT_LAYERS
from qaprune.quant.activations import QuantInput, QuantReLU

ACT_QUANTS = (QuantReLU, QuantInput)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ALIASES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)


class Unsupported(QapruneError):
    """What a format cannot express: ``layer`` (a module path; "" for the model's own forward),
    ``what`` says why; ``node`` (the torch.fx node) and ``call`` (its function or method) when
    the operation is a call rather than a module.

    Example:
        >>> str(Unsupported("blocks.0", "function roll has no ONNX lowering", node="roll", call="torch.roll"))
        "fx node 'roll' (torch.roll in the forward of 'blocks.0'): function roll has no ONNX lowering"
    """

    def __init__(self, layer: str, what: str, *, node: str | None = None, call: str | None = None) -> None:
        if node is None:
            head = f"layer {layer!r}"
        else:
            where = f"the forward of {layer!r}" if layer else "the model's forward"
            head = f"fx node {node!r} ({call + ' in ' if call else 'in '}{where})"
        super().__init__(f"{head}: {what}")
        self.layer, self.what, self.node, self.call = layer, what, node, call


@dataclass(frozen=True)
class WeightGrid:
    """A quantized weight ``w = codes · scale``, integer codes in ``[-qmax, qmax]``.
    scale: () per tensor or (out,) per output channel (float32)."""

    bits: int
    scale: Tensor
    qmax: int

    @property
    def per_channel(self) -> bool:
        return self.scale.dim() == 1

    def codes(self, w: Tensor, layer: str) -> Tensor:
        """Integer codes (float tensor) of the baked weight ``w``; refuses values off the grid."""
        s = self.scale.reshape(-1, *[1] * (w.dim() - 1)) if self.per_channel else self.scale
        q = torch.round(w / s)
        off = float(((q * s - w).abs() / s).max()) if w.numel() else 0.0
        if off > 1e-3 or (q.numel() and float(q.abs().max()) > self.qmax):
            raise Unsupported(
                layer,
                f"its {self.bits}-bit weights are not on the grid of their quantizer "
                f"(off by {off:.2g} steps); was the model changed after training?",
            )
        return q


@dataclass(frozen=True)
class ActGrid:
    """An activation quantizer: ``round(clamp(x, lo·step, hi·step) · (1/step)) · step`` (form
    ``ste``, as ``quantize_ste``) or ``round(clamp(x / step, lo, hi)) · step`` (``lsq``, a learned
    step, as ``quantize_lsq``); integer codes ``lo..hi``."""

    bits: int
    step: float
    lo: int
    hi: int
    form: str

    @property
    def signed(self) -> bool:
        return self.lo < 0


@dataclass
class Lowered:
    """A plain (baked, shrunk) model, its traced graph with shapes, and its quantizer grids.
    Every node of ``graph`` has ``meta["tensor_meta"]`` (shapes at batch 2) where it is a tensor,
    and ``meta["batch_major"]``: its dimension 0 is the batch (checked at batches 2 and 3), so
    that reshapes keeping it can be written with a dynamic batch. ``graph`` is None when lowered
    with ``trace=False``."""

    model: nn.Module
    graph: fx.GraphModule
    input_shape: tuple[int, ...]
    weights: dict[str, WeightGrid] = field(default_factory=dict)
    biases: dict[str, WeightGrid] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    not_shrunk: dict[str, str] = field(default_factory=dict)
    act_keep: dict[str, Tensor] | None = field(default_factory=dict)  # act quantizer → original indices
    #   of the input channels it still has after shrinking (only those that lost some; None: unknown)


def lower(model: nn.Module, x: Tensor, *, shrink: bool = True, trace: bool = True) -> Lowered:
    """Bake a CPU copy of ``model`` (which is not changed), remove its pruned channels when
    ``shrink``, trace it with torch.fx (unless ``trace`` is False).
    x (N, ...): example inputs (shapes, shrink's check, matching channels).

    Example:
        >>> from qaprune.models import build_model
        >>> low = lower(build_model("mlp", input_shape=(16,), num_classes=5).eval(), torch.randn(4, 16))
        >>> [n.target for n in low.graph.graph.nodes if n.op == "call_module"][:3]
        ['input_quant', 'flatten', 'fc1']
    """
    from qaprune.export.shrink import shrink as shrink_model
    from qaprune.param import bake

    model = copy.deepcopy(model).cpu().eval()
    x = x.cpu()[:64]
    weights, biases = _grids(model, "weight"), _grids(model, "bias")
    baked = bake(model)
    low = Lowered(baked, None, tuple(x.shape[1:]), weights, biases)  # type: ignore[arg-type]
    if shrink:
        try:
            res = shrink_model(baked, x, sparse="never", block_diagonal=False)
        except Exception as exc:
            low.not_shrunk = {"(model)": f"shrink failed, exported unshrunk: {type(exc).__name__}: {exc}"[:300]}
        else:
            low.model, low.removed, low.not_shrunk = res.model.eval(), res.removed, res.not_shrunk
            _remap_channels(low, baked, x)
            low.act_keep = act_channels(low.model, baked, x)
    if trace:
        low.graph = _trace(low.model, x)
    return low


@torch.no_grad()
def _grids(model: nn.Module, tensor: str) -> dict[str, WeightGrid]:
    """Per layer, the grid of the last parametrization of ``tensor`` when it is a ``FakeQuant``:
    its scale is computed from its own input (the masked, clustered, ... weight)."""
    from qaprune.quant.fake_quant import FakeQuant

    out = {}
    for name, mod in model.named_modules():
        if not parametrize.is_parametrized(mod, tensor):
            continue
        chain = list(mod.parametrizations[tensor])
        if not chain or not isinstance(chain[-1], FakeQuant):
            continue
        fq, value = chain[-1], mod.parametrizations[tensor].original
        for p in chain[:-1]:
            value = p(value)
        if fq.per_channel and fq.axis != 0:
            raise Unsupported(name, f"per-channel {tensor} scales along axis {fq.axis} (only 0 is exported)")
        out[name] = WeightGrid(fq.bits, fq.scale(value).detach().float().cpu().clone(), fq.qmax)
    return out


@torch.no_grad()
def _remap_channels(low: Lowered, before: nn.Module, x: Tensor) -> None:
    """Per-channel scales of layers that lost output channels: keep the rows of the channels that
    remain, found by matching each layer's outputs before and after shrinking (in order)."""
    names = [
        n
        for n, g in low.weights.items()
        if g.per_channel and low.model.get_submodule(n).weight.shape[0] < g.scale.shape[0]
    ]
    if not names:
        return
    a, b = _channels(low.model, x, names), _channels(before, x, names)
    for name in names:
        rows = _match_rows(a[name], b[name], name)
        g = low.weights[name]
        low.weights[name] = WeightGrid(g.bits, g.scale[rows].clone(), g.qmax)


@torch.no_grad()
def act_channels(after: nn.Module, before: nn.Module, x: Tensor) -> dict[str, Tensor] | None:
    """Per activation quantizer of the shrunk model ``after`` that lost input channels, the
    indices in ``before`` of those left (matching its inputs on ``x`` before and after
    shrinking); None when they cannot be matched. The ``keep`` of the teacher-forced check."""
    names = [n for n, m in after.named_modules() if isinstance(m, ACT_QUANTS)]
    a, b = _channels(after, x, names, inputs=True), _channels(before, x, names, inputs=True)
    try:
        return {
            n: torch.tensor(_match_rows(a[n], b[n], n))
            for n in names
            if n in a and n in b and a[n].shape[0] < b[n].shape[0]
        }
    except Unsupported:
        return None


def _channels(model: nn.Module, x: Tensor, names: list[str], *, inputs: bool = False) -> dict[str, Tensor]:
    """Each named module's output (or input) on ``x`` as (channels, everything else); channels
    are dimension 1 of (N, C, ...)."""
    seen: dict[str, Tensor] = {}

    def keep(name: str, t: Tensor) -> None:
        seen.setdefault(name, t.movedim(1, 0).reshape(t.shape[1], -1))

    def grab(name: str):
        if inputs:
            return lambda _m, args: keep(name, args[0])
        return lambda _m, _a, out: keep(name, out)

    mods = [model.get_submodule(n) for n in names]
    hooks = [
        m.register_forward_pre_hook(grab(n)) if inputs else m.register_forward_hook(grab(n))
        for n, m in zip(names, mods)
    ]
    try:
        with unrounded(model):  # no rounding tie can make the two models' channels differ
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _match_rows(after: Tensor, before: Tensor, name: str) -> list[int]:
    tol = 1e-4 * float(before.abs().max().clamp_min(1e-12))
    rows, i = [], 0
    for j in range(after.shape[0]):
        while i < before.shape[0] and float(((after[j] - before[i]).abs() <= tol).float().mean()) < 0.99:
            i += 1
        if i == before.shape[0]:
            raise Unsupported(
                name, "its output channels after shrinking match none of the original ones (export with shrink=False)"
            )
        rows.append(i)
        i += 1
    return rows


class _Tracer(fx.Tracer):
    """Leaves (one node each, their type decides the lowering): activation quantizers, Linear/Conv
    layers, batch norms and torch.nn's own modules. The user's modules are traced through, so
    that their operations are lowered one by one (a ``Swish`` becomes ``x * sigmoid(x)``);
    ``opaque``: modules without children are leaves too (for forwards fx cannot trace)."""

    def __init__(self, *, opaque: bool = False) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (*ACT_QUANTS, *WEIGHT_LAYERS, *BATCHNORMS)):
            return True
        return (self.opaque and not any(True for _ in m.children())) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, x: Tensor) -> fx.GraphModule:
    try:
        graph = _Tracer().trace(model)
    except Exception:  # a module whose forward fx cannot trace: keep such modules whole
        try:
            graph = _Tracer(opaque=True).trace(model)
        except Exception as exc:
            raise Unsupported(type(model).__name__, f"torch.fx cannot trace the model ({exc})") from None
    gm = fx.GraphModule(model, graph)
    _propagate(gm, x)
    return gm


@torch.no_grad()
def _propagate(gm: fx.GraphModule, x: Tensor) -> None:
    """Shapes at batch 3 and then 2 (kept in ``tensor_meta``); ``batch_major``: dimension 0 of
    the node's tensor followed the batch, the other dimensions stayed."""
    from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

    three = x[torch.arange(3) % len(x)]
    try:
        ShapeProp(gm).propagate(three)
    except Exception:  # a shape that only fits some batch sizes: no reshape will be lowered
        shapes = {}
    else:
        shapes = {n: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if _is_tensor(n, TensorMetadata)}
    for n in gm.graph.nodes:
        n.meta.pop("tensor_meta", None)
    ShapeProp(gm).propagate(three[:2])
    for n in gm.graph.nodes:
        two = tuple(n.meta["tensor_meta"].shape) if _is_tensor(n, TensorMetadata) else None
        n.meta["batch_major"] = two is not None and len(two) > 0 and two[0] == 2 and shapes.get(n) == (3, *two[1:])


def _is_tensor(node: fx.Node, kind: type) -> bool:
    return isinstance(node.meta.get("tensor_meta"), kind)


def fused(mod: nn.Module, bn: nn.Module | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(weight, bias, per-channel factor a) of ``mod`` with ``bn`` folded in, as
    ``torch.nn.utils.fusion`` computes them; a is None without a batch norm."""
    w, bias = mod.weight.detach(), None if mod.bias is None else mod.bias.detach()
    if bn is None:
        return w, bias, None
    rsqrt = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(rsqrt)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(rsqrt)
    a = gamma * rsqrt
    b0 = bias if bias is not None else torch.zeros_like(rsqrt)
    return w * a.reshape(-1, *[1] * (w.dim() - 1)), (b0 - bn.running_mean) * rsqrt * gamma + beta, a


def act_grid(mod: nn.Module, numel: int) -> ActGrid:
    """The grid of a ``QuantReLU`` / ``QuantInput``; numel: elements per sample at its input
    (the LSQ gradient factor enters the forward's float rounding of the step)."""
    lo, hi = (0, mod.levels) if isinstance(mod, QuantReLU) else (mod.qmin, mod.qmax)
    if not mod.learned:
        step = mod.step if isinstance(mod, QuantReLU) else float(mod.scale)
        return ActGrid(mod.act_bits, float(step), lo, hi, "ste")
    with torch.no_grad():
        s = mod.scale.detach().abs().clamp_min(1e-8)
        g = 1.0 / math.sqrt(max(numel, 1) * hi)
        s = s * g + (s - s * g)
    return ActGrid(mod.act_bits, float(s), lo, hi, "lsq")

"""The ``onnx`` format (float): the baked float model, pruned channels removed, batch norms folded.

The graph is written by ``export.graph.build_graph`` with the ``FloatEmitter`` below.
Activation quantizers are part of the model's function, so they stay in the graph as float
operations that compute what PyTorch computes (``Clip → Mul(1/step) → Round → Mul(step)``; with a
learned step ``Div → Clip → Round → Mul``); where a Linear/Conv is the quantizer's only input,
``1/step`` is folded into its weights and bias (``Clip(lo, hi) → Round → Mul(step)``: the same
values but at a rounding tie, which the verification allows). Models the lowering does not cover
are exported with ``torch.onnx.export`` (dynamo) instead. The TorchScript exporter is not a fallback here: it drops
the in-place rounding of the activation quantizers and silently exports a different function.
"""

from __future__ import annotations

from onnx import ModelProto

from qaprune.export.graph import TAPS_KEY, Emitter, GraphBuilder, Site, build_graph
from qaprune.export.lower import ActGrid, Lowered, fused

__all__ = [
    "TAPS_KEY",
    "Emitter",
    "FloatEmitter",
    "GraphBuilder",
    "Site",
    "build_graph",
    "float_act",
    "float_onnx",
    "torch_onnx",
]


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

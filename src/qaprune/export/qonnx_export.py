"""The ``qonnx`` format: QONNX ``Quant`` nodes of any bit width, for FINN and hls4ml.

Each quantized weight is its float tensor followed by ``Quant(w, scale, zero_point=0, bitwidth)``
(signed, narrow range, round half to even) with the trained scale, per tensor or per output
channel; an unpruned 1-bit weight is ``BipolarQuant(w, α)``, and one with pruned zeros a 2-bit
narrow ``Quant`` (codes −1, 0, +1: the same values). Batch norms stay BatchNormalization nodes,
so the weight grids stay the trained ones (FINN and hls4ml fold or absorb them themselves).
``QuantReLU`` becomes ``Relu → Quant(unsigned)``, ``QuantInput`` a signed narrow or unsigned
``Quant``. The file has a fixed batch of 1, as FINN and hls4ml expect.
"""

from __future__ import annotations

from onnx import ModelProto

from qaprune.export.graph import Emitter, GraphBuilder, Site, build_graph
from qaprune.export.lower import ActGrid, Lowered, WeightGrid

DOMAIN = "qonnx.custom_op.general"


class QonnxEmitter(Emitter):
    """Float tensors with QONNX ``Quant``/``BipolarQuant`` nodes; batch norms not folded."""

    fold_bn = False
    opset = 13
    domains = {DOMAIN: 1}

    def __init__(self) -> None:
        self.notes: dict[str, str] = {}

    def params(self, b: GraphBuilder, site: Site) -> tuple[str, str | None]:
        mod, name = site.mod, site.name
        w = self._tensor(b, f"{name}.weight", mod.weight.detach(), site.weight)
        bias = None if mod.bias is None else self._tensor(b, f"{name}.bias", mod.bias.detach(), site.bias)
        g = site.weight
        self.notes[name] = (
            "float weights"
            if g is None
            else f"{g.bits}-bit weights, {'per-channel' if g.per_channel else 'per-tensor'} scale"
        )
        return w, bias

    def _tensor(self, b: GraphBuilder, base: str, value, grid: WeightGrid | None) -> str:
        v = b.const(base, value.float())
        if grid is None:
            return v
        shape = [-1] + [1] * (value.dim() - 1) if grid.per_channel else []
        scale = b.const(f"{base}_scale", grid.scale.float().numpy().reshape(shape))
        if grid.bits == 1 and bool((value != 0).all()):
            return b.op("BipolarQuant", [v, scale], f"{base}_quant", domain=DOMAIN)
        return _quant(b, v, scale, max(grid.bits, 2), base, signed=True, narrow=True)

    def act(self, b: GraphBuilder, x: str, grid: ActGrid, name: str, relu: bool) -> tuple[str, ActGrid]:
        if relu:
            x = b.op("Relu", [x], f"{name}.relu")
        scale = b.scalar(f"{name}.scale", grid.step)
        narrow = grid.signed and grid.lo == -grid.hi
        return _quant(b, x, scale, grid.bits, name, signed=grid.signed, narrow=narrow), grid


def _quant(b: GraphBuilder, x: str, scale: str, bits: int, base: str, *, signed: bool, narrow: bool) -> str:
    zero = b.scalar(f"{base}_zero_point", 0.0)
    width = b.scalar(f"{base}_bitwidth", float(bits))
    return b.op(
        "Quant",
        [x, scale, zero, width],
        f"{base}_quant",
        domain=DOMAIN,
        signed=int(signed),
        narrow=int(narrow),
        rounding_mode="ROUND",
    )


def qonnx_model(low: Lowered, *, batch: int = 1) -> tuple[ModelProto, dict[str, str]]:
    """The QONNX model of a lowered model with a fixed ``batch`` and, per layer, its weights.

    Example:
        >>> import torch
        >>> from qaprune.compress import attach
        >>> from qaprune.export.lower import lower
        >>> from qaprune.models import build_model
        >>> from qaprune.recipe import Recipe
        >>> x = torch.rand(8, 16)
        >>> m = attach(build_model("mlp", input_shape=(16,), num_classes=5), Recipe(quant={"weight_bits": 3,
        ...            "act_bits": 4}), sample=x).eval()
        >>> model, _ = qonnx_model(lower(m, x))
        >>> sorted({n.op_type for n in model.graph.node})
        ['BatchNormalization', 'Flatten', 'Gemm', 'Quant', 'Relu']
    """
    em = QonnxEmitter()
    return build_graph(low, em, batch=batch), em.notes


def with_batch(model: ModelProto, batch: int) -> ModelProto:
    """A copy of ``model`` with the first dimension of its input and output set to ``batch``."""
    out = ModelProto()
    out.CopyFrom(model)
    for vi in (*out.graph.input, *out.graph.output):
        vi.type.tensor_type.shape.dim[0].Clear()
        vi.type.tensor_type.shape.dim[0].dim_value = batch
    return out

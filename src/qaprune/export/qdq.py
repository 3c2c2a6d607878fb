"""The ``qdq`` format: ONNX QuantizeLinear/DequantizeLinear carrying the trained quantizers' grids.

Weights are stored as integer codes with the trained scale, per tensor or per output channel,
zero point 0 (int8; int4 from opset 21 on request). A batch norm after a layer is folded into
its per-channel scale, so the codes stay the trained ones. Activation quantizers become
``Q → DQ`` with their step (uint8 for unsigned codes, int8 for signed, zero point 0); max
pooling, reshapes, slices and concatenations of tensors on one grid keep it (``Q → DQ`` again),
while sums and concatenations of differently quantized tensors are float values. This is ONNX Runtime's QDQ pattern:
a Conv/Gemm between dequantized inputs with a quantize on its output runs as an int8 kernel
(QLinearConv, QGemm). 2..8-bit codes fit int8 exactly; wider ones do not.

An int8 kernel adds the bias as an int32 on the accumulator grid ``input step × weight scale``,
which the trained model (float bias) does not round. With 4-bit codes in 8-bit containers that
grid is coarse enough to flip activation codes on many samples, so the codes are spread over
the containers without changing any value: weights as ``codes·k`` with scale ``scale/k`` (k up
to 64/max|codes| per channel, which keeps u8·s8 pair sums within int16, as AVX2 kernels need)
and activations re-quantized onto ``step/k`` (k up to 254/max code) after their own rounding.
The bias grid becomes k_w·k_a times finer; the function is the trained one.
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import ModelProto, TensorProto, helper
from torch import Tensor, nn

from qaprune.export.graph import Emitter, GraphBuilder, Site, build_graph
from qaprune.export.lower import ActGrid, Lowered, Unsupported, fused

INT32_MAX = 2**31 - 1
WEIGHT_CODE_MAX = 64  # u8 (≤255) · s8 (≤64), summed in pairs: within int16 (AVX2 without VNNI)
_RANGES = {TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127)}


class QdqEmitter(Emitter):
    """int8 (or int4) weight codes and uint8/int8 activations through QuantizeLinear/DequantizeLinear.
    ``notes``: per layer, how it was written."""

    fold_bn = True

    def __init__(self, *, int4: bool = False) -> None:
        self.int4 = int4
        self.opset = 21 if int4 else 17
        self.notes: dict[str, str] = {}

    def params(self, b: GraphBuilder, site: Site) -> tuple[str, str | None]:
        name, grid = site.name, site.weight
        w, bias, a = fused(site.mod, site.bn)
        if grid is None:
            self.notes[name] = "float weights (no weight quantizer)"
            return b.const(f"{name}.weight", w.float()), None if bias is None else b.const(f"{name}.bias", bias.float())
        if grid.bits > 8:
            raise Unsupported(name, f"{grid.bits}-bit weights do not fit the 8-bit integers of QDQ")
        codes, scale = _codes_and_scale(site.mod, grid, a, name)
        int4 = self.int4 and grid.bits <= 4
        kernel = not int4 and site.x_grid is not None and (site.y_grid is not None or isinstance(site.mod, nn.Linear))
        if kernel:
            codes, scale = _spread(codes, scale)
        how = (
            f"{grid.bits}-bit codes in {'int4' if int4 else 'int8'}, "
            f"{'per-channel' if scale.dim() else 'per-tensor'} scale"
        )
        w_name = self._weights(b, name, codes, scale, int4)
        if bias is None or not kernel:
            self.notes[name] = how + ("" if bias is None else ", float bias") + ("" if kernel else ", float kernel")
            return w_name, None if bias is None else b.const(f"{name}.bias", bias.float())
        self.notes[name] = how + ", int32 bias, int8 kernel"
        return w_name, _int32_bias(b, name, bias, site.x_grid.step * scale)

    def _weights(self, b: GraphBuilder, name: str, codes: Tensor, scale: Tensor, int4: bool) -> str:
        c = codes.to(torch.int8)
        if int4:
            data = helper.make_tensor("w", TensorProto.INT4, list(c.shape), c.flatten().tolist())
            zp = helper.make_tensor("z", TensorProto.INT4, list(scale.shape), [0] * scale.numel())
        else:
            data, zp = c.numpy(), np.zeros(tuple(scale.shape), np.int8)
        ins = [
            b.const(f"{name}.weight_codes", data),
            b.const(f"{name}.weight_scale", scale.float()),
            b.const(f"{name}.weight_zero_point", zp),
        ]
        return b.op("DequantizeLinear", ins, f"{name}.weight", **({"axis": 0} if scale.dim() else {}))

    def act(self, b: GraphBuilder, x: str, grid: ActGrid, name: str, relu: bool) -> tuple[str, ActGrid]:
        if grid.bits > 8:
            raise Unsupported(name, f"{grid.bits}-bit activations do not fit the 8-bit integers of QDQ")
        kind = TensorProto.INT8 if grid.signed else TensorProto.UINT8
        y = _qdq(b, x, grid, name, kind)
        # k leaves the top code unused, so that the Clip always does something: ONNX Runtime
        # merges Q→DQ→Q→DQ chains (dropping the first rounding) when nothing stands between.
        k = max(1, ((127 if grid.signed else 255) - 1) // max(grid.hi, -grid.lo))
        fine = ActGrid(grid.bits, grid.step / k, grid.lo * k, grid.hi * k, grid.form)
        if (fine.lo, fine.hi) != _RANGES[kind]:  # fewer codes than the type holds: clip onto them
            lo, hi = b.scalar(f"{name}.min", grid.lo * grid.step), b.scalar(f"{name}.max", grid.hi * grid.step)
            y = b.op("Clip", [y, lo, hi], name)
        if k > 1 or (fine.lo, fine.hi) != _RANGES[kind]:
            y = _qdq(b, y, fine, f"{name}.fine", kind)
        return y, fine

    def keep(self, b: GraphBuilder, x: str, grid: ActGrid, name: str) -> str:
        return _qdq(b, x, grid, name, TensorProto.INT8 if grid.signed else TensorProto.UINT8)


def _qdq(b: GraphBuilder, x: str, grid: ActGrid, name: str, kind: int) -> str:
    zp = np.zeros((), np.int8 if kind == TensorProto.INT8 else np.uint8)
    s, z = b.scalar(f"{name}.scale", grid.step), b.const(f"{name}.zero_point", zp)
    return b.op("DequantizeLinear", [b.op("QuantizeLinear", [x, s, z], f"{name}.q"), s, z], f"{name}.dq")


def _codes_and_scale(mod: nn.Module, grid, a: Tensor | None, name: str) -> tuple[Tensor, Tensor]:
    """The trained codes of ``mod.weight`` and its scale () or (out,); a batch-norm factor ``a``
    (out,) multiplies the scale per channel (its sign goes into the codes)."""
    codes, scale = grid.codes(mod.weight.detach(), name), grid.scale.clone()
    if a is not None:
        scale = scale.expand(codes.shape[0]).clone() * a.abs()
        codes = codes * torch.where(a < 0, -1.0, 1.0).reshape(-1, *[1] * (codes.dim() - 1))
    return codes, _usable(scale, codes)


def _spread(codes: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """``codes·k, scale/k`` with the largest integer k (per channel when the scale is) that keeps
    the codes within ±``WEIGHT_CODE_MAX``; the products, hence the weights, are unchanged."""
    top = codes.flatten(1).abs().amax(1) if scale.dim() else codes.abs().max()
    k = torch.floor(WEIGHT_CODE_MAX / top.clamp_min(1)).clamp_min(1)
    return codes * (k.reshape(-1, *[1] * (codes.dim() - 1)) if scale.dim() else k), scale / k


def _usable(scale: Tensor, codes: Tensor) -> Tensor:
    """Channels whose codes are all zero may carry any scale: give them the layer's largest, so
    that none is zero or tiny (a zero scale is invalid, a tiny one overflows the int32 bias)."""
    if scale.dim() == 0:
        return scale.clamp_min(1e-12)
    dead = (codes.flatten(1) == 0).all(1) | (scale <= 1e-12)
    if dead.all():
        return torch.ones_like(scale)
    return torch.where(dead, scale[~dead].max(), scale)


def _int32_bias(b: GraphBuilder, name: str, bias: Tensor, scale: Tensor) -> str:
    scale = scale.float().expand(bias.shape[0]).clone()
    codes = torch.round(bias.double() / scale.double())
    if codes.numel() and float(codes.abs().max()) > INT32_MAX:
        raise Unsupported(name, "its bias does not fit int32 on the accumulator grid (input step × weight scale)")
    ins = [
        b.const(f"{name}.bias_codes", codes.to(torch.int32)),
        b.const(f"{name}.bias_scale", scale),
        b.const(f"{name}.bias_zero_point", np.zeros(bias.shape[0], np.int32)),
    ]
    return b.op("DequantizeLinear", ins, f"{name}.bias", axis=0)


def qdq_onnx(low: Lowered, *, int4: bool = False) -> tuple[ModelProto, dict[str, str]]:
    """The QDQ ONNX model of a lowered model (dynamic batch) and, per layer, how it was written.
    ``int4``: weights of at most 4 bits as INT4 codes (opset 21; ONNX Runtime dequantizes them
    and runs a float kernel).

    Example:
        >>> from qaprune.compress import attach
        >>> from qaprune.export.lower import lower
        >>> from qaprune.models import build_model
        >>> from qaprune.recipe import Recipe
        >>> x = torch.rand(8, 16)
        >>> m = attach(build_model("mlp", input_shape=(16,), num_classes=5), Recipe(quant={"weight_bits": 4,
        ...            "act_bits": 4}), sample=x).eval()
        >>> model, notes = qdq_onnx(lower(m, x))
        >>> notes["fc2"]
        '4-bit codes in int8, per-channel scale, int32 bias, int8 kernel'
    """
    em = QdqEmitter(int4=int4)
    return build_graph(low, em), em.notes

"""Verification of an exported file: run it on held-out inputs and compare with PyTorch.

The exported file is executed by the runtime that will read it (ONNX Runtime for onnx and qdq,
the ``qonnx`` package's executor for qonnx, qaprune's loader for qap) and compared with the
fake-quantized PyTorch model in eval mode. Two criteria:

- ``float`` (onnx, qonnx, qap: the same function in float arithmetic): every output within
  ``atol + rtol·|reference|`` (1e-5 each) on every sample. With activation quantizers the
  comparison allows up to 0.5% of the samples to differ: a pre-activation that lies within
  float error (~1e-7) of a rounding boundary may round the other way in another summation
  order, changing that sample by one quantization step. Top-1 must agree on ≥ 99.5%.
- ``int8`` (qdq): integer kernels round the bias onto the accumulator grid, so the outputs move;
  top-1 must agree on ≥ 99.5% of the samples.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qaprune.errors import QapruneError

ATOL = RTOL = 1e-5
MIN_TOP1 = 0.995
MIN_WITHIN_QUANTIZED = 0.995


class VerificationError(QapruneError):
    """The exported file does not compute what the PyTorch model computes."""


@dataclass
class Verification:
    """How an exported file compares with the PyTorch model on ``samples`` held-out inputs."""

    format: str
    runtime: str
    samples: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    within_tolerance: float  # fraction of samples with every output within atol + rtol·|ref|
    criterion: str
    passed: bool
    tolerance: dict[str, float] = field(default_factory=dict)
    kernels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        within = f", within tolerance {self.within_tolerance:.4f}" if "atol" in self.tolerance else ""
        return (f"{self.runtime} on {self.samples} held-out samples: max |diff| {self.max_abs_diff:.2e}, "
                f"top-1 agreement {self.top1_agreement:.4f}{within} "
                f"({'passed' if self.passed else 'FAILED'}: {self.criterion})")


def compare(reference: np.ndarray, exported: np.ndarray, *, fmt: str, runtime: str, criterion: str,
            quantized_acts: bool = False) -> Verification:
    """Compare outputs (N, ...) of the exported file with the PyTorch reference (N, ...).
    criterion: "float" or "int8" (see the module docstring).

    Example:
        >>> r = np.array([[0.0, 1.0], [2.0, 1.0]], np.float32)
        >>> v = compare(r, r + 1e-7, fmt="onnx", runtime="test", criterion="float")
        >>> v.passed, v.top1_agreement
        (True, 1.0)
        >>> compare(r, r[:, ::-1], fmt="onnx", runtime="test", criterion="float").passed
        False
    """
    if reference.shape != exported.shape:
        raise VerificationError(f"{fmt}: the exported model returns shape {exported.shape}, "
                                f"PyTorch {reference.shape}")
    ref, out = reference.astype(np.float64), exported.astype(np.float64)
    diff = np.abs(out - ref)
    n = ref.shape[0]
    flat_d, flat_r = diff.reshape(n, -1), np.abs(ref).reshape(n, -1)
    within = float(np.mean((flat_d <= ATOL + RTOL * flat_r).all(1))) if n else 1.0
    top1 = float(np.mean(out.reshape(n, -1).argmax(1) == ref.reshape(n, -1).argmax(1))) if n else 1.0
    finite = bool(np.isfinite(out).all())
    if criterion == "float":
        need = MIN_WITHIN_QUANTIZED if quantized_acts else 1.0
        tol = {"atol": ATOL, "rtol": RTOL, "min_within": need, "min_top1": MIN_TOP1}
        passed = finite and within >= need and top1 >= MIN_TOP1
        text = f"|diff| <= {ATOL:g} + {RTOL:g}|ref| on >= {need:.1%} of samples, top-1 >= {MIN_TOP1:.1%}"
    elif criterion == "int8":
        tol = {"min_top1": MIN_TOP1}
        passed = finite and top1 >= MIN_TOP1
        text = f"top-1 agreement >= {MIN_TOP1:.1%}"
    else:
        raise ValueError(f"compare: criterion={criterion!r}; allowed: float, int8")
    return Verification(fmt, runtime, n, float(diff.max()) if diff.size else 0.0,
                        float(diff.mean()) if diff.size else 0.0, top1, within, text, passed, tol)


@torch.no_grad()
def torch_outputs(model: nn.Module, x: Tensor, *, batch: int = 256) -> np.ndarray:
    """The model's outputs on ``x`` (N, ...), in eval mode, on the CPU, as float32 numpy; the
    model is left as it was (a model on another device is copied)."""
    if any(t.device.type != "cpu" for t in model.state_dict().values()):
        model = copy.deepcopy(model).cpu()
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch].cpu()) for i in range(0, len(x), batch)]).float().numpy()
    finally:
        model.train(was_training)


def ort_outputs(path: str | Path, x: Tensor, *, batch: int = 256) -> np.ndarray:
    """Outputs of an ONNX file run by ONNX Runtime (CPU, all graph optimizations, as deployed)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    arr = x.cpu().numpy().astype(np.float32)
    return np.concatenate([session.run(None, {name: arr[i:i + batch]})[0] for i in range(0, len(arr), batch)])


def ort_kernels(path: str | Path) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime actually runs (after its optimizations):
    QLinearConv / QGemm / MatMulInteger mean integer kernels."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    return {op: ops.count(op) for op in sorted(set(ops))}


def qonnx_outputs(path: str | Path, x: Tensor, *, batch: int = 1024) -> np.ndarray:
    """Outputs of a QONNX file run by ``qonnx.core.onnx_exec.execute_onnx`` (Quant nodes in numpy,
    the other nodes one at a time in ONNX Runtime), ``batch`` samples per call."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    from qaprune.export.qonnx_export import with_batch

    base, arr, outs = onnx.load(str(path)), x.cpu().numpy().astype(np.float32), []
    wrappers: dict[int, Any] = {}
    for i in range(0, len(arr), batch):
        chunk = arr[i:i + batch]
        if len(chunk) not in wrappers:
            wrappers[len(chunk)] = ModelWrapper(with_batch(base, len(chunk))).transform(InferShapes())
        mw = wrappers[len(chunk)]
        outs.append(execute_onnx(mw, {mw.graph.input[0].name: chunk})[mw.graph.output[0].name])
    return np.concatenate(outs)


def has_act_quantizers(model: nn.Module) -> bool:
    from qaprune.quant.activations import QuantInput, QuantReLU

    return any(isinstance(m, (QuantReLU, QuantInput)) for m in model.modules())


def hls4ml_check(path: str | Path, x: Tensor, reference: np.ndarray, *, precision: str = "fixed<16,6>",
                 backend: str = "Vitis") -> dict[str, Any]:
    """Convert a QONNX file with hls4ml (after the qonnx clean-up, channels-last and Gemm→MatMul
    steps its documentation prescribes), compile its bit-accurate C++ emulation with the system's
    C++ compiler and compare it with ``reference`` (N, ...). Informative: hls4ml's fixed-point
    ``precision`` is a design choice, so this never fails an export. -> max_abs_diff,
    top1_agreement, samples, precision, hls4ml version and its warnings; or {"error": ...}."""
    import contextlib
    import io
    import tempfile
    import warnings
    from importlib.metadata import version

    try:
        import hls4ml
    except ImportError:
        return {"error": "hls4ml is not installed (pip install hls4ml: h5py, pyyaml, quantizers, "
                         "pyDigitalWaveTools; no TensorFlow)"}
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    log = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(log):
        warnings.simplefilter("always")
        try:
            m = cleanup_model(ModelWrapper(str(path)))
            m = cleanup_model(m.transform(ConvertToChannelsLastAndClean()).transform(GemmToMatMul()))
            cfg = hls4ml.utils.config.config_from_onnx_model(m, granularity="name", backend=backend,
                                                              default_precision=precision)
            hm = hls4ml.converters.convert_from_onnx_model(m, output_dir=tmp, io_type="io_parallel",
                                                           backend=backend, hls_config=cfg)
            hm.compile()
            arr = x.cpu().numpy().astype(np.float32)
            arr = arr.transpose(0, *range(2, arr.ndim), 1) if arr.ndim > 2 else arr  # channels last
            out = np.asarray(hm.predict(np.ascontiguousarray(arr)), np.float32).reshape(reference.shape)
        except Exception as exc:  # noqa: BLE001 - report what hls4ml could not do
            return {"error": f"{type(exc).__name__}: {exc}"[:300], "hls4ml": version("hls4ml")}
    noted = sorted({str(w.message) for w in caught if "hls4ml" in (w.filename or "")})
    check = compare(reference, out, fmt="qonnx", runtime=f"hls4ml {version('hls4ml')} C++ emulation",
                    criterion="int8")
    return {"hls4ml": version("hls4ml"), "backend": backend, "precision": precision, "samples": check.samples,
            "max_abs_diff": check.max_abs_diff, "top1_agreement": check.top1_agreement, "warnings": noted}

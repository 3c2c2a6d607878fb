"""Verification of an exported file: run it on held-out inputs and compare with PyTorch.

The exported file is executed by the runtime that will read it (ONNX Runtime for onnx and qdq,
the ``qonnx`` package's executor for qonnx, qaprune's loader for qap) and compared with the
fake-quantized PyTorch model in eval mode. Two criteria:

- ``float`` (onnx, qonnx, qap: the same function in float arithmetic): every output within
  ``atol + rtol·|reference|`` (1e-5 each) on every sample, and top-1 agreement ≥ 99.5%.
  With activation quantizers, a pre-activation within float error (~1e-7 relative) of a rounding
  boundary may round the other way in another summation order, and that one code changes the
  sample's outputs by far more than 1e-5; on a CIFAR-sized 8-bit CNN most samples have such a
  tie somewhere. So the file is checked *teacher-forced*: the PyTorch model runs with each
  activation quantizer's output replaced by the file's (``forced_check``); then its outputs must
  be within the tolerance on every sample (every operation between quantizers is right), and
  every activation code where the file differs from what PyTorch's quantizer makes of its own
  input must be one step off at a tie (``|x/step − (k + ½)| ≤ 2e-3``): a rounding decision, not
  a wrong value. Without the tensors for that (a torch.onnx fallback), at most 0.5% of the
  samples may be beyond the tolerance.
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

ATOL = RTOL = 1e-5  # |diff| <= ATOL + RTOL·(largest |output| of the sample), per sample
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
    within_tolerance: float  # fraction of samples with every output within atol + rtol·max|ref| of the sample
    criterion: str
    passed: bool
    tolerance: dict[str, float] = field(default_factory=dict)
    kernels: dict[str, int] = field(default_factory=dict)
    activations: dict[str, Any] = field(default_factory=dict)  # the teacher-forced check, if run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        within = f", within tolerance {self.within_tolerance:.4f}" if "atol" in self.tolerance else ""
        a = self.activations
        if a:
            within += (
                f"; teacher-forced: max |diff| {a['forced_max_abs_diff']:.1e}, {a['ties']} rounding ties "
                f"and {a['unexplained']} wrong codes in {a['codes']:,} activation codes"
            )
        return (
            f"{self.runtime} on {self.samples} held-out samples: max |diff| {self.max_abs_diff:.2e}, "
            f"top-1 agreement {self.top1_agreement:.4f}{within} "
            f"({'passed' if self.passed else 'FAILED'}: {self.criterion})"
        )


def compare(
    reference: np.ndarray,
    exported: np.ndarray,
    *,
    fmt: str,
    runtime: str,
    criterion: str,
    quantized_acts: bool = False,
    forced: dict[str, Any] | None = None,
) -> Verification:
    """Compare outputs (N, ...) of the exported file with the PyTorch reference (N, ...).
    criterion: "float" or "int8" (see the module docstring); ``forced``: the result of
    ``forced_check``, which then decides the float criterion.

    Example:
        >>> r = np.array([[0.0, 1.0], [2.0, 1.0]], np.float32)
        >>> v = compare(r, r + 1e-7, fmt="onnx", runtime="test", criterion="float")
        >>> v.passed, v.top1_agreement
        (True, 1.0)
        >>> compare(r, r[:, ::-1], fmt="onnx", runtime="test", criterion="float").passed
        False
    """
    if reference.shape != exported.shape:
        raise VerificationError(f"{fmt}: the exported model returns shape {exported.shape}, PyTorch {reference.shape}")
    ref, out = reference.astype(np.float64), exported.astype(np.float64)
    diff = np.abs(out - ref)
    n = ref.shape[0]
    flat_d, flat_r = diff.reshape(n, -1), np.abs(ref).reshape(n, -1)
    within = float(np.mean((flat_d <= ATOL + RTOL * flat_r.max(1, keepdims=True)).all(1))) if n else 1.0
    top1 = float(np.mean(out.reshape(n, -1).argmax(1) == ref.reshape(n, -1).argmax(1))) if n else 1.0
    finite = bool(np.isfinite(out).all())
    if criterion == "float":
        need = MIN_WITHIN_QUANTIZED if quantized_acts else 1.0
        tol = {"atol": ATOL, "rtol": RTOL, "min_within": need, "min_top1": MIN_TOP1}
        passed = finite and within >= need and top1 >= MIN_TOP1
        text = f"|diff| <= {ATOL:g} + {RTOL:g}·max|ref| on >= {need:.1%} of samples, top-1 >= {MIN_TOP1:.1%}"
        if forced is not None:
            passed = finite and forced["within"] == 1.0 and forced["unexplained"] == 0 and top1 >= MIN_TOP1
            text = (
                f"teacher-forced at {forced['quantizers']} activation quantizers: |diff| <= {ATOL:g} + "
                f"{RTOL:g}·max|ref| on every sample, every differing code a rounding tie; top-1 >= {MIN_TOP1:.1%}"
            )
    elif criterion == "int8":
        tol = {"min_top1": MIN_TOP1}
        passed = finite and top1 >= MIN_TOP1
        text = f"top-1 agreement >= {MIN_TOP1:.1%}"
    else:
        raise ValueError(f"compare: criterion={criterion!r}; allowed: float, int8")
    return Verification(
        fmt,
        runtime,
        n,
        float(diff.max()) if diff.size else 0.0,
        float(diff.mean()) if diff.size else 0.0,
        top1,
        within,
        text,
        passed,
        tol,
        activations=forced or {},
    )


@torch.no_grad()
def torch_outputs(model: nn.Module, x: Tensor, *, batch: int = 256) -> np.ndarray:
    """The model's outputs on ``x`` (N, ...), in eval mode, on the CPU, as float32 numpy; the
    model is left as it was (a model on another device is copied)."""
    if any(t.device.type != "cpu" for t in model.state_dict().values()):
        model = copy.deepcopy(model).cpu()
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch].cpu()) for i in range(0, len(x), batch)]).float().numpy()
    finally:
        model.train(was_training)


def ort_outputs(path: str | Path, x: Tensor, *, batch: int = 256) -> np.ndarray:
    """Outputs of an ONNX file run by ONNX Runtime (CPU, all graph optimizations, as deployed)."""
    return ort_values(str(path), [])(x, batch)[0]


def ort_values(path: str | Path, names: list[str]):
    """A function ``(x, batch) -> (outputs, {name: values})`` running the ONNX file in ONNX Runtime
    with the named intermediate values as extra outputs."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    model: Any = str(path)
    if names:
        proto = onnx.load(str(path))
        have = {o.name for o in proto.graph.output}
        proto.graph.output.extend(
            onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
            for n in dict.fromkeys(names)
            if n not in have
        )
        model = proto.SerializeToString()
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feed, fetched = session.get_inputs()[0].name, [o.name for o in session.get_outputs()]

    def run(x: Tensor, batch: int = 256) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        arr = x.cpu().numpy().astype(np.float32)
        parts = [dict(zip(fetched, session.run(None, {feed: arr[i : i + batch]}))) for i in range(0, len(arr), batch)]
        return np.concatenate([p[fetched[0]] for p in parts]), {n: np.concatenate([p[n] for p in parts]) for n in names}

    return run


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
    return qonnx_values(path, [])(x, batch)[0]


def qonnx_values(path: str | Path, names: list[str]):
    """Like ``ort_values``, with ``qonnx``'s executor."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    from qaprune.export.qonnx_export import with_batch

    base, wrappers = onnx.load(str(path)), {}

    def run(x: Tensor, batch: int = 1024) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        arr, outs, vals = x.cpu().numpy().astype(np.float32), [], {n: [] for n in names}
        for i in range(0, len(arr), batch):
            chunk = arr[i : i + batch]
            if len(chunk) not in wrappers:
                wrappers[len(chunk)] = ModelWrapper(with_batch(base, len(chunk))).transform(InferShapes())
            mw = wrappers[len(chunk)]
            ctx = execute_onnx(mw, {mw.graph.input[0].name: chunk}, return_full_exec_context=bool(names))
            outs.append(ctx[mw.graph.output[0].name])
            for n in names:
                vals[n].append(ctx[n])
        return np.concatenate(outs), {n: np.concatenate(v) for n, v in vals.items()}

    return run


def has_act_quantizers(model: nn.Module) -> bool:
    from qaprune.quant.activations import QuantInput, QuantReLU

    return any(isinstance(m, (QuantReLU, QuantInput)) for m in model.modules())


def hls4ml_check(
    path: str | Path, x: Tensor, reference: np.ndarray, *, precision: str = "fixed<16,6>", backend: str = "Vitis"
) -> dict[str, Any]:
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
        return {
            "error": "hls4ml is not installed (pip install hls4ml: h5py, pyyaml, quantizers, "
            "pyDigitalWaveTools; no TensorFlow)"
        }
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    log = io.StringIO()
    with (
        tempfile.TemporaryDirectory() as tmp,
        warnings.catch_warnings(record=True) as caught,
        contextlib.redirect_stdout(log),
    ):
        warnings.simplefilter("always")
        try:
            m = cleanup_model(ModelWrapper(str(path)))
            m = cleanup_model(m.transform(ConvertToChannelsLastAndClean()).transform(GemmToMatMul()))
            cfg = hls4ml.utils.config.config_from_onnx_model(
                m, granularity="name", backend=backend, default_precision=precision
            )
            hm = hls4ml.converters.convert_from_onnx_model(
                m, output_dir=tmp, io_type="io_parallel", backend=backend, hls_config=cfg
            )
            hm.compile()
            arr = x.cpu().numpy().astype(np.float32)
            arr = arr.transpose(0, *range(2, arr.ndim), 1) if arr.ndim > 2 else arr  # channels last
            out = np.asarray(hm.predict(np.ascontiguousarray(arr)), np.float32).reshape(reference.shape)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"[:300], "hls4ml": version("hls4ml")}
    noted = sorted({str(w.message) for w in caught if "hls4ml" in (w.filename or "")})
    check = compare(reference, out, fmt="qonnx", runtime=f"hls4ml {version('hls4ml')} C++ emulation", criterion="int8")
    return {
        "hls4ml": version("hls4ml"),
        "backend": backend,
        "precision": precision,
        "samples": check.samples,
        "max_abs_diff": check.max_abs_diff,
        "top1_agreement": check.top1_agreement,
        "warnings": noted,
    }


TIE = 2e-3  # how close (in steps) to a rounding boundary a differing activation code must be


def taps_of(path: str | Path) -> dict[str, str]:
    """Activation quantizer → the graph value of its output, as the exporter recorded them."""
    import json

    import onnx

    from qaprune.export.graph import TAPS_KEY

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props.get(TAPS_KEY, "{}"))


@torch.no_grad()
def forced_check(
    model: nn.Module, x: Tensor, run, taps: dict[str, str], keep: dict[str, Tensor], *, batch: int = 128
) -> dict[str, Any]:
    """The teacher-forced comparison (see the module docstring). ``run(x) -> (outputs, {value:
    array})`` runs the exported file; ``taps``: quantizer module → value; ``keep``: quantizer →
    original indices of the channels the file still has. -> within (fraction of samples whose
    forced outputs are within the tolerance), forced_max_abs_diff, codes, ties, unexplained."""
    from qaprune.export.lower import act_grid

    mods = {n: model.get_submodule(n) for n in taps}
    out = {"quantizers": len(taps), "codes": 0, "ties": 0, "unexplained": 0, "forced_max_abs_diff": 0.0}
    inside = 0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].cpu()
        result, values = run(xb)
        seen: dict[str, tuple[Tensor, Tensor]] = {}
        hooks = [m.register_forward_hook(_forcing(n, values[taps[n]], keep.get(n), seen)) for n, m in mods.items()]
        try:
            ref = model(xb).float()
        finally:
            for h in hooks:
                h.remove()
        d = (torch.from_numpy(result).float() - ref).abs().reshape(len(xb), -1)
        scale = ref.abs().reshape(len(xb), -1).amax(1, keepdim=True)  # float32 error follows a sample's scale
        inside += int((d <= ATOL + RTOL * scale).all(1).sum())
        out["forced_max_abs_diff"] = max(out["forced_max_abs_diff"], float(d.max()) if d.numel() else 0.0)
        for n, (inp, forced) in seen.items():
            grid = act_grid(mods[n], inp[0].numel())
            codes, ties, bad = _codes_off(mods[n].forward(inp), forced, inp, grid)
            out["codes"] += codes
            out["ties"] += ties
            out["unexplained"] += bad
    out["within"] = inside / max(len(x), 1)
    return out


def _forcing(name: str, value: np.ndarray, keep: Tensor | None, seen: dict):
    def hook(_mod, args, output: Tensor) -> Tensor:
        forced = torch.from_numpy(np.ascontiguousarray(value)).to(output.dtype)
        if keep is not None:  # the file lacks the channels shrink removed: they are zero here
            full = torch.zeros(output.shape, dtype=output.dtype)
            full[:, keep] = forced.reshape(output.shape[0], len(keep), *output.shape[2:])
            forced = full
        forced = forced.reshape(output.shape)
        seen[name] = (args[0], forced)
        return forced

    return hook


def _codes_off(own: Tensor, forced: Tensor, inp: Tensor, grid) -> tuple[int, int, int]:
    """(codes compared, codes one step off at a tie, other differences)."""
    diff = (forced - own).abs()
    off = diff > 1e-3 * grid.step
    if not bool(off.any()):
        return own.numel(), 0, 0
    v = inp / grid.step if grid.form == "lsq" else inp.clamp(grid.lo * grid.step, grid.hi * grid.step) / grid.step
    tie = ((v - torch.floor(v) - 0.5).abs() <= TIE) & ((diff - grid.step).abs() <= 1e-3 * grid.step)
    ties = int((off & tie).sum())
    return own.numel(), ties, int(off.sum()) - ties

"""Measured latency: PyTorch eager or ONNX Runtime, per batch size and thread count.

The median of ``repeats`` timed calls (``time.perf_counter``) after ``warmup`` untimed ones,
with the 10th and 90th percentiles. Speed claims belong in ``bench/``; tests only check that
the numbers are sane.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

BACKENDS = ("torch", "ort")


def measure_latency(
    model_or_onnx_path: nn.Module | str | os.PathLike,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 256),
    threads: Sequence[int] = (1, 2),
    backend: str = "torch",
    warmup: int = 10,
    repeats: int = 50,
) -> list[dict]:
    """Latency of a model (or an ``.onnx`` file with ``backend="ort"``) on random float inputs.
    input_shape: one sample's shape, e.g. ``(1, 28, 28)``. -> one dict per (batch, threads):
    ``batch, threads, backend, median_ms, p10_ms, p90_ms, throughput_per_s`` (+ ``export``: how
    an ``nn.Module`` was exported for ONNX Runtime).

    Example:
        >>> rows = measure_latency(nn.Linear(8, 4), (8,), batch_sizes=(1,), threads=(1,), repeats=3)
        >>> [(r["batch"], r["threads"], r["backend"], r["median_ms"] > 0) for r in rows]
        [(1, 1, 'torch', True)]
    """
    if backend not in BACKENDS:
        raise ValueError(f"measure_latency: backend={backend!r}; allowed: {', '.join(BACKENDS)}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"measure_latency: repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    is_model = isinstance(model_or_onnx_path, nn.Module)
    if backend == "torch":
        if not is_model:
            raise ValueError("measure_latency: backend='torch' needs an nn.Module, not a file")
        return _torch_rows(model_or_onnx_path, tuple(input_shape), batch_sizes, threads, warmup, repeats)
    if not is_model:
        return _ort_rows(
            str(model_or_onnx_path), tuple(input_shape), batch_sizes, threads, warmup, repeats, export=None
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        how = export_onnx(model_or_onnx_path, tuple(input_shape), path)
        return _ort_rows(path, tuple(input_shape), batch_sizes, threads, warmup, repeats, export=how)


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str) -> str:
    """Export ``model`` with a dynamic batch dimension to ``path``: with the dynamo exporter,
    else the TorchScript one. -> "dynamo" or "torchscript (dynamo failed: ...)"."""
    was_training = model.training
    model.eval()
    x = torch.randn(2, *input_shape)
    quiet = contextlib.redirect_stdout(io.StringIO())
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notices
    try:
        with quiet, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                model, (x,), path, dynamo=True, external_data=False, dynamic_shapes=({0: torch.export.Dim("batch")},)
            )
        return "dynamo"
    except Exception as exc:  # any exporter failure: fall back and say so
        cause = exc.__cause__ or exc  # the exporter wraps torch.export's own error
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(cause)).strip().split("\n")[0]
        reason = f"{type(cause).__name__}: {first}"[:200]
        with quiet:
            torch.onnx.export(
                model,
                (x,),
                path,
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        return f"torchscript (dynamo failed: {reason})"
    finally:
        model.train(was_training)


def _torch_rows(
    model: nn.Module,
    shape: tuple[int, ...],
    batch_sizes: Sequence[int],
    threads: Sequence[int],
    warmup: int,
    repeats: int,
) -> list[dict]:
    previous, was_training = torch.get_num_threads(), getattr(model, "training", False)
    if was_training:
        model.eval()
    rows = []
    try:
        with torch.inference_mode():
            for t in threads:
                torch.set_num_threads(t)
                for b in batch_sizes:
                    x = torch.randn(b, *shape)
                    rows.append(_row(lambda x=x: model(x), b, t, "torch", warmup, repeats))
    finally:
        torch.set_num_threads(previous)
        if was_training:
            model.train()
    return rows


def _ort_rows(
    path: str,
    shape: tuple[int, ...],
    batch_sizes: Sequence[int],
    threads: Sequence[int],
    warmup: int,
    repeats: int,
    *,
    export: str | None,
) -> list[dict]:
    import numpy as np
    import onnxruntime as ort

    rows = []
    for t in threads:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = t, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for b in batch_sizes:
            feed = {name: np.random.default_rng(0).standard_normal((b, *shape), dtype=np.float32)}
            row = _row(lambda s=session, f=feed: s.run(None, f), b, t, "ort", warmup, repeats)
            rows.append(row if export is None else {**row, "export": export})
    return rows


def _row(call: Callable[[], object], batch: int, threads: int, backend: str, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    median = statistics.median(times)
    return {
        "batch": batch,
        "threads": threads,
        "backend": backend,
        "median_ms": median,
        "p10_ms": _percentile(times, 0.1),
        "p90_ms": _percentile(times, 0.9),
        "throughput_per_s": batch / (median / 1e3) if median > 0 else float("inf"),
    }


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)

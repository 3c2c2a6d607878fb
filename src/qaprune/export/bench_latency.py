"""``qaprune bench-latency MODEL...``: latency and throughput of a run's model in its deployment forms.

Per run directory: the dense model and the shrunk one (pruned channels removed) in PyTorch eager
(baked, batch norms folded), both as float ONNX in ONNX Runtime, and the shrunk int8 QDQ export
in ONNX Runtime. An ``.onnx`` file is timed as it is. Each row is the median of ``repeats``
timed calls after ``warmup`` (``metrics.latency.measure_latency``), per batch size and thread
count, with the speedup over the dense PyTorch model at the same batch and threads.
"""

from __future__ import annotations

import copy
import os
import platform
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from qaprune.errors import QapruneError


def bench_latency(
    targets: Sequence[str | Path],
    *,
    batch_sizes: Sequence[int] = (1, 256),
    threads: Sequence[int] = (1, 2),
    warmup: int = 10,
    repeats: int = 50,
    data_dir: str | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Time every deployment form of each target (run directory or ``.onnx`` file) ->
    ``{"rows": [...], "notes": [...], "machine": {...}}``, also written to ``out`` as JSON."""
    from qaprune.metrics.latency import measure_latency

    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            for variant, runtime, obj, shape in _variants(Path(target), Path(tmp), data_dir, notes):
                backend = "torch" if isinstance(obj, nn.Module) else "ort"
                for r in measure_latency(
                    obj,
                    shape,
                    batch_sizes=batch_sizes,
                    threads=threads,
                    backend=backend,
                    warmup=warmup,
                    repeats=repeats,
                ):
                    rows.append(
                        {
                            "model": str(target),
                            "variant": variant,
                            "runtime": runtime,
                            **{
                                k: r[k]
                                for k in ("batch", "threads", "median_ms", "p10_ms", "p90_ms", "throughput_per_s")
                            },
                        }
                    )
    _speedups(rows)
    result = {"rows": rows, "notes": notes, "machine": _machine(), "warmup": warmup, "repeats": repeats}
    if out is not None:
        from qaprune.io import write_json

        write_json(Path(out), result)
    return result


def _variants(target: Path, tmp: Path, data_dir: str | None, notes: list[str]) -> list[tuple]:
    """(variant, runtime, model or .onnx path, input shape) of one target."""
    if target.suffix == ".onnx" and target.is_file():
        return [(target.name, f"ORT {_precision(target)}", str(target), _onnx_shape(target))]
    if not target.is_dir():
        raise QapruneError(f"bench-latency: {target}: not a run directory or an .onnx file")
    import onnx

    from qaprune.export.fold import fold_batchnorm
    from qaprune.export.lower import Unsupported, lower
    from qaprune.export.onnx_export import float_onnx, torch_onnx
    from qaprune.export.qdq import qdq_onnx
    from qaprune.param import bake
    from qaprune.rundir import load_run

    _, data, model = load_run(target, data_dir=data_dir)
    model, x, shape = model.cpu().eval(), data.x_test[:256].cpu(), tuple(data.input_shape)
    dense, shrunk = lower(model, x, shrink=False), lower(model, x, shrink=True)
    out = [
        ("dense", "torch eager fp32", fold_batchnorm(bake(copy.deepcopy(model)))[0], shape),
        ("shrunk", "torch eager fp32", fold_batchnorm(shrunk.model)[0], shape),
    ]
    stem = tmp / f"{len(os.listdir(tmp))}"
    for variant, low in (("dense", dense), ("shrunk", shrunk)):
        path = f"{stem}.{variant}.onnx"
        try:
            onnx.save(float_onnx(low)[0], path)
        except Unsupported as exc:  # what the lowering does not cover: torch.onnx.export
            notes.append(f"{target}: {variant} ORT fp32 by torch.onnx ({torch_onnx(low, path)}): {exc}")
        out.append((variant, "ORT fp32", path, shape))
    try:
        onnx.save(qdq_onnx(shrunk)[0], f"{stem}.qdq.onnx")
        out.append(("shrunk", "ORT int8 QDQ", f"{stem}.qdq.onnx", shape))
    except Unsupported as exc:
        notes.append(f"{target}: no int8 QDQ row: {exc}")
    return out


def _precision(path: Path) -> str:
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    return "int8 QDQ" if "QuantizeLinear" in ops or "DequantizeLinear" in ops else "fp32"


def _onnx_shape(path: Path) -> tuple[int, ...]:
    import onnx

    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[1:]
    if any(not d.dim_value for d in dims):
        raise QapruneError(f"bench-latency: {path}: the input shape after the batch must be fixed")
    return tuple(d.dim_value for d in dims)


def _speedups(rows: list[dict]) -> None:
    base = {
        (r["model"], r["batch"], r["threads"]): r["median_ms"]
        for r in rows
        if r["variant"] == "dense" and r["runtime"].startswith("torch")
    }
    for r in rows:
        ref = base.get((r["model"], r["batch"], r["threads"]))
        r["speedup_vs_dense_torch"] = ref / r["median_ms"] if ref and r["median_ms"] > 0 else None


def _machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of the rows: median and 10th/90th percentile ms, samples/s, speedup."""
    head = (
        f"{'model':<24} {'variant':<10} {'runtime':<18} {'batch':>5} {'thr':>3} {'median ms':>10} "
        f"{'p10':>8} {'p90':>8} {'samples/s':>11} {'speedup':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        sp = f"x{r['speedup_vs_dense_torch']:.2f}" if r.get("speedup_vs_dense_torch") else "-"
        lines.append(
            f"{Path(r['model']).name[:24]:<24} {r['variant'][:10]:<10} {r['runtime']:<18} {r['batch']:>5} "
            f"{r['threads']:>3} {r['median_ms']:>10.3f} {r['p10_ms']:>8.3f} {r['p90_ms']:>8.3f} "
            f"{r['throughput_per_s']:>11.0f} {sp:>7}"
        )
    return "\n".join(lines)

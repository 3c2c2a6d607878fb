"""``qaprune shrink RUN_DIR``: the run's model with its pruned channels physically removed,
checked against the masked model, exported to ONNX, verified and timed against the unshrunk model.

Writes ``model.shrunk.onnx`` (or ``--out``) and ``shrink.json`` in the run directory: removed
channels per layer, the layers that were not shrunk and why, MACs and parameters before and
after, the maximum output difference (activation rounding off: exact removal; and as deployed,
where float ties may round one step apart) and top-1 agreement on the test split, the
verification of the ONNX file and (unless turned off) the measured latency of both models in
PyTorch eager and ONNX Runtime. Both are timed in their deployment form: baked, batch norms folded
into the layers before them.

The ONNX file is the shrunk model written as the ``onnx`` export format writes it (batch norms
folded, activation quantizers as float operations) and verified as ``qaprune export`` verifies:
run by ONNX Runtime on the test split and compared with the run's (masked) model, teacher-forced
at the activation quantizers. It is written under a temporary name and kept only when it passes;
``shrink.json`` records the verification.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qaprune.errors import QapruneError
from qaprune.export.fold import fold_batchnorm
from qaprune.export.shrink import shrink, unrounded
from qaprune.io import write_json

CHECK_SAMPLES, ATOL, MIN_TOP1 = 1024, 1e-4, 0.995


def shrink_run(
    target: str | Path,
    *,
    data_dir: str | None = None,
    out: str | Path | None = None,
    latency: bool = True,
    batch_sizes: tuple[int, ...] = (1, 64),
    threads: tuple[int, ...] = (1,),
    repeats: int = 20,
    step: int | None = None,
) -> dict[str, Any]:
    """Shrink the model of run directory ``target``; returns (and writes to shrink.json) the summary.
    Raises ``QapruneError`` when the shrunk model does not compute what the masked one does, and
    ``VerificationError`` when its ONNX file does not (then no file is written)."""
    from qaprune.param import bake
    from qaprune.rundir import load_run

    run_dir = Path(target)
    _, data, model = load_run(run_dir, data_dir=data_dir, step=step)
    model = model.cpu().eval()
    x_test = data.x_test.cpu()
    res = shrink(model, x_test[:64], sparse="never")
    diff, agree, rounded = _compare(res.model, model, x_test[:CHECK_SAMPLES])
    if diff > ATOL or agree < MIN_TOP1:
        raise QapruneError(
            f"shrink: the shrunk model differs from the masked one by {diff:.2e} with "
            f"activation rounding off (tolerance {ATOL:g}), top-1 agreement {agree:.4f} "
            f"(at least {MIN_TOP1}); nothing was written"
        )
    dense, _ = fold_batchnorm(bake(_copy(model)))
    shrunk, folded = fold_batchnorm(res.model)
    stem = "model" if step is None else f"model.step_{step:03d}"
    onnx_path = Path(out) if out is not None else run_dir / f"{stem}.shrunk.onnx"
    written = _write_onnx(res.model, model, x_test[:CHECK_SAMPLES], onnx_path)
    summary = {
        "removed": res.removed,
        "not_shrunk": res.not_shrunk,
        "max_abs_diff": diff,
        "max_abs_diff_rounded": rounded,
        "top1_agreement": agree,
        "batchnorm_folded": folded,
        **written,
        **_sizes(dense, shrunk, x_test[:1]),
    }
    if latency:
        summary["latency"] = _latency(dense, shrunk, tuple(data.input_shape), batch_sizes, threads, repeats)
    write_json(run_dir / f"{stem.replace('model', 'shrink', 1)}.json", summary)
    return summary


def _write_onnx(shrunk: nn.Module, masked: nn.Module, x: torch.Tensor, path: Path) -> dict[str, Any]:
    """Write ``shrunk`` to ``path`` with the ``onnx`` format and verify the file against
    ``masked`` on ``x`` (the channels the file lacks are matched for the teacher-forced check)."""
    from qaprune.export.api import verified_file
    from qaprune.export.formats import EXPORTERS
    from qaprune.export.lower import act_channels

    onnx = EXPORTERS.get("onnx")
    keep = act_channels(shrunk, masked, x[:64])

    def verify(tmp: Path, info: dict[str, Any]):
        forced = keep if info.pop("act_keep", None) is not None else None  # None: a torch.onnx file
        return onnx.verify(masked, x, tmp, skeleton=lambda: _copy(masked), keep=forced)

    def write(tmp: Path) -> dict[str, Any]:
        return onnx.write(shrunk, x, tmp, shrink=False, int4=False)

    info, check, size = verified_file(path, write, verify, label="shrink: onnx")
    return {"onnx": path.name, "onnx_export": info["how"], "onnx_bytes": size, "verification": check.to_dict()}


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


@torch.no_grad()
def _compare(shrunk: nn.Module, masked: nn.Module, x: torch.Tensor) -> tuple[float, float, float]:
    """(max |diff| with activation rounding off, top-1 agreement and max |diff| as deployed):
    the first proves the removal exact; with rounding, float ties may round one step apart."""
    with unrounded(shrunk, masked):
        exact = float((shrunk(x) - masked(x)).abs().max())
    a, b = shrunk(x), masked(x)
    return exact, float((a.argmax(1) == b.argmax(1)).float().mean()), float((a - b).abs().max())


def _sizes(dense: nn.Module, shrunk: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    from qaprune.metrics.bops import profile

    macs = [int(sum(p.macs for p in profile(m, x))) for m in (dense, shrunk)]
    params = [sum(p.numel() for p in m.parameters()) for m in (dense, shrunk)]
    return {
        "macs_before": macs[0],
        "macs_after": macs[1],
        "flops_ratio": macs[0] / max(macs[1], 1),
        "params_before": params[0],
        "params_after": params[1],
    }


def _latency(
    dense: nn.Module, shrunk: nn.Module, shape: tuple[int, ...], batch_sizes, threads, repeats: int
) -> list[dict]:
    """Paired rows: per backend, batch and thread count, both models' median ms and the speedup."""
    from qaprune.metrics.latency import export_onnx, measure_latency

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(Path(tmp) / f"{n}.onnx") for n in ("dense", "shrunk")]
        for m, p in zip((dense, shrunk), paths):
            export_onnx(m, shape, p)
        for backend, targets in (("torch", (dense, shrunk)), ("ort", paths)):
            timed = [
                measure_latency(
                    t, shape, batch_sizes=batch_sizes, threads=threads, backend=backend, warmup=5, repeats=repeats
                )
                for t in targets
            ]
            for d, s in zip(*timed):
                rows.append(
                    {
                        "backend": backend,
                        "batch": d["batch"],
                        "threads": d["threads"],
                        "dense_ms": d["median_ms"],
                        "shrunk_ms": s["median_ms"],
                        "speedup": d["median_ms"] / s["median_ms"],
                    }
                )
    return rows

"""``export``: write a run's model in a registered format (``export.formats``: onnx, qdq, qonnx, qap)
and verify the file before keeping it.

Every export runs the written file on held-out inputs with the runtime that will read it and
compares it with the fake-quantized PyTorch model (see ``export.verify``). The file is written
under a temporary name and renamed only when the verification passes, so a failed export leaves
nothing behind; the verification is stored beside it as ``<file>.verify.json``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qaprune.errors import QapruneError
from qaprune.export.formats import EXPORTERS
from qaprune.export.verify import Verification, VerificationError

FORMATS = tuple(EXPORTERS.names())  # the built-in formats; EXPORTERS holds any registered later


@dataclass
class ExportResult:
    """``path``: the verified file. ``layers``: how each Linear/Conv was written. ``removed``:
    output channels physically removed per layer; ``not_shrunk``: layer → why not."""

    path: Path
    format: str
    size_bytes: int
    verification: Verification
    how: str = ""
    layers: dict[str, str] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    not_shrunk: dict[str, str] = field(default_factory=dict)
    hls4ml: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "file": self.path.name,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "exported_with": self.how,
            "verification": self.verification.to_dict(),
            "layers": self.layers,
            "removed_channels": self.removed,
            "not_shrunk": self.not_shrunk,
        }
        return out if self.hls4ml is None else {**out, "hls4ml": self.hls4ml}


def export(
    target: str | Path | nn.Module,
    *,
    format: str = "onnx",
    out: str | Path | None = None,
    x: Tensor | None = None,
    data_dir: str | None = None,
    samples: int = 1024,
    shrink: bool = True,
    int4: bool = False,
    hls4ml: bool = False,
    step: int | None = None,
) -> ExportResult:
    """Export a run directory (or a model with held-out inputs ``x``) and verify the file.

    format: "onnx" (baked float, pruned channels removed, activation quantizers as float ops),
    "qdq" (int8 QuantizeLinear/DequantizeLinear with the trained scales; ``int4``: ≤4-bit weights
    as INT4), "qonnx" (QONNX ``Quant`` nodes, any bit width, batch 1) or "qap" (the compact
    artifact). A run directory gives its delivered model, or its step ``step``. out: default
    ``RUN_DIR/model<suffix>`` (``model.step_NNN<suffix>`` for a step; ``model.export.qap`` rather
    than the run's own ``model.qap``); required for a model. x (N, ...): the
    verification inputs (a run uses the first ``samples`` of its test split). Raises
    ``QapruneError`` when a node or layer cannot be expressed in the format (naming it, its
    module path and the formats that take the model) and ``VerificationError`` when the file
    does not compute what the model does.
    ``hls4ml`` (qonnx only): also convert the file with hls4ml, compile its C++ emulation and
    record how it compares (informative, see ``verify.hls4ml_check``; tens of seconds).

    Example:
        >>> import tempfile
        >>> from qaprune.models import build_model
        >>> tmp = tempfile.TemporaryDirectory()
        >>> m, x = build_model("mlp", input_shape=(16,), num_classes=5).eval(), torch.randn(64, 16)
        >>> r = export(m, format="onnx", out=Path(tmp.name) / "m.onnx", x=x)
        >>> r.verification.passed, r.verification.max_abs_diff < 1e-5
        (True, True)
        >>> tmp.cleanup()
    """
    if format not in EXPORTERS:
        raise QapruneError(f"export: format {format!r} is unknown; known: {', '.join(EXPORTERS.names())}")
    exporter = EXPORTERS.get(format)
    if hls4ml and format != "qonnx":
        raise QapruneError(f"export: the hls4ml comparison reads QONNX; use format 'qonnx', not {format!r}")
    model, x, default_out, skeleton = _source(target, x, data_dir, samples, step)
    if out is not None:
        path = Path(out)
    elif default_out is not None:
        path = _default_path(default_out, exporter.suffix)
    else:
        raise QapruneError("export: out= is needed when exporting a model (not a run directory)")
    info, check, size = verified_file(
        path,
        lambda tmp: exporter.write(model, x, tmp, shrink=shrink, int4=int4),
        lambda tmp, info: exporter.verify(model, x, tmp, skeleton=skeleton, keep=info.pop("act_keep", None)),
        label=format,
    )
    result = ExportResult(path, format, size, check, **info)
    if hls4ml and format == "qonnx":
        from qaprune.export.verify import hls4ml_check, torch_outputs

        result.hls4ml = hls4ml_check(path, x, torch_outputs(model, x))
    from qaprune.io import write_json

    write_json(path.with_name(path.name + ".verify.json"), result.to_dict())
    return result


def verified_file(
    path: Path,
    write: Callable[[Path], dict[str, Any]],
    verify: Callable[[Path, dict[str, Any]], Verification],
    *,
    label: str,
) -> tuple[dict[str, Any], Verification, int]:
    """``write(tmp)`` a file under a temporary name beside ``path``, ``verify(tmp, what write
    returned)`` it and rename it to ``path`` only when the verification passes; otherwise raise
    ``VerificationError`` (starting with ``label``) and leave nothing behind. -> (what write
    returned, the verification, the file's size in bytes).

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from qaprune.export.verify import compare
        >>> tmp = tempfile.TemporaryDirectory()
        >>> ok = lambda p, info: compare(np.ones((2, 2)), np.ones((2, 2)), fmt="t", runtime="t", criterion="float")
        >>> info, check, size = verified_file(Path(tmp.name) / "f", lambda p: p.write_text("ab") and {}, ok, label="t")
        >>> check.passed, size, sorted(p.name for p in Path(tmp.name).iterdir())
        (True, 2, ['f'])
        >>> tmp.cleanup()
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        info = write(tmp)
        check = verify(tmp, info)
        if not check.passed:
            raise VerificationError(
                f"{label}: the exported file does not compute what the PyTorch model "
                f"computes: {check.summary()}; nothing was written"
            )
        size = tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return info, check, size


RUN_FILES = ("model.qap", "model.safetensors")  # what a run wrote itself: an export never replaces them


def _default_path(stem: Path, suffix: str) -> Path:
    path = stem.with_name(stem.name + suffix)
    return path.with_name(f"{stem.name}.export{suffix}") if path.name in RUN_FILES else path


def _source(
    target, x: Tensor | None, data_dir: str | None, samples: int, step: int | None = None
) -> tuple[nn.Module, Tensor, Path | None, Callable[[], nn.Module]]:
    """(model in eval mode on the CPU, verification inputs, default output stem, a fresh model of
    the same architecture for loading a .qap into)."""
    if isinstance(target, nn.Module):
        if x is None:
            raise QapruneError("export: x= (held-out inputs for the verification) is needed with a model")
        model = copy.deepcopy(target).cpu().eval()
        return model, x.cpu()[:samples], None, lambda: _poisoned(model)
    from qaprune.rundir import build, load_run

    run_dir = Path(target)
    recipe, data, model = load_run(run_dir, data_dir=data_dir, step=step)
    inputs = (x if x is not None else data.x_test)[:samples].cpu()
    stem = run_dir / ("model" if step is None else f"model.step_{step:03d}")
    return model.cpu().eval(), inputs, stem, lambda: build(recipe, data, torch.device("cpu"))


def _poisoned(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose float tensors are all NaN: only what is loaded into it counts."""
    skeleton = copy.deepcopy(model)
    with torch.no_grad():
        for t in skeleton.state_dict().values():
            if t.is_floating_point():
                t.fill_(float("nan"))
    return skeleton

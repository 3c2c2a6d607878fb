"""The export formats: each one registers a writer and a verifier in ``EXPORTERS``.

An ``Exporter`` writes a model to a file (``write``) and checks the file with the runtime that
will read it (``verify``); ``qaprune.export.api.export`` dispatches by name, writes under a
temporary name and keeps the file only when the verification passes. Adding a format is one
class here (or anywhere, registered the same way):

- ``onnx``: the baked float graph, pruned channels removed, batch norms folded, activation
  quantizers as float ops; ONNX Runtime.
- ``qdq``: int8 QuantizeLinear/DequantizeLinear with the trained scales (int4 weights opt-in);
  ONNX Runtime, judged on top-1 agreement.
- ``qonnx``: QONNX ``Quant`` nodes of any bit width; qonnx's executor.
- ``qap``: the compact artifact (``qaprune.storage``); qaprune's loader.

Heavy dependencies (onnx, onnxruntime, qonnx) are imported inside the methods.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from qaprune.errors import QapruneError
from qaprune.export.lower import Lowered, Unsupported, lower
from qaprune.export.verify import Verification
from qaprune.registry import Registry

EXPORTERS: Registry = Registry("export format")


class Exporter:
    """A file format. ``suffix``: the default file ending; ``instead``: the formats to suggest
    when a layer cannot be written in this one. Subclasses implement ``write`` and ``verify``."""

    name = ""
    suffix = ""
    instead = ""

    def write(self, model: nn.Module, x: Tensor, path: Path, *, shrink: bool, int4: bool) -> dict[str, Any]:
        """Write ``model`` (eval, CPU) to ``path``; ``x`` (N, ...) are inputs it accepts. Returns
        what ``ExportResult`` records: ``how``, and where it applies ``layers``, ``removed``,
        ``not_shrunk`` and ``act_keep`` (the activation codes kept for the tie-aware check)."""
        raise NotImplementedError

    def verify(
        self,
        model: nn.Module,
        x: Tensor,
        path: Path,
        *,
        skeleton: Callable[[], nn.Module],
        keep: dict[str, Tensor] | None,
    ) -> Verification:
        """Run the file at ``path`` on ``x`` with its runtime and compare with ``model``."""
        raise NotImplementedError


def register(name: str) -> Callable[[type[Exporter]], type[Exporter]]:
    """Class decorator: register an instance of the class under ``name``."""

    def deco(cls: type[Exporter]) -> type[Exporter]:
        exporter = cls()
        exporter.name = name
        EXPORTERS.register(name)(exporter)
        return cls

    return deco


def _lowered(fmt: Exporter, model: nn.Module, x: Tensor, *, shrink: bool) -> tuple[Lowered, dict[str, Any]]:
    low = _unsupported_named(fmt, lambda: lower(model, x, shrink=shrink))
    return low, {"removed": low.removed, "not_shrunk": low.not_shrunk, "act_keep": low.act_keep}


def _unsupported_named(fmt: Exporter, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Unsupported as exc:
        raise QapruneError(f"export --format {fmt.name}: {exc}; export it with {fmt.instead}") from None


def _save(proto: Any, path: Path) -> str:
    import onnx

    onnx.save(proto, str(path))
    return f"qaprune lowering, opset {proto.opset_import[0].version}"


class _OnnxGraph(Exporter):
    """An ONNX graph checked by running it: on ONNX Runtime (``executor = "ort"``, with the
    kernels it really runs recorded) or qonnx's executor (``"qonnx"``). ``criterion``: "float"
    (outputs to 1e-5, activation codes that differ must be rounding ties, checked tap by tap when
    ``tie_aware``) or "int8" (top-1 agreement)."""

    executor = "ort"
    criterion = "float"
    tie_aware = True

    def verify(self, model, x, path, *, skeleton, keep) -> Verification:
        from qaprune.export import verify as v

        reference, quantized = v.torch_outputs(model, x), v.has_act_quantizers(model)
        if self.executor == "qonnx":
            from importlib.metadata import version

            runtime, values = f"qonnx {version('qonnx')} execute_onnx", v.qonnx_values
        else:
            import onnxruntime as ort

            runtime, values = f"onnxruntime {ort.__version__}", v.ort_values
        taps = v.taps_of(path) if quantized and self.tie_aware and keep is not None else {}
        forced = (
            v.forced_check(model, x, values(path, list(taps.values())), taps, keep)
            if taps and keep is not None
            else None
        )
        exported = v.ort_outputs(path, x) if self.executor == "ort" else values(path, [])(x)[0]
        check = v.compare(
            reference,
            exported,
            fmt=self.name,
            runtime=runtime,
            criterion=self.criterion,
            quantized_acts=quantized,
            forced=forced,
        )
        if self.executor == "ort":
            check.kernels = v.ort_kernels(path)
        return check


@register("onnx")
class OnnxFloat(_OnnxGraph):
    suffix, instead = ".onnx", "--format qap"

    def write(self, model: nn.Module, x: Tensor, path: Path, *, shrink: bool, int4: bool) -> dict[str, Any]:
        from qaprune.export.onnx_export import float_onnx, torch_onnx

        low, info = _lowered(self, model, x, shrink=shrink)
        try:
            proto, layers = float_onnx(low)
        except Unsupported as exc:  # anything torch.onnx can export
            how = f"torch.onnx.export: {torch_onnx(low, str(path))} (qaprune lowering: {exc})"
            return {**info, "how": how, "act_keep": None}
        return {**info, "how": _save(proto, path), "layers": layers}


class _OnnxFile(_OnnxGraph):
    """A quantized ONNX format built from the lowered model by ``build(low, int4)``."""

    def build(self, low: Lowered, *, int4: bool) -> tuple[Any, dict[str, str]]:
        raise NotImplementedError

    def write(self, model: nn.Module, x: Tensor, path: Path, *, shrink: bool, int4: bool) -> dict[str, Any]:
        low, info = _lowered(self, model, x, shrink=shrink)
        proto, layers = _unsupported_named(self, lambda: self.build(low, int4=int4))
        return {**info, "how": _save(proto, path), "layers": layers}


@register("qdq")
class OnnxQDQ(_OnnxFile):
    suffix = ".qdq.onnx"
    instead = "--format qonnx (any bit width) or --format onnx (float)"
    criterion, tie_aware = "int8", False

    def build(self, low: Lowered, *, int4: bool) -> tuple[Any, dict[str, str]]:
        from qaprune.export.qdq import qdq_onnx

        return qdq_onnx(low, int4=int4)


@register("qonnx")
class QONNX(_OnnxFile):
    suffix = ".qonnx.onnx"
    instead = "--format onnx (float, any operation torch.onnx.export handles) or --format qap"
    executor = "qonnx"

    def build(self, low: Lowered, *, int4: bool) -> tuple[Any, dict[str, str]]:
        from qaprune.export.qonnx_export import qonnx_model

        return qonnx_model(low)


@register("qap")
class QAP(Exporter):
    suffix = ".qap"

    def write(self, model: nn.Module, x: Tensor, path: Path, *, shrink: bool, int4: bool) -> dict[str, Any]:
        from qaprune.storage import save_qap

        save_qap(model, path, meta={"format": "qap", "exported_by": "qaprune.export"})
        return {"how": "qaprune.storage.save_qap"}

    def verify(self, model, x, path, *, skeleton, keep) -> Verification:
        from qaprune.export import verify as v
        from qaprune.storage import load_qap_into

        loaded = load_qap_into(skeleton().cpu(), path)
        return v.compare(  # the same kernels on the same values: no tie can differ
            v.torch_outputs(model, x),
            v.torch_outputs(loaded, x),
            fmt=self.name,
            runtime="qaprune load_qap_into (PyTorch)",
            criterion="float",
        )

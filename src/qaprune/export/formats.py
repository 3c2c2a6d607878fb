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

onnx, qdq and qonnx share one lowering (``export.graph``, ``export.ops``). Where a format cannot
write a node or a layer, the error names it and the formats that can, each found by building its
file in memory (``Exporter.takes``), never by a fixed list.

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
    """A file format. ``suffix``: the default file ending; ``about``: what it is, in a few words
    (said when it is suggested). Subclasses implement ``write`` and ``verify``, and ``takes``
    where a model can be beyond them."""

    name = ""
    suffix = ""
    about = ""

    def takes(self, model: nn.Module, x: Tensor, low: Lowered | None) -> bool:
        """Whether this format can write ``model`` (``low``: its lowering, None where that
        failed), found by building the file in memory; nothing is written."""
        return True

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
    low = _unsupported_named(fmt, lambda: lower(model, x, shrink=shrink), model, x, None)
    return low, {"removed": low.removed, "not_shrunk": low.not_shrunk, "act_keep": low.act_keep}


def _unsupported_named(fmt: Exporter, fn: Callable[[], Any], model: nn.Module, x: Tensor, low: Lowered | None) -> Any:
    """``fn()``; an ``Unsupported`` becomes a ``QapruneError`` naming the formats that take the
    model, each tried in memory (``Exporter.takes``)."""
    try:
        return fn()
    except Unsupported as exc:
        takers = [
            f"--format {e.name} ({e.about})"
            for e in map(EXPORTERS.get, EXPORTERS.names())
            if e is not fmt and e.takes(model, x, low)
        ]
        hint = f"formats that take this model: {', '.join(takers)}" if takers else "no other format takes this model"
        raise QapruneError(f"export --format {fmt.name}: {exc}; {hint}") from None


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
    suffix, about = ".onnx", "float, and any operation torch.onnx.export handles"

    def write(self, model: nn.Module, x: Tensor, path: Path, *, shrink: bool, int4: bool) -> dict[str, Any]:
        from qaprune.export.onnx_export import float_onnx

        low: Lowered | None = None
        try:
            low = lower(model, x, shrink=shrink)
            proto, layers = float_onnx(low)
        except Unsupported as exc:  # anything torch.onnx can export
            return self._fallback(model, x, path, low, exc, shrink=shrink)
        info = {"removed": low.removed, "not_shrunk": low.not_shrunk, "act_keep": low.act_keep}
        return {**info, "how": _save(proto, path), "layers": layers}

    def _fallback(
        self, model: nn.Module, x: Tensor, path: Path, low: Lowered | None, why: Unsupported, *, shrink: bool
    ) -> dict[str, Any]:
        plain = low or _unsupported_named(self, lambda: lower(model, x, shrink=shrink, trace=False), model, x, None)
        how = _unsupported_named(self, lambda: _torch_onnx(plain, path, why), model, x, low)
        return {"removed": plain.removed, "not_shrunk": plain.not_shrunk, "how": how, "act_keep": None}

    def takes(self, model: nn.Module, x: Tensor, low: Lowered | None) -> bool:
        import tempfile

        from qaprune.export.onnx_export import float_onnx

        try:
            if low is not None and low.graph is not None:
                float_onnx(low)
                return True
        except Unsupported:
            pass
        try:  # torch.onnx.export's file is checked too: its TorchScript fallback may drop roundings
            plain = low if low is not None else lower(model, x, shrink=False, trace=False)
            with tempfile.TemporaryDirectory() as tmp:
                _torch_onnx(plain, Path(tmp) / "m.onnx", None)
                return self.verify(model, x, Path(tmp) / "m.onnx", skeleton=lambda: model, keep=None).passed
        except Exception:
            return False


def _torch_onnx(low: Lowered, path: Path, why: Unsupported | None) -> str:
    """Write ``low.model`` with torch.onnx.export; where that fails too, ``Unsupported`` names
    the node the qaprune lowering could not write (``why``)."""
    from qaprune.export.onnx_export import torch_onnx

    try:
        how = torch_onnx(low, str(path))
    except Exception as exc:
        if why is None:
            raise
        first = str(exc).strip().split("\n")[0][:200]
        what = f"{why.what}; torch.onnx.export failed as well ({type(exc).__name__}: {first})"
        raise Unsupported(why.layer, what, node=why.node, call=why.call) from None
    return f"torch.onnx.export: {how}" + (f" (qaprune lowering: {why})" if why is not None else "")


class _OnnxFile(_OnnxGraph):
    """A quantized ONNX format built from the lowered model by ``build(low, int4)``."""

    def build(self, low: Lowered, *, int4: bool) -> tuple[Any, dict[str, str]]:
        raise NotImplementedError

    def write(self, model: nn.Module, x: Tensor, path: Path, *, shrink: bool, int4: bool) -> dict[str, Any]:
        low, info = _lowered(self, model, x, shrink=shrink)
        proto, layers = _unsupported_named(self, lambda: self.build(low, int4=int4), model, x, low)
        return {**info, "how": _save(proto, path), "layers": layers}

    def takes(self, model: nn.Module, x: Tensor, low: Lowered | None) -> bool:
        try:
            self.build(low if low is not None else lower(model, x, shrink=False), int4=False)
        except Exception:  # Unsupported, or a lowering that fails otherwise
            return False
        return True


@register("qdq")
class OnnxQDQ(_OnnxFile):
    suffix, about = ".qdq.onnx", "int8 QuantizeLinear/DequantizeLinear, weights and activations of 2-8 bits"
    criterion, tie_aware = "int8", False

    def build(self, low: Lowered, *, int4: bool) -> tuple[Any, dict[str, str]]:
        from qaprune.export.qdq import qdq_onnx

        return qdq_onnx(low, int4=int4)


@register("qonnx")
class QONNX(_OnnxFile):
    suffix, about = ".qonnx.onnx", "QONNX Quant nodes, any bit width"
    executor = "qonnx"

    def build(self, low: Lowered, *, int4: bool) -> tuple[Any, dict[str, str]]:
        from qaprune.export.qonnx_export import qonnx_model

        return qonnx_model(low)


@register("qap")
class QAP(Exporter):
    suffix, about = ".qap", "the compact artifact: the weights, any model"

    def write(self, model: nn.Module, x: Tensor, path: Path, *, shrink: bool, int4: bool) -> dict[str, Any]:
        from qaprune.storage import save_qap

        save_qap(model, path)  # the one writer: the same bytes as the run's model.qap and size_bytes
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

"""Export: models that really are smaller and faster (``shrink``), and their file formats
(``export``: onnx, qdq, qonnx, qap, each verified against the PyTorch model).

``qaprune.export`` is both this package and the ``export`` function: once a submodule is
imported, Python binds the package to that name, so the package itself is callable and calls
``qaprune.export.api.export``.
"""

import sys
import types

from qaprune.export.shrink import BlockDiagonalLinear, ShrinkResult, SparseLinear, shrink

__all__ = [
    "shrink",
    "ShrinkResult",
    "BlockDiagonalLinear",
    "SparseLinear",
    "export",
    "ExportResult",
    "FORMATS",
    "EXPORTERS",
    "VerificationError",
]

_LAZY = {
    "export": "qaprune.export.api",
    "ExportResult": "qaprune.export.api",
    "FORMATS": "qaprune.export.api",
    "EXPORTERS": "qaprune.export.formats",
    "VerificationError": "qaprune.export.verify",
}


def __getattr__(name: str):
    """``export`` and friends on first use (onnx is imported only then)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qaprune.export' has no attribute {name!r}")


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from qaprune.export.api import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

"""The runnable examples in the export modules' docstrings stay runnable and right."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "qaprune.export.lower",
    "qaprune.export.onnx_export",
    "qaprune.export.graph",
    "qaprune.export.ops",
    "qaprune.export.qdq",
    "qaprune.export.qonnx_export",
    "qaprune.export.verify",
    "qaprune.export.api",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, f"{result.failed} of {result.attempted} failed in {name}"

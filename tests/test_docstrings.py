"""The runnable examples in public docstrings stay runnable and right."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "qaprune.registry",
    "qaprune.recipe",
    "qaprune.quant.fake_quant",
    "qaprune.quant.activations",
    "qaprune.prune.criteria",
    "qaprune.prune.structures",
    "qaprune.prune.schedules",
    "qaprune.prune.pruner",
    "qaprune.metrics.bops",
    "qaprune.models",
    "qaprune.compress",
    "qaprune.train",
    "qaprune.metrics",
    "qaprune.prune.optim",
    "qaprune.prune.stats",
    "qaprune.prune.groups",
    "qaprune.export.shrink",
    "qaprune.metrics.latency",
    "qaprune.models.resnet",
    "qaprune.prune.channels",
    "qaprune.export.fold",
    "qaprune.quant.mixed",
    "qaprune.quant.bits",
    "qaprune.param",
    "qaprune.prune.allocation",
    "qaprune.methods",
    "qaprune.rundir",
    "qaprune.select",
    "qaprune.reference",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"

"""Shared pieces of the search tests: a tiny digits recipe with a search section."""

from __future__ import annotations

import copy
from typing import Any

import pytest

BASE: dict[str, Any] = {
    "name": "s",
    "data": {"name": "digits"},
    "model": {"name": "mlp", "args": {"hidden": [16]}},
    "prune": {"schedule": "oneshot"},
    "train": {"epochs": 1, "batch_size": 128, "lr": 0.01, "patience": None},
    "search": {
        "space": {"prune.sparsity": {"low": 0.3, "high": 0.9}, "quant.weight_bits": {"choices": [4, 8]}},
        "objectives": ["accuracy", "bops"],
        "startup_trials": 1,
        "population": 2,
    },
}


def make_recipe(**search: Any) -> dict[str, Any]:
    """BASE with the given ``search`` fields replaced."""
    recipe = copy.deepcopy(BASE)
    recipe["search"].update(search)
    return recipe


@pytest.fixture
def quiet_log():
    return None

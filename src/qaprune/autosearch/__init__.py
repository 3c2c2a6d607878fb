"""Automatic search (Optuna): per-layer bits, sparsity, structure, criterion and widths against
accuracy, BOPs, bytes and latency, with constraints, on SQLite or any Optuna RDB storage.

The package is not called ``search`` because ``qaprune.search`` is the function (as
``qaprune.run`` is the function and ``qaprune.runner`` its module).

Example (a recipe with a ``search:`` section; see ``SearchSpec``)::

    import qaprune
    result = qaprune.search("recipes/letter_search.yaml", trials=40, workers=4)
    for row in result.pareto:
        print(row["number"], row["metrics"]["accuracy"], row["metrics"]["bops"])

``SearchSpec`` (the recipe's ``search:`` section) lives in ``qaprune.recipe.search``; Optuna and
torch load on use.
"""

from __future__ import annotations

import importlib
from typing import Any

from qaprune.recipe.search import SearchSpec

_LAZY = {
    "search": "qaprune.autosearch.api",
    "SearchResult": "qaprune.autosearch.api",
    "report_search": "qaprune.autosearch.api",
    "write_search_report": "qaprune.autosearch.report",
    "export_recipes": "qaprune.autosearch.report",
}

__all__ = ["SearchSpec", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qaprune.autosearch' has no attribute {name!r}")

"""qaprune: quantization-aware pruning and model compression for PyTorch.

prepare → train → convert::

    import qaprune
    result = qaprune.run("recipes/letter_qap.yaml")            # the whole experiment
    model = qaprune.attach(model, recipe, sample=x_train)      # or bring your own loop
    qaprune.fit(model, x_train, y_train, x_val, y_val, spec=recipe.train)
    qaprune.bake(model)

Heavy modules are imported on first use, so ``import qaprune`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "run": "qaprune.runner",
    "RunResult": "qaprune.runner",
    "Recipe": "qaprune.recipe",
    "attach": "qaprune.compress",
    "bake": "qaprune.param",
    "rewind": "qaprune.compress",
    "fit": "qaprune.train",
    "measure": "qaprune.metrics",
    "profile": "qaprune.metrics",
    "prune_to": "qaprune.prune",
    "build_model": "qaprune.models",
    "load_dataset": "qaprune.data",
    "run_demo": "qaprune.demo",
    "shrink": "qaprune.export",
    "fold_batchnorm": "qaprune.export.fold",
    "for_inference": "qaprune.export.fold",
    "export": "qaprune.export.api",
    "save_qap": "qaprune.storage",
    "load_qap": "qaprune.storage",
    "load_qap_into": "qaprune.storage",
    "cluster_model": "qaprune.quant.cluster",
    "kmeans_1d": "qaprune.quant.cluster",
    "lc_compress": "qaprune.lc",
    "search": "qaprune.autosearch",
    "SearchSpec": "qaprune.autosearch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'qaprune' has no attribute {name!r}")

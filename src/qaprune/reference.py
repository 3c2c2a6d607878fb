"""The 32-bit dense reference of a run: the same model, data and training budget, without
quantization or pruning. It says what "no loss of accuracy" means for this model and data.

A reference is a run directory, trained once and cached under the user cache
(``$QAPRUNE_CACHE``, else ``$XDG_CACHE_HOME/qaprune``, else ``~/.cache/qaprune``) in
``references/<key>``, where the key hashes what defines it: the dense recipe (its name,
``select`` and ``search`` aside), the content of the data splits and the qaprune version. Runs
that share a base share a reference; a lock file keeps two processes from training it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qaprune import __version__
from qaprune.data import Dataset
from qaprune.io import read_json
from qaprune.recipe import SPARSE_OPTIMIZERS, Recipe

SPLITS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def dense_recipe(base: Recipe) -> Recipe:
    """The dense float reference of ``base``: 32-bit, unpruned, no per-layer overrides, no
    distillation, no search, delivering its only step.

    Example:
        >>> r = dense_recipe(Recipe(quant={"weight_bits": 4}, prune={"sparsity": 0.5}))
        >>> r.quant.weight_bits, r.prune.sparsity, r.select.reference
        (32, 0.0, 'none')
    """
    data = base.to_dict()
    data.update(name=f"{base.name}-dense", search=None, layers={}, quant={}, prune={}, select={"reference": "none"})
    data["train"]["distill"] = None
    if data["train"]["optimizer"] in SPARSE_OPTIMIZERS:  # they zero weights by themselves
        data["train"].update(optimizer="adam", sparse=None)
    return Recipe.parse(data)


def cache_root() -> Path:
    """Where qaprune caches what it can rebuild (references): ``$QAPRUNE_CACHE``, else
    ``$XDG_CACHE_HOME/qaprune``, else ``~/.cache/qaprune``."""
    if os.environ.get("QAPRUNE_CACHE"):
        return Path(os.environ["QAPRUNE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qaprune"


def data_fingerprint(data: Dataset) -> str:
    """SHA-256 of the splits' shapes, dtypes and bytes: the same splits give the same value."""
    h = hashlib.sha256()
    for split in SPLITS:
        t = getattr(data, split).detach().cpu().contiguous()
        h.update(f"{split}:{tuple(t.shape)}:{t.dtype}\0".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def reference_key(recipe: Recipe, data: Dataset) -> str:
    """The hash that names the reference of ``recipe`` on ``data``."""
    defining = dense_recipe(recipe).to_dict()
    for key in ("name", "select", "search"):
        defining.pop(key, None)
    text = json.dumps({"recipe": defining, "data": data_fingerprint(data), "qaprune": __version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Reference:
    """A finished reference run: its test ``metrics``, its validation metrics ``val``."""

    run_dir: Path
    key: str
    metrics: dict[str, Any] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    def to_dict(self) -> dict[str, Any]:
        keep = ("accuracy", "balanced_accuracy", "bops", "size_bytes", "per_class_recall")
        return {
            "run_dir": str(self.run_dir),
            "key": self.key,
            "metrics": {k: self.metrics[k] for k in keep if k in self.metrics},
            "val": self.val,
        }


def val_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """The validation metrics of a history entry: ``val_<metric>`` -> ``{metric: value}``."""
    return {k.removeprefix("val_"): float(v) for k, v in entry.items() if k.startswith("val_")}


def load_reference(run_dir: Path, key: str) -> Reference:
    """The reference stored in ``run_dir`` (a finished run)."""
    results = read_json(run_dir / "results.json")
    step = results.get("selected", {}).get("step", 0)
    entry = next((e for e in results["history"] if e["step"] == step), results["history"][-1])
    return Reference(run_dir, key, results["metrics"], val_metrics(entry))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reference(
    recipe: Recipe, data: Dataset, *, train: Callable[[Recipe, Path], None], log: Callable[[str], None] = print
) -> Reference:
    """The dense reference of ``recipe`` on ``data``: read from the cache, or trained there by
    ``train(dense_recipe, run_dir)`` (which resumes an interrupted one)."""
    key = reference_key(recipe, data)
    run_dir = cache_root() / "references" / key[:24]
    with _locked(run_dir.with_name(run_dir.name + ".lock")):
        if not (run_dir / "results.json").is_file():
            log(f"reference: training the 32-bit dense model into {run_dir}")
            train(dense_recipe(recipe), run_dir)
        else:
            log(f"reference: reusing {run_dir}")
        return load_reference(run_dir, key)

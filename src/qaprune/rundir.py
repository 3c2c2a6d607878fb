"""Run directories: resolve a recipe, set up, load its data, build its model, and read or write
the directory a run leaves behind.

A run directory holds ``recipe.yaml`` (the resolved recipe), ``results.json``,
``model.safetensors``, ``model.qap``, ``report.html`` and ``checkpoints/`` (``init.safetensors``,
``step_NNN.safetensors`` after every finished step, ``state.json``). ``qaprune.runner`` runs
the rounds; everything that reads a run (export, shrink, measure, search, reports) comes here.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qaprune.compress import attach
from qaprune.data import Dataset, load_dataset
from qaprune.errors import CheckpointError, RecipeError
from qaprune.io import copy_state, load_tensors, read_json, save_tensors, write_json
from qaprune.metrics import measure
from qaprune.models import build_model, find_module_dir
from qaprune.prune.groups import restore_channel_masks
from qaprune.quant.cluster import clusters_from_state
from qaprune.recipe import Recipe


def resolve_recipe(recipe: Recipe | str | Path | dict, overrides: list[str] | None = None) -> Recipe:
    """A ``Recipe`` from a recipe, a dict or a YAML/JSON file, with ``key.path=value`` overrides.
    A user model ``module:factory`` is looked for in the recipe file's folder, then the working
    directory; the folder where it is found is recorded as ``model.path``, so that the run
    directory rebuilds the model from anywhere."""
    if isinstance(recipe, Recipe):
        resolved, folders = (recipe.override(overrides) if overrides else recipe), [Path.cwd()]
    elif isinstance(recipe, dict):
        resolved, folders = Recipe.parse(recipe).override(overrides or []), [Path.cwd()]
    else:
        resolved, folders = Recipe.load(recipe, overrides=overrides), [Path(recipe).parent, Path.cwd()]
    return locate_model(resolved, folders)


def locate_model(recipe: Recipe, folders: list[Path]) -> Recipe:
    """``recipe`` with ``model.path`` set to the first of ``folders`` holding its user module."""
    name = recipe.model.name
    if ":" not in name or recipe.model.path is not None:
        return recipe
    found = find_module_dir(name.partition(":")[0], folders)
    return recipe if found is None else recipe.override([f"model.path={json.dumps(str(found))}"])


def model_search_path(recipe: Recipe) -> list[Path]:
    """Where a user model's module is imported from: ``model.path``, else the working directory."""
    return [Path(recipe.model.path)] if recipe.model.path else [Path.cwd()]


def setup(recipe: Recipe) -> torch.device:
    """Seeds, threads, determinism and the device."""
    seed = recipe.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    if recipe.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if recipe.device == "cuda" and not torch.cuda.is_available():
        raise RecipeError("recipe.device: 'cuda' requested but no CUDA device is available; use auto or cpu")
    name = "cuda" if recipe.device == "cuda" or (recipe.device == "auto" and torch.cuda.is_available()) else "cpu"
    return torch.device(name)


def load_data(recipe: Recipe, data_dir: str | None, device: torch.device) -> Dataset:
    """The recipe's dataset (splits as ``data`` says), every split on ``device``."""
    d = recipe.data
    data = load_dataset(
        d.name,
        path=d.path,
        data_dir=data_dir,
        train=d.train,
        val=d.val,
        test=d.test,
        scale=d.scale,
        seed=d.seed,
        label_column=d.label_column,
        stratify=d.stratify,
    )
    for split in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        setattr(data, split, getattr(data, split).to(device))
    return data


def build(recipe: Recipe, data: Dataset, device: torch.device) -> nn.Module:
    """The model of ``recipe`` for ``data``, with masks and quantizers attached (``attach``)."""
    torch.manual_seed(recipe.seed)
    model = build_model(
        recipe.model.name,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        search_path=model_search_path(recipe),
        **recipe.model.args,
    )
    return attach(model.to(device), recipe, sample=data.x_train).to(device)


def load_into(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict saved by ``save_tensors(model.state_dict())`` into ``model`` (built by
    ``build``), first re-creating the parametrizations the saved model had gained since: channel
    masks on biases and batch norms, weight-sharing clusters."""
    state = load_tensors(path)
    restore_channel_masks(model, state)
    if any(k.endswith(".centroids") for k in state) and not any(k.endswith(".centroids") for k in model.state_dict()):
        clusters_from_state(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(f"{path}: does not fit the model: {' '.join(first)}") from None
    return model


def environment() -> dict[str, Any]:
    """The machine, for honest numbers."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


def clean(run_dir: str | Path) -> None:
    """Remove a run directory (used by the demo to start afresh)."""
    shutil.rmtree(run_dir, ignore_errors=True)


def load_run(
    target: str | Path, *, data_dir: str | None = None, step: int | None = None
) -> tuple[Recipe, Any, nn.Module]:
    """(recipe, data, model with its trained weights) of a run directory, or of a ``.safetensors``
    beside its recipe.yaml; the architecture is rebuilt from the recipe. A run directory gives
    its delivered model (``model.safetensors``, the selected step), or step ``step`` of its
    ``checkpoints/``."""
    run_dir, weights = weights_of(Path(target), step)
    recipe = Recipe.load(run_dir / "recipe.yaml")
    device = setup(recipe)
    data = load_data(recipe, data_dir, device)
    return recipe, data, load_into(build(recipe, data, device), weights)


def weights_of(target: Path, step: int | None = None) -> tuple[Path, Path]:
    """(run directory, weights file) of a run directory (its delivered model, or checkpoint
    ``step``) or of a ``.safetensors`` beside a recipe.yaml."""
    run_dir, weights = (target, target / "model.safetensors") if target.is_dir() else (target.parent, target)
    if not (run_dir / "recipe.yaml").is_file():
        raise RecipeError(
            f"{target}: no recipe.yaml beside the model; the recipe is needed to rebuild the architecture"
        )
    if step is None:
        return run_dir, weights
    if not target.is_dir():
        raise RecipeError(f"--step {step}: needs a run directory, not the weights file {target}")
    ckpt = run_dir / "checkpoints" / f"step_{step:03d}.safetensors"
    if not ckpt.is_file():
        steps = sorted(int(p.stem[5:]) for p in (run_dir / "checkpoints").glob("step_*.safetensors"))
        raise RecipeError(f"--step {step}: {run_dir} has no such step; steps: {', '.join(map(str, steps)) or 'none'}")
    return run_dir, ckpt


def measure_saved(target: str | Path, *, data_dir: str | None = None, step: int | None = None) -> dict[str, Any]:
    """Metrics of a saved model: a run directory (its delivered model, or checkpoint ``step``),
    or a ``.safetensors`` beside its recipe.yaml."""
    _, data, model = load_run(target, data_dir=data_dir, step=step)
    return measure(model, data.x_test, data.y_test, num_classes=data.num_classes, class_names=data.class_names)


# --- the layout of a run directory: recipe.yaml, checkpoints/ (init, step_NNN, state.json) ----------
def prepare(run_dir: Path, recipe: Recipe, resume: bool) -> Path:
    """Make ``run_dir`` ready for ``recipe``: refuse one that holds a run unless resuming, refuse
    resuming with another recipe; write recipe.yaml. -> the checkpoints folder."""
    ckpt = run_dir / "checkpoints"
    if (ckpt / "state.json").exists() and not resume:
        raise RecipeError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if resume and (run_dir / "recipe.yaml").exists():
        saved = Recipe.load(run_dir / "recipe.yaml")
        if saved != recipe:
            raise RecipeError(
                f"--resume: the recipe differs from the one in {run_dir / 'recipe.yaml'}; "
                "resume with the same recipe or choose another --out"
            )
    ckpt.mkdir(parents=True, exist_ok=True)
    recipe.dump(run_dir / "recipe.yaml")
    return ckpt


def start_or_resume(model: nn.Module, ckpt: Path, resume: bool) -> dict[str, Any]:
    """A fresh state (the initial weights saved for lottery-ticket rewinding), or, resuming, the
    saved state with the last finished step's weights loaded into ``model``:
    ``{next_step, history, timing}``."""
    fresh = {"next_step": 0, "history": [], "timing": {"epochs": 0, "train_seconds": 0.0}}
    if not (resume and (ckpt / "state.json").exists()):
        save_tensors(ckpt / "init.safetensors", copy_state(model))
        return fresh
    state = read_json(ckpt / "state.json")
    last = state.get("last_weights")
    if not last:
        raise CheckpointError(f"{ckpt / 'state.json'}: no finished step to resume from")
    load_into(model, ckpt / last)
    state["next_step"] = state["step"] + 1
    return state


def checkpoint(model: nn.Module, ckpt: Path, step: int, history: list, timing: dict) -> None:
    """Save step ``step``'s weights, then the state that points at them."""
    name = f"step_{step:03d}.safetensors"
    save_tensors(ckpt / name, copy_state(model))
    write_json(ckpt / "state.json", {"step": step, "last_weights": name, "history": history, "timing": timing})

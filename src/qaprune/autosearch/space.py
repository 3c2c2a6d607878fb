"""A trial's recipe: the base recipe plus values sampled from ``search.space``.

Every parameter is a recipe field path (``quant.weight_bits``, ``layers.fc1.weight_bits``,
``model.args.hidden``); a trial applies them as ``--set`` overrides would, so every trial is an
ordinary, valid recipe and every trial directory an ordinary run directory.

Example:
    >>> from qaprune.recipe import Recipe
    >>> base = Recipe(search={"space": {"quant.weight_bits": {"choices": [4, 8]}}})
    >>> r = trial_recipe(base, {"quant.weight_bits": 4, "layers.fc1.weight_bits": 8})
    >>> r.quant.weight_bits, r.layers["fc1"].weight_bits, r.search
    (4, 8, None)
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from typing import Any

from qaprune.errors import RecipeError
from qaprune.recipe import Recipe, apply_overrides
from qaprune.recipe.search import SPARSITY, ParamSpec, SearchSpec


def spec_of(recipe: Recipe) -> SearchSpec:
    """The recipe's ``search`` section, or a RecipeError saying what to add."""
    if recipe.search is None:
        raise RecipeError(
            "recipe.search: missing; a search needs a space and objectives, e.g.\n"
            "search:\n  space:\n    prune.sparsity: {low: 0.5, high: 0.95}\n"
            "    quant.weight_bits: {choices: [2, 4, 8]}\n  objectives: [accuracy, bops]"
        )
    return recipe.search


def trial_recipe(base: Recipe, params: dict[str, Any], *, name: str | None = None) -> Recipe:
    """``base`` with ``params`` (field path -> value) applied and no ``search`` section."""
    data = base.to_dict()
    data["search"] = None
    if name is not None:
        data["name"] = name
    return Recipe.parse(apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in params.items()]))


def recipe_hash(recipe: Recipe) -> str:
    """SHA-256 of the recipe's canonical JSON: a study belongs to exactly one recipe."""
    return hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest()


def check_space(recipe: Recipe, layer_names: list[str] | None = None) -> None:
    """Refuse a space whose values give invalid recipes (each choice, each range end is tried)
    or whose ``layers.<pattern>`` matches no weight layer of ``layer_names`` (when given)."""
    spec = spec_of(recipe)
    for key, param in spec.space.items():
        for value in param.probes():
            try:
                trial_recipe(recipe, {key: value})
            except RecipeError as exc:
                raise RecipeError(
                    f"recipe.search.space.{key}: {value!r} gives an invalid recipe: {str(exc).replace(chr(10), '; ')}"
                ) from None
    varies_model = any(k.startswith("model.") for k in spec.space)
    if layer_names is not None and not varies_model:
        _check_layers(spec.space, layer_names)


def _check_layers(space: dict[str, ParamSpec], names: list[str]) -> None:
    for key in space:
        if not key.startswith("layers."):
            continue
        pattern = key[len("layers.") :].rsplit(".", 1)[0]
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise RecipeError(
                f"recipe.search.space.{key}: {pattern!r} matches no weight layer of the model; "
                f"layers: {', '.join(names)}"
            )


def expand_space(space: dict[str, ParamSpec], layers: list[str] | tuple[str, ...]) -> dict[str, ParamSpec]:
    """``space`` with every ``per_layer`` entry replaced by one entry per matching layer.

    Example:
        >>> p = ParamSpec(choices=[4, 8], per_layer=True)
        >>> list(expand_space({"layers.fc*.weight_bits": p}, ["fc1", "fc2", "conv"]))
        ['layers.fc1.weight_bits', 'layers.fc2.weight_bits']
    """
    out: dict[str, ParamSpec] = {}
    for key, p in space.items():
        pattern, field = key[len("layers.") :].rsplit(".", 1) if p.per_layer else ("", "")
        names = [f"layers.{n}.{field}" for n in layers if fnmatch.fnmatchcase(n, pattern)] if p.per_layer else [key]
        for name in names:
            if name in out:
                raise RecipeError(f"recipe.search.space.{key}: {name} is searched twice")
            out[name] = p.model_copy(update={"per_layer": False})
    return out


def model_layers(recipe: Recipe, data_dir: str | None = None) -> list[str]:
    """Names of the Linear/Conv layers of the recipe's model (built for its data, on the CPU)."""
    import torch

    from qaprune.models import build_model
    from qaprune.param import WEIGHT_LAYERS
    from qaprune.rundir import load_data, model_search_path

    data = load_data(recipe, data_dir, torch.device("cpu"))
    model = build_model(
        recipe.model.name,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        search_path=model_search_path(recipe),
        **recipe.model.args,
    )
    return [n for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


def suggest(trial: Any, space: dict[str, ParamSpec], *, bound: float | None = None) -> dict[str, Any]:
    """Sample every parameter of ``space`` on an optuna ``trial``; ``bound`` caps prune.sparsity
    (the first phase's result). -> field path -> value, ready for ``trial_recipe``."""
    out: dict[str, Any] = {}
    for key, p in space.items():
        if p.kind == "categorical":
            out[key] = _categorical(trial, key, p)
        elif p.kind == "int":
            out[key] = trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            high = min(float(p.high), bound) if key == SPARSITY and bound is not None else float(p.high)
            out[key] = trial.suggest_float(key, float(p.low), max(high, float(p.low)), step=p.step, log=p.log)
    return out


def _categorical(trial: Any, key: str, p: ParamSpec) -> Any:
    """Scalars go to optuna as they are; lists and mappings (e.g. widths) as JSON text."""
    if p.scalar_choices:
        return trial.suggest_categorical(key, p.choices)
    return json.loads(trial.suggest_categorical(key, [json.dumps(c) for c in p.choices]))


def decode_params(params: dict[str, Any], space: dict[str, ParamSpec]) -> dict[str, Any]:
    """A finished trial's stored params back as recipe values (JSON-text choices decoded)."""
    out = {}
    for key, value in params.items():
        p = space.get(key)
        out[key] = json.loads(value) if p is not None and p.kind == "categorical" and not p.scalar_choices else value
    return out

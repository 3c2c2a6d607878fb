"""The search section: validation with clear messages, sampling, trial recipes, hashes."""

from __future__ import annotations

import doctest
import importlib

import optuna
import pytest
from conftest import make_recipe

from qaprune.autosearch.space import (
    check_space,
    decode_params,
    expand_space,
    recipe_hash,
    suggest,
    trial_recipe,
)
from qaprune.errors import RecipeError
from qaprune.recipe import Recipe
from qaprune.recipe.search import SearchSpec
from qaprune.reference import dense_recipe

MODULES = [
    "qaprune.recipe.search",
    *(f"qaprune.autosearch.{m}" for m in ("space", "objectives", "study", "front", "bound")),
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize(
    "search, message",
    [
        ({"space": {}}, "recipe.search.space: empty"),
        ({"space": {"prune.sparsity": {"low": 0.9, "high": 0.5}}}, "low 0.9 must be < high 0.5"),
        ({"space": {"prune.sparsity": {"lo": 0.1}}}, "prune.sparsity.lo: unknown field; allowed: choices, low"),
        ({"space": {"quant.weight_bits": {"choices": []}}}, "choices: empty"),
        ({"space": {"quant.weight_bits": {"choices": [4, 4]}}}, "has duplicates"),
        ({"space": {"data.test": {"choices": [0.1, 0.2]}}}, "'data.test' is not searchable"),
        (
            {"space": {"prune.sparsity": {"low": 0.1, "high": 0.5}}, "objectives": ["speed"]},
            "'speed' is unknown; known:",
        ),
        (
            {"space": {"prune.sparsity": {"low": 0.1, "high": 0.5}}, "objectives": ["bops", "bops"]},
            "names a metric twice",
        ),
        ({"space": {"prune.sparsity": {"low": 0.1, "high": 0.5}}, "pruner": "median"}, "needs the single objective"),
        ({"space": {"prune.sparsity": {"low": 0.1, "high": 0.5}}, "pruner": "threshold"}, "add one"),
        (
            {
                "space": {"prune.sparsity": {"low": 0.1, "high": 0.5}},
                "constraints": [{"metric": "accuracy", "min": 0.9, "max": 0.8}],
            },
            "no trial can meet it",
        ),
        (
            {
                "space": {"quant.weight_bits": {"choices": [4, 8]}},
                "sparsity_bound": {"trials": 3},
                "constraints": [{"metric": "accuracy", "min": 0.9}],
            },
            "needs prune.sparsity in space",
        ),
        ({"space": {"prune.sparsity": {"low": 0.1, "high": 0.5}}, "sparsity_bound": {}}, "needs constraints"),
        ({"space": {"prune.sparsity": {"low": 0.1, "high": 0.5}}, "sampler": "cmaes"}, "recipe.search.sampler"),
        ({"space": {"quant.weight_bits": {"choices": [2, 4], "per_layer": True}}}, "per_layer needs a key layers."),
        (
            {
                "space": {
                    "layers.*.weight_bits": {"choices": [2, 4], "per_layer": True},
                    "model.args.hidden": {"choices": [[8], [16]]},
                }
            },
            "and a fixed model",
        ),
    ],
)
def test_bad_search_sections_are_refused_with_the_field(search, message):
    with pytest.raises(RecipeError) as err:
        Recipe.parse({"search": search})
    assert message in str(err.value)
    assert str(err.value).startswith("recipe.search")


@pytest.mark.parametrize(
    "space, message",
    [
        ({"prune.sparsity": {"low": 0.5, "high": 1.0}}, "recipe.prune.sparsity: 1.0 is not in [0, 1)"),
        ({"quant.weight_bit": {"choices": [2, 4]}}, "recipe.quant.weight_bit: unknown field"),
        ({"layers.fc1.act_bits": {"choices": [1, 4]}}, "1 bit is for weights only"),
        ({"prune.criterion": {"choices": ["magnitude", "psychic"]}}, "'psychic' is unknown"),
    ],
)
def test_values_that_give_invalid_recipes_are_refused(space, message):
    recipe = Recipe.parse({"search": {"space": space}})
    with pytest.raises(RecipeError) as err:
        check_space(recipe)
    assert f"recipe.search.space.{next(iter(space))}" in str(err.value) and message in str(err.value)


def test_layer_patterns_must_match_a_layer_unless_the_model_varies():
    recipe = Recipe.parse({"search": {"space": {"layers.fc9.weight_bits": {"choices": [2, 4]}}}})
    with pytest.raises(RecipeError, match="'fc9' matches no weight layer of the model; layers: fc1"):
        check_space(recipe, ["fc1", "fc2"])
    check_space(Recipe.parse({"search": {"space": {"layers.fc*.weight_bits": {"choices": [2, 4]}}}}), ["fc1"])
    varies = {"layers.fc3.weight_bits": {"choices": [2, 4]}, "model.args.hidden": {"choices": [[8], [8, 8]]}}
    check_space(Recipe.parse({"search": {"space": varies}}), ["fc1", "fc2"])


def test_kinds_directions_and_sampled_values():
    spec = SearchSpec(
        space={
            "quant.weight_bits": {"low": 2, "high": 8},
            "prune.sparsity": {"low": 0, "high": 0.9},
            "train.lr": {"low": 1e-4, "high": 1e-1, "log": True},
            "model.args.hidden": {"choices": [[16], [32, 16]]},
            "prune.structure": {"choices": ["unstructured", "channels"]},
        },
        objectives=["size_bytes", {"metric": "accuracy"}, {"metric": "sparsity", "direction": "minimize"}],
    )
    assert [p.kind for p in spec.space.values()] == ["int", "float", "float", "categorical", "categorical"]
    assert spec.directions == ["minimize", "maximize", "minimize"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(5):
        trial = study.ask()
        params = suggest(trial, spec.space, bound=0.4)
        assert isinstance(params["quant.weight_bits"], int) and 2 <= params["quant.weight_bits"] <= 8
        assert 0.0 <= params["prune.sparsity"] <= 0.4  # capped by the bound
        assert params["model.args.hidden"] in ([16], [32, 16])  # lists travel as JSON text
        assert decode_params(trial.params, spec.space) == params
        recipe = trial_recipe(Recipe(search=spec), params)
        assert recipe.model.args["hidden"] == params["model.args.hidden"] and recipe.search is None
        study.tell(trial, 1.0)


def test_dense_recipe_and_hash():
    base = Recipe.parse(make_recipe())
    base = base.override(["quant.weight_bits=4", "prune.sparsity=0.5", "layers.fc1.weight_bits=2"])
    dense = dense_recipe(base)
    assert (dense.quant.weight_bits, dense.prune.sparsity, dense.layers, dense.search) == (32, 0.0, {}, None)
    assert recipe_hash(base) == recipe_hash(Recipe.parse(base.to_dict()))  # what a worker re-parses
    assert recipe_hash(base) != recipe_hash(base.override(["train.epochs=2"]))


def test_the_documented_search_section_is_valid():
    import textwrap

    import yaml

    from qaprune.autosearch.space import model_layers
    from qaprune.recipe import search as spec_module

    section = yaml.safe_load(textwrap.dedent(spec_module.__doc__.split("::")[1].split("\n\nExample")[0]))
    recipe = Recipe.parse({"data": {"name": "digits"}, **section})
    check_space(recipe, model_layers(recipe))
    assert recipe.search.sampler == "nsga2" and len(recipe.search.space) == 6


def test_per_layer_entries_expand_to_one_parameter_per_layer():
    space = SearchSpec(
        space={
            "layers.fc*.weight_bits": {"low": 2, "high": 8, "per_layer": True},
            "layers.fc2.act_bits": {"choices": [4, 8]},
        }
    ).space
    wide = expand_space(space, ["fc1", "fc2", "conv1"])
    assert list(wide) == ["layers.fc1.weight_bits", "layers.fc2.weight_bits", "layers.fc2.act_bits"]
    assert all(not p.per_layer for p in wide.values()) and wide["layers.fc1.weight_bits"].kind == "int"
    with pytest.raises(RecipeError, match="searched twice"):
        expand_space({**space, "layers.fc1.weight_bits": space["layers.fc2.act_bits"]}, ["fc1"])


def test_the_shipped_search_recipe_is_valid_for_its_model():
    from pathlib import Path

    from qaprune.models import build_model
    from qaprune.param import weight_layers

    recipe = Recipe.load(Path(__file__).resolve().parents[2] / "recipes" / "letter_search.yaml")
    model = build_model(recipe.model.name, input_shape=(16,), num_classes=26, **recipe.model.args)  # UCI Letter
    check_space(recipe, list(weight_layers(model)))
    assert recipe.search is not None and recipe.search.constraints[0].reference == "dense"

"""Tests of qaprune.recipe: lossless YAML/JSON round trips, ``--set`` overrides, exact error
messages naming the field and the allowed values, per-layer merging, and the JSON schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qaprune.errors import RecipeError
from qaprune.prune import CRITERIA, SCHEDULES, STRUCTURES
from qaprune.prune.allocation import ALLOCATIONS
from qaprune.recipe import (
    DataSpec,
    LayerOverride,
    ModelSpec,
    PruneSpec,
    QuantSpec,
    Recipe,
    SparseSpec,
    TrainSpec,
    apply_overrides,
    json_schema,
)

REPO_RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def _rich() -> Recipe:
    return Recipe.parse(
        {
            "name": "rt",
            "seed": 3,
            "device": "cpu",
            "data": {"name": "letter", "train": 0.6, "val": 2000, "test": 0.2, "scale": "minmax"},
            "model": {"name": "mlp", "args": {"hidden": [64, 32], "batchnorm": "no_affine", "dropout": 0.1}},
            "quant": {"weight_bits": 6, "act_bits": 5, "input_bits": 8, "input_max": 1.5, "per_channel": True},
            "prune": {
                "sparsity": 0.875,
                "criterion": "l2",
                "allocation": "uniform",
                "schedule": "cubic",
                "n_steps": 5,
                "start_epoch": 2,
                "of": "remaining",
                "rewind": "lt",
                "rate": 0.2,
            },
            "train": {
                "optimizer": "sgd",
                "lr": 0.0125,
                "epochs": 12,
                "patience": None,
                "l1": 1e-5,
                "lr_schedule": "cosine",
                "threads": 2,
            },
            "layers": {
                "fc*": {"weight_bits": 4},
                "fc3": {"weight_bits": 8, "sparsity": 0.5},
                "act1": {"act_bits": 3},
                "fc1": {"prune": False},
            },
        }
    )


@pytest.mark.parametrize("recipe", [Recipe(), _rich()], ids=["default", "rich"])
def test_yaml_round_trip_lossless(recipe: Recipe, tmp_path: Path) -> None:
    again = Recipe.parse(yaml.safe_load(recipe.to_yaml()))
    assert again == recipe
    assert again.to_dict() == recipe.to_dict()
    assert list(again.layers) == list(recipe.layers)  # pattern order is meaning
    path = recipe.dump(tmp_path / "r.yaml")
    assert Recipe.load(path) == recipe
    json_path = recipe.dump(tmp_path / "r.json")
    assert json_path.read_text().lstrip().startswith("{")
    assert Recipe.load(json_path) == recipe


def test_rich_recipe_values_survive() -> None:
    r = Recipe.parse(yaml.safe_load(_rich().to_yaml()))
    assert r.data.val == 2000 and isinstance(r.data.val, int)
    assert r.data.train == 0.6 and isinstance(r.data.train, float)
    assert r.train.patience is None
    assert r.train.l1 == 1e-5
    assert r.model.args == {"hidden": [64, 32], "batchnorm": "no_affine", "dropout": 0.1}
    assert r.layers["fc3"] == LayerOverride(weight_bits=8, sparsity=0.5)


@pytest.mark.parametrize("path", REPO_RECIPES, ids=[p.name for p in REPO_RECIPES])
def test_repository_recipes_load_and_round_trip(path: Path, tmp_path: Path) -> None:
    r = Recipe.load(path)
    assert Recipe.load(r.dump(tmp_path / path.name)) == r


def test_defaults() -> None:
    r = Recipe()
    assert (r.quant.weight_bits, r.quant.act_bits, r.quant.input_bits) == (32, 32, None)
    assert (r.prune.sparsity, r.prune.criterion, r.prune.structure) == (0.0, "magnitude", "unstructured")
    assert (r.train.optimizer, r.train.lr, r.train.patience) == ("adam", 1e-3, 10)
    assert r.layers == {}


def test_overrides_of_every_type() -> None:
    r = Recipe().override(
        [
            "train.epochs=7",
            "train.lr=0.05",
            "train.lr_schedule=step",
            "quant.per_channel=true",
            "quant.weight_bits=4",
            "model.args.hidden=[8, 4]",
            "train.patience=null",
            "layers.fc4.weight_bits=8",
            "layers.fc4.prune=false",
            "data.name=my data.npz",
            "name=",
        ]
    )
    assert r.train.epochs == 7 and isinstance(r.train.epochs, int)
    assert r.train.lr == 0.05
    assert r.train.lr_schedule == "step"
    assert r.quant.per_channel is True
    assert r.quant.weight_bits == 4
    assert r.model.args == {"hidden": [8, 4]}
    assert r.train.patience is None
    assert r.layers["fc4"] == LayerOverride(weight_bits=8, prune=False)
    assert r.data.name == "my data.npz"
    assert r.name == ""


def test_overrides_scientific_float_and_later_wins() -> None:
    r = Recipe().override(["train.l1=1.0e-4", "train.epochs=3", "train.epochs=9"])
    assert r.train.l1 == pytest.approx(1e-4)
    assert r.train.epochs == 9


def test_apply_overrides_does_not_mutate_input() -> None:
    data = {"train": {"epochs": 3}}
    out = apply_overrides(data, ["train.epochs=5", "layers.a.b.c=1"])
    assert data == {"train": {"epochs": 3}}
    assert out == {"train": {"epochs": 5}, "layers": {"a.b": {"c": 1}}}  # layers.<pattern>.<field>


def test_load_with_overrides(tmp_path: Path) -> None:
    path = _rich().dump(tmp_path / "r.yaml")
    r = Recipe.load(path, overrides=["prune.sparsity=0.5", "layers.fc2.act_bits=7"])
    assert r.prune.sparsity == 0.5
    assert r.layers["fc2"].act_bits == 7
    assert r.layers["fc3"].weight_bits == 8


@pytest.mark.parametrize(
    "item,msg",
    [
        ("train.epochs", "--set 'train.epochs': expected key.path=value"),
        ("=3", "--set '=3': expected key.path=value"),
        ("train.epochs.x=3", "--set 'train.epochs.x=3': recipe.train.epochs is not a section"),
    ],
)
def test_bad_override_syntax(item: str, msg: str) -> None:
    with pytest.raises(RecipeError) as info:
        Recipe().override([item])
    assert str(info.value) == msg


def test_override_layer_pattern_with_dot() -> None:
    r = Recipe().override(["layers.features.*.weight_bits=4"])
    assert r.layers["features.*"].weight_bits == 4


@pytest.mark.parametrize(
    "data,msg",
    [
        ({"prune": {"sparsity": 1.3}}, "recipe.prune.sparsity: 1.3 is not in [0, 1)"),
        ({"prune": {"sparsity": -0.1}}, "recipe.prune.sparsity: -0.1 is not in [0, 1)"),
        ({"prune": {"sparsity": 1.0}}, "recipe.prune.sparsity: 1.0 is not in [0, 1)"),
        ({"prune": {"rate": 0.0}}, "recipe.prune.rate: 0.0 is not in (0, 1)"),
        (
            {"quant": {"weight_bits": 0}},
            "recipe.quant.weight_bits: 0 bits is not supported; allowed: 1..16 or 32 (float)",
        ),
        (
            {"quant": {"act_bits": 17}},
            "recipe.quant.act_bits: 17 bits is not supported; allowed: 2..16 or 32 (float); 1 bit is for weights only",
        ),
        (
            {"quant": {"input_bits": 64}},
            "recipe.quant.input_bits: 64 bits is not supported; "
            "allowed: 2..16 or 32 (float); 1 bit is for weights only",
        ),
        (
            {"layers": {"fc1": {"weight_bits": 33}}},
            "recipe.layers.fc1.weight_bits: 33 bits is not supported; allowed: 1..16 or 32 (float)",
        ),
        (
            {"layers": {"fc1": {"act_bits": 1}}},
            "recipe.layers.fc1.act_bits: 1 bits is not supported; "
            "allowed: 2..16 or 32 (float); 1 bit is for weights only",
        ),
        ({"layers": {"fc1": {"sparsity": 2}}}, "recipe.layers.fc1.sparsity: 2.0 is not in [0, 1)"),
        (
            {"prune": {"criterion": "psychic"}},
            f"recipe.prune.criterion: 'psychic' is unknown; known: {', '.join(CRITERIA.names())}",
        ),
        (
            {"prune": {"structure": "hexagons"}},
            f"recipe.prune.structure: 'hexagons' is unknown; known: {', '.join(STRUCTURES.names())}",
        ),
        (
            {"prune": {"schedule": "cubic", "n_steps": 10, "start_epoch": 5, "sparsity": 0.5}, "train": {"epochs": 12}},
            "recipe: prune.start_epoch + prune.n_steps = 15 exceeds train.epochs = 12; "
            "the cubic schedule must end inside training",
        ),
        ({"train": {"optimizer": "hspg", "sparse": {"lam": -0.5}}}, "recipe.train.sparse.lam: -0.5 is not >= 0"),
        (
            {"train": {"optimizer": "obproxsg", "sparse": {"n_p": 0, "n_o": 0}}},
            "recipe.train.sparse: n_p + n_o = 0; at least one step per cycle is needed (n_o: null "
            "switches to orthant steps for good after n_p)",
        ),
        (
            {"train": {"optimizer": "adam", "sparse": {"lam": 0.1}}},
            "recipe.train.sparse: set, but train.optimizer is 'adam'; it is used by: hspg, obproxsg "
            "(remove it, or --set train.sparse=null)",
        ),
        (
            {"train": {"optimizer": "hspg", "weight_decay": 0.01}},
            "recipe.train.weight_decay: 0.01 is not supported by optimizer 'hspg'; allowed: 0 "
            "(its penalty is train.sparse.lam)",
        ),
    ],
)
def test_error_messages_exact(data: dict, msg: str) -> None:
    with pytest.raises(RecipeError) as info:
        Recipe.parse(data)
    assert str(info.value) == msg


REGISTERED = [("criterion", CRITERIA), ("structure", STRUCTURES), ("allocation", ALLOCATIONS), ("schedule", SCHEDULES)]


@pytest.mark.parametrize("field,registry", REGISTERED)
def test_registered_names_are_checked_against_their_registry(field: str, registry) -> None:
    for name in registry.names():  # every registered name is a valid recipe value
        assert getattr(Recipe.parse({"prune": {field: name}}).prune, field) == name
    with pytest.raises(RecipeError) as info:
        Recipe.parse({"prune": {field: "layerwise"}})
    assert str(info.value) == f"recipe.prune.{field}: 'layerwise' is unknown; known: {', '.join(registry.names())}"


@pytest.mark.parametrize("field,registry", REGISTERED)
def test_the_schema_lists_registered_names_as_enums(field: str, registry) -> None:
    prop = json_schema()["$defs"]["PruneSpec"]["properties"][field]
    assert prop["type"] == "string" and prop["enum"] == registry.names()


def test_sparse_optimizer_round_trips_and_defaults() -> None:
    r = Recipe().override(["train.optimizer=obproxsg", "train.sparse.lam=0.01", "train.sparse.n_o=50"])
    assert r.train.sparse == SparseSpec(lam=0.01, n_o=50)
    assert Recipe.parse(yaml.safe_load(r.to_yaml())) == r
    plain = Recipe.parse({"train": {"optimizer": "hspg"}})
    assert plain.train.sparse is None and plain.train.sparse_options == SparseSpec()
    assert (SparseSpec().lam, SparseSpec().n_p, SparseSpec().n_o, SparseSpec().epsilon, SparseSpec().groups) == (
        1e-3,
        100,
        None,
        0.0,
        "rows",
    )


def test_cubic_inside_training_is_fine() -> None:
    r = Recipe.parse(
        {"prune": {"schedule": "cubic", "n_steps": 10, "start_epoch": 2, "sparsity": 0.5}, "train": {"epochs": 12}}
    )
    assert r.prune.n_steps == 10


def test_several_errors_one_line_each() -> None:
    with pytest.raises(RecipeError) as info:
        Recipe.parse({"prune": {"sparsity": 1.3}, "quant": {"weight_bits": 17}})
    lines = str(info.value).splitlines()
    assert sorted(lines) == sorted(
        [
            "recipe.prune.sparsity: 1.3 is not in [0, 1)",
            "recipe.quant.weight_bits: 17 bits is not supported; allowed: 1..16 or 32 (float)",
        ]
    )


@pytest.mark.parametrize(
    "data,field,model",
    [
        ({"epoch": 3}, "recipe.epoch", Recipe),
        ({"prune": {"sparsty": 0.5}}, "recipe.prune.sparsty", PruneSpec),
        ({"train": {"learning_rate": 0.1}}, "recipe.train.learning_rate", TrainSpec),
        ({"quant": {"bits": 4}}, "recipe.quant.bits", QuantSpec),
        ({"data": {"file": "x"}}, "recipe.data.file", DataSpec),
        ({"model": {"arch": "x"}}, "recipe.model.arch", ModelSpec),
        ({"layers": {"fc*": {"bits": 4}}}, "recipe.layers.fc*.bits", LayerOverride),
        ({"train": {"optimizer": "hspg", "sparse": {"lamda": 1}}}, "recipe.train.sparse.lamda", SparseSpec),
    ],
)
def test_unknown_fields_list_allowed(data: dict, field: str, model: type) -> None:
    with pytest.raises(RecipeError) as info:
        Recipe.parse(data)
    assert str(info.value) == f"{field}: unknown field; allowed: {', '.join(model.model_fields)}"


def test_unknown_top_level_lists_sections() -> None:
    with pytest.raises(RecipeError) as info:
        Recipe.parse({"epoch": 3})
    assert str(info.value) == (
        "recipe.epoch: unknown field; allowed: "
        "name, seed, device, data, model, quant, prune, train, layers, select, search"
    )


def test_not_a_mapping() -> None:
    with pytest.raises(RecipeError, match="recipe: expected a mapping at the top level, got list"):
        Recipe.parse([1, 2])


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe: no such file"):
        Recipe.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(RecipeError, match="is not valid YAML/JSON"):
        Recipe.load(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert Recipe.load(empty) == Recipe()


def test_assignment_is_validated() -> None:
    r = Recipe()
    with pytest.raises(ValueError):
        r.prune.sparsity = 1.5


def test_layer_merges_patterns_later_wins() -> None:
    r = Recipe.parse(
        {
            "layers": {
                "fc*": {"weight_bits": 4, "act_bits": 4},
                "fc4": {"weight_bits": 8},
                "fc?": {"per_channel": True},
                "features.*": {"sparsity": 0.3},
            }
        }
    )
    assert r.layer("fc4") == LayerOverride(weight_bits=8, act_bits=4, per_channel=True)
    assert r.layer("fc1") == LayerOverride(weight_bits=4, act_bits=4, per_channel=True)
    assert r.layer("fc10") == LayerOverride(weight_bits=4, act_bits=4)
    assert r.layer("features.0") == LayerOverride(sparsity=0.3)
    assert r.layer("act1") == LayerOverride()
    # order matters: a general pattern after a specific one overrides it
    r2 = Recipe.parse({"layers": {"fc4": {"weight_bits": 8}, "fc*": {"weight_bits": 4}}})
    assert r2.layer("fc4").weight_bits == 4


def test_layer_pattern_is_case_sensitive() -> None:
    r = Recipe.parse({"layers": {"FC1": {"weight_bits": 4}}})
    assert r.layer("fc1") == LayerOverride()


def test_json_schema() -> None:
    schema = json_schema()
    assert "properties" in schema
    assert {"prune", "quant", "train", "layers", "data", "model"} <= set(schema["properties"])
    assert schema.get("additionalProperties") is False

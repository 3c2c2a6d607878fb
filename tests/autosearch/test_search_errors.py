"""Bad input is refused with one clear line: no search section, an unreachable or malformed
storage, a study that is not this recipe's, a directory of another search."""

from __future__ import annotations

import optuna
import pytest
import yaml
from conftest import make_recipe

from qaprune.autosearch import search
from qaprune.autosearch.objectives import SearchError
from qaprune.cli import main
from qaprune.errors import RecipeError


def _main(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"data": {"name": "digits"}}, "recipe.search: missing; a search needs a space and objectives"),
        (make_recipe(space={}), "recipe.search.space: empty"),
        (make_recipe(space={"layers.fc9.weight_bits": {"choices": [4, 8]}}), "'fc9' matches no weight layer"),
        (make_recipe(space={"prune.sparsity": {"low": 0.5, "high": 1.0}}), "recipe.search.space.prune.sparsity: 1.0"),
    ],
)
def test_cli_refuses_bad_search_recipes_in_one_line(tmp_path, capsys, recipe, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert _main(["search", str(path), "--trials", "2", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "s" / "trials").exists()


@pytest.mark.parametrize(
    "storage, message",
    [
        ("postgresql+psycopg2://nobody@127.0.0.1:9/none", "cannot open the database"),
        ("not a url", "not a database URL"),
    ],
)
def test_unreachable_or_malformed_storage(tmp_path, storage, message):
    if storage.startswith("postgresql"):
        pytest.importorskip("psycopg2")
    with pytest.raises(SearchError, match=message):
        search(make_recipe(), trials=1, storage=storage, out=tmp_path, log=None)


def test_foreign_studies_and_directories_are_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    foreign = optuna.create_study(study_name="s", storage=url)
    foreign.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(SearchError, match="study 's' holds trials but was not made by qaprune search"):
        search(make_recipe(), trials=1, storage=url, out=tmp_path / "a", log=None)
    (tmp_path / "b" / "trials" / "0").mkdir(parents=True)
    with pytest.raises(SearchError, match="holds runs of another search"):
        search(make_recipe(), trials=1, out=tmp_path / "b", log=None)
    with pytest.raises((SearchError, RecipeError), match="trials=-1 must be >= 0"):
        search(make_recipe(), trials=-1, out=tmp_path / "c", log=None)

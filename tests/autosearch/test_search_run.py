"""Searches on digits with a few one-epoch trials: every sampler, the CLI with export and resume,
the dense baseline and Condensa's sparsity bound."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from conftest import make_recipe

from qaprune.autosearch import search
from qaprune.autosearch.front import dominates, losses
from qaprune.cli import main
from qaprune.recipe import Recipe
from qaprune.runner import run


def _main(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


WIDTHS = {"model.args.hidden": {"choices": [[16], [24]]}}  # layer widths, as JSON choices
PER_LAYER = {"layers.fc*.weight_bits": {"choices": [2, 8], "per_layer": True}}  # each layer its own


@pytest.mark.parametrize(
    "sampler, objectives, pruner, extra",
    [
        ("gp", ["accuracy"], "median", {"space": WIDTHS, "latency": {"repeats": 3}}),
        ("nsga2", ["accuracy", "bops", "size_bytes"], "none", {"space": PER_LAYER}),
    ],
)
def test_samplers_fill_the_study_and_the_front(tmp_path, sampler, objectives, pruner, extra):
    recipe = make_recipe(
        sampler=sampler, objectives=objectives, pruner=pruner, **{k: v for k, v in extra.items() if k != "space"}
    )
    recipe["search"]["space"].update(extra["space"])
    res = search(recipe, trials=3, out=tmp_path, log=None)
    done = [r for r in res.trials if r["state"] == "COMPLETE"]
    assert sorted(res.trials[0]["params"]) == sorted(
        [
            "prune.sparsity",
            "quant.weight_bits",
            *(["model.args.hidden"] if sampler == "gp" else ["layers.fc1.weight_bits", "layers.fc2.weight_bits"]),
        ]
    )
    assert [r["state"] in ("COMPLETE", "PRUNED") for r in res.trials] == [True] * 3  # the median pruner may stop one
    assert len(done) >= 2
    for r in done:
        assert r["values"] == [r["metrics"][m] for m in objectives]
        assert 0.3 <= r["params"]["prune.sparsity"] <= 0.9 and r["params"]["quant.weight_bits"] in (4, 8)
        assert r["metrics"]["sparsity"] >= r["params"]["prune.sparsity"] - 0.01  # (+ zeros of low-bit rounding)
        ran = Recipe.load(tmp_path / r["run_dir"] / "recipe.yaml")
        for key, value in r["params"].items():  # the trial's recipe holds every sampled value
            section, *path = key.split(".")
            node = ran.to_dict()[section]
            for part in path[:1] + [path[-1]] if section == "layers" else path:
                node = node[part]
            assert node == value, key
        assert ("latency_ms" in r["metrics"]) == ("latency" in extra) and r["metrics"].get("latency_ms", 1) > 0
    directions = ["maximize"] + ["minimize"] * (len(objectives) - 1)
    front = [losses(r["values"], directions) for r in res.pareto]
    assert front and not any(dominates(losses(o["values"], directions), f) for o in done for f in front)
    if len(objectives) == 1:
        assert res.pareto[0]["values"][0] == max(r["values"][0] for r in done)
    study = res.load_study()
    assert study.metric_names == objectives and study.user_attrs["qaprune_recipe_sha256"]
    if pruner == "median":  # each pruning round's accuracy reached the pruner
        for t in study.trials:  # a complete trial reported both rounds; a pruned one the rounds up to its stop
            steps = sorted(t.intermediate_values)
            assert steps == [0, 1] if t.state.name == "COMPLETE" else steps in ([0], [0, 1])
    for name in (
        "search.html",
        "search_bops.png",
        "search_size_bytes.png",
        "search_hypervolume.png",
        "trials.json",
        "pareto.json",
    ):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "search_latency_ms.png").is_file() == ("latency" in extra)


def test_a_configuration_proposed_again_is_not_run_again(tmp_path):
    recipe = make_recipe(space={"quant.weight_bits": {"choices": [4, 8]}}, sampler="random")
    res = search(recipe, trials=3, out=tmp_path, log=None)  # 3 trials of 2 choices: one repeats
    again = [r for r in res.trials if r["same_as"] is not None]
    assert again and all(r["state"] == "COMPLETE" for r in res.trials)
    for r in again:
        first = res.trials[r["same_as"]]
        assert r["params"] == first["params"] and r["values"] == first["values"]
        assert r["run_dir"] == first["run_dir"] and not (tmp_path / "trials" / str(r["number"])).exists()
    assert all(r["same_as"] is None for r in res.pareto)  # each configuration listed once
    assert len({r["params"]["quant.weight_bits"] for r in res.pareto}) == len(res.pareto)


def test_cli_search_exports_recipes_that_reproduce_and_resumes(tmp_path, capsys):
    recipe_file, out, best = tmp_path / "r.yaml", tmp_path / "search", tmp_path / "best"
    recipe_file.write_text(yaml.safe_dump(make_recipe(sampler="tpe")))
    args = ["search", str(recipe_file), "--out", str(out), "--quiet"]
    assert _main([*args, "--trials", "3", "--export-best", str(best)]) == 0
    assert "Pareto-optimal of 3 trials" in capsys.readouterr().out
    rows = {r["number"]: r for r in json.loads((out / "trials.json").read_text())}
    index = json.loads((best / "pareto.json").read_text())
    assert index and all((best / e["recipe"]).is_file() for e in index)
    first = rows[index[0]["number"]]
    exported = Recipe.load(best / index[0]["recipe"])
    assert exported == Recipe.load(out / first["run_dir"] / "recipe.yaml") and exported.search is None
    again = run(exported, out=tmp_path / "again", log=lambda m: None).metrics
    for key in ("accuracy", "bops", "size_bytes", "sparsity"):
        assert again[key] == pytest.approx(first["metrics"][key], rel=1e-9), key

    assert _main([*args, "--trials", "4"]) == 0  # resume: one more trial, the first three kept
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert {t.number: t.values for t in study.trials[:3]} == {n: r["values"] for n, r in rows.items()}

    assert _main([*args, "--trials", "4", "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "was made with a different recipe (recipe.train.epochs: 1 -> 2)" in err

    (out / "search.html").unlink()  # qaprune report SEARCH_DIR: the report again, from the study alone
    assert _main(["report", str(out), "--export-best", str(tmp_path / "best2")]) == 0
    assert "Pareto-optimal of 4 trials" in capsys.readouterr().out and (out / "search.html").is_file()
    assert json.loads((out / "pareto.json").read_text()) and (tmp_path / "best2" / "pareto.json").is_file()
    assert _main(["report", str(tmp_path / "best2")]) == 2  # neither a run nor a search
    assert "no study.db here" in capsys.readouterr().err


def test_dense_baseline_sparsity_bound_and_threshold_pruner(tmp_path):
    recipe = make_recipe(
        objectives=["bops"],
        pruner="threshold",
        sparsity_bound={"trials": 2},
        constraints=[{"metric": "accuracy", "min": -0.05, "reference": "dense"}],
    )
    res = search(recipe, trials=2, out=tmp_path, log=None)
    floor = res.dense["accuracy"] - 0.05
    assert (tmp_path / "dense" / "results.json").is_file() and res.dense["bops"] == res.dense["bops_fp32_dense"]
    runs = json.loads((tmp_path / "trials.json").read_text())
    assert sum(r["state"] in ("COMPLETE", "PRUNED") for r in runs) == 2
    for r in runs:  # the bound caps the searched sparsity; a trial below the floor is infeasible
        assert r["params"]["prune.sparsity"] <= res.sparsity_bound + 1e-12
        if r["state"] == "COMPLETE":
            assert r["feasible"] == (r["metrics"]["accuracy"] >= floor)
    bound_study = optuna.load_study(study_name="s/sparsity-bound", storage=res.storage)
    tested = [(t.params["prune.sparsity"], t.user_attrs.get("feasible", False)) for t in bound_study.trials]
    assert tested[0][0] == 0.9 and len(tested) == (1 if tested[0][1] else 2)
    good = [s for s, ok in tested if ok]
    assert res.sparsity_bound == (max(good) if good else 0.3)
    assert "Sparsity bound" in (tmp_path / "search.html").read_text()

"""The command line: a run on digits, schema, measure, report, and one-line errors."""

from __future__ import annotations

import json

import pytest
import yaml

from qaprune.cli import main

RECIPE = {
    "name": "cli",
    "data": {"name": "digits"},
    "model": {"name": "mlp", "args": {"hidden": [32, 16]}},
    "quant": {"weight_bits": 4, "act_bits": 4},
    "prune": {"sparsity": 0.5, "rate": 0.5},
    "train": {"epochs": 2, "batch_size": 128},
}


def _main(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def test_cli_run_measure_report(tmp_path, recipe_file, capsys):
    out = tmp_path / "run"
    assert _main(["run", str(recipe_file), "--out", str(out), "--set", "train.epochs=1", "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["train"]["epochs"] == 1  # --set applied and recorded
    assert _main(["measure", str(out)]) == 0
    measured = json.loads(capsys.readouterr().out)
    assert measured["accuracy"] == results["metrics"]["accuracy"]
    (out / "report.html").unlink()
    assert _main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()


def test_cli_schema(capsys):
    assert _main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "prune" in schema["properties"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("prune.sparsity=1.3", "recipe.prune.sparsity: 1.3 is not in [0, 1)"),
        ("quant.weight_bits=33", "recipe.quant.weight_bits"),
        ("model.name=resnet9000", "unknown model 'resnet9000'; known:"),
        ("data.name=imagenet", "imagenet"),
        ("prune.criterion=psychic", "known: "),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, recipe_file, capsys, override, message):
    code = _main(["run", str(recipe_file), "--out", str(tmp_path / "x"), "--set", override, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_cli_missing_recipe(capsys):
    assert _main(["run", "/nonexistent/recipe.yaml"]) == 2
    assert "no such file" in capsys.readouterr().err

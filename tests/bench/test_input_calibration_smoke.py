"""Smoke test of bench/input_calibration.py on its own heavy-tailed arrays (no shared data):
``--quick`` budgets, every input calibration, the summary and headline numbers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "input_calibration.py"


@pytest.fixture(scope="module")
def ic():
    spec = importlib.util.spec_from_file_location("bench_input_calibration", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_heavy_tailed_data_is_seeded_and_79_percent_majority(ic, tmp_path):
    a = ic.heavy_tailed_data(tmp_path / "a.npz", n=4000)
    b = ic.heavy_tailed_data(tmp_path / "b.npz", n=4000)
    with np.load(a) as da, np.load(b) as db:
        assert np.array_equal(da["x"], db["x"]) and np.array_equal(da["y"], db["y"])
        x, y = da["x"], da["y"]
    assert x.shape == (4000, 9) and x.dtype == np.float32 and set(np.unique(y)) == {0, 1, 2, 3}
    assert np.mean(y == 0) == pytest.approx(0.79, abs=0.002)
    assert np.abs(x).max() > 30 * np.median(np.abs(x))  # heavy tails: outliers far beyond the bulk


@pytest.fixture(scope="module")
def quick(ic, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    args = ic.parse_args(["--quick", "--datasets", "heavy_tailed", "--runs-dir", str(runs)])
    rows = [ic.one_run("heavy_tailed", c, s, args) for c in ic.CONFIGS for s in args.seeds]
    return args, rows


def test_only_the_input_is_quantized_and_ranges_follow_the_calibration(ic, quick):
    args, rows = quick
    assert args.epochs == 3 and args.seeds == [0, 1] and len(rows) == len(ic.CONFIGS) * 2
    r = {(x["config"], x["seed"]): x for x in rows}
    assert r[("float", 0)]["input_range"] is None
    ranges = {c: r[(c, 0)]["input_range"] for c in ic.FIXED}
    assert ranges["max"] > ranges["percentile"] and ranges["max"] > ranges["mae"]  # the outliers set max
    assert ranges["mae"] < ranges["mse"] <= ranges["max"]
    assert r[("mae+learned", 0)]["input_range"] != pytest.approx(ranges["mae"], rel=1e-9)  # the step was trained
    for x in rows:
        assert 0.0 <= x["accuracy"] <= 1.0 and x["epochs"] >= 1
    recipe = ic.recipe_for("heavy_tailed", "mae", 0, args)
    assert recipe["quant"]["weight_bits"] == 32 and recipe["quant"]["act_bits"] == 32
    assert recipe["quant"]["input_bits"] == 6 and recipe["select"]["reference"] == "none"
    assert recipe["prune"]["sparsity"] == 0.0


def test_summary_and_headline(ic, quick):
    args, rows = quick
    summary = ic.summarize(rows)
    s = {x["config"]: x for x in summary}
    assert set(s) == set(ic.CONFIGS) and s["float"]["drop_points_mean"] == 0.0
    mae = [
        100 * (r0["accuracy"] - r1["accuracy"])
        for r0 in rows
        for r1 in rows
        if r0["config"] == "float" and r1["config"] == "mae" and r0["seed"] == r1["seed"]
    ]
    assert s["mae"]["drop_points_mean"] == pytest.approx(sum(mae) / len(mae))
    h = ic.headline(summary, args)
    for key in ("best_fixed", "mae_drop_points", "learned_drop_points", "max_drop_points", "mae_within_half_point"):
        assert key in h
    assert h["best_fixed"] in ic.FIXED and h["seeds"] == 2 and h["letter"] == {}
    assert h["mae_within_half_point"] == (h["mae_drop_points"] <= 0.5)
    json.dumps(h)  # plain JSON values

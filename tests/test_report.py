"""Tests of qaprune.report: single-run and comparison reports, escaping, the Pareto front."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path

import pytest

from qaprune.errors import QapruneError
from qaprune.report import load_results, pareto_front, write_comparison_report, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _results(name: str = "letter_qap") -> dict:
    metrics = {
        "accuracy": 0.9512,
        "auc": 0.9987,
        "bops": 90000.0,
        "bops_fp32_dense": 4652832.0,
        "bops_reduction": 51.7,
        "params": 3616,
        "nonzero_params": 400,
        "sparsity": 0.89,
        "macs": 3616,
        "flops": 7232,
        "weight_bits": 2400,
        "size_bytes": 5120,
        "neural_efficiency": 0.3,
        "aiq": 0.4,
    }
    history = [
        {"step": i, "target_sparsity": s, "epochs": 12, "accuracy": a, "bops": b, "sparsity": s}
        for i, (s, a, b) in enumerate([(0.0, 0.96, 300000.0), (0.5, 0.955, 160000.0), (0.89, 0.9512, 90000.0)])
    ]
    layers = [
        {
            "name": "net.fc1",
            "kind": "linear",
            "m": 64,
            "n": 16,
            "positions": 1,
            "params": 1024,
            "nonzero": 100,
            "sparsity": 0.9023,
            "weight_bits": 6,
            "act_bits": 6,
            "macs": 1024,
            "bops": 20000.0,
        },
        {
            "name": "net.<script>alert(1)</script>",
            "kind": "linear",
            "m": 5,
            "n": 32,
            "positions": 1,
            "params": 160,
            "nonzero": 40,
            "sparsity": 0.75,
            "weight_bits": 6,
            "act_bits": 6,
            "macs": 160,
            "bops": 70000.0,
        },
    ]
    return {
        "name": name,
        "qaprune_version": "0.1.0",
        "metrics": metrics,
        "layers": layers,
        "history": history,
        "timing": {"seconds_per_epoch": 0.05, "total_seconds": 12.3, "epochs": 240},
        "data": {"name": "letter", "train": 14000, "val": 2000, "test": 4000, "num_classes": 26},
        "recipe": {
            "model": {"name": "mlp", "hidden": [64, 32, 32]},
            "prune": {"sparsity": 0.89, "note": "<b>bold</b>"},
        },
        "environment": {"torch": "2.13.0", "python": "3.11.7", "platform": "linux", "threads": 2},
    }


def _write(run_dir: Path, results: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def _embedded_png(page: str) -> bytes:
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, "no embedded PNG"
    return base64.b64decode(match.group(1))


def test_write_report_files_and_content(tmp_path: Path) -> None:
    run = _write(tmp_path / "run", _results())
    out = write_report(run)
    assert out == run / "report.html"
    png = run / "accuracy_vs_bops.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
    page = out.read_text(encoding="utf-8")
    assert _embedded_png(page) == png.read_bytes()
    for text in [
        "letter_qap",
        "0.9512",
        "0.9987",
        "90,000",
        "4,652,832",
        "51.7",
        "3,616",
        "5,120",
        "net.fc1",
        "0.9023",
        "20,000",
        "seconds_per_epoch",
        "14,000",
        "3.11.7",
        "hidden:",
    ]:
        assert text in page, text
    assert 'title="90000.0"' in page  # exact values stay available
    assert page.count("<tr><td") == 3 + 2  # history rows + layer rows


def test_write_report_escapes_strings(tmp_path: Path) -> None:
    results = _results(name='<script>x</script> & "q"')
    page = write_report(_write(tmp_path / "run", results)).read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>bold" not in page
    assert "net.&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;x&lt;/script&gt; &amp; &quot;q&quot;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page


def test_write_report_bops_share_of_layers(tmp_path: Path) -> None:
    page = write_report(_write(tmp_path / "run", _results())).read_text(encoding="utf-8")
    assert "bops_share" in page and "0.2222" in page and "0.7778" in page  # 20k / 90k, 70k / 90k


@pytest.mark.parametrize(
    "drop", ["metrics", "layers", "history", "timing", "data", "recipe", "environment", "name", "qaprune_version"]
)
def test_write_report_missing_keys(tmp_path: Path, drop: str) -> None:
    results = _results()
    del results[drop]
    out = write_report(_write(tmp_path / drop, results))
    assert (tmp_path / drop / "accuracy_vs_bops.png").read_bytes().startswith(PNG_MAGIC)
    assert "<h1>" in out.read_text(encoding="utf-8")


def test_write_report_minimal_and_odd_values(tmp_path: Path) -> None:
    run = _write(tmp_path / "empty", {})
    assert write_report(run).is_file()
    odd = {
        "metrics": {"accuracy": None, "bops": "n/a", "sparsity": float("nan")},
        "history": [{"step": 0, "accuracy": 0.5, "bops": 0.0}, "junk", {"accuracy": 0.6}],
        "layers": None,
        "timing": [],
        "recipe": None,
    }
    page = write_report(_write(tmp_path / "odd", odd)).read_text(encoding="utf-8")
    assert "nan" in page and "n/a" in page


def test_write_report_without_history_plots_final_point(tmp_path: Path) -> None:
    results = _results()
    results["history"] = []
    write_report(_write(tmp_path / "run", results))
    assert (tmp_path / "run" / "accuracy_vs_bops.png").read_bytes().startswith(PNG_MAGIC)


def test_load_results_errors(tmp_path: Path) -> None:
    with pytest.raises(QapruneError, match="results.json"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(QapruneError, match="not valid JSON"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(QapruneError, match="JSON object"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    assert load_results(tmp_path / "results.json") == (tmp_path, {})


def _variant(accuracy: float, bops: float, name: str) -> dict:
    results = _results(name)
    results["metrics"].update(accuracy=accuracy, bops=bops, bops_reduction=4652832.0 / bops)
    for row in results["history"]:
        row["bops"] = row["bops"] * bops / 90000.0
    return results


def test_write_comparison_report(tmp_path: Path) -> None:
    runs = {
        "fp32": _variant(0.97, 4652832.0, "fp32"),
        "qat-6b": _variant(0.96, 300000.0, "q"),
        "qap-<6b>": _variant(0.955, 90000.0, "qap"),
    }
    headline = {"variant": "qap-<6b>", "bops_reduction": 55.2, "accuracy_drop_points": 0.3}
    out = write_comparison_report(tmp_path / "cmp", runs, title="letter <QAP>", headline=headline)
    assert out == tmp_path / "cmp" / "report.html"
    png = (tmp_path / "cmp" / "pareto.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    page = out.read_text(encoding="utf-8")
    assert _embedded_png(page) == png
    for text in [
        "letter &lt;QAP&gt;",
        "qap-&lt;6b&gt;",
        "55.2",
        "accuracy_drop_points",
        "0.3",
        "qat-6b",
        "fp32",
        "0.955",
        "4,652,832",
        "size_bytes",
        "neural_efficiency",
        "bops_reduction",
        "Headline",
    ]:
        assert text in page, text
    assert "<QAP>" not in page and "<6b>" not in page
    assert page.count(">yes<") == 3  # each final point trades accuracy for BOPs


def test_write_comparison_report_robust(tmp_path: Path) -> None:
    broken = copy.deepcopy(_results())
    del broken["metrics"]
    runs = {"empty": {}, "none": None, "no-metrics": broken}
    out = write_comparison_report(tmp_path / "c", runs, title="t")  # type: ignore[dict-item]
    page = out.read_text(encoding="utf-8")
    assert "Headline" not in page and "no-metrics" in page
    assert (tmp_path / "c" / "pareto.png").read_bytes().startswith(PNG_MAGIC)
    assert write_comparison_report(tmp_path / "d", {}, title="nothing").is_file()


def test_pareto_front_hand_made() -> None:
    points = [(100.0, 0.90), (50.0, 0.80), (200.0, 0.85), (10.0, 0.80), (300.0, 0.95)]
    assert pareto_front(points) == [3, 0, 4]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5)]) == [0]
    # equal points are both kept; same BOPs lower accuracy and NaN are dominated / dropped
    assert pareto_front([(5.0, 0.7), (5.0, 0.7), (5.0, 0.6), (float("nan"), 0.99)]) == [0, 1]
    # same accuracy, more BOPs: dominated
    assert pareto_front([(2.0, 0.9), (1.0, 0.9)]) == [1]


def _selected_results(within: bool = True) -> dict:
    """A run that delivered step 1 against a dense reference, with per-class recall; class 'Z'
    has 3 test samples."""
    r = _results()
    r["selected"] = {"step": 1, "within_tolerance": within, "accuracy": 0.955, "reference_accuracy": 0.958,
                     "max_drop": 0.5, "metric": "accuracy", "bops_reduction": 29.1}  # fmt: skip
    r["metrics"].update(per_class_recall={"A": 0.97, "Z": 0.33}, test_samples_per_class={"A": 150, "Z": 3})
    r["reference"] = {"metrics": {"accuracy": 0.958, "per_class_recall": {"A": 0.96, "Z": 0.67}}}
    return r


def test_the_report_says_which_step_is_delivered_and_flags_rare_classes(tmp_path: Path) -> None:
    from qaprune.report import class_rows

    page = write_report(_write(tmp_path / "run", _selected_results())).read_text(encoding="utf-8")
    assert "Delivered: step 1, the most compressed step within 0.5 points" in page
    rows = {r["class"]: r for r in class_rows(_selected_results())}
    assert rows["Z"]["note"] == "only 3 test samples" and rows["A"]["note"] == ""
    assert rows["Z"]["change"] == pytest.approx(0.33 - 0.67) and "<tr class=flag>" in page
    assert "Lowest recall: class Z" in page
    bad = write_report(_write(tmp_path / "bad", _selected_results(within=False))).read_text(encoding="utf-8")
    assert 'class="warn">No step is within 0.5 points' in bad


def test_the_plot_shows_reference_band_and_delivered_point_with_the_legend_off_the_data() -> None:
    from qaprune.report.plots import accuracy_vs_bops_figure

    fig, has_data = accuracy_vs_bops_figure(_selected_results())
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert has_data and "32-bit dense reference (0.9580)" in labels and "within 0.5 points" in labels
    assert "delivered (step 1)" in labels and "pruning steps" in labels
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= axes.x1  # beside the axes, over no data


def test_a_search_report_shows_the_constraint_and_progress_without_a_feasible_trial(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from qaprune.autosearch.report import _accuracy_constraint, plot_progress
    from qaprune.recipe.search import SearchSpec

    spec = SearchSpec(space={"prune.sparsity": {"low": 0.1, "high": 0.9}}, objectives=["accuracy", "bops"])
    rows = [{"number": k, "values": [0.5 + k / 100, 1e5 / (k + 1)], "feasible": False} for k in range(4)]
    assert plot_progress(rows, spec, tmp_path / "hv.png").read_bytes().startswith(PNG_MAGIC)
    ax = Figure().add_subplot()
    _accuracy_constraint(ax, [("accuracy", 0.945, None), ("bops", None, 1e6)])
    assert [line.get_label() for line in ax.get_lines()] == ["constraint: accuracy ≥ 0.9450"]

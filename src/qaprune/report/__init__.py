"""results.json -> report.html + PNG plots, for one run or a comparison of runs.

Every page is self-contained (plots embedded as base64 PNG) and every string from a results
file is HTML-escaped. Missing keys show as "–"; nothing in results.json is required but the file.

Example:
    >>> pareto_front([(100.0, 0.90), (50.0, 0.80), (200.0, 0.85), (10.0, 0.80)])
    [3, 0]
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from qaprune.errors import QapruneError
from qaprune.report.markup import as_dict, as_rows, cell, columns, fmt, img, kv_table, number, page, recipe_text, table
from qaprune.report.plots import pareto_front, plot_accuracy_vs_bops, plot_pareto

RESULTS_FILE = "results.json"
SUMMARY_KEYS = [
    "accuracy",
    "auc",
    "bops",
    "bops_fp32_dense",
    "bops_reduction",
    "params",
    "nonzero_params",
    "sparsity",
    "macs",
    "flops",
    "weight_bits",
    "size_bytes",
    "neural_efficiency",
    "aiq",
]
HISTORY_KEYS = ["step", "target_sparsity", "epochs", *SUMMARY_KEYS]
LAYER_KEYS = ["name", "kind", "sparsity", "weight_bits", "act_bits", "params", "nonzero", "macs", "bops", "bops_share"]
FINAL_KEYS = ["variant", "accuracy", "bops", "bops_reduction", "sparsity", "size_bytes", "neural_efficiency"]
FINAL_OPTIONAL = ["auc", "aiq", "seconds_per_epoch", "pareto"]


def load_results(run_dir: str | Path) -> tuple[Path, dict]:
    """(run directory, parsed results.json); ``run_dir`` may also be the results file itself."""
    path = Path(run_dir)
    path = path if path.suffix == ".json" and path.is_file() else path / RESULTS_FILE
    if not path.is_file():
        raise QapruneError(f"{path}: not found (is {run_dir} a qaprune run directory?)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise QapruneError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(results, dict):
        raise QapruneError(f"{path}: expected a JSON object, got {type(results).__name__}")
    return path.parent, results


# ----------------------------------------------------------------------------- pages


def _flat(data: dict) -> dict:
    """``data`` without dict values (per-class numbers have a table of their own)."""
    return {k: v for k, v in data.items() if not isinstance(v, dict)}


def _nested(rows: list[dict], column: str) -> bool:
    return any(isinstance(r.get(column), dict) for r in rows)


def _layer_rows(results: dict) -> list[dict]:
    rows = [dict(r) for r in as_rows(results.get("layers"))]
    total = sum(number(r.get("bops")) or 0.0 for r in rows)
    for r in rows:
        bops = number(r.get("bops"))
        if total > 0 and bops is not None:
            r["bops_share"] = bops / total
    return rows


SELECTED_KEYS = ["step", "within_tolerance", "accuracy", "reference_accuracy", "max_drop", "metric", "val",
                 "val_floor", "balanced_accuracy", "bops_reduction", "by"]  # fmt: skip
RARE = 5  # a class with fewer test samples than this is flagged: its recall is a coin toss


def _verdict(results: dict) -> list[str]:
    """One sentence on the delivered step, and the ``selected`` table."""
    sel = as_dict(results.get("selected"))
    if not sel:
        return []
    ref, drop, metric = sel.get("reference_accuracy"), sel.get("max_drop"), sel.get("metric", "accuracy")
    against = f"the 32-bit dense reference ({fmt(ref)} test accuracy)" if ref is not None else "this run's first step"
    if sel.get("within_tolerance"):
        text = (
            f"Delivered: step {fmt(sel.get('step'))}, the most compressed step within {fmt(drop)} points of {against}"
        )
        line = f"<p>{html.escape(text)} (validation {html.escape(str(metric))}).</p>"
    else:
        text = f"No step is within {fmt(drop)} points of {against} on validation {metric}; delivered the most accurate"
        line = f'<p class="warn">{html.escape(text)}, step {html.escape(fmt(sel.get("step")))}.</p>'
    return [line, kv_table(sel, SELECTED_KEYS)]


def class_rows(results: dict) -> list[dict]:
    """Per class: test samples, the delivered model's recall, the reference's, the change;
    ``flag`` when the class has fewer than ``RARE`` test samples."""
    metrics = as_dict(results.get("metrics"))
    recall, counts = as_dict(metrics.get("per_class_recall")), as_dict(metrics.get("test_samples_per_class"))
    ref = as_dict(as_dict(as_dict(results.get("reference")).get("metrics")).get("per_class_recall"))
    rows = []
    for name, value in recall.items():
        r, n = ref.get(name), counts.get(name)
        change = value - r if number(value) is not None and number(r) is not None else None
        count = number(n)
        flag = f"only {n} test samples" if count is not None and count < RARE else ""
        rows.append({"class": name, "test samples": n, "recall": value, "reference recall": r, "change": change,
                     "note": flag})  # fmt: skip
    return rows


def _class_section(results: dict) -> list[str]:
    rows = class_rows(results)
    if not rows:
        return []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        f"<tr{' class=flag' if r['note'] else ''}>" + "".join(cell(v) for v in r.values()) + "</tr>" for r in rows
    )
    worst = min((r for r in rows if number(r["recall"]) is not None), key=lambda r: r["recall"], default=None)
    note = f"<p>Lowest recall: class {html.escape(str(worst['class']))} ({fmt(worst['recall'])}).</p>" if worst else ""
    return ["<h2>Per-class recall (delivered vs reference)</h2>", note,
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"]  # fmt: skip


def write_report(run_dir: str | Path) -> Path:
    """Write ``accuracy_vs_bops.png`` and a self-contained ``report.html`` into ``run_dir`` from
    its results.json; returns the HTML path.

    Example:
        >>> write_report("runs/letter_qap")  # doctest: +SKIP
        PosixPath('runs/letter_qap/report.html')
    """
    run_dir, results = load_results(run_dir)
    png = plot_accuracy_vs_bops(results, run_dir / "accuracy_vs_bops.png")
    data, version = as_dict(results.get("data")), results.get("qaprune_version")
    intro = f"qaprune {fmt(version)} · data: {fmt(data.get('name'))}"
    history = as_rows(results.get("history"))
    sections = [
        f"<p>{html.escape(intro)}</p>",
        *_verdict(results),
        img(png, "accuracy vs BOPs"),
        "<h2>Delivered model: metrics</h2>",
        kv_table(_flat(as_dict(results.get("metrics"))), SUMMARY_KEYS),
        *_class_section(results),
        "<h2>History (one row per pruning step)</h2>",
        table(history, [c for c in columns(history, HISTORY_KEYS) if not _nested(history, c)]),
        "<h2>Layers</h2>",
        table(_layer_rows(results), LAYER_KEYS),
        "<h2>Timing</h2>",
        kv_table(as_dict(results.get("timing"))),
        "<h2>Data</h2>",
        kv_table(data),
        "<h2>Environment</h2>",
        kv_table(as_dict(results.get("environment"))),
        "<h2>Recipe</h2>",
        f"<pre>{html.escape(recipe_text(results.get('recipe') or {}))}</pre>",
    ]
    out = run_dir / "report.html"
    out.write_text(page(str(results.get("name") or run_dir.name), "\n".join(sections)), encoding="utf-8")
    return out


def _final_rows(runs: dict[str, dict]) -> list[dict]:
    """One row per variant: its final metrics (the last history step when metrics are missing)."""
    rows = []
    for name, results in runs.items():
        results = as_dict(results)
        history = as_rows(results.get("history"))
        metrics = as_dict(results.get("metrics")) or (history[-1] if history else {})
        row = {
            "variant": str(name),
            **{k: metrics.get(k) for k in FINAL_KEYS[1:]},
            "auc": metrics.get("auc"),
            "aiq": metrics.get("aiq"),
            "seconds_per_epoch": as_dict(results.get("timing")).get("seconds_per_epoch"),
        }
        rows.append(row)
    points = [(number(r["bops"]), number(r["accuracy"])) for r in rows]
    front = set(pareto_front([(b, a) if b is not None and a is not None else (math.nan, math.nan) for b, a in points]))
    for i, row in enumerate(rows):
        row["pareto"] = "yes" if i in front else ("no" if None not in points[i] else None)
    return rows


def write_comparison_report(
    out_dir: str | Path, runs: dict[str, dict], *, title: str, headline: dict | None = None
) -> Path:
    """Write ``pareto.png`` and a self-contained ``report.html`` comparing variants into
    ``out_dir``; ``runs`` maps a variant name to its parsed results.json. Returns the HTML path.

    Example:
        >>> write_comparison_report("out", {"fp32": r1, "qap-6b": r2}, title="letter",
        ...                         headline={"bops_reduction": 55.2})  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_pareto(runs, out_dir / "pareto.png", title=title)
    rows = _final_rows(runs)
    columns = FINAL_KEYS + [k for k in FINAL_OPTIONAL if any(r.get(k) is not None for r in rows)]
    sections = []
    if headline:
        sections += ["<h2>Headline</h2>", kv_table(as_dict(headline))]
    sections += [
        img(png, "accuracy vs BOPs, Pareto front"),
        "<h2>Final metrics per variant</h2>",
        table(rows, columns),
    ]
    out = out_dir / "report.html"
    out.write_text(page(title, "\n".join(sections)), encoding="utf-8")
    return out

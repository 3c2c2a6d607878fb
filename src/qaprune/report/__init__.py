"""results.json -> report.html + PNG plots, for one run or a comparison of runs.

Every page is self-contained (plots embedded as base64 PNG) and every string from a results
file is HTML-escaped. Missing keys show as "–"; nothing in results.json is required but the file.

Example:
    >>> pareto_front([(100.0, 0.90), (50.0, 0.80), (200.0, 0.85), (10.0, 0.80)])
    [3, 0]
"""

from __future__ import annotations

import base64
import html
import json
import math
import sys
from pathlib import Path
from typing import Any

from qaprune.errors import QapruneError

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
CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.2em .6em}
th{background:#f2f2f2;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:1em;overflow-x:auto}img{max-width:100%}h2{margin-top:1.5em}"""


# ----------------------------------------------------------------------------- helpers


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _rows(value: Any) -> list[dict]:
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []


def _number(value: Any) -> float | None:
    """A finite float, or None for missing, non-numeric or non-finite values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: Any) -> str:
    """Short human text of a value (not yet escaped)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}" if value.is_integer() else f"{value:,.1f}"
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def _cell(value: Any, tag: str = "td") -> str:
    if _number(value) is not None:
        raw = html.escape(repr(value))
        return f'<{tag} class="num" title="{raw}">{html.escape(_fmt(value))}</{tag}>'
    return f"<{tag}>{html.escape(_fmt(value))}</{tag}>"


def _columns(rows: list[dict], preferred: list[str], *, extra: bool = True) -> list[str]:
    """Preferred keys present in any row, then (if ``extra``) other keys in first-seen order."""
    seen = {k for r in rows for k in r}
    cols = [k for k in preferred if k in seen]
    if extra:
        cols += [k for r in rows for k in r if k not in cols and k != "..."]
        cols = list(dict.fromkeys(cols))
    return cols


def _table(rows: list[dict], columns: list[str]) -> str:
    if not rows or not columns:
        return "<p>–</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(data: dict, preferred: list[str] | None = None) -> str:
    if not data:
        return "<p>–</p>"
    keys = list(dict.fromkeys([k for k in (preferred or []) if k in data] + list(data)))
    body = "".join(f"<tr><th>{html.escape(str(k))}</th>{_cell(data[k])}</tr>" for k in keys)
    return f"<table><tbody>{body}</tbody></table>"


def _page(title: str, body: str) -> str:
    t = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{t}</title>'
        f"<style>{CSS}</style></head>\n<body>\n<h1>{t}</h1>\n{body}\n</body></html>\n"
    )


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _recipe_text(recipe: Any) -> str:
    try:
        import yaml

        return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    except Exception:  # no pyyaml, or values yaml cannot represent
        return json.dumps(recipe, indent=2, default=str)


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


# ----------------------------------------------------------------------------- points and plots


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (bops, accuracy) points no other point dominates (lower-or-equal BOPs and
    higher-or-equal accuracy, one strictly), in order of increasing BOPs. Equal points are all
    kept; points with a non-finite coordinate are never on the front."""
    order = sorted(
        (i for i, (b, a) in enumerate(points) if _number(b) is not None and _number(a) is not None),
        key=lambda i: (points[i][0], -points[i][1], i),
    )
    front: list[int] = []
    best: tuple[float, float] | None = None  # (bops, accuracy) of the best point so far
    for i in order:
        bops, acc = points[i]
        if best is None or acc > best[1] or (acc == best[1] and bops == best[0]):
            front.append(i)
            best = (bops, acc)
    return front


def _points(results: dict) -> list[tuple[float, float, float | None]]:
    """(bops, accuracy, sparsity) of each history step (or of the final metrics if none)."""
    rows = sorted(_rows(results.get("history")), key=lambda r: _number(r.get("step")) or 0.0)
    rows = rows or [_dict(results.get("metrics"))]
    out = []
    for r in rows:
        bops, acc = _number(r.get("bops")), _number(r.get("accuracy"))
        sparsity = _number(r.get("sparsity", r.get("target_sparsity")))
        if bops is not None and bops > 0 and acc is not None:
            out.append((bops, acc, sparsity))
    return out


def _axes(title: str) -> tuple[Any, Any]:
    """A fresh Agg-rendered figure and axes (matplotlib imported here, not at import time)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # never switch an interactive session's backend
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set(xlabel="BOPs", ylabel="accuracy", title=title)
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


def _finish(fig: Any, ax: Any, path: Path, *, has_data: bool) -> Path:
    if has_data:
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no BOPs / accuracy data", ha="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110, format="png")
    return path


def _reference(ax: Any, bops_values: list[Any]) -> bool:
    refs = {b for b in (_number(v) for v in bops_values) if b is not None and b > 0}
    for ref in sorted(refs):
        ax.axvline(ref, color="grey", linestyle="--", linewidth=1, label=f"fp32 dense ({_fmt(ref)})")
    return bool(refs)


def plot_accuracy_vs_bops(results: dict, path: str | Path) -> Path:
    """Accuracy vs BOPs of every history step, log-x, points labelled with their sparsity."""
    path = Path(path)
    metrics = _dict(results.get("metrics"))
    fig, ax = _axes(str(results.get("name") or "run"))
    points = _points(results)
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label="pruning steps")
    for bops, acc, sparsity in points:
        if sparsity is not None:
            ax.annotate(f"{sparsity:.0%}", (bops, acc), textcoords="offset points", xytext=(4, 4), fontsize=8)
    final = (_number(metrics.get("bops")), _number(metrics.get("accuracy")))
    if results.get("history") and final[0] and final[0] > 0 and final[1] is not None:
        ax.plot([final[0]], [final[1]], "*", markersize=12, label="final")
    has_ref = _reference(ax, [metrics.get("bops_fp32_dense")])
    return _finish(fig, ax, path, has_data=bool(points) or has_ref)


def plot_pareto(runs: dict[str, dict], path: str | Path, *, title: str = "") -> Path:
    """Accuracy vs BOPs, one series per variant, and the Pareto front over all points."""
    path = Path(path)
    fig, ax = _axes(title)
    everything: list[tuple[float, float]] = []
    for name, results in runs.items():
        points = _points(_dict(results))
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=str(name), markersize=4)
        everything += [(b, a) for b, a, _ in points]
    front = [everything[i] for i in pareto_front(everything)]
    if front:
        ax.step(
            [b for b, _ in front],
            [a for _, a in front],
            where="post",
            color="black",
            linestyle=":",
            linewidth=1.5,
            label="Pareto front",
        )
    refs = [_dict(_dict(r).get("metrics")).get("bops_fp32_dense") for r in runs.values()]
    has_ref = _reference(ax, refs)
    return _finish(fig, ax, path, has_data=bool(everything) or has_ref)


# ----------------------------------------------------------------------------- pages


def _layer_rows(results: dict) -> list[dict]:
    rows = [dict(r) for r in _rows(results.get("layers"))]
    total = sum(_number(r.get("bops")) or 0.0 for r in rows)
    for r in rows:
        bops = _number(r.get("bops"))
        if total > 0 and bops is not None:
            r["bops_share"] = bops / total
    return rows


def write_report(run_dir: str | Path) -> Path:
    """Write ``accuracy_vs_bops.png`` and a self-contained ``report.html`` into ``run_dir`` from
    its results.json; returns the HTML path.

    Example:
        >>> write_report("runs/letter_qap")  # doctest: +SKIP
        PosixPath('runs/letter_qap/report.html')
    """
    run_dir, results = load_results(run_dir)
    png = plot_accuracy_vs_bops(results, run_dir / "accuracy_vs_bops.png")
    data, version = _dict(results.get("data")), results.get("qaprune_version")
    intro = f"qaprune {_fmt(version)} · data: {_fmt(data.get('name'))}"
    history = _rows(results.get("history"))
    sections = [
        f"<p>{html.escape(intro)}</p>",
        _img(png, "accuracy vs BOPs"),
        "<h2>Metrics</h2>",
        _kv_table(_dict(results.get("metrics")), SUMMARY_KEYS),
        "<h2>History (one row per pruning step)</h2>",
        _table(history, _columns(history, HISTORY_KEYS)),
        "<h2>Layers</h2>",
        _table(_layer_rows(results), LAYER_KEYS),
        "<h2>Timing</h2>",
        _kv_table(_dict(results.get("timing"))),
        "<h2>Data</h2>",
        _kv_table(data),
        "<h2>Environment</h2>",
        _kv_table(_dict(results.get("environment"))),
        "<h2>Recipe</h2>",
        f"<pre>{html.escape(_recipe_text(results.get('recipe') or {}))}</pre>",
    ]
    out = run_dir / "report.html"
    out.write_text(_page(str(results.get("name") or run_dir.name), "\n".join(sections)), encoding="utf-8")
    return out


def _final_rows(runs: dict[str, dict]) -> list[dict]:
    """One row per variant: its final metrics (the last history step when metrics are missing)."""
    rows = []
    for name, results in runs.items():
        results = _dict(results)
        history = _rows(results.get("history"))
        metrics = _dict(results.get("metrics")) or (history[-1] if history else {})
        row = {
            "variant": str(name),
            **{k: metrics.get(k) for k in FINAL_KEYS[1:]},
            "auc": metrics.get("auc"),
            "aiq": metrics.get("aiq"),
            "seconds_per_epoch": _dict(results.get("timing")).get("seconds_per_epoch"),
        }
        rows.append(row)
    points = [(_number(r["bops"]), _number(r["accuracy"])) for r in rows]
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
        sections += ["<h2>Headline</h2>", _kv_table(_dict(headline))]
    sections += [
        _img(png, "accuracy vs BOPs, Pareto front"),
        "<h2>Final metrics per variant</h2>",
        _table(rows, columns),
    ]
    out = out_dir / "report.html"
    out.write_text(_page(title, "\n".join(sections)), encoding="utf-8")
    return out

"""HTML pieces of the reports: formatting, escaped cells and tables, self-contained pages."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.2em .6em}
th{background:#f2f2f2;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:1em;overflow-x:auto}img{max-width:100%}h2{margin-top:1.5em}
.warn{color:#a40000;font-weight:600}tr.flag td{background:#fff3cd}.wide{overflow-x:auto;max-width:100%}"""


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def as_rows(value: Any) -> list[dict]:
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []


def number(value: Any) -> float | None:
    """A finite float, or None for missing, non-numeric or non-finite values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any) -> str:
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


def cell(value: Any, tag: str = "td") -> str:
    if number(value) is not None:
        raw = html.escape(repr(value))
        return f'<{tag} class="num" title="{raw}">{html.escape(fmt(value))}</{tag}>'
    return f"<{tag}>{html.escape(fmt(value))}</{tag}>"


def columns(rows: list[dict], preferred: list[str], *, extra: bool = True) -> list[str]:
    """Preferred keys present in any row, then (if ``extra``) other keys in first-seen order."""
    seen = {k for r in rows for k in r}
    cols = [k for k in preferred if k in seen]
    if extra:
        cols += [k for r in rows for k in r if k not in cols and k != "..."]
        cols = list(dict.fromkeys(cols))
    return cols


def table(rows: list[dict], columns: list[str]) -> str:
    if not rows or not columns:
        return "<p>–</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def kv_table(data: dict, preferred: list[str] | None = None) -> str:
    if not data:
        return "<p>–</p>"
    keys = list(dict.fromkeys([k for k in (preferred or []) if k in data] + list(data)))
    body = "".join(f"<tr><th>{html.escape(str(k))}</th>{cell(data[k])}</tr>" for k in keys)
    return f"<table><tbody>{body}</tbody></table>"


def page(title: str, body: str) -> str:
    t = html.escape(title)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{t}</title>'
        f"<style>{CSS}</style></head>\n<body>\n<h1>{t}</h1>\n{body}\n</body></html>\n"
    )


def img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def recipe_text(recipe: Any) -> str:
    try:
        import yaml

        return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    except Exception:  # no pyyaml, or values yaml cannot represent
        return json.dumps(recipe, indent=2, default=str)

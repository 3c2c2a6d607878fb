"""Shared pieces of the benchmarks: the machine, result files, the within-tolerance headline."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    from qaprune.runner import environment

    info = environment()
    try:
        model = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        info["cpu"] = model[0] if model else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    info["cuda"] = torch.cuda.is_available()
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        pass
    return info


def best_within(
    points: list[dict[str, Any]], *, ref_accuracy: float, tolerance_points: float = 0.5, key: str = "bops_reduction"
) -> dict[str, Any] | None:
    """The point with the largest ``key`` whose accuracy is at most ``tolerance_points`` below
    ``ref_accuracy`` (accuracies in 0..1), or None."""
    ok = [p for p in points if 100.0 * (ref_accuracy - p["accuracy"]) <= tolerance_points + 1e-9]
    return max(ok, key=lambda p: p[key]) if ok else None


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table: columns are (key, header, format)."""
    head = "  ".join(f"{h:>{max(len(h), 9)}}" for _, h, _ in columns)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for key, h, fmt in columns:
            v = r.get(key, "")
            cells.append(f"{format(v, fmt) if v != '' and v is not None else '-':>{max(len(h), 9)}}")
        lines.append("  ".join(cells))
    return "\n".join(lines)

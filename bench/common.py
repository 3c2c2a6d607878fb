"""Shared pieces of the benchmarks: the machine and the checkout that ran, result files, the
within-tolerance headline."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
# A benchmark that studies given steps (a variant at a sparsity) and trains its own dense
# baseline in the same run: deliver the last step, no cached reference (``select`` of a recipe).
FIXED_STEP = ["select.reference=none", "select.step=last"]
# What the benchmarks write themselves: left out of ``dirty`` and ``tree``.
OWN_OUTPUT = ("bench/results",)


def _git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str | None:
    """stdout of ``git args`` run in ``repo``, stripped; None when git is missing or fails."""
    try:
        p = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False, env=env, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def provenance(repo: str | Path = REPO, *, exclude: tuple[str, ...] = OWN_OUTPUT) -> dict[str, Any]:
    """The checkout at ``repo`` as it is now: ``commit`` (full HEAD hash), ``tree`` (the git tree
    hash of the working tree, uncommitted changes to tracked and untracked-not-ignored files
    included; HEAD's tree when there are none) and ``dirty`` (tree differs from HEAD's). Paths
    in ``exclude`` (relative to the top of the checkout) count as HEAD's. All None outside a git
    checkout, each None when unknown. Neither the real index nor any ref is touched: the tree is
    written from a temporary index (only blobs and trees are added to the object store)."""
    top = _git(Path(repo), "rev-parse", "--show-toplevel")
    if top is None:
        return {"commit": None, "dirty": None, "tree": None}
    root = Path(top)
    commit = _git(root, "rev-parse", "--verify", "--quiet", "HEAD")
    head_tree = _git(root, "rev-parse", "--verify", "--quiet", "HEAD^{tree}") if commit else None
    tree = None
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index"), "GIT_OPTIONAL_LOCKS": "0"}
        if commit is None or _git(root, "read-tree", "HEAD", env=env) is not None:
            spec = [".", *(f":(exclude){p}" for p in exclude)]
            if _git(root, "add", "--all", "--", *spec, env=env) is not None:
                tree = _git(root, "write-tree", env=env) or None
    if tree is not None and head_tree is not None:
        dirty: bool | None = tree != head_tree
    else:  # no HEAD yet, or the tree could not be written: ask git status (no optional locks)
        status = _git(
            root,
            "status",
            "--porcelain",
            "--",
            ".",
            *(f":(exclude){p}" for p in exclude),
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
        dirty = None if status is None else status != ""
    return {"commit": commit, "dirty": dirty, "tree": tree}


def command(argv: list[str] | None = None, repo: str | Path = REPO) -> str:
    """The command line that ran, as ``python bench/x.py --flag ...`` (the script relative to the
    checkout when inside it)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0]:
        try:
            argv[0] = Path(argv[0]).resolve().relative_to(Path(repo).resolve()).as_posix()
        except ValueError:
            pass
    return shlex.join(["python", *argv])


# Taken once, when the benchmark starts (it imports this module first), not after it wrote results.
START = {**provenance(REPO), "command": command()}


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and with which code: the checkout's ``commit``, whether
    it had uncommitted changes (``dirty``), the ``tree`` hash of what ran and the ``command``, all
    as of the start of the benchmark."""
    import torch

    from qaprune.rundir import environment

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
    info.update(START)
    return info


def parts_of(block: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """The runs a results file's ``machine`` block stands for, by name: its own ``parts`` when the
    file was merged from several runs itself, else ``{name: block}``."""
    if isinstance(block, dict) and isinstance(block.get("parts"), dict):
        return dict(block["parts"])
    return {name: block}


def merged_machine(parts: dict[str, Any]) -> dict[str, Any]:
    """The ``machine`` block of a results file that holds numbers of several runs: this process's
    block, plus ``parts``: the machine block of each run whose numbers are in the file, by name."""
    return {**machine(), "parts": parts}


def best_within(
    points: list[dict[str, Any]], *, ref_accuracy: float, tolerance_points: float = 0.5, key: str = "bops_reduction"
) -> dict[str, Any] | None:
    """The point with the largest ``key`` whose accuracy is at most ``tolerance_points`` below
    ``ref_accuracy`` (accuracies in 0..1), or None."""
    ok = [p for p in points if 100.0 * (ref_accuracy - p["accuracy"]) <= tolerance_points + 1e-9]
    return max(ok, key=lambda p: p[key]) if ok else None


def write_results(name: str, data: dict[str, Any], results: str | Path | None = None) -> Path:
    """Write ``data`` as ``results/NAME.json`` (default bench/results); a ``machine`` block
    (``machine()``) is added when ``data`` has none."""
    folder = RESULTS if results is None else Path(results)
    if "machine" not in data:
        data = {**data, "machine": machine()}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
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

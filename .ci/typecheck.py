#!/usr/bin/env python3
"""Type-check src/ with mypy against a baseline that only shrinks.

The baseline (.ci/mypy-baseline.json) counts the known errors per file and error code. The check
fails when any count grows or a new (file, code) pair appears; when counts fall it says so, and
`python .ci/typecheck.py --update` writes the smaller baseline (it refuses to write a larger one).
Settings are in pyproject.toml ([tool.mypy]).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / ".ci" / "mypy-baseline.json"
LINE = re.compile(r"^(?P<file>[^:]+):\d+: error: .*\[(?P<code>[a-z0-9-]+)\]$")


def current() -> Counter[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode not in (0, 1):  # 2: mypy itself failed (bad config, crash)
        sys.exit(f"mypy failed:\n{proc.stdout}{proc.stderr}")
    counts: Counter[str] = Counter()
    for line in proc.stdout.splitlines():
        m = LINE.match(line.strip())
        if m:
            counts[f"{m['file']}::{m['code']}"] += 1
    return counts


def main(argv: list[str]) -> int:
    now = current()
    base = Counter(json.loads(BASELINE.read_text())) if BASELINE.exists() else Counter()
    grown = {k: (base.get(k, 0), n) for k, n in now.items() if n > base.get(k, 0)}
    if "--update" in argv:
        if grown and BASELINE.exists():
            print("refusing to grow the baseline:", *(f"  {k}: {a} -> {b}" for k, (a, b) in grown.items()), sep="\n")
            return 1
        BASELINE.write_text(json.dumps(dict(sorted(now.items())), indent=1) + "\n")
        print(f"baseline written: {sum(now.values())} known errors")
        return 0
    if grown:
        print("new type errors (file::code: baseline -> now); run mypy to see them:")
        for key, (a, b) in sorted(grown.items()):
            print(f"  {key}: {a} -> {b}")
        return 1
    fewer = sum(base.values()) - sum(now.values())
    note = f"; {fewer} fewer than the baseline: run python .ci/typecheck.py --update" if fewer > 0 else ""
    print(f"mypy: {sum(now.values())} known errors, none new{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

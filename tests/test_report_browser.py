"""The run report in a real browser (headless Chromium): the page renders, its plot shows the
steps, the tolerance band and the delivered point, and a page whose plot is broken does not
pass the same check. Skipped when no Chromium is installed (.ci/run installs Debian's)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qaprune.report import write_report

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
COLORS = {  # matplotlib's defaults as drawn by the report's plot
    "steps": (0x1F, 0x77, 0xB4),  # C0
    "delivered": (0xD6, 0x27, 0x28),  # C3
    "band": tuple(round(255 * (0.82 + 0.18 * c)) for c in (0x2C / 255, 0xA0 / 255, 0x2C / 255)),  # C2, alpha .18
}


def screenshot(page: Path, out: Path, tmp: Path) -> np.ndarray:
    """RGB (H, W, 3) uint8 of ``page`` rendered by the browser at 1400×1800."""
    cmd = [BROWSER, *FLAGS, f"--user-data-dir={tmp / 'profile'}", f"--screenshot={out}", "--window-size=1400,1800",
           page.resolve().as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert out.is_file(), "the browser wrote no screenshot"
    from PIL import Image

    return np.asarray(Image.open(out).convert("RGB"))


def share(image: np.ndarray, rgb: tuple[int, ...], tol: int = 12) -> float:
    """Fraction of pixels within ``tol`` of ``rgb`` in every channel."""
    return float((np.abs(image.astype(int) - np.array(rgb)) <= tol).all(-1).mean())


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    history = [{"step": k, "accuracy": a, "bops": b, "sparsity": s, "val_accuracy": a}
               for k, (a, b, s) in enumerate([(0.96, 3e5, 0.0), (0.957, 1.6e5, 0.5), (0.93, 9e4, 0.8)])]  # fmt: skip
    results = {
        "name": "browser check",
        "metrics": {**history[1], "bops_fp32_dense": 4.6e6, "per_class_recall": {"A": 0.9}},
        "selected": {"step": 1, "within_tolerance": True, "reference_accuracy": 0.96, "max_drop": 2.0},
        "history": history,
    }
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_the_report_renders_its_plot_in_the_browser(tmp_path: Path) -> None:
    page = write_report(_run(tmp_path))
    from PIL import Image

    plot = np.asarray(Image.open(page.parent / "accuracy_vs_bops.png").convert("RGB"))
    shot = screenshot(page, tmp_path / "shot.png", tmp_path)
    assert shot.shape[:2] == (1800, 1400) and shot.std() > 10  # not a blank page
    rendered = {}
    for name, rgb in COLORS.items():
        expected = share(plot, rgb) * plot.size / shot.size  # the plot's pixels of that colour, on the page
        assert expected > 0, f"{name} missing from the plot itself"
        rendered[name] = share(shot, rgb)
        assert rendered[name] > 0.5 * expected, f"{name} not rendered ({rendered[name]:.2e} vs {expected:.2e})"
    broken = page.with_name("broken.html")
    broken.write_text(page.read_text(encoding="utf-8").replace("base64,iVBOR", "base64,AAAA"), encoding="utf-8")
    shot = screenshot(broken, tmp_path / "broken.png", tmp_path)
    for name, rgb in COLORS.items():  # the same check fails on a page whose plot does not load
        assert share(shot, rgb) < 0.1 * rendered[name], name

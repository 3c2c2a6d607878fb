"""qaprune demo --quick: every variant runs, the headline comes from the delivered steps."""

from __future__ import annotations

import json

from qaprune.demo import VARIANTS, headline, run_demo


def test_quick_demo_writes_its_report_and_a_headline_of_delivered_steps(tmp_path):
    summary = run_demo(tmp_path / "demo", quick=True, log=lambda *_: None)
    assert (tmp_path / "demo" / "report.html").is_file() and set(summary["variants"]) == set(VARIANTS)
    stored = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert stored["headline"] == summary["headline"]
    head = summary["headline"]
    if head["variant"] is not None:  # the delivered step of that variant, within tolerance
        run = json.loads((tmp_path / "demo" / head["variant"] / "results.json").read_text())
        assert run["selected"]["within_tolerance"] and run["selected"]["step"] == head["step"]
        assert head["bops_reduction"] == run["selected"]["bops_reduction"]


def test_headline_picks_the_most_compressed_delivered_step_within_tolerance():
    def res(reduction, ok):
        sel = {"step": 2, "bops_reduction": reduction, "within_tolerance": ok, "accuracy": 0.97,
               "reference_accuracy": 0.98, "max_drop": 0.5}  # fmt: skip
        return {"selected": sel, "metrics": {"sparsity": 0.5, "bops": 1.0}}

    head = headline({"a": res(10.0, True), "b": res(90.0, False), "c": res(30.0, True)})
    assert head["variant"] == "c" and head["bops_reduction"] == 30.0
    assert round(head["accuracy_drop_points"], 6) == 1.0
    assert headline({"a": res(10.0, False)})["variant"] is None

"""Tests of qaprune.select: the delivered step from synthetic histories, early stopping."""

from __future__ import annotations

import pytest

from qaprune.select import choose, floor_of, should_stop, summary, within

REF_VAL = 0.950  # the reference's validation accuracy
FLOOR = floor_of(REF_VAL, 0.5)  # 0.945


def _history(vals: list[float], bops: list[float] | None = None, sizes: list[int] | None = None) -> list[dict]:
    bops = bops or [1000.0 / (k + 1) for k in range(len(vals))]  # more compressed each step
    sizes = sizes or [100 - k for k in range(len(vals))]
    return [
        {"step": k, "val_accuracy": v, "val_balanced_accuracy": v - 0.01, "bops": b, "size_bytes": s}
        for k, (v, b, s) in enumerate(zip(vals, bops, sizes))
    ]


def test_the_most_compressed_step_within_tolerance_is_chosen() -> None:
    h = _history([0.951, 0.949, 0.946, 0.944, 0.947, 0.80])
    assert choose(h, metric="accuracy", floor=FLOOR) == (4, True)  # step 5 collapsed, step 3 outside
    assert within(h[2], metric="accuracy", floor=FLOOR) and not within(h[3], metric="accuracy", floor=FLOOR)


def test_the_last_step_is_not_delivered_when_it_collapsed() -> None:
    h = _history([0.95, 0.95, 0.95, 0.036])  # letter_qap.yaml ended at 3.6% with layers emptied
    assert choose(h, metric="accuracy", floor=FLOOR) == (2, True)


def test_cost_can_be_bytes_or_measured_latency_and_ties_go_to_accuracy() -> None:
    h = _history([0.95, 0.949, 0.948], bops=[10.0, 5.0, 5.0], sizes=[300, 100, 200])
    assert choose(h, metric="accuracy", floor=FLOOR, by="bops") == (1, True)  # tie on BOPs: more accurate
    assert choose(h, metric="accuracy", floor=FLOOR, by="size_bytes") == (1, True)
    assert choose(h, metric="accuracy", floor=FLOOR, by="latency_ms", costs={0: 3.0, 1: 2.0, 2: 1.0}) == (2, True)


def test_no_step_within_delivers_the_most_accurate_and_says_so() -> None:
    h = _history([0.93, 0.94, 0.92])
    assert choose(h, metric="accuracy", floor=FLOOR) == (1, False)


def test_balanced_accuracy_can_be_the_metric() -> None:
    h = _history([0.951, 0.950, 0.9505])  # balanced = accuracy - 0.01
    assert choose(h, metric="accuracy", floor=FLOOR) == (2, True)
    assert choose(h, metric="balanced_accuracy", floor=FLOOR) == (0, False)
    assert choose(h, metric="balanced_accuracy", floor=floor_of(0.945, 0.5)) == (2, True)


def test_early_stop_after_consecutive_steps_outside() -> None:
    h = _history([0.95, 0.949, 0.94, 0.946, 0.93, 0.92])
    assert [should_stop(h[:k], metric="accuracy", floor=FLOOR, stop_after=2) for k in range(1, 7)] == [
        False, False, False, False, False, True
    ]  # fmt: skip
    assert should_stop(h, metric="accuracy", floor=FLOOR, stop_after=None) is False
    assert should_stop(h[:5], metric="accuracy", floor=FLOOR, stop_after=1) is True


def test_summary_has_the_contract_keys() -> None:
    entry = {"step": 3, "accuracy": 0.9, "balanced_accuracy": 0.88, "bops_reduction": 30.0}
    s = summary(entry, within_tolerance=True, reference_accuracy=0.91, max_drop=0.5)
    assert set(s) >= {"step", "accuracy", "balanced_accuracy", "bops_reduction", "reference_accuracy", "max_drop",
                      "within_tolerance"}  # fmt: skip
    with pytest.raises(ValueError, match="empty history"):
        choose([], metric="accuracy", floor=0.0)


def test_a_fixed_step_is_delivered_and_still_judged() -> None:
    h = _history([0.951, 0.949, 0.90])
    assert choose(h, metric="accuracy", floor=FLOOR, fixed="last") == (2, False)
    assert choose(h, metric="accuracy", floor=FLOOR, fixed=1) == (1, True)
    with pytest.raises(ValueError, match="select.step: 7 is not a step of this run"):
        choose(h, metric="accuracy", floor=FLOOR, fixed=7)

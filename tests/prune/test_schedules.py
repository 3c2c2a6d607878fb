"""Tests of qaprune.prune.schedules: iterative (of original / of remaining), cubic (Zhu & Gupta)
and oneshot values, and the ``steps()`` lists."""

from __future__ import annotations

import pytest

from qaprune.prune.schedules import SCHEDULES, cubic, iterative, oneshot, steps

FINAL_ARGS = {"iterative": {"rate": 0.2}, "cubic": {"n_steps": 7}, "oneshot": {}}


def test_registry_names() -> None:
    assert SCHEDULES.names() == ["cubic", "iterative", "oneshot"]


@pytest.mark.parametrize("name", SCHEDULES.names())
@pytest.mark.parametrize("final", [0.3, 0.5, 0.9])
def test_every_schedule_monotone_and_reaches_final(name: str, final: float) -> None:
    fn = SCHEDULES.get(name)
    values = [fn(k, final=final, **FINAL_ARGS[name]) for k in range(1, 60)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert all(0.0 <= v <= final + 1e-12 for v in values)
    assert values[-1] == pytest.approx(final)
    listed = steps(name, final=final, **FINAL_ARGS[name])
    assert listed[-1] == pytest.approx(final)
    assert all(b > a for a, b in zip(listed, listed[1:]))
    assert all(s > 0 for s in listed)


def test_iterative_of_original() -> None:
    assert [iterative(k, final=0.9, rate=0.1) for k in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.3])
    assert iterative(20, final=0.9, rate=0.1) == 0.9
    assert steps("iterative", final=0.5, rate=0.1) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert steps("iterative", final=0.35, rate=0.1) == [0.1, 0.2, 0.3, 0.35]


def test_iterative_of_remaining() -> None:
    for k in range(1, 8):
        assert iterative(k, final=0.99, rate=0.1, of_="remaining") == pytest.approx(1 - 0.9**k)
    assert iterative(3, final=0.99, rate=0.1, of_="remaining") == pytest.approx(0.271)
    listed = steps("iterative", final=0.5, rate=0.1, of_="remaining")
    assert listed == pytest.approx([0.1, 0.19, 0.271, 0.3439, 0.40951, 0.468559, 0.5])


def test_cubic_endpoints_and_midpoint() -> None:
    assert cubic(0, final=0.8, n_steps=10) == pytest.approx(0.0)
    assert cubic(10, final=0.8, n_steps=10) == pytest.approx(0.8)
    assert cubic(25, final=0.8, n_steps=10) == pytest.approx(0.8)  # stays at final
    # s_f + (s_i - s_f)(1 - t/n)^3 at t = 5, n = 10: 0.8 - 0.8 * 0.125 = 0.7
    assert cubic(5, final=0.8, n_steps=10) == pytest.approx(0.7)
    # with an initial sparsity: 0.9 + (0.5 - 0.9) * (1 - 3/4)^3 = 0.89375
    assert cubic(3, final=0.9, n_steps=4, initial=0.5) == pytest.approx(0.89375)
    assert cubic(0, final=0.9, n_steps=4, initial=0.5) == pytest.approx(0.5)


def test_cubic_monotone_and_front_loaded() -> None:
    values = [cubic(k, final=0.9, n_steps=10) for k in range(0, 11)]
    assert all(b > a for a, b in zip(values, values[1:]))
    increments = [b - a for a, b in zip(values, values[1:])]
    assert all(b < a for a, b in zip(increments, increments[1:]))  # fast first, slow at the end


def test_cubic_steps_list() -> None:
    listed = steps("cubic", final=0.8, n_steps=4)
    expected = [0.8 - 0.8 * (1 - k / 4) ** 3 for k in range(1, 5)]
    assert listed == pytest.approx(expected)
    assert len(listed) == 4


def test_oneshot() -> None:
    assert oneshot(0, final=0.7) == 0.0
    assert oneshot(1, final=0.7) == 0.7
    assert oneshot(5, final=0.7) == 0.7
    assert steps("oneshot", final=0.7) == [0.7]


def test_steps_of_zero_final_is_empty() -> None:
    assert steps("oneshot", final=0.0) == []
    assert steps("iterative", final=0.0, rate=0.1) == []


def test_steps_unknown_schedule_lists_known() -> None:
    with pytest.raises(KeyError, match="unknown schedule 'linear'; known: cubic, iterative, oneshot"):
        steps("linear", final=0.5)

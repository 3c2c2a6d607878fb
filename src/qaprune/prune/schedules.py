"""Schedules say how much sparsity at which step; nothing else.

``schedule(step, *, final, **args) -> sparsity`` for ``step`` = 1, 2, …; ``steps(name, ...)``
lists the targets of a schedule up to its final sparsity.
- ``iterative`` (Ps and Qs, lottery tickets): each round prunes ``rate`` more — of the original
  weights (``of_="original"``: rate, 2·rate, …) or of the remaining ones (1 − (1 − rate)^k).
- ``cubic`` (Zhu & Gupta 2017): s_k = s_f + (s_i − s_f)·(1 − k/n)^3 over ``n`` pruning events.
- ``oneshot``: the final sparsity at once.
"""

from __future__ import annotations

from qaprune.registry import Registry

SCHEDULES: Registry = Registry("schedule")


@SCHEDULES.register("iterative")
def iterative(step: int, *, final: float, rate: float = 0.1, of_: str = "original") -> float:
    """Sparsity after ``step`` rounds, capped at ``final``.

    Example:
        >>> [round(iterative(k, final=0.35, rate=0.1), 2) for k in (1, 2, 4)]
        [0.1, 0.2, 0.35]
    """
    s = rate * step if of_ == "original" else 1.0 - (1.0 - rate) ** step
    return min(final, s)


@SCHEDULES.register("cubic")
def cubic(step: int, *, final: float, n_steps: int = 10, initial: float = 0.0) -> float:
    """Gradual pruning (Zhu & Gupta): fast at first, slow near the end; ``final`` at n_steps."""
    t = min(step, n_steps) / n_steps
    return final + (initial - final) * (1.0 - t) ** 3


@SCHEDULES.register("oneshot")
def oneshot(step: int, *, final: float) -> float:
    """All of the sparsity at step 1."""
    return final if step >= 1 else 0.0


def steps(name: str, *, final: float, max_steps: int = 1000, **args) -> list[float]:
    """The strictly increasing sparsity targets of schedule ``name`` until ``final``.

    Example:
        >>> steps("iterative", final=0.3, rate=0.1)
        [0.1, 0.2, 0.3]
    """
    fn, out = SCHEDULES.get(name), []
    for k in range(1, max_steps + 1):
        s = round(fn(k, final=final, **args), 10)
        if not out or s > out[-1] + 1e-9:
            out.append(s)
        if s >= final - 1e-9:
            break
    return [s for s in out if s > 0.0]

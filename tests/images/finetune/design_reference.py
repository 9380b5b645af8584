"""Independent references for the pod's numbers: DESIGN 5 written as plain per-trade Python loops.

Nothing here calls the ``finetune`` package: the tests (and ``benchmarks/``) compare the package's
vectorised code with these loops. numpy appears only as the random source the DESIGN names
(``default_rng(seed).geometric`` for the random baseline, ``default_rng(0).integers`` and
``np.roll`` for the shift test).
"""

from __future__ import annotations

import math

import numpy as np


def buy_and_hold_return(close, rt: float) -> float:
    """``c[n-1]/c[0] - 1 - rt``; a one-bar window makes no trade."""
    return 0.0 if len(close) < 2 else close[-1] / close[0] - 1.0 - rt


def seed_runs(
    close, rt: float, *, n_seeds: int, hold_bars: int, p_entry: float | None = None
) -> list[tuple[float, int]]:
    """Each seed of the DESIGN 5 random baseline, one trade at a time: (net return, trades)."""
    n = len(close)
    p = 1.0 / hold_bars if p_entry is None else p_entry
    runs = []
    for seed in range(n_seeds):
        gaps = np.random.default_rng(seed).geometric(p, size=n // hold_bars + 1)
        next_free, growth, count = 0, 1.0, 0
        for gap in gaps:
            entry = next_free + int(gap) - 1
            exit_ = entry + hold_bars
            if exit_ > n - 1:
                break
            growth *= 1.0 + (close[exit_] / close[entry] - 1.0 - rt)
            count += 1
            next_free = exit_
        runs.append((growth - 1.0, count))
    return runs


def random_baseline(close, rt: float, *, n_seeds: int, hold_bars: int, p_entry: float | None = None):
    """(mean, population std, mean trade count) over the seeds of :func:`seed_runs`."""
    runs = seed_runs(close, rt, n_seeds=n_seeds, hold_bars=hold_bars, p_entry=p_entry)
    returns = [r for r, _ in runs]
    mean = sum(returns) / n_seeds
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / n_seeds)
    return mean, std, sum(t for _, t in runs) / n_seeds


def positions_return(positions, close, rt: float) -> float:
    """The model's convention: flat after the last bar, one trade per long run, compounded."""
    held = [int(p) for p in positions[:-1]] + [0]
    growth, entry, previous = 1.0, None, 0
    for t, position in enumerate(held):
        if position and not previous:
            entry = t
        elif previous and not position:
            growth *= 1.0 + (close[t] / close[entry] - 1.0 - rt)
        previous = position
    return growth - 1.0


def held_share(positions) -> float:
    """Share of the ``n - 1`` holding periods spent long (the last bar's position is never held)."""
    n = len(positions)
    return 0.0 if n < 2 else sum(int(p) for p in positions[:-1]) / (n - 1)


def shift_test(positions, close, rt: float, *, n_shifts: int) -> tuple[float, float]:
    """(p-value, model return): DESIGN 5 verbatim, one shift at a time."""
    n = len(close)
    model = positions_return(list(positions), close, rt)
    offsets = np.random.default_rng(0).integers(1, n, size=n_shifts) if n >= 2 else []
    shifted = [positions_return(list(np.roll(np.asarray(positions), int(k))), close, rt) for k in offsets]
    return (1 + sum(r >= model for r in shifted)) / (1 + len(offsets)), model

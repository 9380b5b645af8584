"""Significance cost, measured in one run: the timing test per model and the profit test per
(key, cost) against the random baseline per key, and the memory of each in ``--shifts``.

    .venv/bin/python benchmarks/bench_significance.py [--repeats 7] [--seeds 100] [--shifts 999] [--costs 3]

For test windows of 720 bars (a month of hours, the default), 4,320 and 43,200 bars of a seeded
log-normal walk, with positions of a model-like long/flat book (runs of a few bars, about half the
time long):

1. the best-of-``--repeats`` wall time of ``shift_test`` (the timing test, once per model,
   ``--shifts`` sign flips), of ``profit_tests`` at one cost (``--shifts`` circular block bootstrap
   resamples), of ``matched_percentiles`` at one cost (``--shifts`` shifted copies),
   and of ``random_baseline`` at one cost (``--seeds``), with the timing/random ratio (issue 16: the
   timing test costs at most the random baseline per key; the bootstrap <= 50 ms at 720 bars);
2. per window of ``--costs`` cost bases, as the runner does it: the timing test once, the matched
   percentiles and the profit tests for every cost in one pass, against the random baselines of
   the window;
3. the peak traced memory of the timing, matched and profit tests at 100 and 10,000 shifts on the
   largest window (flat: everything is evaluated in chunks).
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "images" / "finetune"))

from finetune.baselines import compute_window_baselines, random_baseline  # noqa: E402
from finetune.costs import round_trip_cost  # noqa: E402
from finetune.significance import (  # noqa: E402
    matched_percentiles,
    profit_tests,
    shift_offsets,
    shift_test,
)

SIZES = (720, 4_320, 43_200)
HOLD_BARS = 24
COST_BPS = (0, 10, 30, 5, 15, 50)


def synthetic_close(n: int) -> np.ndarray:
    rng = np.random.default_rng(20260607)
    return 30_000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.007, n)))


def model_like_positions(n: int) -> np.ndarray:
    """Long/flat runs of 1-8 bars, alternating: a book that trades often, like the ridge model's."""
    rng = np.random.default_rng(7)
    runs = rng.integers(1, 9, size=n)
    flags = np.arange(runs.size) % 2
    return np.repeat(flags, runs)[:n].astype(np.float64)


def best_seconds(work: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` runs (as timeit advises: on a shared machine other processes
    only ever add time, so the minimum is the least disturbed measurement)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_traced_bytes(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--shifts", type=int, default=999)
    parser.add_argument("--costs", type=int, default=3, help=f"cost bases per window (1-{len(COST_BPS)})")
    args = parser.parse_args()
    seeds, shifts, repeats = args.seeds, args.shifts, args.repeats
    rts = [round_trip_cost(bps) for bps in COST_BPS[: args.costs]]
    rt = rts[min(1, len(rts) - 1)]
    profit_tests(model_like_positions(50), synthetic_close(50), [rt], n_resamples=1)  # arch's import is not timed

    def timing(close: np.ndarray, positions: np.ndarray, k: int = shifts) -> object:
        return shift_test(positions, close, n_shifts=k)

    def matched(close: np.ndarray, positions: np.ndarray, costs: list[float], k: int = shifts) -> object:
        offsets = shift_offsets(close.size, k)
        return matched_percentiles(positions, close, costs, offsets)

    def profit(close: np.ndarray, positions: np.ndarray, costs: list[float], k: int = shifts) -> object:
        return profit_tests(positions, close, costs, n_resamples=k, block_bars=HOLD_BARS)

    print(f"1. {shifts} shifts / resamples vs {seeds} seeds, hold_bars={HOLD_BARS}, rt={rt}, best of {repeats}")
    header = f"{'bars':>8} {'timing s':>9} {'profit s':>9} {'matched s':>10} {'random s':>9} {'timing/random':>14}"
    print(header + "\n" + "-" * len(header))
    for n in SIZES:
        close, positions = synthetic_close(n), model_like_positions(n)
        shift = best_seconds(lambda: timing(close, positions), repeats)
        boot = best_seconds(lambda: profit(close, positions, [rt]), repeats)
        match = best_seconds(lambda: matched(close, positions, [rt]), repeats)
        random = best_seconds(lambda: random_baseline(close, rt, n_seeds=seeds, hold_bars=HOLD_BARS), repeats)
        print(f"{n:>8,} {shift:>9.4f} {boot:>9.4f} {match:>10.4f} {random:>9.4f} {shift / random:>13.2f}x")

    print(f"\n2. per window of {len(rts)} cost bases, as the runner does it, best of {repeats}")
    header = f"{'bars':>8} {'tests s':>9} {'baselines s':>12} {'tests/baselines':>16}"
    print(header + "\n" + "-" * len(header))
    for n in SIZES:
        close, positions = synthetic_close(n), model_like_positions(n)

        def tests() -> None:
            timing(close, positions)
            matched(close, positions, rts)
            profit(close, positions, rts)

        window = best_seconds(tests, repeats)
        bases = best_seconds(lambda: compute_window_baselines(close, rts, n_seeds=seeds, hold_bars=HOLD_BARS), repeats)
        print(f"{n:>8,} {window:>9.4f} {bases:>12.4f} {window / bases:>15.2f}x")

    n = SIZES[-1]
    close, positions = synthetic_close(n), model_like_positions(n)
    print(f"\n3. peak traced memory at {n:,} bars ({len(rts)} cost bases)")
    for name, work in (
        ("timing", lambda k: timing(close, positions, k)),
        ("matched", lambda k: matched(close, positions, rts, k)),
        ("profit", lambda k: profit(close, positions, rts, k)),
    ):
        peaks = {k: peak_traced_bytes(lambda k=k: work(k)) for k in (100, 10_000)}
        print(
            f"{name:>8}: {peaks[100] / 2**20:7.2f} MiB at 100, {peaks[10_000] / 2**20:7.2f} MiB at 10,000"
            f" (ratio {peaks[10_000] / peaks[100]:.3f})"
        )


if __name__ == "__main__":
    main()

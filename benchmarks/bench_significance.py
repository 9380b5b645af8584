"""Significance cost per key, measured in one run: the shift test against the random baseline, and
one pass per window against one pass per key.

    .venv/bin/python benchmarks/bench_significance.py [--repeats 7] [--seeds 100] [--costs 3]

For test windows of 720 bars (a month of hours, the default), 4,320 and 43,200 bars of a seeded
log-normal walk, with positions of a model-like long/flat book (runs of a few bars, about half the
time long):

1. per key: the best-of-``--repeats`` wall time of ``shift_test`` and of ``random_baseline`` at one cost, and
   their ratio (issue 11: the shift test costs at most the random baseline);
2. per window of ``--costs`` cost bases: ``compute_window_baselines`` + ``shift_tests`` (the
   seeds' and the shifts' trades found once, netted per cost basis, as the runner does) against
   ``compute_baselines`` + ``shift_test`` once per key, and the ratio;
3. the peak traced memory of ``shift_tests`` at 100 and 10,000 shifts on the largest window
   (flat: the shifts are evaluated in chunks).
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

from finetune.baselines import compute_baselines, compute_window_baselines, random_baseline  # noqa: E402
from finetune.costs import round_trip_cost  # noqa: E402
from finetune.significance import shift_test, shift_tests  # noqa: E402

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
    parser.add_argument("--costs", type=int, default=3, help=f"cost bases per window (1-{len(COST_BPS)})")
    args = parser.parse_args()
    seeds, repeats = args.seeds, args.repeats
    rts = [round_trip_cost(bps) for bps in COST_BPS[: args.costs]]
    rt = rts[min(1, len(rts) - 1)]

    print(f"1. per key: {seeds} shifts vs {seeds} seeds, hold_bars={HOLD_BARS}, rt={rt}, best of {repeats}")
    header = f"{'bars':>8} {'shift s':>9} {'random s':>9} {'shift/random':>13}"
    print(header + "\n" + "-" * len(header))
    for n in SIZES:
        close, positions = synthetic_close(n), model_like_positions(n)
        shift = best_seconds(lambda: shift_test(positions, close, rt, n_shifts=seeds), repeats)
        random = best_seconds(lambda: random_baseline(close, rt, n_seeds=seeds, hold_bars=HOLD_BARS), repeats)
        print(f"{n:>8,} {shift:>9.4f} {random:>9.4f} {shift / random:>12.2f}x")

    print(f"\n2. per window of {len(rts)} cost bases: one pass per window vs one pass per key, best of {repeats}")
    header = f"{'bars':>8} {'window s':>9} {'per-key s':>10} {'per-key/window':>15}"
    print(header + "\n" + "-" * len(header))
    for n in SIZES:
        close, positions = synthetic_close(n), model_like_positions(n)

        def one_pass() -> None:
            compute_window_baselines(close, rts, n_seeds=seeds, hold_bars=HOLD_BARS)
            shift_tests(positions, close, rts, n_shifts=seeds)

        def per_key() -> None:
            for cost in rts:
                compute_baselines(close, cost, n_seeds=seeds, hold_bars=HOLD_BARS)
                shift_test(positions, close, cost, n_shifts=seeds)

        window = best_seconds(one_pass, repeats)
        keys = best_seconds(per_key, repeats)
        print(f"{n:>8,} {window:>9.4f} {keys:>10.4f} {keys / window:>14.2f}x")

    n = SIZES[-1]
    close, positions = synthetic_close(n), model_like_positions(n)
    print(f"\n3. peak traced memory of shift_tests at {n:,} bars ({len(rts)} cost bases)")
    peaks = {k: peak_traced_bytes(lambda k=k: shift_tests(positions, close, rts, n_shifts=k)) for k in (100, 10_000)}
    for k, peak in peaks.items():
        print(f"{k:>7,} shifts: {peak / 2**20:8.2f} MiB")
    print(f"ratio 10,000/100 shifts: {peaks[10_000] / peaks[100]:.3f}")


if __name__ == "__main__":
    main()

"""Random baseline speed and memory against the per-trade loop reference, measured in one run.

    .venv/bin/python benchmarks/bench_baselines.py [--repeats 5] [--seeds 100]

For 10k, 100k and 1M bars of a synthetic close (a seeded log-normal walk): the median wall time
of ``random_baseline`` over a few repeats, its peak traced memory (tracemalloc, in a separate
call because tracing slows numpy down), the time of the straightforward per-trade Python loop
that the tests check it against (timed once per size), their ratio (goal >= 10x at 1M bars),
and the largest difference of their results. Then the peak memory at 100 vs 1000 seeds (goal:
flat, the seeds run one after the other).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "images" / "finetune"))

from finetune.baselines import random_baseline  # noqa: E402
from finetune.costs import round_trip_cost  # noqa: E402

SIZES = (10_000, 100_000, 1_000_000)
HOLD_BARS = 24
RT = round_trip_cost(10)


def load_reference():
    """The per-trade loop of the tests (one reference, the one the results are checked against)."""
    path = REPO_ROOT / "tests" / "images" / "finetune" / "design_reference.py"
    spec = importlib.util.spec_from_file_location("design_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.random_baseline


def synthetic_close(n: int) -> np.ndarray:
    rng = np.random.default_rng(20260607)
    return 30_000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.007, n)))


def median_seconds(close: np.ndarray, n_seeds: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        random_baseline(close, RT, n_seeds=n_seeds, hold_bars=HOLD_BARS)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_traced_bytes(close: np.ndarray, n_seeds: int) -> int:
    tracemalloc.start()
    try:
        random_baseline(close, RT, n_seeds=n_seeds, hold_bars=HOLD_BARS)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=100)
    args = parser.parse_args()
    reference = load_reference()

    print(f"random_baseline, {args.seeds} seeds, hold_bars={HOLD_BARS}, rt={RT}, median of {args.repeats}")
    header = (
        f"{'bars':>10} {'median s':>9} {'peak MiB':>9} {'loop s':>8} {'speed-up':>9} {'|diff|':>9} {'mean trades':>12}"
    )
    print(header)
    print("-" * len(header))
    for n in SIZES:
        close = synthetic_close(n)
        seconds = median_seconds(close, args.seeds, args.repeats)
        peak = peak_traced_bytes(close, args.seeds)
        start = time.perf_counter()
        ref_mean, ref_std, ref_trades = reference(close, RT, n_seeds=args.seeds, hold_bars=HOLD_BARS)
        loop_seconds = time.perf_counter() - start
        result = random_baseline(close, RT, n_seeds=args.seeds, hold_bars=HOLD_BARS)
        diff = max(abs(result.net_return - ref_mean), abs(result.return_std - ref_std))
        print(
            f"{n:>10,} {seconds:>9.4f} {peak / 2**20:>9.2f} {loop_seconds:>8.3f} "
            f"{loop_seconds / seconds:>8.1f}x {diff:>9.1e} {result.n_trades:>12.1f}"
        )

    n = SIZES[-1]
    close = synthetic_close(n)
    print(f"\npeak traced memory vs n_seeds at {n:,} bars (close itself: {close.nbytes / 2**20:.2f} MiB)")
    peaks = {seeds: peak_traced_bytes(close, seeds) for seeds in (100, 1000)}
    for seeds, peak in peaks.items():
        print(f"{seeds:>6} seeds: {peak / 2**20:8.2f} MiB")
    print(f"ratio 1000/100 seeds: {peaks[1000] / peaks[100]:.3f}")


if __name__ == "__main__":
    main()

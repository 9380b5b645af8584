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
    """(p-value, model return): the first DESIGN 5 shift test (on compounded returns, offsets drawn
    with replacement), one shift at a time: what rows written before V010 hold."""
    n = len(close)
    model = positions_return(list(positions), close, rt)
    offsets = np.random.default_rng(0).integers(1, n, size=n_shifts) if n >= 2 else []
    shifted = [positions_return(list(np.roll(np.asarray(positions), int(k))), close, rt) for k in offsets]
    return (1 + sum(r >= model for r in shifted)) / (1 + len(offsets)), model


def ewma_volatility(close, *, lam: float = 0.94, min_returns: int = 24) -> list[float]:
    """sigma[t]: the EWMA of squared log returns up to bar t, the weights lam^0, lam^1, ... over
    the returns seen, normalised by their sum (pandas' adjust=True); NaN before min_returns returns."""
    sigma = [math.nan]
    num = den = 0.0
    for t in range(1, len(close)):
        r = math.log(close[t] / close[t - 1])
        num = lam * num + r * r
        den = lam * den + 1.0
        sigma.append(math.sqrt(num / den) if t >= min_returns else math.nan)
    return sigma


def timing_test(positions, close, *, n_shifts: int, sigma=None) -> tuple[float, int]:
    """(p-value, draws): the timing test of DESIGN 5 as issue 16 landed it, one bar and one flip at a time.

    w[t] = pos[t] - mean(pos[0..t-1]) (0 at t = 0); z[t] = log(c[t+1]/c[t]) / sigma[t] over t < n - 1
    (bars without a volatility weigh nothing); T = sum w z / sqrt(sum (w z)^2), the same scale for
    every flip; flip b turns the sign of bar t where bit t of row b is set: each row is ceil(n / 64)
    words of default_rng(0).integers(0, 2**64, uint64), their bytes in memory order, each byte's
    bits from the highest; p = (1 + #(T_b >= T)) / (1 + n_shifts).
    """
    n = len(close)
    sigma = ewma_volatility(close) if sigma is None else list(sigma)
    terms = [0.0] * n
    for t in range(1, n - 1):
        if math.isfinite(sigma[t]) and sigma[t] > 0:
            before = sum(int(p) for p in positions[:t]) / t
            terms[t] = (int(positions[t]) - before) * math.log(close[t + 1] / close[t]) / sigma[t]
    total = sum(terms)
    margin = 1e-9 * (sum(abs(x) for x in terms) + 1e-300)
    words = np.random.default_rng(0).integers(0, 2**64, size=(n_shifts, (n + 63) // 64), dtype=np.uint64)
    at_least = 0
    for row in words:
        heads = [(byte >> (7 - bit)) & 1 for byte in row.tobytes() for bit in range(8)][:n]
        flipped = sum(-x if head else x for x, head in zip(terms, heads, strict=True))
        at_least += flipped >= total - margin
    return (1 + at_least) / (1 + n_shifts), n_shifts


def equity_bar_returns(positions, close, rt: float) -> list[float]:
    """Per-bar returns of the model's equity, marked at each close: inside a trade entered at e,
    bar t is G * (c[t]/c[e] - rt/2); after its exit G * (1 + r); G the growth of earlier trades."""
    held = [int(p) for p in positions[:-1]] + [0]
    equity, growth, entry = [], 1.0, None
    for t, position in enumerate(held):
        if position and entry is None:
            entry = t
        if entry is not None and position:
            equity.append(growth * (close[t] / close[entry] - rt / 2))
        elif entry is not None:
            growth *= 1.0 + (close[t] / close[entry] - 1.0 - rt)
            entry = None
            equity.append(growth)
        else:
            equity.append(growth)
    previous = [1.0] + equity[:-1]
    return [e / p - 1.0 for e, p in zip(equity, previous, strict=True)]


def block_bootstrap_p(series, *, n_resamples: int, block: int, seed: int = 0) -> float:
    """p of H0 mean <= 0 by the circular block bootstrap: blocks of `block` bars starting at
    default_rng(seed).integers(0, n, size=blocks) per resample (arch's CircularBlockBootstrap),
    wrapped, cut to n; p = (1 + #(mean_b - mean >= mean)) / (1 + n_resamples)."""
    n = len(series)
    rng = np.random.default_rng(seed)
    mean = sum(series) / n
    n_blocks = -(-n // block)
    count = 0
    for _ in range(n_resamples):
        starts = rng.integers(0, n, size=n_blocks)
        picks = [(int(s) + j) % n for s in starts for j in range(block)][:n]
        if sum(series[i] for i in picks) / n - mean >= mean - 1e-12 * (max(map(abs, series)) + 1e-300):
            count += 1
    return (1 + count) / (1 + n_resamples)

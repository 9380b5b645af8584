"""Same-basis naive baselines over one test window (DESIGN 5, "Baselines").

Every baseline takes the test window's close prices ``c[0..n-1]`` and the key's round-trip cost
``rt`` (see :mod:`finetune.costs`) and nets each trade as ``c[exit] / c[entry] - 1 - rt``.

Degenerate windows are defined, not refused: a window of one bar has no bar to exit on, so every
baseline makes 0 trades and returns 0; a window shorter than ``hold_bars + 1`` bars gives the
random baseline 0 trades. An empty window is a ``ValueError`` (there is no basis to compare on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from finetune.costs import compound, net_of_cost, trade_returns

BASELINE_TYPES = ("buy_and_hold", "random", "naive")


@dataclass(frozen=True)
class BaselineResult:
    """One baseline row. ``n_trades`` is the mean over seeds for ``random``.

    ``return_std`` is the population standard deviation (ddof=0) of the per-seed returns: the
    seeds are the whole population of the baseline, not a sample of a larger one.
    """

    baseline_type: str
    net_return: float
    n_trades: float
    n_seeds: int | None = None
    hold_bars: int | None = None
    return_std: float | None = None


def validate_close(close: np.ndarray) -> np.ndarray:
    """``close`` as a 1-D float64 array of positive finite prices, at least one bar long."""
    prices = np.asarray(close, dtype=np.float64)
    if prices.ndim != 1:
        raise ValueError(f"close must be a 1-D array of prices, got shape {prices.shape}")
    if prices.size == 0:
        raise ValueError("close is empty: a test window needs at least one bar")
    if not np.all(np.isfinite(prices)) or not np.all(prices > 0):
        bad = int(np.flatnonzero(~(np.isfinite(prices) & (prices > 0)))[0])
        raise ValueError(f"close must hold positive finite prices, got {prices[bad]!r} at bar {bad}")
    return prices


def _check_rt(rt: float) -> float:
    if not math.isfinite(rt) or rt < 0:
        raise ValueError(f"round_trip_cost must be a finite fraction >= 0, got {rt!r}")
    return float(rt)


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def buy_and_hold(close: np.ndarray, round_trip_cost: float) -> BaselineResult:
    """Enter at ``c[0]``, exit at ``c[n-1]``: ``c[n-1] / c[0] - 1 - rt``, one trade.

    A one-bar window has no later bar to exit on: 0 trades, return 0 (as a flat book).
    """
    prices = validate_close(close)
    rt = _check_rt(round_trip_cost)
    if prices.size == 1:
        return BaselineResult("buy_and_hold", 0.0, 0.0)
    net = compound(trade_returns(prices[:1], prices[-1:], rt))
    return BaselineResult("buy_and_hold", net, 1.0)


def naive(close: np.ndarray) -> BaselineResult:
    """Stay flat: 0 trades, net return 0 whatever the cost."""
    validate_close(close)
    return BaselineResult("naive", 0.0, 0.0)


def random_entries(
    rng: np.random.Generator, m: int, *, n: int, hold_bars: int, p_entry: float, chunk: int | None = None
) -> np.ndarray:
    """Entry bars of one seed whose exit ``entry + hold_bars`` is <= ``n - 1``.

    DESIGN 5: ``entries = cumsum(gaps - 1) + hold_bars * arange(m)`` with
    ``gaps = rng.geometric(p_entry, size=m)``: each trade waits ``gap - 1`` flat bars after the
    previous exit, then holds ``hold_bars`` bars. Entries increase strictly, so the kept trades
    are a prefix. The generator draws one value after the other, so drawing ``gaps`` in chunks
    and stopping once an exit passes the window gives the very prefix that ``size=m`` gives,
    while drawing about half as many values (the generator is most of the cost).

    :param chunk: values drawn at a time; default the expected number of trades + 10 % + 16.
    """
    last_entry = n - 1 - hold_bars
    expected = (n // (hold_bars + 1.0 / p_entry - 1.0)) * 1.1 + 16
    chunks: list[np.ndarray] = []
    drawn = 0
    next_base = 0  # where the next chunk's first trade may start (previous exit)
    chunk = int(expected) if chunk is None else chunk
    while drawn < m:
        size = min(m - drawn, chunk)
        entries = rng.geometric(p_entry, size=size)
        entries -= 1
        np.cumsum(entries, out=entries)
        entries += np.arange(next_base, next_base + hold_bars * size, hold_bars, dtype=entries.dtype)
        kept = int(np.searchsorted(entries, last_entry, side="right"))
        chunks.append(entries[:kept])
        if kept < size:
            break
        drawn += size
        next_base = int(entries[-1]) + hold_bars
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def random_seed_return(
    gross: np.ndarray, rt: float, seed: int, *, n: int, hold_bars: int, p_entry: float
) -> tuple[float, int]:
    """(compounded net return, number of trades) of one seed of the random baseline.

    ``gross[i] = c[i + hold_bars] / c[i]``, computed once for all seeds.
    """
    rng = np.random.default_rng(seed)
    entries = random_entries(rng, n // hold_bars + 1, n=n, hold_bars=hold_bars, p_entry=p_entry)
    return compound(net_of_cost(gross[entries], rt)), entries.size


def random_baseline(
    close: np.ndarray,
    round_trip_cost: float,
    *,
    n_seeds: int = 100,
    hold_bars: int = 24,
    p_entry: float | None = None,
) -> BaselineResult:
    """Mean over ``n_seeds`` seeds of random long trades of ``hold_bars`` bars (DESIGN 5).

    Seeds run one after the other, each vectorised over its trades, and their returns are folded
    into a running mean and variance (Welford), so memory is O(n) whatever ``n_seeds`` is.

    :param p_entry: per-bar entry probability while flat; default ``1 / hold_bars``.
    """
    prices = validate_close(close)
    rt = _check_rt(round_trip_cost)
    n_seeds = _positive_int("n_seeds", n_seeds)
    hold_bars = _positive_int("hold_bars", hold_bars)
    p = 1.0 / hold_bars if p_entry is None else float(p_entry)
    if not 0 < p <= 1:
        raise ValueError(f"p_entry must be in (0, 1], got {p_entry!r}")
    n = prices.size
    # The gross ratio of a trade entered at bar i: one O(n) array shared by every seed.
    gross = prices[hold_bars:] / prices[: max(n - hold_bars, 0)]
    mean = m2 = 0.0
    total_trades = 0
    for seed in range(n_seeds):
        ret, n_trades = random_seed_return(gross, rt, seed, n=n, hold_bars=hold_bars, p_entry=p)
        total_trades += n_trades
        delta = ret - mean
        mean += delta / (seed + 1)
        m2 += delta * (ret - mean)
    return BaselineResult(
        "random",
        mean,
        total_trades / n_seeds,
        n_seeds=n_seeds,
        hold_bars=hold_bars,
        return_std=math.sqrt(max(m2, 0.0) / n_seeds),
    )


def compute_baselines(
    close: np.ndarray, round_trip_cost: float, *, n_seeds: int, hold_bars: int
) -> tuple[BaselineResult, ...]:
    """The three baselines of one key, in :data:`BASELINE_TYPES` order."""
    by_type = {
        "buy_and_hold": buy_and_hold(close, round_trip_cost),
        "random": random_baseline(close, round_trip_cost, n_seeds=n_seeds, hold_bars=hold_bars),
        "naive": naive(close),
    }
    return tuple(by_type[name] for name in BASELINE_TYPES)

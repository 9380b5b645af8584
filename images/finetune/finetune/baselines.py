"""Same-basis naive baselines over one test window (DESIGN 5, "Baselines").

Every baseline takes the test window's close prices ``c[0..n-1]`` and the key's round-trip cost
``rt`` (see :mod:`finetune.costs`) and nets each trade as ``c[exit] / c[entry] - 1 - rt``.

Degenerate windows are defined, not refused: a window of one bar has no bar to exit on, so every
baseline makes 0 trades and returns 0; a window shorter than ``hold_bars + 1`` bars gives the
random baseline 0 trades. An empty window is a ``ValueError`` (there is no basis to compare on).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from finetune.costs import compound, net_of_cost, trade_returns

BASELINE_TYPES = ("buy_and_hold", "random", "naive")


@dataclass(frozen=True)
class BaselineResult:
    """One baseline row. ``n_trades`` is the mean over seeds for ``random``.

    ``return_std`` is the population standard deviation (ddof=0) of the per-seed returns: the
    seeds are the whole population of the baseline, not a sample of a larger one. ``exposure`` is
    the share of the window's ``n - 1`` bar-to-bar holding periods spent long (the model's
    convention, :func:`finetune.significance.exposure`): 1 for buy-and-hold, 0 for naive, the mean
    over seeds of ``n_trades * hold_bars / (n - 1)`` for random, 0 on a one-bar window.
    ``seed_p05/p50/p95`` are the quantiles of the seeds' net returns (numpy's default, linear
    method), on random rows only.
    """

    baseline_type: str
    net_return: float
    n_trades: float
    n_seeds: int | None = None
    hold_bars: int | None = None
    return_std: float | None = None
    exposure: float | None = None
    seed_p05: float | None = None
    seed_p50: float | None = None
    seed_p95: float | None = None


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
        return BaselineResult("buy_and_hold", 0.0, 0.0, exposure=0.0)
    net = compound(trade_returns(prices[:1], prices[-1:], rt))
    return BaselineResult("buy_and_hold", net, 1.0, exposure=1.0)


def naive(close: np.ndarray) -> BaselineResult:
    """Stay flat: 0 trades, net return 0 whatever the cost."""
    validate_close(close)
    return BaselineResult("naive", 0.0, 0.0, exposure=0.0)


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


@dataclass(frozen=True)
class RandomSeeds:
    """The random baseline's seeds on one window, netted for each of its cost bases.

    ``returns[j, s]`` is seed ``s``'s compounded net return at ``round_trip_costs[j]``;
    ``n_trades[s]`` its trade count (the same at every cost: the entries do not depend on it).
    Memory is ``O(n_seeds * n_costs)`` numbers, never ``n_seeds x n``.
    """

    round_trip_costs: tuple[float, ...]
    returns: np.ndarray
    n_trades: np.ndarray
    n_bars: int
    hold_bars: int

    def result(self, j: int) -> BaselineResult:
        """The random baseline row at ``round_trip_costs[j]``, with its seed quantiles."""
        returns = self.returns[j]
        p05, p50, p95 = np.quantile(returns, (0.05, 0.5, 0.95)).tolist()
        held_periods = float(self.n_trades.mean()) * self.hold_bars
        return BaselineResult(
            "random",
            float(returns.mean()),
            float(self.n_trades.mean()),
            n_seeds=int(returns.size),
            hold_bars=self.hold_bars,
            return_std=float(returns.std()),
            exposure=held_periods / (self.n_bars - 1) if self.n_bars > 1 else 0.0,
            seed_p05=p05,
            seed_p50=p50,
            seed_p95=p95,
        )


def random_seeds(
    close: np.ndarray,
    round_trip_costs: Sequence[float],
    *,
    n_seeds: int = 100,
    hold_bars: int = 24,
    p_entry: float | None = None,
) -> RandomSeeds:
    """Every seed of the random baseline (DESIGN 5) on one window, for all its cost bases at once.

    Each seed's entries and gross trade ratios are drawn once and netted per cost basis: the
    entries do not depend on the cost, and drawing them is most of the work. Seeds run one after
    the other, each vectorised over its trades, so memory is O(n) plus ``n_seeds`` numbers per
    cost basis, whatever ``n_seeds`` is.

    :param p_entry: per-bar entry probability while flat; default ``1 / hold_bars``.
    """
    prices = validate_close(close)
    costs = tuple(_check_rt(rt) for rt in round_trip_costs)
    n_seeds = _positive_int("n_seeds", n_seeds)
    hold_bars = _positive_int("hold_bars", hold_bars)
    p = 1.0 / hold_bars if p_entry is None else float(p_entry)
    if not 0 < p <= 1:
        raise ValueError(f"p_entry must be in (0, 1], got {p_entry!r}")
    n = prices.size
    # The gross ratio of a trade entered at bar i: one O(n) array shared by every seed.
    gross = prices[hold_bars:] / prices[: max(n - hold_bars, 0)]
    returns = np.empty((len(costs), n_seeds))
    n_trades = np.empty(n_seeds, dtype=np.int64)
    m = n // hold_bars + 1
    for seed in range(n_seeds):
        entries = random_entries(np.random.default_rng(seed), m, n=n, hold_bars=hold_bars, p_entry=p)
        seed_gross = gross[entries]
        n_trades[seed] = entries.size
        for j, rt in enumerate(costs):
            returns[j, seed] = compound(net_of_cost(seed_gross, rt))
    return RandomSeeds(costs, returns, n_trades, n_bars=n, hold_bars=hold_bars)


def random_baseline(
    close: np.ndarray,
    round_trip_cost: float,
    *,
    n_seeds: int = 100,
    hold_bars: int = 24,
    p_entry: float | None = None,
) -> BaselineResult:
    """Mean over ``n_seeds`` seeds of random long trades of ``hold_bars`` bars (DESIGN 5).

    With the seeds' std, mean trade count, mean exposure and return quantiles; memory is O(n)
    whatever ``n_seeds`` is (see :func:`random_seeds`).

    :param p_entry: per-bar entry probability while flat; default ``1 / hold_bars``.
    """
    seeds = random_seeds(close, (round_trip_cost,), n_seeds=n_seeds, hold_bars=hold_bars, p_entry=p_entry)
    return seeds.result(0)


@dataclass(frozen=True)
class WindowBaselines:
    """The baselines of one test window for each of its cost bases, and the random seeds' returns."""

    by_cost: dict[float, tuple[BaselineResult, ...]]
    seeds: RandomSeeds

    def seed_returns(self, round_trip_cost: float) -> np.ndarray:
        """The random seeds' net returns at ``round_trip_cost`` (for the model's percentile)."""
        return self.seeds.returns[self.seeds.round_trip_costs.index(round_trip_cost)]


def compute_window_baselines(
    close: np.ndarray, round_trip_costs: Sequence[float], *, n_seeds: int, hold_bars: int
) -> WindowBaselines:
    """The three baselines of every cost basis of one window, the random seeds drawn once."""
    costs = tuple(dict.fromkeys(float(rt) for rt in round_trip_costs))  # distinct, in order
    seeds = random_seeds(close, costs, n_seeds=n_seeds, hold_bars=hold_bars)
    flat = naive(close)
    by_cost = {}
    for j, rt in enumerate(costs):
        by_type = {"buy_and_hold": buy_and_hold(close, rt), "random": seeds.result(j), "naive": flat}
        by_cost[rt] = tuple(by_type[name] for name in BASELINE_TYPES)
    return WindowBaselines(by_cost=by_cost, seeds=seeds)


def compute_baselines(
    close: np.ndarray, round_trip_cost: float, *, n_seeds: int, hold_bars: int
) -> tuple[BaselineResult, ...]:
    """The three baselines of one key, in :data:`BASELINE_TYPES` order."""
    window = compute_window_baselines(close, (round_trip_cost,), n_seeds=n_seeds, hold_bars=hold_bars)
    return window.by_cost[float(round_trip_cost)]

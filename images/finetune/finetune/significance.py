"""Significance of a model in the pod: two questions, two tests (DESIGN 5 "Shift test"), plus the
model's rank among its own shifted copies and among the random baseline's seeds.

The model's test-window positions follow :func:`finetune.model.evaluate`'s convention:
``position[t]`` (0 flat, 1 long) is held from ``close[t]`` to ``close[t+1]``; the book is flat
after the last bar whatever its position says; a trade opens where the position rises and closes
where it falls; each nets ``c[exit] / c[entry] - 1 - rt``; trades compound.

- **Timing** (:func:`shift_test`, once per model, whatever the cost): does the model's timing
  beat its own circularly shifted copies? Each bar's next return is scaled by a volatility known
  at bar ``t``, ``z[t] = log(c[t+1] / c[t]) / sigma[t]`` (:func:`ewma_volatility`, RiskMetrics'
  EWMA of squared log returns, lambda 0.94; ``z[n-1] = 0``, the last position is never held),
  and the statistic is studentised over the bars the book holds:
  ``T = sum_t pos[t] z[t] / sqrt(sum_t pos[t] z[t]^2)`` (0 for a book that never holds). A book
  that is long only in volatile stretches, with no directional skill, wins nothing on ``T``: the
  scaling puts every bar on one scale, and where a model knows the coming volatility better than
  the EWMA (``l2_features`` reads the bar's range), the denominator takes the bars it holds at
  their own size, as each shifted copy's does for its own bars. Measured on 100 random-walk
  markets with the real model: 5.7 % of the trading models at p <= 0.05 on ``T`` (5.8 % on the
  plain sum); the ``l2_features`` models alone still reach 8.1 % on either, an open question. The offsets
  (:func:`timing_offsets`) are ``n_shifts`` distinct ones drawn without replacement from the
  whole circle ``[1, n - 1]``, or all of them when the window has no more.
  ``p = (1 + #(T_k >= T)) / (1 + len(offsets))`` (Phipson & Smyth 2010: never 0); a shift keeps
  the exposure and, up to the wrap, the trade count.

  Why the whole circle: the test is exact when the offsets are the rotation group (every shift of
  a circle whose returns are exchangeable), and a model's positions persist for tens to hundreds of
  bars. Cutting out the offsets near the model's own bar (those within the hold, and those that
  bring a position back across the wrap within its features' look-back, as issue 16 first asked)
  leaves an arc of copies that resemble each other more than they resemble the model, and the
  test over-rejects in both tails: measured with the real model on 150 random-walk markets
  (``benchmarks/bench_calibration.py``), the arc ``[24, n - 337]`` gave 7.4 % of the trading
  models p <= 0.05 and 13.4 % p <= 0.10; the whole circle 4.9 % and 11.3 % (40 markets, both
  inside their 95 % intervals of nominal), a symmetric cut ``[24, n - 24]`` 5.9 % and 11.9 %.
  ``hold_bars`` and ``lookback`` are kept as options for such experiments; the runner does not
  use them.
- **Profit after costs** (:func:`profit_tests`, per cost basis): is the model's per-bar net log
  P&L (its equity curve, :func:`finetune.model.net_bar_returns`) above zero, and above
  buy-and-hold's on the same bars, beyond what a circular block bootstrap
  (``arch.bootstrap.CircularBlockBootstrap``, blocks of ``hold_bars`` bars, Politis & Romano
  1992) of that series gives by chance? ``p = (1 + #(mean_b - mean >= mean)) / (1 + B)``. The sum of
  the log P&L is ``log(1 + net_return)``, so a mean above zero is a net return above zero.
  The same pass gives the per-bar Sharpe ratio, skewness and kurtosis (scipy) that the findings'
  deflated Sharpe ratio needs.
- **Matched percentile** (:func:`matched_percentiles`, per cost): the share of the model's
  shifted copies (the timing offsets) whose net return at the cost is below the model's, ties
  counting half: same exposure and, up to the wrap, the same trades, so 0.5 is "no better than
  its own timing shuffled", at any cost.
- **Exposure** (:func:`exposure`): the share of the window's ``n - 1`` bar-to-bar holding
  periods spent long; buy-and-hold is 1, a flat book 0, a one-bar window 0.
- **Random percentile** (:func:`random_percentile`): the share of the random seeds whose net
  return is below the model's, ties counting half (``scipy.stats.percentileofscore(kind="mean")``
  / 100). At a non-zero cost it mostly measures how much the model trades next to the random
  baseline; the matched percentile is the one to read.

Shifted sequences are evaluated in chunks of rows cut from a sliding view of the positions
repeated twice, so memory stays flat in ``n_shifts``; bootstrap indices come in chunks too, and
one set of indices serves every cost basis and both profit questions of a window.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from finetune.baselines import validate_close
from finetune.model import net_bar_returns

SHIFT_SEED = 0
BOOTSTRAP_SEED = 0
DEFAULT_N_SHIFTS = 999
# RiskMetrics' decay for the volatility that scales each bar's return (Morgan/Reuters 1996):
# a half-life of about 11 bars, quick enough to follow a volatility cluster as it forms.
EWMA_LAMBDA = 0.94
# Squared returns the EWMA needs before its volatility is used; earlier bars weigh nothing.
EWMA_MIN_RETURNS = 24
# Cells of a chunk's (rows, n) matrix: about 1 MiB of booleans (8 MiB of indices) whatever n_shifts is.
CHUNK_CELLS = 1 << 20


@dataclass(frozen=True)
class ShiftTest:
    """The timing test of one model: its p-value, how many shifts made it, the model's return."""

    p_value: float
    n_shifts: int
    model_return: float  # net of the cost asked for (the timing test itself does not depend on it)
    statistic: float = 0.0  # the model's studentised sum of volatility-scaled returns while long


@dataclass(frozen=True)
class ProfitTest:
    """Profit after costs of one model at one cost basis (block bootstrap), and its bar moments."""

    p_value: float  # H0: mean per-bar net log P&L <= 0
    p_value_vs_buy_and_hold: float  # H0: mean per-bar (model - buy-and-hold) log P&L <= 0
    n_resamples: int
    bar_sharpe: float | None  # mean / std (ddof=0) of the per-bar net returns; None when flat
    bar_skewness: float | None
    bar_kurtosis: float | None  # Pearson's (3 for a normal), as the deflated Sharpe ratio uses it


def validate_positions(positions: np.ndarray, n: int) -> np.ndarray:
    """``positions`` as a boolean array of ``n`` long/flat values (0/1), or ValueError."""
    values = np.asarray(positions)
    if values.shape != (n,):
        raise ValueError(f"positions must have one value per close ({n}), got shape {values.shape}")
    if not np.all((values == 0) | (values == 1)):
        bad = int(np.flatnonzero((values != 0) & (values != 1))[0])
        raise ValueError(f"positions must be 0 (flat) or 1 (long), got {values[bad].item()!r} at bar {bad}")
    return values.astype(bool)


def _check_costs(round_trip_costs: Sequence[float]) -> tuple[float, ...]:
    costs = tuple(float(rt) for rt in round_trip_costs)
    for rt in costs:
        if not math.isfinite(rt) or rt < 0:
            raise ValueError(f"round_trip_cost must be a finite fraction >= 0, got {rt!r}")
    return costs


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def exposure(positions: np.ndarray) -> float:
    """Share of the window's ``n - 1`` holding periods spent long (see the module docstring)."""
    held = np.asarray(positions)
    if held.ndim != 1 or held.size == 0:
        raise ValueError(f"positions must be a non-empty 1-D array, got shape {held.shape}")
    held = validate_positions(held, held.size)
    if held.size < 2:
        return 0.0
    return float(np.count_nonzero(held[:-1])) / (held.size - 1)


def position_list(positions: np.ndarray) -> list[int]:
    """The positions as plain 0/1 ints in bar order (the ``smallint[]`` stored on the model row)."""
    values = np.asarray(positions)
    return validate_positions(values, values.size).astype(int).tolist()


def compounded_returns(held: np.ndarray, prices: np.ndarray, round_trip_costs: Sequence[float]) -> np.ndarray:
    """Net compounded return of each row of long/flat ``held`` (rows, n), for each cost basis.

    Returns ``(len(round_trip_costs), rows)``. Each row is evaluated as the model's own: its last
    bar forced flat, trades from each rise to the next fall, ``prod(c[x]/c[e] - 1 - rt + 1) - 1``.
    ``held`` is modified (its last column is cleared).
    """
    rows, n = held.shape
    held[:, -1] = False
    change = np.diff(held, axis=1, prepend=False)  # booleans diff as "differs": True at each flip
    # Rises and falls alternate along a row, starting with a rise and ending flat: the flips of the
    # flattened matrix, in row-major order, pair up as (entry, exit) within each row. flatnonzero
    # on the flat view is an order of magnitude faster than a 2-D nonzero.
    flips = np.flatnonzero(change)
    entries, exits = flips[0::2], flips[1::2]
    trade_rows = entries // n
    gross = prices[exits - trade_rows * n] / prices[entries - trade_rows * n]
    counts = np.bincount(trade_rows, minlength=rows)
    traded = counts > 0
    starts = (np.cumsum(counts) - counts)[traded]
    result = np.zeros((len(round_trip_costs), rows))
    for j, rt in enumerate(round_trip_costs):
        if starts.size:
            # The same arithmetic as costs.compound(costs.net_of_cost(...)), one segment per row.
            growth = np.multiply.reduceat((gross - 1.0 - rt) + 1.0, starts)
            result[j, traded] = growth - 1.0
    return result


def ewma_volatility(close: np.ndarray) -> np.ndarray:
    """``sigma[t]``: the EWMA volatility of the log returns up to bar ``t`` (known at its close).

    ``sigma[t]^2`` weighs ``r[t], r[t-1], ...`` (``r[t] = log(c[t] / c[t-1])``) by
    ``lambda^0, lambda^1, ...`` (pandas' ``ewm(alpha=1 - lambda)``); NaN until
    :data:`EWMA_MIN_RETURNS` returns are in. Pass the whole history before a window, and slice,
    to have a volatility from the window's first bar on.
    """
    prices = validate_close(close)
    squared = np.square(np.diff(np.log(prices), prepend=np.nan))
    variance = pd.Series(squared).ewm(alpha=1.0 - EWMA_LAMBDA, min_periods=EWMA_MIN_RETURNS, ignore_na=True).mean()
    return np.sqrt(variance.to_numpy())


def scaled_returns(close: np.ndarray, volatility: np.ndarray | None = None) -> np.ndarray:
    """``z[t] = log(c[t+1] / c[t]) / sigma[t]``, 0 at the last bar and where ``sigma`` is unknown or 0.

    :param volatility: ``sigma`` per bar of ``close`` (default: :func:`ewma_volatility` of
        ``close`` itself, so the window's first :data:`EWMA_MIN_RETURNS` bars weigh nothing).
    """
    prices = validate_close(close)
    sigma = ewma_volatility(prices) if volatility is None else np.asarray(volatility, dtype=np.float64)
    if sigma.shape != prices.shape:
        raise ValueError(f"volatility must have one value per close ({prices.size}), got shape {sigma.shape}")
    z = np.zeros(prices.size)
    ahead = np.diff(np.log(prices))
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = ahead / sigma[:-1]
    usable = np.isfinite(scaled) & (sigma[:-1] > 0)
    z[:-1][usable] = scaled[usable]
    return z


def timing_offsets(n: int, n_shifts: int, *, hold_bars: int = 1, lookback: int = 0) -> np.ndarray:
    """The shift test's offsets: distinct, from ``[max(1, hold_bars), n - lookback - 1]`` (the
    whole circle ``[1, n - 1]`` by default, which is what keeps the test's level).

    ``n_shifts`` of them drawn without replacement by ``default_rng(0)`` (sorted), or all of the
    range when it holds no more than that; none when it is empty.
    """
    n_shifts = _count("n_shifts", n_shifts)
    low, high = max(1, _count("hold_bars", hold_bars)), n - 1 - _count("lookback", lookback)
    candidates = np.arange(low, high + 1, dtype=np.int64)
    if candidates.size <= n_shifts:
        return candidates
    return np.sort(np.random.default_rng(SHIFT_SEED).choice(candidates, size=n_shifts, replace=False))


def _shift_rows(doubled: np.ndarray, n: int, offsets: np.ndarray) -> np.ndarray:
    """``np.roll(pos, k)`` for each ``k`` in ``offsets``, as rows cut from ``pos`` repeated twice.

    ``np.roll(pos, k)[t] = pos[(t - k) % n] = doubled[n - k + t]`` for ``0 < k < n``.
    """
    windows = np.lib.stride_tricks.sliding_window_view(doubled, n)
    return windows[n - offsets]  # fancy indexing: a (rows, n) copy of this chunk only


def _shifted_chunks(held: np.ndarray, offsets: np.ndarray, chunk_cells: int) -> Iterator[np.ndarray]:
    """``np.roll(held, k)`` for the offsets, as (rows, n) boolean chunks of about ``chunk_cells``."""
    n = held.size
    doubled = np.concatenate((held, held))
    rows_per_chunk = max(1, int(chunk_cells) // n)
    for start in range(0, offsets.size, rows_per_chunk):
        yield _shift_rows(doubled, n, offsets[start : start + rows_per_chunk])


def shift_test(
    positions: np.ndarray,
    close: np.ndarray,
    round_trip_cost: float = 0.0,
    *,
    n_shifts: int = DEFAULT_N_SHIFTS,
    hold_bars: int = 1,
    lookback: int = 0,
    volatility: np.ndarray | None = None,
    chunk_cells: int = CHUNK_CELLS,
) -> ShiftTest:
    """The timing test of long/flat ``positions`` over ``close`` (see the module docstring).

    :param positions: the model's 0/1 position per test bar.
    :param close: the test window's close prices.
    :param round_trip_cost: only for the returned ``model_return``; the test ignores costs (a
        shift keeps the trades, so the cost would cancel).
    :param n_shifts: offsets asked for (DAG param and CLI ``n_shifts``, default 999).
    :param hold_bars: offsets below it are not used (default 1: none left out; see the module
        docstring for why the runner leaves none out).
    :param lookback: offsets within it of the wrap are not used (default 0).
    :param volatility: ``sigma`` per bar of ``close``, known at each bar (the runner passes the
        EWMA over the whole history, sliced to the window); default: :func:`ewma_volatility` of
        ``close`` alone.
    """
    prices = validate_close(close)
    n = prices.size
    held = validate_positions(positions, n)
    rt = _check_costs((round_trip_cost,))[0]
    offsets = timing_offsets(n, n_shifts, hold_bars=hold_bars, lookback=lookback)
    z = scaled_returns(prices, volatility)
    columns = np.column_stack((z, z * z))  # one product gives each book's sum and sum of squares
    statistic = float(_studentised(held[None, :].astype(np.float64) @ columns)[0])
    # Identical sequences must tie however BLAS sums them: compare within a rounding margin.
    margin = 1e-9 * (abs(statistic) + 1.0)
    at_least = 0
    for shifted in _shifted_chunks(held, offsets, chunk_cells):
        at_least += int(np.count_nonzero(_studentised(shifted.astype(np.float64) @ columns) >= statistic - margin))
    model_return = float(compounded_returns(held[None, :].copy(), prices, (rt,))[0, 0])
    return ShiftTest(
        p_value=float((1 + at_least) / (1 + offsets.size)),
        n_shifts=int(offsets.size),
        model_return=model_return,
        statistic=statistic,
    )


def _studentised(sums: np.ndarray) -> np.ndarray:
    """``sum z / sqrt(sum z^2)`` per row of (rows, 2) sums; 0 where a book holds no scaled bar."""
    total, squares = sums[:, 0], sums[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(squares > 0, total / np.sqrt(squares), 0.0)


def matched_percentiles(
    positions: np.ndarray,
    close: np.ndarray,
    round_trip_costs: Sequence[float],
    offsets: np.ndarray,
    *,
    chunk_cells: int = CHUNK_CELLS,
) -> list[float | None]:
    """Per cost basis, the share of the shifted copies whose net return is below the model's,
    ties counting half; None when there is no offset. Their trades are found once for all costs.
    """
    prices = validate_close(close)
    held = validate_positions(positions, prices.size)
    costs = _check_costs(round_trip_costs)
    offsets = np.asarray(offsets, dtype=np.int64)
    model = compounded_returns(held[None, :].copy(), prices, costs)[:, 0]
    below = np.zeros(len(costs))
    for shifted in _shifted_chunks(held, offsets, chunk_cells):
        returns = compounded_returns(shifted, prices, costs)
        below += np.count_nonzero(returns < model[:, None], axis=1)
        below += 0.5 * np.count_nonzero(returns == model[:, None], axis=1)
    return [float(b / offsets.size) if offsets.size else None for b in below.tolist()]


def _bootstrap_blocks(n: int, *, n_resamples: int, block: int, chunk_cells: int) -> Iterator[np.ndarray]:
    """Chunks of (rows, blocks) block starts of arch's circular block bootstrap, seeded: the same
    for every series of ``n`` bars. Each resample is its blocks of ``block`` bars (1 to ``n``) from
    those starts (wrapping), the last one cut so that the resample has ``n`` bars."""
    from arch.bootstrap import CircularBlockBootstrap  # imported on first use: arch loads in ~2 s

    bootstrap = CircularBlockBootstrap(block, np.empty(n), seed=np.random.default_rng(BOOTSTRAP_SEED))
    rows_per_chunk = max(1, int(chunk_cells) // n)
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        # arch's indices are the blocks laid end to end: every block-th one is a block's start
        yield np.stack([bootstrap.update_indices()[::block] for _ in range(rows)])


def _resample_means(matrix: np.ndarray, starts: np.ndarray, block: int) -> np.ndarray:
    """The mean of each series (rows of ``matrix``) over each resample (rows of ``starts``), from
    circular prefix sums: a block's sum is a difference of two of them, so a resample costs its
    blocks, not its bars. Returns (series, resamples)."""
    n = matrix.shape[1]
    prefix = np.concatenate((np.zeros((matrix.shape[0], 1)), np.cumsum(np.tile(matrix, 2), axis=1)), axis=1)
    lengths = np.full(starts.shape[1], block)
    lengths[-1] = n - block * (starts.shape[1] - 1)  # the last block is cut at n bars
    sums = (prefix[:, starts + lengths] - prefix[:, starts]).sum(axis=2)
    return sums / n


def _moments(bar_returns: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """Per-bar Sharpe ratio (ddof=0, as :func:`finetune.model.evaluate`), skewness and Pearson
    kurtosis (scipy); None for a series without variation."""
    from scipy import stats

    std = float(bar_returns.std())
    if not std > 0:
        return None, None, None
    sharpe = float(bar_returns.mean()) / std
    skewness = float(stats.skew(bar_returns))
    kurtosis = float(stats.kurtosis(bar_returns, fisher=False))
    finite = [v if math.isfinite(v) else None for v in (sharpe, skewness, kurtosis)]
    return finite[0], finite[1], finite[2]


def profit_tests(
    positions: np.ndarray,
    close: np.ndarray,
    round_trip_costs: Sequence[float],
    *,
    n_resamples: int = DEFAULT_N_SHIFTS,
    block_bars: int = 24,
    chunk_cells: int = CHUNK_CELLS,
) -> list[ProfitTest]:
    """Profit after costs of ``positions`` at each cost basis (see the module docstring).

    :param n_resamples: bootstrap resamples (the run's ``n_shifts``).
    :param block_bars: the bootstrap's block length (the run's ``hold_bars``: a trade's P&L is
        autocorrelated over about that many bars).
    """
    prices = validate_close(close)
    n = prices.size
    held = validate_positions(positions, n)
    costs = _check_costs(round_trip_costs)
    n_resamples = _count("n_resamples", n_resamples)
    always_long = np.ones(n)
    model = [net_bar_returns(held, prices, rt) for rt in costs]
    series = [np.log1p(r) for r in model]
    series += [x - np.log1p(net_bar_returns(always_long, prices, rt)) for x, rt in zip(series, costs, strict=True)]
    observed = np.array([float(x.mean()) for x in series])
    matrix = np.stack(series)
    at_least = np.zeros(len(series), dtype=np.int64)
    # Prefix sums round in the last bits: a resample's mean counts as reaching the bar within that.
    margin = 1e-9 * (np.abs(matrix).max(axis=1) + 1e-300)
    block = min(max(1, block_bars), n)
    for starts in _bootstrap_blocks(n, n_resamples=n_resamples, block=block, chunk_cells=chunk_cells):
        means = _resample_means(matrix, starts, block)  # (series, rows)
        at_least += np.count_nonzero(means - observed[:, None] >= observed[:, None] - margin[:, None], axis=1)
    p_values = (1 + at_least) / (1 + n_resamples)
    k = len(costs)
    return [ProfitTest(float(p_values[j]), float(p_values[k + j]), n_resamples, *_moments(model[j])) for j in range(k)]


def random_percentile(model_return: float, seed_returns: np.ndarray) -> float:
    """Share of ``seed_returns`` below ``model_return``, ties counting half, in [0, 1]."""
    seeds = np.asarray(seed_returns, dtype=np.float64)
    if seeds.ndim != 1 or seeds.size == 0:
        raise ValueError(f"seed_returns must be a non-empty 1-D array, got shape {seeds.shape}")
    if not math.isfinite(model_return) or not np.all(np.isfinite(seeds)):
        raise ValueError(f"returns must be finite, got model {model_return!r} and seeds with NaN/inf")
    below = np.count_nonzero(seeds < model_return)
    tied = np.count_nonzero(seeds == model_return)
    return float((below + 0.5 * tied) / seeds.size)

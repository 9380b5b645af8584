"""Significance of a model in the pod: two questions, two tests (DESIGN 5 "Shift test"), plus the
model's rank among its own shifted copies and among the random baseline's seeds.

The model's test-window positions follow :func:`finetune.model.evaluate`'s convention:
``position[t]`` (0 flat, 1 long) is held from ``close[t]`` to ``close[t+1]``; the book is flat
after the last bar whatever its position says; a trade opens where the position rises and closes
where it falls; each nets ``c[exit] / c[entry] - 1 - rt``; trades compound.

- **Timing** (:func:`shift_test`, once per model, whatever the cost): are the model's moves in
  and out of the market followed by returns in their direction? Each bar's next return is scaled
  by a volatility known at bar ``t``, ``z[t] = log(c[t+1] / c[t]) / sigma[t]``
  (:func:`ewma_volatility`, RiskMetrics' EWMA of squared log returns, lambda 0.94; ``z[n-1] = 0``,
  the last position is never held), and weighed by the book's exposure less its own average
  exposure *before* that bar, ``w[t] = pos[t] - mean(pos[:t])`` (:func:`timing_weights`; recursive
  demeaning, So & Shin 1999, known at ``t``). The statistic is studentised,
  ``T = sum_t w[t] z[t] / sqrt(sum_t (w[t] z[t])^2)``, and its null distribution is that of the
  same sum with each bar's sign flipped by a fair coin, ``n_shifts`` times (seed 0): under no
  timing a bar's scaled return is as likely up as down, whatever the book did before it.
  ``p = (1 + #(T_b >= T)) / (1 + n_shifts)`` (Phipson & Smyth 2010: never 0); its floor is
  ``1 / (1 + n_shifts)`` whatever the window's length. A book that never changes its exposure has
  ``T = 0`` and ``p = 1``; a drift in the market weighs only through ``sum w``, near 0.

  A book that is long only in volatile stretches wins nothing on ``T``: every bar is on one scale,
  and where a model knows the coming volatility better than the EWMA (``l2_features`` reads the
  bar's range), the denominator takes its bars at their own size.

  Why not the model's circularly shifted copies (the first design of issue 16): their mean is
  ``mean(pos) * sum z``, and the window's mean exposure looks ahead. A model that buys after a fall
  spends more of a falling window long, so on a random walk it beats its own shifted copies more
  often than chance: measured with the real model on 150 random-walk markets
  (``benchmarks/bench_calibration.py``), 5.9 % of the trading models at p <= 0.05 and 11.7 % at
  p <= 0.10, the reactive ``l2_features`` models 8.4 % and 15.2 %. Cutting the look-ahead offsets
  out (those that bring a position back across the wrap within its features' look-back) did not
  help: an arc of offsets leaves the model at its end, where a smooth process is extreme more
  often, and over-rejected in both tails (7.4 % and 13.4 %). On the same 150 markets' models
  this test gives 4.5 % and 10.0 % (``l2_features`` 4.8 % and 10.2 %; over 300 markets, 9,938
  models: 4.7 % and 10.0 %, nominal inside both 95 % intervals), with about the same power
  on the planted market at beta 0.5 (34.9 % of the planted btc_features models at p <= 0.01,
  36.6 % with the shifts).
- **Profit after costs** (:func:`profit_tests`, per cost basis): is the model's per-bar net log
  P&L (its equity curve, :func:`finetune.model.net_bar_returns`) above zero, and above
  buy-and-hold's on the same bars, beyond what a circular block bootstrap
  (``arch.bootstrap.CircularBlockBootstrap``, blocks of ``hold_bars`` bars, Politis & Romano
  1992) of that series gives by chance? ``p = (1 + #(mean_b - mean >= mean)) / (1 + B)``. The sum of
  the log P&L is ``log(1 + net_return)``, so a mean above zero is a net return above zero.
  The same pass gives the per-bar Sharpe ratio, skewness and kurtosis (scipy) that the findings'
  deflated Sharpe ratio needs.
- **Matched percentile** (:func:`matched_percentiles`, per cost): the share of the model's
  circularly shifted copies (:func:`shift_offsets`, from the whole circle) whose net return at
  the cost is below the model's, ties counting half: same exposure and, up to the wrap, the same trades, so 0.5 is "no better than
  its own timing shuffled", at any cost.
- **Exposure** (:func:`exposure`): the share of the window's ``n - 1`` bar-to-bar holding
  periods spent long; buy-and-hold is 1, a flat book 0, a one-bar window 0.
- **Random percentile** (:func:`random_percentile`): the share of the random seeds whose net
  return is below the model's, ties counting half (``scipy.stats.percentileofscore(kind="mean")``
  / 100). At a non-zero cost it mostly measures how much the model trades next to the random
  baseline; the matched percentile is the one to read.

Sign flips are drawn and shifted sequences evaluated in chunks of rows (the shifts cut from a
sliding view of the positions repeated twice), so memory stays flat in ``n_shifts``; bootstrap
indices come in chunks too, and one set of indices serves every cost basis and both profit
questions of a window.
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
    """The timing test of one model: its p-value, how many sign-flip draws made it (``n_shifts``,
    the name the rows keep: ``perm_n_shifts``), the model's return."""

    p_value: float
    n_shifts: int
    model_return: float  # net of the cost asked for (the timing test itself does not depend on it)
    statistic: float = 0.0  # T: the studentised sum of the timing weights times the scaled returns


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


def timing_weights(positions: np.ndarray) -> np.ndarray:
    """``w[t] = pos[t] - mean(pos[0 .. t-1])``, 0 at bar 0: each bar's exposure less the book's own
    average exposure before it, so known at ``t`` (recursive demeaning, So & Shin 1999).

    Centring by the window's whole mean exposure instead looks ahead: a model that buys after a
    fall spends more of a falling window long, so its mean exposure is larger where the window's
    returns are lower, and its deviations from that mean then look like timing on a random walk.
    A book that never changes its exposure has every weight 0 (no timing to test).
    """
    held = np.asarray(positions, dtype=np.float64)
    weights = np.zeros(held.size)
    if held.size > 1:
        weights[1:] = held[1:] - np.cumsum(held)[:-1] / np.arange(1, held.size)
    return weights


def shift_offsets(n: int, n_shifts: int) -> np.ndarray:
    """The offsets of the shifted copies the matched percentile ranks the model among: ``n_shifts``
    distinct ones from the whole circle ``[1, n - 1]`` drawn without replacement by
    ``default_rng(0)`` (sorted), or all of them when the circle holds no more; none for one bar.
    """
    n_shifts = _count("n_shifts", n_shifts)
    candidates = np.arange(1, max(1, n), dtype=np.int64)
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


def _sign_flip_chunks(n: int, n_flips: int, chunk_cells: int) -> Iterator[np.ndarray]:
    """``n_flips`` rows of ``n`` fair coin flips (1: the bar's sign flipped), in (rows, n) float
    chunks of about ``chunk_cells``: the bits of ``default_rng(0)``'s 64-bit words, a row taking
    whole words, so every book of ``n`` bars meets the same flips whatever the chunking."""
    rng = np.random.default_rng(SHIFT_SEED)
    words = -(-n // 64)
    rows_per_chunk = max(1, int(chunk_cells) // max(1, n))
    for start in range(0, n_flips, rows_per_chunk):
        draws = rng.integers(0, 2**64, size=(min(rows_per_chunk, n_flips - start), words), dtype=np.uint64)
        yield np.unpackbits(draws.view(np.uint8), axis=1, count=n).astype(np.float64)


def shift_test(
    positions: np.ndarray,
    close: np.ndarray,
    round_trip_cost: float = 0.0,
    *,
    n_shifts: int = DEFAULT_N_SHIFTS,
    volatility: np.ndarray | None = None,
    chunk_cells: int = CHUNK_CELLS,
    hold_bars: int = 1,
    lookback: int = 0,
) -> ShiftTest:
    """The timing test of long/flat ``positions`` over ``close`` (see the module docstring).

    The name is DESIGN 4.3's for the per-model timing test; the test itself is a sign-flip
    randomisation now (the module docstring says why the circular shifts were dropped).

    :param positions: the model's 0/1 position per test bar.
    :param close: the test window's close prices.
    :param round_trip_cost: only for the returned ``model_return``; the test ignores costs.
    :param n_shifts: sign-flip draws (DAG param and CLI ``n_shifts``, default 999): the p-value's
        floor is ``1 / (1 + n_shifts)``, whatever the window's length.
    :param volatility: ``sigma`` per bar of ``close``, known at each bar (the runner passes the
        EWMA over the whole history, sliced to the window); default: :func:`ewma_volatility` of
        ``close`` alone.
    :param hold_bars: accepted (and checked) for callers of the circular-shift version, whose
        offsets kept clear of the hold; a sign flip has no offset, so it changes nothing.
    :param lookback: likewise (the shifts' distance from the wrap); changes nothing.
    """
    prices = validate_close(close)
    n = prices.size
    held = validate_positions(positions, n)
    rt = _check_costs((round_trip_cost,))[0]
    n_flips = _count("n_shifts", n_shifts)
    for name, value in (("hold_bars", hold_bars), ("lookback", lookback)):
        _count(name, value)  # checked, though a sign flip has no offset to keep clear
    terms = timing_weights(held) * scaled_returns(prices, volatility)  # 0 at the last bar: never held
    scale = math.sqrt(float(terms @ terms))  # the same for every flip: it studentises T and each T_b
    total = float(terms.sum())
    # Flipping a set of bars turns their terms' signs: T_b * scale = total - 2 * (their sum). Sums
    # of the same numbers in another order must tie, so they are compared within a rounding margin.
    margin = 1e-9 * (float(np.abs(terms).sum()) + 1e-300)
    at_least = 0
    for flipped in _sign_flip_chunks(n, n_flips, chunk_cells):
        at_least += int(np.count_nonzero(total - 2.0 * (flipped @ terms) >= total - margin))
    model_return = float(compounded_returns(held[None, :].copy(), prices, (rt,))[0, 0])
    return ShiftTest(
        p_value=float((1 + at_least) / (1 + n_flips)),
        n_shifts=n_flips,
        model_return=model_return,
        statistic=total / scale if scale > 0 else 0.0,
    )


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

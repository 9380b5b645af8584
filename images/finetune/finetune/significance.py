"""Significance of a model row in the pod: the exposure-matched shift test, and the rank among the
random baseline's seeds (DESIGN 4.2 "Significance", DESIGN 5 "Shift test").

The model's test-window positions follow :func:`finetune.model.evaluate`'s convention:
``position[t]`` (0 flat, 1 long) is held from ``close[t]`` to ``close[t+1]``; the book is flat
after the last bar whatever its position says; a trade opens where the position rises and closes
where it falls; each nets ``c[exit] / c[entry] - 1 - rt``; trades compound.

- **Exposure** (:func:`exposure`): the share of the window's ``n - 1`` bar-to-bar holding periods
  spent long, ``#{t < n - 1 : position[t] = 1} / (n - 1)``; the last bar's position is never
  held. Buy-and-hold is 1, a flat book 0, a one-bar window 0.
- **Shift test** (:func:`shift_test`): the positions circularly shifted by seeded random offsets,
  ``offsets = default_rng(0).integers(1, n, size=n_shifts)`` (none when ``n < 2``), each
  evaluated exactly as the model's own; ``p = (1 + #(shifted >= model)) / (1 + len(offsets))``.
  A shift keeps the exposure and, up to the wrap, the trade count, so only the timing is tested
  (a permutation test in the sense of Phipson & Smyth 2010: the +1s make p exact, never 0).
- **Random percentile** (:func:`random_percentile`): the share of the random seeds whose net
  return is below the model's, ties counting half (``scipy.stats.percentileofscore(kind="mean")``
  / 100; the pod image carries no scipy, the tests compare against it).

The shifted sequences are evaluated in chunks of rows, each a boolean ``(rows, n)`` matrix cut
from a sliding view of the positions repeated twice, so memory stays flat in ``n_shifts``; the
trades of a chunk are found once and netted for every cost basis of the window
(:func:`shift_tests`), because the entries and exits of a shift do not depend on the cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from finetune.baselines import validate_close

SHIFT_SEED = 0
# Cells of a chunk's (rows, n) position matrix: about 1 MiB of booleans whatever n_shifts is.
CHUNK_CELLS = 1 << 20


@dataclass(frozen=True)
class ShiftTest:
    """The shift test of one model row: its p-value, how many shifts made it, the model's return."""

    p_value: float
    n_shifts: int
    model_return: float


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


def _shift_rows(doubled: np.ndarray, n: int, offsets: np.ndarray) -> np.ndarray:
    """``np.roll(pos, k)`` for each ``k`` in ``offsets``, as rows cut from ``pos`` repeated twice.

    ``np.roll(pos, k)[t] = pos[(t - k) % n] = doubled[n - k + t]`` for ``0 < k < n``.
    """
    windows = np.lib.stride_tricks.sliding_window_view(doubled, n)
    return windows[n - offsets]  # fancy indexing: a (rows, n) copy of this chunk only


def shift_offsets(n: int, n_shifts: int) -> np.ndarray:
    """The DESIGN 5 offsets: ``default_rng(0).integers(1, n, size=n_shifts)``, none when ``n < 2``."""
    if n < 2:
        return np.empty(0, dtype=np.int64)
    return np.random.default_rng(SHIFT_SEED).integers(1, n, size=n_shifts)


def shift_tests(
    positions: np.ndarray,
    close: np.ndarray,
    round_trip_costs: Sequence[float],
    *,
    n_shifts: int,
    chunk_cells: int = CHUNK_CELLS,
) -> list[ShiftTest]:
    """:func:`shift_test` for every cost basis of one window, its shifts' trades found once.

    :param chunk_cells: cells of the (rows, n) matrix evaluated at a time; bounds the memory.
    """
    prices = validate_close(close)
    n = prices.size
    held = validate_positions(positions, n)
    costs = _check_costs(round_trip_costs)
    offsets = shift_offsets(n, _count("n_shifts", n_shifts))
    model = compounded_returns(held[None, :].copy(), prices, costs)[:, 0]
    at_least = np.zeros(len(costs), dtype=np.int64)
    doubled = np.concatenate((held, held))
    rows_per_chunk = max(1, int(chunk_cells) // n)
    for start in range(0, offsets.size, rows_per_chunk):
        shifted = _shift_rows(doubled, n, offsets[start : start + rows_per_chunk])
        returns = compounded_returns(shifted, prices, costs)
        at_least += np.count_nonzero(returns >= model[:, None], axis=1)
    return [
        ShiftTest(p_value=float((1 + count) / (1 + offsets.size)), n_shifts=int(offsets.size), model_return=float(ret))
        for count, ret in zip(at_least.tolist(), model.tolist(), strict=True)
    ]


def shift_test(positions: np.ndarray, close: np.ndarray, round_trip_cost: float, *, n_shifts: int) -> ShiftTest:
    """Exposure-matched significance of long/flat ``positions`` over ``close`` (DESIGN 5).

    :param positions: the model's 0/1 position per test bar.
    :param close: the test window's close prices.
    :param round_trip_cost: the key's round-trip cost (see :func:`finetune.costs.round_trip_cost`).
    :param n_shifts: how many shifted sequences (the run's ``n_seeds``).
    """
    (result,) = shift_tests(positions, close, (round_trip_cost,), n_shifts=n_shifts)
    return result


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

"""The one cost convention shared by the model and the baselines (DESIGN 5, "Cost basis").

A round trip costs ``rt = 2 * (cost_bps + slippage_bps) / 10_000`` of notional: half on entry,
half on exit, subtracted from the trade's gross return (the additive convention of the original
system): a trade from ``c_in`` to ``c_out`` nets ``c_out / c_in - 1 - rt``. Trades compound:
``prod(1 + r_i) - 1``. Keeping both formulas here means a model row and its baselines can never
drift onto different cost bases.
"""

from __future__ import annotations

import math

import numpy as np

BPS = 10_000


def _check_bps(name: str, value: float) -> float:
    """``value`` as a float, refusing what no cost basis can be (negative, NaN, inf, bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number of basis points, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number of basis points >= 0, got {value!r}")
    return number


def round_trip_cost(cost_bps: float, slippage_bps: float = 0) -> float:
    """Round-trip cost as a fraction of notional: ``2 * (cost_bps + slippage_bps) / 10_000``.

    :param cost_bps: fee per side, in basis points (>= 0).
    :param slippage_bps: slippage per side, in basis points (>= 0).
    """
    cost = _check_bps("cost_bps", cost_bps)
    slippage = _check_bps("slippage_bps", slippage_bps)
    return 2 * (cost + slippage) / BPS


def net_of_cost(gross_ratio: np.ndarray, rt: float) -> np.ndarray:
    """Net return of trades from their gross price ratio ``c_exit / c_entry``: ``ratio - 1 - rt``.

    Returns a new array (``gross_ratio`` is left as it is).
    """
    returns = np.subtract(gross_ratio, 1.0)
    returns -= rt
    return returns


def trade_returns(entry_close: np.ndarray, exit_close: np.ndarray, rt: float) -> np.ndarray:
    """Net return of each trade: ``c_exit / c_entry - 1 - rt`` (half of ``rt`` per side)."""
    return net_of_cost(np.divide(exit_close, entry_close), rt)


def compound(returns: np.ndarray) -> float:
    """Compounded return of consecutive trades: ``prod(1 + r_i) - 1`` (0 for no trade)."""
    if len(returns) == 0:
        return 0.0
    return float(np.prod(returns + 1.0) - 1.0)

"""A range/volatility factor: how wide the bars are, against their own recent past.

``build(bars, market)`` gets one symbol's OHLCV bars (UTC index) and returns float columns on the
same index. Every column is a trailing computation (row t reads rows <= t only); the leading rows
whose rolling windows are not full yet are NaN: the warm-up, which the runner drops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd


def range_features(bars: pd.DataFrame, market: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    log_range = np.log(bars["high"] / bars["low"])
    ret_1 = np.log(bars["close"]).diff()
    # Parkinson (1980): sigma^2 = E[log(H/L)^2] / (4 ln 2), per bar, over a day of hourly bars.
    parkinson_24 = np.sqrt((log_range**2).rolling(24).mean() / (4 * math.log(2)))
    close_vol_24 = ret_1.rolling(24).std()
    range_mean_168 = log_range.rolling(168).mean()
    range_std_168 = log_range.rolling(168).std()
    return pd.DataFrame(
        {
            "log_range": log_range,
            "parkinson_vol_24": parkinson_24,
            "close_vol_24": close_vol_24,
            # a wide bar against the week; 0 where the week's ranges were all equal
            "range_z_168": ((log_range - range_mean_168) / range_std_168).where(range_std_168 != 0, 0.0),
            "ret_24": np.log(bars["close"]).diff(24),
        },
        index=bars.index,
    )

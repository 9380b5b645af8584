"""Feature stores per factor: float32 matrices that hold only what the factor needs.

Every factor is a list of named columns, each computed from a few shared float64 series (log
close, 1-bar log return, log volume, log range) and written straight into one preallocated
float32 matrix in column-major order, so building a store costs the matrix plus about one
full-length float64 temporary at a time, never a frame of intermediate columns. Warm-up rows
(where some rolling window is not yet full) are dropped as a slice, which is a view.

- ``base_features``: 12 return / volatility / momentum features.
- ``n_features``: ~300 columns, the same families over 16 windows plus many lags.
- ``btc_features``: the symbol's base features plus an overlay of 6 BTC columns (BTC's returns
  and volatility, relative strength, rolling beta and correlation to BTC). Only BTC's close is
  read and aligned to the symbol's index (no copy when the indexes are equal, else the last BTC
  bar at or before each timestamp). For BTC itself the overlay would be BTC against itself (beta
  1, relative strength 0: constant columns), so BTC's ``btc_features`` are its base features.
- ``l2_features``: microstructure proxies from OHLCV (range, close location, Parkinson
  volatility, Amihud illiquidity, volume z-scores, Roll spread, Kyle's lambda proxy).

``feature_hash`` is sha256 over the factor name, the feature names and the float32 feature bytes
(column by column), so a row can be traced to the exact matrix it was fitted on.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from finetune.data import DataError, MarketData, to_utc
from finetune.plugins import PluginError, plugin_code

KNOWN_FACTORS = ("base_features", "n_features", "btc_features", "l2_features")
BTC = "BTC"
# Rows of the first prefix that :func:`warmup_rows` probes: above the longest look-back (336 bars).
WARMUP_PROBE_ROWS = 2048
N_FEATURE_WINDOWS = (2, 3, 4, 6, 8, 12, 16, 24, 36, 48, 72, 96, 120, 168, 240, 336)

Column = tuple[str, Callable[[], np.ndarray]]


class UnknownFactorError(ValueError):
    """A factor name outside :data:`KNOWN_FACTORS`; the message lists the known ones."""


@dataclass
class FeatureStore:
    """One symbol's features for one factor; row ``i`` of ``features`` is the bar ``index[i]``."""

    factor: str
    symbol: str
    index: pd.DatetimeIndex
    features: np.ndarray  # float32 (n_bars, n_features)
    feature_names: tuple[str, ...]
    close: np.ndarray  # float64 (n_bars,)
    feature_hash: str

    @property
    def nbytes(self) -> int:
        """Bytes held by the features, the close and the index."""
        return int(self.features.nbytes + self.close.nbytes + self.index.nbytes)


def check_factor(factor: str) -> str:
    """``factor`` if known, else :class:`UnknownFactorError` listing the known factors."""
    if factor not in KNOWN_FACTORS:
        raise UnknownFactorError(f"unknown factor {factor!r}; known factors: {', '.join(KNOWN_FACTORS)}")
    return factor


# --- series operations (float64 in, one new float64 array out) -----------------------------


def diff(x: np.ndarray, k: int) -> np.ndarray:
    """``x[t] - x[t-k]``, NaN for the first ``k`` bars."""
    out = np.full(x.shape, np.nan)
    np.subtract(x[k:], x[:-k], out=out[k:])
    return out


def lag(x: np.ndarray, k: int) -> np.ndarray:
    """``x[t-k]``, NaN for the first ``k`` bars (``k = 0`` is a copy)."""
    out = np.full(x.shape, np.nan)
    out[k:] = x[: x.size - k]
    return out


def rolling(x: np.ndarray, window: int, how: str) -> np.ndarray:
    """A trailing rolling statistic (pandas' numerically stable kernels); NaN until full."""
    return getattr(pd.Series(x, copy=False).rolling(window), how)().to_numpy()


def rolling_cov(x: np.ndarray, y: np.ndarray, window: int) -> np.ndarray:
    return pd.Series(x, copy=False).rolling(window).cov(pd.Series(y, copy=False)).to_numpy()


def safe_ratio(num: np.ndarray, den: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """``num / den`` with ``fill`` where ``den`` is 0 (a flat window carries no signal)."""
    out = np.full(num.shape, fill)
    np.divide(num, den, out=out, where=den != 0)
    out[np.isnan(num) | np.isnan(den)] = np.nan
    return out


def zscore(x: np.ndarray, window: int) -> np.ndarray:
    """``(x - mean_w) / std_w`` over the trailing window, 0 where the window is flat."""
    return safe_ratio(x - rolling(x, window, "mean"), rolling(x, window, "std"))


# --- factor column lists ------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """The shared float64 series every factor derives its columns from."""

    log_close: np.ndarray
    ret_1: np.ndarray  # 1-bar log return
    log_volume: np.ndarray  # log(1 + volume)
    log_range: np.ndarray  # log(high / low)

    @classmethod
    def from_ohlcv(cls, frame: pd.DataFrame) -> Series:
        log_close = np.log(frame["close"].to_numpy())
        return cls(
            log_close=log_close,
            ret_1=diff(log_close, 1),
            log_volume=np.log1p(frame["volume"].to_numpy()),
            log_range=np.log(frame["high"].to_numpy() / frame["low"].to_numpy()),
        )


def base_columns(s: Series) -> list[Column]:
    """Returns over 1h-1w, realised volatility, volatility regime, momentum, trend and drawdown."""
    columns: list[Column] = [(f"ret_{k}", lambda k=k: diff(s.log_close, k)) for k in (1, 4, 24, 72, 168)]
    columns += [
        ("vol_24", lambda: rolling(s.ret_1, 24, "std")),
        ("vol_168", lambda: rolling(s.ret_1, 168, "std")),
        ("vol_ratio_24_168", lambda: safe_ratio(rolling(s.ret_1, 24, "std"), rolling(s.ret_1, 168, "std"))),
        # 24h return in units of its own volatility: sum of 24 returns has std vol * sqrt(24).
        ("mom_z_24", lambda: safe_ratio(diff(s.log_close, 24), rolling(s.ret_1, 24, "std") * math.sqrt(24))),
        ("sma_gap_72", lambda: s.log_close - rolling(s.log_close, 72, "mean")),
        ("sma_gap_336", lambda: s.log_close - rolling(s.log_close, 336, "mean")),
        ("drawdown_168", lambda: s.log_close - rolling(s.log_close, 168, "max")),
    ]
    return columns


def n_columns(s: Series) -> list[Column]:
    """Seven families over :data:`N_FEATURE_WINDOWS` plus lags: 304 columns."""
    columns: list[Column] = []
    for w in N_FEATURE_WINDOWS:
        columns += [
            (f"ret_{w}", lambda w=w: diff(s.log_close, w)),
            (f"vol_{w}", lambda w=w: rolling(s.ret_1, w, "std")),
            (f"sma_gap_{w}", lambda w=w: s.log_close - rolling(s.log_close, w, "mean")),
            (f"max_gap_{w}", lambda w=w: s.log_close - rolling(s.log_close, w, "max")),
            (f"min_gap_{w}", lambda w=w: s.log_close - rolling(s.log_close, w, "min")),
            (f"volume_z_{w}", lambda w=w: zscore(s.log_volume, w)),
            (f"range_mean_{w}", lambda w=w: rolling(s.log_range, w, "mean")),
        ]
    columns += [(f"ret_1_lag_{k}", lambda k=k: lag(s.ret_1, k)) for k in range(96)]
    volume_change = diff(s.log_volume, 1)  # shared by its 48 lags
    columns += [(f"volume_change_lag_{k}", lambda k=k: lag(volume_change, k)) for k in range(48)]
    columns += [(f"log_range_lag_{k}", lambda k=k: lag(s.log_range, k)) for k in range(48)]
    return columns


def btc_overlay_columns(s: Series, btc_log_close: np.ndarray) -> list[Column]:
    """BTC's contribution to another symbol: its moves, and the symbol's exposure to them."""
    btc_ret_1 = diff(btc_log_close, 1)
    return [
        ("btc_ret_1", lambda: btc_ret_1),
        ("btc_ret_24", lambda: diff(btc_log_close, 24)),
        ("btc_vol_24", lambda: rolling(btc_ret_1, 24, "std")),
        ("btc_rel_strength_24", lambda: diff(s.log_close, 24) - diff(btc_log_close, 24)),
        # beta = cov(r, r_btc) / var(r_btc); corr = cov / (std * std_btc), over one week.
        (
            "btc_beta_168",
            lambda: safe_ratio(rolling_cov(s.ret_1, btc_ret_1, 168), rolling(btc_ret_1, 168, "var")),
        ),
        (
            "btc_corr_168",
            lambda: safe_ratio(
                rolling_cov(s.ret_1, btc_ret_1, 168),
                rolling(s.ret_1, 168, "std") * rolling(btc_ret_1, 168, "std"),
            ),
        ),
    ]


def l2_columns(s: Series, frame: pd.DataFrame) -> list[Column]:
    """Order-book-free microstructure proxies from OHLCV bars."""
    high, low = frame["high"].to_numpy(), frame["low"].to_numpy()
    close, volume = frame["close"].to_numpy(), frame["volume"].to_numpy()

    def amihud() -> np.ndarray:
        # Amihud (2002): mean |return| per unit of dollar volume; log10 tames its scale.
        illiquidity = np.abs(s.ret_1) / np.maximum(close * volume, 1e-12)
        return np.log10(rolling(illiquidity, 24, "mean") + 1e-30)

    def roll_spread() -> np.ndarray:
        # Roll (1984): spread = 2 * sqrt(-cov(dp_t, dp_{t-1})), 0 when the autocovariance is >= 0.
        autocov = rolling_cov(s.ret_1, lag(s.ret_1, 1), 48)
        spread = np.full(autocov.shape, np.nan)
        return np.sqrt(np.maximum(-autocov, 0.0), where=~np.isnan(autocov), out=spread) * 2.0

    def kyle_lambda() -> np.ndarray:
        # Price impact per unit of signed dollar volume (a Kyle 1985 lambda proxy).
        signed_volume = np.sign(s.ret_1) * np.sqrt(close * volume)
        return safe_ratio(rolling_cov(s.ret_1, signed_volume, 168), rolling(signed_volume, 168, "var"))

    return [
        ("ret_1", lambda: s.ret_1),
        ("vol_24", lambda: rolling(s.ret_1, 24, "std")),
        ("l2_log_range", lambda: s.log_range),
        ("l2_close_location", lambda: safe_ratio(close - low, high - low, fill=0.5)),
        # Parkinson (1980): sigma^2 = E[log(H/L)^2] / (4 ln 2).
        ("l2_parkinson_vol_24", lambda: np.sqrt(rolling(s.log_range**2, 24, "mean") / (4 * math.log(2)))),
        ("l2_amihud_24", amihud),
        ("l2_volume_z_24", lambda: zscore(s.log_volume, 24)),
        ("l2_volume_z_168", lambda: zscore(s.log_volume, 168)),
        ("l2_roll_spread_48", roll_spread),
        ("l2_kyle_lambda_168", kyle_lambda),
    ]


# --- assembly -----------------------------------------------------------------------------


def aligned_btc_close(btc: pd.DataFrame, index: pd.DatetimeIndex) -> np.ndarray:
    """BTC's close on ``index``: BTC's own array when the indexes agree (no copy), else the last
    BTC bar at or before each timestamp (never a later one), NaN before BTC's first bar."""
    close = btc["close"].to_numpy()
    if btc.index.equals(index):
        return close
    positions = btc.index.get_indexer(index, method="pad")
    return np.where(positions >= 0, close[positions], np.nan)


def columns_for(factor: str, symbol: str, frame: pd.DataFrame, btc: Callable[[], pd.DataFrame]) -> list[Column]:
    """The named columns of built-in ``factor`` for ``symbol`` (computed later, one at a time);
    ``btc()`` gives BTC's bars (read by btc_features only)."""
    s = Series.from_ohlcv(frame)
    if factor == "n_features":
        return n_columns(s)
    if factor == "l2_features":
        return l2_columns(s, frame)
    columns = base_columns(s)
    if factor == "btc_features" and symbol != BTC:
        columns += btc_overlay_columns(s, np.log(aligned_btc_close(btc(), frame.index)))
    return columns


def fill_matrix(columns: list[Column], n: int) -> tuple[np.ndarray, int]:
    """(float32 (n, k) column-major matrix, first row from which every column is finite)."""
    features = np.empty((n, len(columns)), dtype=np.float32, order="F")
    finite_from = 0
    for j, (_, compute) in enumerate(columns):
        features[:, j] = compute()
        bad = np.flatnonzero(~np.isfinite(features[:, j]))
        if bad.size:
            finite_from = max(finite_from, int(bad[-1]) + 1)
    return features, finite_from


def feature_hash(factor: str, names: tuple[str, ...], features: np.ndarray) -> str:
    """sha256 over the factor, the names and the float32 bytes, column by column."""
    digest = hashlib.sha256()
    digest.update(factor.encode() + b"\0" + "\n".join(names).encode() + b"\0")
    for j in range(features.shape[1]):
        digest.update(np.ascontiguousarray(features[:, j]).astype("<f4", copy=False).data)
    return digest.hexdigest()


def _no_rows_error(factor: str, symbol: str, n_bars: int, as_of: pd.Timestamp) -> DataError:
    return DataError(
        f"symbol {symbol}: {n_bars} bars up to as-of {as_of.isoformat()} leave no {factor} rows after the warm-up"
    )


OHLCV = ("open", "high", "low", "close", "volume")


class MarketView(Mapping[str, pd.DataFrame]):
    """What a factor plug-in sees as ``market``: symbol -> its bars at as-of (a copy of the OHLCV
    columns, the symbol in ``attrs["symbol"]``), read on look-up; iterating gives the run's
    ``symbols``, any other symbol of the data source is read when asked for."""

    def __init__(self, market: MarketData, *, as_of: pd.Timestamp, symbols: tuple[str, ...]) -> None:
        self._market = market
        self._as_of = as_of
        self._symbols = symbols

    def __getitem__(self, symbol: str) -> pd.DataFrame:
        try:
            return plugin_bars(self._market.ohlcv(symbol, as_of=self._as_of), symbol)
        except (DataError, ValueError) as exc:
            raise KeyError(symbol) from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self._symbols)

    def __len__(self) -> int:
        return len(self._symbols)


def plugin_bars(frame: pd.DataFrame, symbol: str) -> pd.DataFrame:
    """The OHLCV columns of ``frame`` (a copy: a plug-in cannot change the cached bars)."""
    bars = frame.loc[:, list(OHLCV)].copy()
    bars.attrs["symbol"] = symbol
    return bars


@dataclass(frozen=True)
class BuiltinFactor:
    """A factor of this package, registered under ``finetune.factors`` like any plug-in.

    Called as a plug-in (``build(bars, market)``), it returns its float32 columns with the warm-up
    rows in; the runner instead computes its columns one at a time into the store's matrix
    (:func:`columns_for`), which holds one column's temporaries at a time instead of a frame.
    """

    name: str

    def __call__(self, bars: pd.DataFrame, market: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
        columns = columns_for(self.name, bars.attrs.get("symbol", ""), bars, lambda: market[BTC])
        features, _ = fill_matrix(columns, len(bars))
        return pd.DataFrame(features, index=bars.index, columns=[name for name, _ in columns], copy=False)


BASE_FEATURES, N_FEATURES, BTC_FEATURES, L2_FEATURES = (BuiltinFactor(name) for name in KNOWN_FACTORS)
Build = Callable[[pd.DataFrame, Mapping[str, pd.DataFrame]], pd.DataFrame]


def plugin_matrix(
    factor: str, build: Build, symbol: str, frame: pd.DataFrame, market: Mapping[str, pd.DataFrame]
) -> tuple[tuple[str, ...], np.ndarray, int]:
    """(feature names, float32 column-major matrix, first row after the warm-up) of a plug-in.

    The warm-up is the leading rows with any NaN; every value after it must be finite.

    :raises PluginError: ``build`` raised or broke the interface (one line naming factor and symbol).
    """
    who = f"factor {factor} on {symbol}"
    bars = plugin_bars(frame, symbol)
    with plugin_code(who, "build"):
        result = build(bars, market)
    if not isinstance(result, pd.DataFrame):
        raise PluginError(f"{who}: build returned {type(result).__name__}, not a pandas DataFrame")
    if len(result) != len(bars) or not result.index.equals(bars.index):
        raise PluginError(
            f"{who}: build returned {len(result)} rows on another index; expected the bars' {len(bars)} rows "
            f"({bars.index[0].isoformat()} .. {bars.index[-1].isoformat()}) on their own index"
        )
    not_float = [f"{name} ({dtype})" for name, dtype in result.dtypes.items() if not pd.api.types.is_float_dtype(dtype)]
    if not_float or result.shape[1] == 0:
        raise PluginError(f"{who}: columns must be float, got {', '.join(map(str, not_float)) or 'no columns'}")
    names = tuple(str(name) for name in result.columns)
    features = np.empty(result.shape, dtype=np.float32, order="F")
    for j in range(result.shape[1]):
        features[:, j] = result.iloc[:, j].to_numpy()
    warming = np.isnan(features).any(axis=1)
    start = int(np.argmin(warming)) if not warming.all() else len(features)
    bad_rows, bad_columns = np.nonzero(~np.isfinite(features[start:]))
    if bad_rows.size:
        row = start + int(bad_rows[0])
        raise PluginError(
            f"{who}: {features[row, bad_columns[0]]} in column {names[bad_columns[0]]} at "
            f"{bars.index[row].isoformat()} (row {row}), after its warm-up of {start} rows"
        )
    return names, features, start


def _matrix(
    factor: str,
    build: Build | None,
    symbol: str,
    frame: pd.DataFrame,
    market: MarketData,
    as_of: pd.Timestamp,
    symbols: tuple[str, ...] = (),
) -> tuple[tuple[str, ...], np.ndarray, int]:
    """(names, matrix, first row after the warm-up) of ``factor`` over ``frame``'s bars."""
    if build is None or isinstance(build, BuiltinFactor):
        columns = columns_for(factor, symbol, frame, lambda: market.ohlcv(BTC, as_of=as_of))
        features, start = fill_matrix(columns, len(frame))
        return tuple(name for name, _ in columns), features, start
    view = MarketView(market, as_of=as_of, symbols=symbols or (symbol,))
    return plugin_matrix(factor, build, symbol, frame, view)


def warmup_rows(
    factor: str,
    symbol: str,
    market: MarketData,
    *,
    as_of: pd.Timestamp,
    build: Build | None = None,
    symbols: tuple[str, ...] = (),
) -> int:
    """How many leading bars the ``factor`` features of ``symbol`` leave non-finite: the warm-up
    that :func:`build_feature_store` drops, found without building the store.

    Every column is a trailing computation (diffs, lags and rolling windows over past bars), so
    row ``t`` reads rows ``<= t`` only: the warm-up seen on a prefix of the bars is the warm-up of
    all of them, and a prefix of a few thousand rows (doubled until the warm-up ends inside it)
    costs a few MiB instead of the whole store. The runner checks every crypto this way before
    its first write, then builds one store at a time. A plug-in (``build``) is held to the same
    (:meth:`runner.Plan.load` cross-checks), and its interface is checked on the prefix.

    :raises DataError: the bars leave no row after the warm-up.
    :raises PluginError: the plug-in raised or broke its interface on the prefix.
    """
    if build is None:
        check_factor(factor)
    as_of = to_utc(as_of)
    frame = market.ohlcv(symbol, as_of=as_of)
    n_rows = WARMUP_PROBE_ROWS
    while True:
        prefix = frame.iloc[:n_rows]
        _, _, start = _matrix(factor, build, symbol, prefix, market, as_of, symbols)
        if start < len(prefix) or len(prefix) == len(frame):
            break
        n_rows *= 2
    if start >= len(frame):
        raise _no_rows_error(factor, symbol, len(frame), as_of)
    return start


def build_feature_store(
    factor: str,
    symbol: str,
    market: MarketData,
    *,
    as_of: pd.Timestamp,
    build: Build | None = None,
    symbols: tuple[str, ...] = (),
) -> FeatureStore:
    """The ``factor`` features of ``symbol`` from its bars up to ``as_of``, warm-up dropped.

    :param build: the factor's plug-in (:func:`finetune.plugins.load_factor`); None: the built-in
        ``factor``.
    :param symbols: what the plug-in's ``market`` lists (the run's cryptos; default ``symbol``).
    """
    if build is None:
        check_factor(factor)
    as_of = to_utc(as_of)
    frame = market.ohlcv(symbol, as_of=as_of)
    names, features, start = _matrix(factor, build, symbol, frame, market, as_of, symbols)
    if start >= len(frame):
        raise _no_rows_error(factor, symbol, len(frame), as_of)
    features = features[start:]
    return FeatureStore(
        factor=factor,
        symbol=symbol,
        index=frame.index[start:],
        features=features,
        feature_names=names,
        close=frame["close"].to_numpy()[start:],
        feature_hash=feature_hash(factor, names, features),
    )

"""Market data for the pod: a built-in deterministic synthetic market, or files under a folder.

``MarketData(None)`` / ``MarketData("synthetic://")`` serves hourly bars of
:data:`SYNTHETIC_SYMBOLS` from :data:`SYNTHETIC_START` to :data:`SYNTHETIC_END`, the same bytes on
every machine and at any time: each symbol's generator is seeded by ``zlib.crc32`` of its name
(``hash()`` is salted per process). Returns follow GARCH(1,1) (Bollerslev 1986)
``h_t = omega + alpha * eps_{t-1}^2 + beta * h_{t-1}``, so volatility clusters; the shocks of
the alts load on BTC's shocks (``z = rho * z_btc + sqrt(1 - rho^2) * z_own``), so they co-move
with it as real crypto does. The whole history is generated once and cut at ``as_of``, so a bar
never changes with the as-of that reads it.

``MarketData("file:///dir")`` reads ``DIR/<SYMBOL>.parquet``, else ``DIR/<SYMBOL>.csv``. The
timestamp is the column named timestamp/date/time/datetime/open_time (any case), else the
first column (for parquet, a DatetimeIndex too); tz-naive times are UTC; integer times are epoch
seconds, or milliseconds when >= 1e11 (exchange klines). Open/high/low/close/volume columns may be
in any case. Rows out of order are sorted; a duplicated timestamp is an error (two different bars
for one hour leave no right answer). Rows after ``as_of`` are cut; the wall clock is never read.
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

SYNTHETIC_URI = "synthetic://"
SYNTHETIC_START = pd.Timestamp("2021-01-01T00:00:00Z")
SYNTHETIC_END = pd.Timestamp("2027-01-01T00:00:00Z")  # exclusive
SYNTHETIC_SYMBOLS = ("BTC", "ETH", "SOL", "BNB", "XRP", "ADA", "DOGE", "AVAX")
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,10}$")
OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")
TIMESTAMP_COLUMNS = ("timestamp", "date", "time", "datetime", "open_time")

# name: (first price, long-run hourly vol, correlation of its shocks with BTC's)
_SYNTHETIC_PARAMS = {
    "BTC": (29_000.0, 0.0070, 1.0),
    "ETH": (730.0, 0.0090, 0.80),
    "SOL": (1.50, 0.0130, 0.65),
    "BNB": (37.0, 0.0090, 0.60),
    "XRP": (0.22, 0.0110, 0.55),
    "ADA": (0.18, 0.0110, 0.60),
    "DOGE": (0.0047, 0.0140, 0.50),
    "AVAX": (3.30, 0.0130, 0.60),
}
_GARCH_ALPHA = 0.06
_GARCH_BETA = 0.92
_EPOCH_MS_THRESHOLD = 1e11  # epoch seconds stay below this until the year 5138


class DataError(ValueError):
    """Market data that cannot be used; the one-line message names the symbol, file or as-of."""


def validate_symbol(symbol: str) -> str:
    """``symbol`` if it matches :data:`SYMBOL_PATTERN` (it becomes a file name), else ValueError."""
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
        raise ValueError(f"invalid symbol {symbol!r}: expected 2-10 characters A-Z or 0-9, e.g. BTC")
    return symbol


def to_utc(ts: pd.Timestamp | str) -> pd.Timestamp:
    """A timestamp in UTC; a naive one is taken to be UTC already."""
    stamp = pd.Timestamp(ts)
    if stamp is pd.NaT:
        raise ValueError(f"not a timestamp: {ts!r}")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def symbol_seed(symbol: str) -> int:
    """A seed stable across processes and machines (``hash()`` is salted per process)."""
    return zlib.crc32(symbol.encode("ascii"))


def garch_returns(shocks: np.ndarray, hourly_vol: float) -> tuple[np.ndarray, np.ndarray]:
    """(log returns, conditional vol) of GARCH(1,1) driven by standard normal ``shocks``.

    ``omega`` is set so that the long-run variance is ``hourly_vol**2``:
    ``omega = v * (1 - alpha - beta)``. The recursion is sequential by nature.
    """
    omega = hourly_vol**2 * (1 - _GARCH_ALPHA - _GARCH_BETA)
    returns = np.empty_like(shocks)
    vols = np.empty_like(shocks)
    h = hourly_vol**2
    for t, z in enumerate(shocks.tolist()):
        vol = math.sqrt(h)
        eps = vol * z
        returns[t] = eps
        vols[t] = vol
        h = omega + _GARCH_ALPHA * eps * eps + _GARCH_BETA * h
    return returns, vols


def synthetic_ohlcv(symbol: str) -> pd.DataFrame:
    """The full deterministic synthetic history of ``symbol`` (see the module docstring)."""
    if symbol not in _SYNTHETIC_PARAMS:
        raise DataError(
            f"no synthetic data for symbol {symbol}: the synthetic market has {', '.join(SYNTHETIC_SYMBOLS)}"
        )
    first_price, hourly_vol, rho = _SYNTHETIC_PARAMS[symbol]
    index = pd.date_range(SYNTHETIC_START, SYNTHETIC_END, freq="h", inclusive="left", name="timestamp")
    n = len(index)
    rng = np.random.default_rng(symbol_seed(symbol))
    shocks = rng.standard_normal(n)
    if rho < 1.0:
        btc_shocks = np.random.default_rng(symbol_seed("BTC")).standard_normal(n)
        shocks *= math.sqrt(1.0 - rho * rho)
        shocks += rho * btc_shocks
    returns, vols = garch_returns(shocks, hourly_vol)  # driftless log price: the median stays put
    close = first_price * np.exp(np.cumsum(returns))
    open_ = np.empty(n)
    open_[0] = first_price
    open_[1:] = close[:-1]
    # Intrabar excursions scale with the bar's conditional volatility.
    high = np.maximum(open_, close) * np.exp(np.abs(rng.standard_normal(n)) * vols * 0.6)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.standard_normal(n)) * vols * 0.6)
    # Volume rises with the size of the move (the volume-volatility relation).
    volume = 1e6 / first_price * np.exp(rng.normal(0.0, 0.4, n) + 40.0 * np.abs(returns))
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index
    )


def _file_location(data_uri: str) -> Path:
    parsed = urlparse(data_uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise ValueError(f"unsupported data URI {data_uri!r}: use synthetic:// or file:///absolute/dir")
    return Path(unquote(parsed.path))


def _timestamps(raw: pd.Series, where: str) -> pd.DatetimeIndex:
    """UTC timestamps of ``raw``; integers are epoch s (ms when >= 1e11); naive is UTC."""
    if pd.api.types.is_integer_dtype(raw) and len(raw):
        unit = "ms" if raw.abs().max() >= _EPOCH_MS_THRESHOLD else "s"
        parsed = pd.to_datetime(raw, unit=unit, utc=True)
    else:
        parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: unparsable timestamp {raw.iloc[row]!r} at row {row}")
    return pd.DatetimeIndex(parsed, name="timestamp")


def _timestamp_column(frame: pd.DataFrame) -> str:
    by_lower = {str(col).lower(): col for col in frame.columns}
    for name in TIMESTAMP_COLUMNS:
        if name in by_lower:
            return by_lower[name]
    return frame.columns[0]


def normalise_ohlcv(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """OHLCV of a file as float64 columns on a sorted, unique UTC index, or DataError."""
    if isinstance(frame.index, pd.DatetimeIndex):
        frame = frame.reset_index()
    if frame.empty or len(frame.columns) == 0:
        raise DataError(f"{where}: no rows")
    time_col = _timestamp_column(frame)
    index = _timestamps(frame[time_col], where)
    by_lower = {str(col).lower(): col for col in frame.columns if col != time_col}
    missing = [name for name in OHLCV_COLUMNS if name not in by_lower]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)} (need {', '.join(OHLCV_COLUMNS)})")
    columns = {}
    for name in OHLCV_COLUMNS:
        raw = frame[by_lower[name]]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values) | (values < 0) | ((values == 0) & (name != "volume"))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: column {name} has a missing, non-numeric or non-positive value "
                f"'{raw.iloc[row]}' at row {row}"
            )
        columns[name] = values
    result = pd.DataFrame(columns, index=index)
    if index.has_duplicates:
        raise DataError(f"{where}: duplicate timestamp {index[index.duplicated()][0]}")
    if not index.is_monotonic_increasing:
        result = result.sort_index()
    return result


def read_ohlcv_file(directory: Path, symbol: str) -> pd.DataFrame:
    """``DIR/<SYMBOL>.parquet`` (preferred) or ``DIR/<SYMBOL>.csv``, normalised."""
    for suffix, reader in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
        path = directory / f"{symbol}{suffix}"
        if path.is_file():
            try:
                frame = reader(path)
            except (ValueError, OSError) as exc:
                first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DataError(f"symbol {symbol}: cannot read {path}: {first_line}") from exc
            return normalise_ohlcv(frame, f"symbol {symbol}, file {path}")
    raise DataError(f"no data for symbol {symbol}: neither {symbol}.parquet nor {symbol}.csv in {directory}")


class MarketData:
    """Hourly OHLCV per symbol from ``data_uri`` (None or ``synthetic://``, or ``file:///dir``).

    Each symbol is read once and cached; :meth:`ohlcv` returns the rows up to ``as_of``.
    """

    def __init__(self, data_uri: str | None = None) -> None:
        self.data_uri = data_uri or SYNTHETIC_URI
        self._directory = None if self.data_uri == SYNTHETIC_URI else _file_location(self.data_uri)
        self._cache: dict[str, pd.DataFrame] = {}

    def _history(self, symbol: str) -> pd.DataFrame:
        if symbol not in self._cache:
            if self._directory is None:
                self._cache[symbol] = synthetic_ohlcv(symbol)
            else:
                self._cache[symbol] = read_ohlcv_file(self._directory, symbol)
        return self._cache[symbol]

    def ohlcv(self, symbol: str, *, as_of: pd.Timestamp) -> pd.DataFrame:
        """Bars of ``symbol`` with timestamp <= ``as_of``: UTC index, float64 OHLCV columns."""
        validate_symbol(symbol)
        cutoff = to_utc(as_of)
        history = self._history(symbol)
        end = int(history.index.searchsorted(cutoff, side="right"))
        if end == 0:
            raise DataError(
                f"symbol {symbol}: as-of {cutoff.isoformat()} is before its first bar {history.index[0].isoformat()}"
            )
        return history.iloc[:end]

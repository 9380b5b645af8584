"""Market data for the pod: a built-in deterministic synthetic market, or files under a folder.

``MarketData(None)`` / ``MarketData("synthetic://...")`` serves the synthetic markets of
:mod:`finetune.synthetic` (the planted lead-lag by default, ``synthetic://random-walk`` without
an edge); this module only dispatches on the URI.

``MarketData("file:///dir")`` reads ``DIR/<SYMBOL>.parquet``, else ``DIR/<SYMBOL>.csv``. The
timestamp is the column named timestamp/date/time/datetime/open_time (any case), else the
first column (for parquet, a DatetimeIndex too); tz-naive times are UTC; integer times are epoch
seconds, or milliseconds when >= 1e11 (exchange klines). Open/high/low/close/volume columns may be
in any case. Rows out of order are sorted; a duplicated timestamp is an error (two different bars
for one hour leave no right answer). Rows after ``as_of`` are cut; the wall clock is never read.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from finetune import synthetic

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,10}$")
OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")
TIMESTAMP_COLUMNS = ("timestamp", "date", "time", "datetime", "open_time")

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
    """Hourly OHLCV per symbol from ``data_uri`` (None or ``synthetic://...``, or ``file:///dir``).

    Each symbol is read once and cached; :meth:`ohlcv` returns the rows up to ``as_of``.
    """

    def __init__(self, data_uri: str | None = None) -> None:
        self.data_uri = data_uri or synthetic.SYNTHETIC_URI
        if synthetic.is_synthetic_uri(self.data_uri):
            self._synthetic: synthetic.SyntheticSpec | None = synthetic.parse_synthetic_uri(self.data_uri)
            self._directory = None
        else:
            self._synthetic = None
            self._directory = _file_location(self.data_uri)
        self._cache: dict[str, pd.DataFrame] = {}

    def _history(self, symbol: str) -> pd.DataFrame:
        if symbol not in self._cache:
            if self._synthetic is not None:
                try:
                    self._cache[symbol] = synthetic.synthetic_ohlcv(symbol, spec=self._synthetic)
                except synthetic.SyntheticDataError as exc:
                    raise DataError(str(exc)) from exc
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

"""Market data for the pod: a built-in deterministic synthetic market, or files in a folder or bucket.

``MarketData(None)`` / ``MarketData("synthetic://...")`` serves the synthetic markets of
:mod:`finetune.synthetic` (the planted lead-lag by default, ``synthetic://random-walk`` without
an edge); this module only dispatches on the URI.

``MarketData("file:///dir")`` (or ``s3://bucket/prefix``, ``gs://bucket/prefix``: see
:mod:`finetune.locations`) reads ``<SYMBOL>.parquet``, else ``<SYMBOL>.csv``. The timestamp is
the column named timestamp/date/time/datetime/open_time (any case), else the first column (for
parquet, a DatetimeIndex too); tz-naive times are UTC; numeric times are epoch seconds,
milliseconds, microseconds or nanoseconds, told apart by magnitude (:func:`epoch_unit`).
Open/high/low/close/volume columns may be in any case. Rows out of order are sorted; a duplicated
timestamp is an error (two different bars for one hour leave no right answer).

Every source then goes through :func:`finetune.bars.calendar_bars`: only bars closed by as-of,
stale feeds refused, gaps filled or refused on the bar interval's grid (a ``filled`` column marks
the filled bars). As-of is always an explicit timestamp: ``now``, ``today`` and every other
route to the wall clock are refused (:func:`to_utc`).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from finetune import synthetic
from finetune.bars import BarCalendar, BarOptions, calendar_bars
from finetune.locations import DataError, DataLocation

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,10}$")
OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")
TIMESTAMP_COLUMNS = ("timestamp", "date", "time", "datetime", "open_time")

# Epoch magnitudes: seconds stay below 1e11 until the year 5138; ms, us and ns of any date from
# 1973 to 5138 fall in the next three decades each, so the size of a stamp names its unit.
EPOCH_UNITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"))
# An ISO date leads every timestamp we accept; 'now', 'today' & co. would read the wall clock.
_ISO_START = re.compile(r"^\s*[+-]?\d{4}-\d{2}-\d{2}")


def validate_symbol(symbol: str) -> str:
    """``symbol`` if it matches :data:`SYMBOL_PATTERN` (it becomes a file name), else ValueError."""
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
        raise ValueError(f"invalid symbol {symbol!r}: expected 2-10 characters A-Z or 0-9, e.g. BTC")
    return symbol


def to_utc(ts: pd.Timestamp | str) -> pd.Timestamp:
    """A timestamp in UTC; a naive one is taken to be UTC already.

    A string must start with an ISO date (``2026-06-07``, ``2026-06-07T00:00:00Z``): pandas would
    turn ``now`` or ``today`` into the wall clock, and a run anchored there cannot be repeated.
    """
    if isinstance(ts, str) and not _ISO_START.match(ts):
        raise ValueError(
            f"not an ISO timestamp: {ts!r} (as-of is always explicit, e.g. 2026-06-07T00:00:00Z, never the wall clock)"
        )
    stamp = pd.Timestamp(ts)
    if stamp is pd.NaT:
        raise ValueError(f"not a timestamp: {ts!r}")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def epoch_unit(largest: float) -> str:
    """``s``, ``ms``, ``us`` or ``ns``: the unit in which ``largest`` (absolute) is a date after 1973."""
    for threshold, unit in EPOCH_UNITS:
        if largest < threshold:
            return unit
    return "ns"


def _timestamps(raw: pd.Series, where: str) -> pd.DatetimeIndex:
    """UTC timestamps of ``raw``; numbers are epoch s/ms/us/ns by magnitude; naive is UTC."""
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw) and len(raw):
        parsed = pd.to_datetime(raw, unit=epoch_unit(float(raw.abs().max())), utc=True)
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


def read_ohlcv(location: DataLocation, symbol: str) -> pd.DataFrame:
    """``<SYMBOL>.parquet`` (preferred) or ``<SYMBOL>.csv`` at ``location``, normalised."""
    frame, shown = location.read_table(symbol)
    return normalise_ohlcv(frame, f"symbol {symbol}, file {shown}")


class MarketData:
    """OHLCV bars per symbol from ``data_uri`` (None or ``synthetic://...``, ``file:///dir``,
    ``s3://bucket/prefix``, ``gs://bucket/prefix``), made calendar-correct by ``bars``.

    Each symbol is read once and cached until :meth:`release`; :meth:`ohlcv` returns the bars usable at ``as_of``.
    """

    def __init__(self, data_uri: str | None = None, *, bars: BarOptions | None = None) -> None:
        self.data_uri = data_uri or synthetic.SYNTHETIC_URI
        self.bars = bars or BarOptions()
        if synthetic.is_synthetic_uri(self.data_uri):
            self._synthetic: synthetic.SyntheticSpec | None = synthetic.parse_synthetic_uri(self.data_uri)
            self._location = None
        else:
            self._synthetic = None
            self._location = DataLocation.from_uri(self.data_uri)
        self._cache: dict[str, pd.DataFrame] = {}
        self._calendars: dict[tuple[str, pd.Timestamp], tuple[pd.DataFrame, BarCalendar]] = {}

    def _history(self, symbol: str, as_of: pd.Timestamp) -> pd.DataFrame:
        cached = self._cache.get(symbol)
        if self._synthetic is not None and cached is not None and cached.index[-1] < as_of:
            cached = None  # a later as-of than the cached blocks cover: extend the market
        if cached is None:
            if self._synthetic is not None:
                try:
                    self._cache[symbol] = synthetic.synthetic_ohlcv(symbol, spec=self._synthetic, until=as_of)
                except synthetic.SyntheticDataError as exc:
                    raise DataError(str(exc)) from exc
            else:
                self._cache[symbol] = read_ohlcv(self._location, symbol)
        return self._cache[symbol]

    def _bars(self, symbol: str, as_of: pd.Timestamp) -> tuple[pd.DataFrame, BarCalendar]:
        validate_symbol(symbol)
        key = (symbol, to_utc(as_of))
        if key not in self._calendars:
            self._calendars[key] = calendar_bars(
                self._history(symbol, key[1]), as_of=key[1], options=self.bars, where=f"symbol {symbol}"
            )
        return self._calendars[key]

    def release(self, symbol: str) -> None:
        """Forget ``symbol``'s cached history and bars (read again if asked again): the runner
        holds one crypto's data at a time, so that memory does not grow with the crypto count."""
        self._cache.pop(symbol, None)
        for key in [key for key in self._calendars if key[0] == symbol]:
            del self._calendars[key]

    def ohlcv(self, symbol: str, *, as_of: pd.Timestamp) -> pd.DataFrame:
        """Bars of ``symbol`` usable at ``as_of``: UTC index, float64 OHLCV columns and a bool
        ``filled`` column (True where :mod:`finetune.bars` filled a missing bar)."""
        return self._bars(symbol, as_of)[0]

    def calendar(self, symbol: str, *, as_of: pd.Timestamp) -> BarCalendar:
        """The bar interval, bars per year and unfilled gap found for ``symbol`` at ``as_of``."""
        return self._bars(symbol, as_of)[1]

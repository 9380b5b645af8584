from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finetune.data import (
    DataError,
    MarketData,
    epoch_unit,
    to_utc,
    validate_symbol,
)

AS_OF = pd.Timestamp("2026-06-07T00:00:00Z")
FILE_AS_OF = pd.Timestamp("2024-01-01T04:00:00Z")  # the four bars of _bars() have all closed


def _bars(n: int = 4, start: str = "2024-01-01 00:00") -> pd.DataFrame:
    close = 100.0 + np.arange(n, dtype=float)
    return pd.DataFrame(
        {
            "timestamp": pd.date_range(start, periods=n, freq="h"),
            "Open": close - 0.5,
            "High": close + 1.0,
            "Low": close - 1.0,
            "Close": close,
            "Volume": np.full(n, 10.0),
        }
    )


def _write_csv(tmp_path, frame: pd.DataFrame, symbol: str = "BTC") -> MarketData:
    frame.to_csv(tmp_path / f"{symbol}.csv", index=False)
    return MarketData(tmp_path.as_uri())


# --- symbols ------------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", [pytest.param(s, id=s) for s in ("BTC", "ETH", "SOL", "1INCH", "ABCDEFGHIJ")])
def test_valid_symbols_pass_through(symbol):
    assert validate_symbol(symbol) == symbol


@pytest.mark.parametrize(
    "symbol",
    [
        pytest.param("btc", id="lower-case"),
        pytest.param("B", id="too-short"),
        pytest.param("ABCDEFGHIJK", id="too-long"),
        pytest.param("../etc", id="path"),
        pytest.param("BTC-USD", id="dash"),
        pytest.param("", id="empty"),
    ],
)
def test_invalid_symbols_are_named(symbol):
    with pytest.raises(ValueError, match=f"invalid symbol {symbol!r}"):
        validate_symbol(symbol)


# --- synthetic market through MarketData (the market itself: test_synthetic.py) ----------


def test_as_of_cuts_rows_and_never_changes_a_bar():
    market = MarketData()
    early = market.ohlcv("SOL", as_of=pd.Timestamp("2023-03-01T12:30:00Z"))
    late = market.ohlcv("SOL", as_of=AS_OF)
    assert early.index[-1] == pd.Timestamp("2023-03-01T11:00:00Z")  # the 12:00 bar closes at 13:00
    pd.testing.assert_frame_equal(early, late.loc[: early.index[-1]])


def test_naive_as_of_is_utc():
    market = MarketData()
    pd.testing.assert_frame_equal(
        market.ohlcv("BTC", as_of=pd.Timestamp("2022-01-01 05:00")),
        market.ohlcv("BTC", as_of=pd.Timestamp("2022-01-01T06:00:00+01:00")),
    )


@pytest.mark.parametrize(
    ("symbol", "as_of", "match"),
    [
        pytest.param("XYZ", AS_OF, "no synthetic data for symbol XYZ", id="unknown-symbol"),
        pytest.param(
            "BTC", pd.Timestamp("2020-12-31T23:00:00Z"), "BTC: as-of 2020-12-31T23:00:00", id="before-first-bar"
        ),
    ],
)
def test_synthetic_errors_name_the_symbol(symbol, as_of, match):
    with pytest.raises(DataError, match=match):
        MarketData().ohlcv(symbol, as_of=as_of)


# --- files --------------------------------------------------------------------------------


def test_csv_with_any_case_columns(tmp_path):
    bars = _write_csv(tmp_path, _bars()).ohlcv("BTC", as_of=pd.Timestamp("2024-01-01T02:00:00Z"))
    assert list(bars.columns) == ["open", "high", "low", "close", "volume", "filled"]
    assert bars["close"].tolist() == [100.0, 101.0]  # the 02:00 bar opens at as-of, the 03:00 one after
    assert bars.index[0] == pd.Timestamp("2024-01-01T00:00:00Z")


def test_parquet_with_a_datetime_index(tmp_path):
    frame = _bars().set_index("timestamp").tz_localize("UTC")
    frame.to_parquet(tmp_path / "ETH.parquet")
    bars = MarketData(tmp_path.as_uri()).ohlcv("ETH", as_of=FILE_AS_OF)
    assert bars["close"].tolist() == [100.0, 101.0, 102.0, 103.0]
    assert str(bars.index.tz) == "UTC"


def test_first_column_is_the_time_when_none_is_named(tmp_path):
    frame = _bars().rename(columns={"timestamp": "when"})
    bars = _write_csv(tmp_path, frame).ohlcv("BTC", as_of=FILE_AS_OF)
    assert bars.index[-1] == pd.Timestamp("2024-01-01T03:00:00Z")


def test_epoch_milliseconds_open_time(tmp_path):
    frame = _bars().drop(columns="timestamp")
    frame.insert(0, "open_time", [1704067200000 + 3_600_000 * i for i in range(4)])  # 2024-01-01T00:00Z
    bars = _write_csv(tmp_path, frame).ohlcv("BTC", as_of=FILE_AS_OF)
    assert bars.index[0] == pd.Timestamp("2024-01-01T00:00:00Z")


def test_offset_timestamps_are_converted_to_utc(tmp_path):
    frame = _bars()
    frame["timestamp"] = [f"2024-01-01T0{h}:00:00+02:00" for h in range(2, 6)]
    bars = _write_csv(tmp_path, frame).ohlcv("BTC", as_of=FILE_AS_OF)
    assert bars.index[0] == pd.Timestamp("2024-01-01T00:00:00Z")


def test_unsorted_rows_are_sorted(tmp_path):
    bars = _write_csv(tmp_path, _bars().iloc[[2, 0, 3, 1]]).ohlcv("BTC", as_of=FILE_AS_OF)
    assert bars["close"].tolist() == [100.0, 101.0, 102.0, 103.0]
    assert bars.index.is_monotonic_increasing


def test_parquet_is_preferred_to_csv(tmp_path):
    _bars().to_parquet(tmp_path / "BTC.parquet")
    other = _bars()
    other["Close"] += 1000
    other.to_csv(tmp_path / "BTC.csv", index=False)
    assert MarketData(tmp_path.as_uri()).ohlcv("BTC", as_of=FILE_AS_OF)["close"].iloc[0] == 100.0


BAD_VALUE = "missing, non-numeric or non-positive value"


def _drop_volume(frame):
    return frame.drop(columns="Volume")


def _bad_time(frame):
    frame["timestamp"] = frame["timestamp"].astype(str)
    frame.loc[2, "timestamp"] = "not a time"
    return frame


def _text_close(frame):
    frame["Close"] = frame["Close"].astype(object)
    frame.loc[1, "Close"] = "abc"
    return frame


def _empty_close(frame):
    frame["Close"] = frame["Close"].astype(object)
    frame.loc[3, "Close"] = ""
    return frame


def _zero_price(frame):
    frame.loc[0, "Low"] = 0.0
    return frame


def _header_only(frame):
    return frame.iloc[:0]


def _duplicate(frame):
    return pd.concat([frame, frame.iloc[[1]]])


@pytest.mark.parametrize(
    ("spoil", "match"),
    [
        pytest.param(_drop_volume, r"missing column\(s\) volume", id="missing-column"),
        pytest.param(_bad_time, "unparsable timestamp 'not a time' at row 2", id="bad-timestamp"),
        pytest.param(_text_close, f"column close has a {BAD_VALUE} 'abc' at row 1", id="non-numeric"),
        pytest.param(_empty_close, f"column close has a {BAD_VALUE} 'nan' at row 3", id="missing"),
        pytest.param(_zero_price, f"column low has a {BAD_VALUE} '0.0' at row 0", id="zero-price"),
        pytest.param(_duplicate, "duplicate timestamp 2024-01-01 01:00:00", id="duplicate-timestamp"),
        pytest.param(_header_only, "BTC.csv: no rows", id="no-rows"),
    ],
)
def test_malformed_files_name_symbol_file_and_problem(tmp_path, spoil, match):
    market = _write_csv(tmp_path, spoil(_bars()))
    with pytest.raises(DataError, match=match) as info:
        market.ohlcv("BTC", as_of=FILE_AS_OF)
    assert "symbol BTC" in str(info.value) and "BTC.csv" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_symbol_file(tmp_path):
    with pytest.raises(DataError, match="no data for symbol SOL: neither SOL.parquet nor SOL.csv"):
        MarketData(tmp_path.as_uri()).ohlcv("SOL", as_of=FILE_AS_OF)


def test_as_of_before_the_first_file_bar(tmp_path):
    with pytest.raises(DataError, match="symbol BTC: as-of 2023-12-31T23:00:00"):
        _write_csv(tmp_path, _bars()).ohlcv("BTC", as_of=pd.Timestamp("2023-12-31T23:00:00Z"))


def test_an_unreadable_parquet_is_a_data_error(tmp_path):
    (tmp_path / "BTC.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="symbol BTC: cannot read"):
        MarketData(tmp_path.as_uri()).ohlcv("BTC", as_of=FILE_AS_OF)


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("ftp://bucket/x", id="ftp"),
        pytest.param("file://host/dir", id="remote-host"),
        pytest.param("s3:///no-bucket", id="s3-without-bucket"),
    ],
)
def test_unsupported_uris(uri):
    with pytest.raises(ValueError, match="unsupported data URI"):
        MarketData(uri)


def test_the_symbol_is_validated_before_any_file_is_touched(tmp_path):
    with pytest.raises(ValueError, match="invalid symbol"):
        MarketData(tmp_path.as_uri()).ohlcv("../BTC", as_of=FILE_AS_OF)


# --- epoch units and as-of ----------------------------------------------------------------

EPOCH_2024_SECONDS = 1704067200  # 2024-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("unit", "per_second"),
    [
        pytest.param("s", 1, id="seconds"),
        pytest.param("ms", 1_000, id="milliseconds"),
        pytest.param("us", 1_000_000, id="microseconds"),
        pytest.param("ns", 1_000_000_000, id="nanoseconds"),
    ],
)
@pytest.mark.parametrize("suffix", [pytest.param(".csv", id="csv"), pytest.param(".parquet", id="parquet")])
def test_epoch_stamps_are_read_in_the_unit_their_size_names(tmp_path, unit, per_second, suffix):
    frame = _bars().drop(columns="timestamp")
    frame.insert(0, "open_time", [(EPOCH_2024_SECONDS + 3600 * i) * per_second for i in range(4)])
    if suffix == ".csv":
        frame.to_csv(tmp_path / "BTC.csv", index=False)
    else:
        frame.to_parquet(tmp_path / "BTC.parquet")
    bars = MarketData(tmp_path.as_uri()).ohlcv("BTC", as_of=FILE_AS_OF)
    assert list(bars.index) == list(pd.date_range("2024-01-01", periods=4, freq="h", tz="UTC"))


@pytest.mark.parametrize(
    ("largest", "unit"),
    [
        pytest.param(1.7e9, "s", id="s-2023"),
        pytest.param(9.9e10, "s", id="s-year-5000"),
        pytest.param(1.7e12, "ms", id="ms"),
        pytest.param(1.7e15, "us", id="us"),
        pytest.param(1.7e18, "ns", id="ns"),
    ],
)
def test_epoch_unit_by_magnitude(largest, unit):
    assert epoch_unit(largest) == unit


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(t, id=t.strip() or "blank")
        for t in ("now", "NOW", " now", "today", "Today", "tomorrow", "", "1717718400")
    ],
)
def test_as_of_never_reads_the_wall_clock(text):
    with pytest.raises(ValueError, match="not an ISO timestamp.*never the wall clock"):
        to_utc(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2026-06-07T00:00:00Z", "2026-06-07T00:00:00+00:00", id="zulu"),
        pytest.param("2026-06-07", "2026-06-07T00:00:00+00:00", id="date"),
        pytest.param("2026-06-07T02:00:00+02:00", "2026-06-07T00:00:00+00:00", id="offset"),
    ],
)
def test_explicit_as_of_is_utc(text, expected):
    assert to_utc(text).isoformat() == expected


def test_filled_bars_are_marked_in_the_frame(tmp_path):
    hours = pd.date_range("2024-01-01", periods=10, freq="h").delete([4, 5])
    frame = _bars(10).iloc[[0, 1, 2, 3, 6, 7, 8, 9]].assign(timestamp=hours)
    bars = _write_csv(tmp_path, frame).ohlcv("BTC", as_of=pd.Timestamp("2024-01-01T10:00:00Z"))
    assert len(bars) == 10 and bars["filled"].tolist() == [False] * 4 + [True] * 2 + [False] * 4
    assert bars["close"].iloc[4] == bars["close"].iloc[3] and bars["volume"].iloc[4] == 0.0

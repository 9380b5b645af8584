"""Calendar-correct bars: interval, label, staleness and gaps, on small hand-built hourly frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finetune.bars import BarOptions, Gap, bars_per_year, calendar_bars, describe, detect_interval, parse_interval
from finetune.locations import DataError

START = pd.Timestamp("2024-01-01T00:00:00Z")
HOUR = pd.Timedelta(hours=1)


def _frame(stamps: pd.DatetimeIndex) -> pd.DataFrame:
    """OHLCV whose close at row i is 100 + i (so a carried-forward close is recognisable)."""
    close = 100.0 + np.arange(len(stamps), dtype=float)
    return pd.DataFrame(
        {"open": close - 0.5, "high": close + 1, "low": close - 1, "close": close, "volume": np.full(len(stamps), 7.0)},
        index=pd.DatetimeIndex(stamps, name="timestamp"),
    )


def _hourly(n: int, *, missing: tuple[int, ...] = ()) -> pd.DataFrame:
    """n hourly bars from START with the bars at the ``missing`` positions removed."""
    stamps = pd.date_range(START, periods=n, freq="h")
    return _frame(stamps.delete(list(missing)))


def _closed(n_bars: int) -> pd.Timestamp:
    """The as-of at which the n-th hourly bar from START has just closed."""
    return START + n_bars * HOUR


def _bars(history: pd.DataFrame, as_of: pd.Timestamp, **options: object):
    return calendar_bars(history, as_of=as_of, options=BarOptions(**options), where="symbol ETH")


# --- interval -----------------------------------------------------------------------------


def test_interval_is_the_most_frequent_step_despite_holes():
    assert detect_interval(_hourly(50, missing=(3, 4, 5, 20)).index, "x") == HOUR


def test_interval_tie_takes_the_smallest_step():
    stamps = pd.DatetimeIndex([START, START + HOUR, START + 3 * HOUR, START + 5 * HOUR, START + 6 * HOUR])
    # steps 1h, 2h, 2h, 1h: a tie
    assert detect_interval(stamps, "x") == HOUR


def test_one_bar_has_no_interval_unless_given():
    with pytest.raises(DataError, match="symbol ETH: cannot detect the bar interval from 1 bar.*--bar-interval"):
        _bars(_hourly(1), _closed(1))
    bars, calendar = _bars(_hourly(1), _closed(1), bar_interval=HOUR)
    assert len(bars) == 1 and calendar.interval == HOUR


def test_daily_bars_are_detected_and_annualised_by_365():
    daily = _frame(pd.date_range(START, periods=30, freq="D"))
    bars, calendar = _bars(daily, START + pd.Timedelta(days=30))
    assert calendar.interval == pd.Timedelta(days=1)
    assert calendar.bars_per_year == 365.0
    assert len(bars) == 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1h", HOUR, id="1h"),
        pytest.param("15min", pd.Timedelta(minutes=15), id="15min"),
        pytest.param("1d", pd.Timedelta(days=1), id="1d"),
    ],
)
def test_parse_interval(text, expected):
    assert parse_interval(text) == expected


@pytest.mark.parametrize("text", [pytest.param(t, id=t or "empty") for t in ("", "hourly", "0h", "-1h")])
def test_parse_interval_refuses_what_is_not_a_positive_duration(text):
    with pytest.raises(ValueError, match=f"not a bar interval: {text!r}"):
        parse_interval(text)


def test_bars_per_year_of_common_intervals():
    assert bars_per_year(HOUR) == 8760.0
    assert bars_per_year(pd.Timedelta(minutes=5)) == 105120.0


def test_describe_durations():
    assert describe(HOUR) == "1h"
    assert describe(pd.Timedelta(days=10)) == "10d"
    assert describe(pd.Timedelta(hours=30)) == "1d 6h"


# --- label: which bars have closed by as-of ---------------------------------------------------


def test_open_label_excludes_the_bar_opening_at_as_of():
    history = _hourly(10)
    as_of = history.index[-1]  # the last bar opens exactly at as-of
    bars, _ = _bars(history, as_of)
    assert bars.index[-1] == as_of - HOUR
    # a minute before its close, the bar is still open; at its close it counts
    assert _bars(history, as_of + HOUR - pd.Timedelta(minutes=1))[0].index[-1] == as_of - HOUR
    assert _bars(history, as_of + HOUR)[0].index[-1] == as_of


def test_close_label_uses_the_bar_stamped_at_as_of():
    history = _hourly(10)
    bars, _ = _bars(history, history.index[-1], bar_label="close")
    assert bars.index[-1] == history.index[-1]


def test_as_of_before_the_first_bar_closes():
    with pytest.raises(
        DataError, match="symbol ETH: as-of 2024-01-01T00:30:00\\+00:00 is before its first bar .* closes"
    ):
        _bars(_hourly(10), START + pd.Timedelta(minutes=30), bar_interval=HOUR)


# --- staleness ----------------------------------------------------------------------------


def test_a_feed_that_stopped_more_than_max_stale_bars_ago_is_refused():
    history = _hourly(100)  # the last bar (99) closes at START + 100h
    as_of = _closed(100) + 25 * HOUR
    with pytest.raises(DataError) as info:
        _bars(history, as_of)
    message = str(info.value)
    assert message.startswith("symbol ETH: stale data: its last usable bar 2024-01-05T03:00:00+00:00")
    assert "25 bars of 1h" in message and f"as-of {as_of.isoformat()}" in message and "--max-stale-bars 24" in message


def test_staleness_up_to_the_limit_is_accepted():
    bars, _ = _bars(_hourly(100), _closed(100) + 24 * HOUR)
    assert len(bars) == 100
    assert len(_bars(_hourly(100), _closed(100) + 30 * HOUR, max_stale_bars=30)[0]) == 100


# --- gaps ---------------------------------------------------------------------------------


def test_fill_puts_a_three_bar_hole_on_the_grid_with_the_close_carried_forward():
    history = _hourly(20, missing=(10, 11, 12))  # rows 0..9 then 13..19: closes 100..109, 110..116
    bars, calendar = _bars(history, _closed(20))
    assert len(bars) == 20
    assert (np.diff(bars.index.as_unit("ns").asi8) == HOUR.value).all()
    filled = bars.iloc[10:13]
    assert filled["filled"].all() and not bars["filled"].drop(filled.index).any()
    for column in ("open", "high", "low", "close"):
        assert (filled[column] == 109.0).all()  # the close of the bar before the hole
    assert (filled["volume"] == 0.0).all()
    assert bars["close"].iloc[13] == 110.0  # the data resumes untouched
    assert calendar.n_filled == 3 and calendar.unfilled_gap is None


def test_a_gap_longer_than_max_gap_bars_cuts_the_bars_after_it():
    history = _hourly(40, missing=tuple(range(10, 17)))  # 7 missing bars
    bars, calendar = _bars(history, _closed(40))
    assert calendar.unfilled_gap == Gap(after=START + 9 * HOUR, n_missing=7, interval=HOUR)
    assert calendar.unfilled_gap.describe() == "a gap of 7 missing bars (7h) starting 2024-01-01T10:00:00+00:00"
    assert bars.index[0] == START + 17 * HOUR and len(bars) == 23
    # the same gap with --max-gap-bars 7 is filled
    bars, calendar = _bars(history, _closed(40), max_gap_bars=7)
    assert len(bars) == 40 and calendar.n_filled == 7 and calendar.unfilled_gap is None


def test_the_newest_unfillable_gap_is_the_one_reported():
    history = _hourly(80, missing=(*range(10, 20), *range(50, 60), 70))
    _, calendar = _bars(history, _closed(80))
    assert calendar.unfilled_gap.first_missing == START + 50 * HOUR and calendar.unfilled_gap.n_missing == 10
    assert calendar.n_filled == 1  # bar 70


def test_refuse_fills_nothing():
    bars, calendar = _bars(_hourly(30, missing=(20,)), _closed(30), gaps="refuse")
    assert calendar.unfilled_gap == Gap(after=START + 19 * HOUR, n_missing=1, interval=HOUR)
    assert not bars["filled"].any() and bars.index[0] == START + 21 * HOUR


def test_rows_keeps_the_rows_as_given():
    history = _hourly(30, missing=(10, 11, 12))
    bars, calendar = _bars(history, _closed(30), gaps="rows")
    pd.testing.assert_frame_equal(bars.drop(columns="filled"), history)
    assert not bars["filled"].any() and calendar.unfilled_gap is None
    # bars per year as observed: 27 bars over 29 hours
    assert calendar.bars_per_year == pytest.approx(26 * 8760 / 29)


def test_a_stamp_off_the_grid_is_refused_in_fill_mode():
    stamps = pd.date_range(START, periods=10, freq="h").insert(5, START + pd.Timedelta(hours=4, minutes=30))
    with pytest.raises(DataError, match="symbol ETH: timestamp 2024-01-01T04:30:00\\+00:00 is off the 1h grid"):
        _bars(_frame(stamps), _closed(10))
    assert len(_bars(_frame(stamps), _closed(10), gaps="rows")[0]) == 11


def test_the_calendar_reads_no_row_after_as_of():
    # a hole after as-of (and a stale tail after it) changes nothing at as-of
    early, _ = _bars(_hourly(50), _closed(30))
    late, _ = _bars(_hourly(50, missing=(35, 36, 37, 38, 39, 40, 41, 42)), _closed(30))
    pd.testing.assert_frame_equal(early, late)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        pytest.param({"gaps": "skip"}, "gaps must be one of fill, refuse, rows, got 'skip'", id="gaps"),
        pytest.param({"bar_label": "mid"}, "bar_label must be one of open, close", id="label"),
        pytest.param({"max_gap_bars": -1}, "max_gap_bars must be an integer >= 0", id="negative-gap"),
        pytest.param({"max_stale_bars": 1.5}, "max_stale_bars must be an integer >= 0", id="fractional-stale"),
        pytest.param({"bar_interval": pd.Timedelta(0)}, "bar_interval must be a positive duration", id="zero-interval"),
    ],
)
def test_bar_options_are_validated(options, match):
    with pytest.raises(ValueError, match=match):
        BarOptions(**options)


@pytest.mark.parametrize("given", [pytest.param("30min", id="finer"), pytest.param("2h", id="coarser")])
def test_a_given_interval_must_be_the_datas(given):
    with pytest.raises(
        DataError, match=f"symbol ETH: --bar-interval {given} is not the data's bar interval: .* 1h apart"
    ):
        _bars(_hourly(20), _closed(20), bar_interval=pd.Timedelta(given))

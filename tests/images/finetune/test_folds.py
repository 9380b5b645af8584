from __future__ import annotations

import pandas as pd
import pytest

from finetune.bars import BarOptions, calendar_bars
from finetune.folds import (
    DEFAULT_TEST_BARS,
    DEFAULT_TRAIN_BARS,
    Fold,
    FoldError,
    walk_forward_folds,
)

INDEX = pd.date_range("2024-01-01", periods=100, freq="h", tz="UTC")


def _folds(**overrides):
    kwargs = {"as_of": INDEX[-1], "n_folds": 3, "train_bars": 20, "test_bars": 10, "hold_bars": 5}
    return walk_forward_folds(INDEX, **{**kwargs, **overrides})


def test_hand_worked_windows():
    # 100 bars up to as-of: tests [70, 80), [80, 90), [90, 100); each train ends 5 bars earlier.
    assert _folds() == [
        Fold(0, train_start=45, train_end=65, test_start=70, test_end=80),
        Fold(1, train_start=55, train_end=75, test_start=80, test_end=90),
        Fold(2, train_start=65, train_end=85, test_start=90, test_end=100),
    ]


def test_newest_test_window_ends_at_the_last_bar_not_after_as_of():
    # as-of 50 minutes past bar 59: bar 59 is the last one <= as-of
    folds = _folds(as_of=INDEX[59] + pd.Timedelta(minutes=50), n_folds=1)
    assert (folds[-1].test_start, folds[-1].test_end) == (50, 60)


def test_test_windows_are_consecutive_and_disjoint():
    folds = _folds(n_folds=4, train_bars=10)
    for older, newer in zip(folds, folds[1:], strict=False):
        assert older.test_end == newer.test_start
    assert [fold.n_test_bars for fold in folds] == [10] * 4
    assert [fold.fold_id for fold in folds] == [0, 1, 2, 3]


def test_embargo_keeps_training_labels_out_of_the_test_window():
    for fold in _folds():
        last_label_read = fold.train_end - 1 + 5  # label at t reads close[t + hold_bars]
        assert last_label_read < fold.test_start
        assert fold.train_end - fold.train_start == 20


def test_the_same_inputs_give_the_same_folds():
    assert _folds() == _folds()
    # and an index that grew after as-of does not move them
    longer = pd.date_range("2024-01-01", periods=150, freq="h", tz="UTC")
    assert walk_forward_folds(longer, as_of=INDEX[-1], n_folds=3, train_bars=20, test_bars=10, hold_bars=5) == _folds()


def test_naive_as_of_is_utc():
    assert _folds(as_of=INDEX[-1].tz_localize(None)) == _folds()


def test_defaults_for_train_and_test_bars():
    index = pd.date_range("2024-01-01", periods=DEFAULT_TRAIN_BARS + 24 + DEFAULT_TEST_BARS, freq="h", tz="UTC")
    (fold,) = walk_forward_folds(index, as_of=index[-1], n_folds=1, train_bars=None, test_bars=None, hold_bars=24)
    assert fold == Fold(0, 0, DEFAULT_TRAIN_BARS, DEFAULT_TRAIN_BARS + 24, len(index))


def test_a_fold_without_enough_training_bars_is_named():
    # 5 folds: fold 0 tests [50, 60), its train would be [25, 45) - fine; 7 folds: fold 0 tests
    # [30, 40), train [5, 25) - fine; 8 folds: fold 0 tests [20, 30), train [-5, 15).
    assert len(_folds(n_folds=7)) == 7
    expected = (
        r"fold 0 of 8: needs 20 training bars \+ 5 embargo \+ 80 test bars = 105 .*"
        r" only 100 are available \(15 for training\)"
    )
    with pytest.raises(FoldError, match=expected):
        _folds(n_folds=8)


def test_a_test_window_before_the_first_bar_is_named():
    # 10 folds of 10 test bars fill all 100 bars: fold 0 tests [0, 10) and has no bar to train on
    assert len(_folds(n_folds=9, train_bars=1)) == 9
    with pytest.raises(FoldError, match=r"fold 0 of 10: .* \(0 for training\)"):
        _folds(n_folds=10, train_bars=1)


def test_as_of_before_the_index():
    with pytest.raises(FoldError, match="no bar at or before as-of 2023-12-31T00:00:00"):
        _folds(as_of=pd.Timestamp("2023-12-31T00:00:00Z"))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        pytest.param({"n_folds": 0}, "n_folds", id="no-folds"),
        pytest.param({"train_bars": 0}, "train_bars", id="no-train"),
        pytest.param({"test_bars": -3}, "test_bars", id="negative-test"),
        pytest.param({"hold_bars": 0}, "hold_bars", id="no-hold"),
        pytest.param({"n_folds": 2.0}, "n_folds", id="float-folds"),
        pytest.param({"n_folds": True}, "n_folds", id="bool-folds"),
    ],
)
def test_bad_counts(overrides, named):
    with pytest.raises(ValueError, match=f"{named} must be an integer >= 1"):
        _folds(**overrides)


def test_unsorted_index_is_refused():
    with pytest.raises(ValueError, match="strictly increasing"):
        walk_forward_folds(INDEX[::-1], as_of=INDEX[-1], n_folds=1, train_bars=5, test_bars=5, hold_bars=1)


def test_windows_on_calendar_bars_span_exactly_n_minus_1_intervals():
    # A 3-hour hole inside the newest test window: filled on the grid, every window keeps its hours;
    # taken as rows (today's --gaps rows), the newest "10-bar" window spans 12 hours.
    ohlcv = {column: 100.0 for column in ("open", "high", "low", "close", "volume")}
    rows = pd.DataFrame(ohlcv, index=INDEX.delete([93, 94, 95]))
    as_of = INDEX[-1] + pd.Timedelta(hours=1)
    for gaps, newest_span in (("fill", 9), ("rows", 12)):
        bars, _ = calendar_bars(rows, as_of=as_of, options=BarOptions(gaps=gaps), where="symbol X")
        folds = walk_forward_folds(bars.index, as_of=as_of, n_folds=3, train_bars=20, test_bars=10, hold_bars=5)
        spans = [bars.index[f.test_end - 1] - bars.index[f.test_start] for f in folds]
        assert spans[:2] == [pd.Timedelta(hours=9)] * 2
        assert spans[2] == pd.Timedelta(hours=newest_span)

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from finetune.bars import bars_per_year
from finetune.baselines import buy_and_hold
from finetune.factors import FeatureStore
from finetune.folds import Fold
from finetune.model import (
    RIDGE_LAMBDAS,
    SELECTION_ROUND_TRIP_COST,
    THRESHOLD_MULTIPLES,
    ModelMetrics,
    evaluate,
    fine_tune,
    forward_log_returns,
)

HOLD = 4
FOLD = Fold(0, train_start=100, train_end=900, test_start=900 + HOLD, test_end=1100)


def _store(n: int = 1100, *, signal: float = 0.0, seed: int = 3) -> FeatureStore:
    """Random-walk prices; feature 0 carries ``signal`` times the forward HOLD-bar return."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    features = rng.normal(0.0, 1.0, (n, 5))
    if signal:
        forward = np.zeros(n)
        forward[:-HOLD] = np.log(close[HOLD:] / close[:-HOLD])
        features[:, 0] += signal * forward / forward.std()
    return FeatureStore(
        factor="base_features",
        symbol="BTC",
        index=pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
        features=features.astype(np.float32),
        feature_names=tuple(f"f{i}" for i in range(5)),
        close=close,
        feature_hash="test",
    )


# --- evaluate -----------------------------------------------------------------------------


def test_evaluate_hand_worked():
    # closes 100 110 99 105 120, positions [1, 1, 0, 1] (+ the last bar, forced flat), rt 0.002:
    # trade (0 -> 2): 99/100 - 1 - 0.002 = -0.012 ; trade (3 -> 4): 120/105 - 1 - 0.002 = 0.140857...
    # net = 0.988 * 1.140857142857 - 1 = 0.127166857...
    # equity: 0.999 (entry half-cost), 1.099, 0.988 (exit), 0.988 * 0.999, 0.988 * 1.140857...
    # drawdown: peak 1.099, trough 0.987012 -> 1 - 0.987012 / 1.099
    close = [100.0, 110.0, 99.0, 105.0, 120.0]
    trade_2 = 120 / 105 - 1 - 0.002
    equity = np.array([0.999, 1.099, 0.988, 0.988 * 0.999, 0.988 * (1 + trade_2)])
    bar_returns = equity / np.concatenate(([1.0], equity[:-1])) - 1
    expected_sharpe = bar_returns.mean() / bar_returns.std() * math.sqrt(24 * 365)
    for last in (0.0, 1.0):
        metrics = evaluate(np.array([1, 1, 0, 1, last]), close, 0.002)
        assert metrics.n_trades == 2
        assert metrics.net_return == pytest.approx(0.988 * (1 + trade_2) - 1, abs=1e-14)
        assert metrics.max_drawdown == pytest.approx(1 - 0.988 * 0.999 / 1.099, abs=1e-14)
        assert metrics.sharpe == pytest.approx(expected_sharpe, rel=1e-12)


@pytest.mark.parametrize("rt", [pytest.param(rt, id=f"rt-{rt}") for rt in (0.0, 0.002, 0.006, 0.05)])
@pytest.mark.parametrize("n", [pytest.param(n, id=f"{n}-bars") for n in (1, 2, 3, 720)])
def test_all_long_is_buy_and_hold_exactly(rt, n):
    close = _store(max(n, 2)).close[:n]
    metrics = evaluate(np.ones(n), close, rt)
    baseline = buy_and_hold(close, rt)
    assert metrics.net_return == baseline.net_return
    assert metrics.n_trades == baseline.n_trades


@pytest.mark.parametrize(
    "positions",
    [
        pytest.param([0, 0, 0, 0], id="flat"),
        pytest.param([0, 0, 0, 1], id="long-only-on-the-last-bar"),  # nothing after it to hold to
    ],
)
def test_no_trade_means_nothing_at_all(positions):
    assert evaluate(np.array(positions), [10.0, 12.0, 8.0, 9.0], 0.01) == ModelMetrics(0.0, 0.0, 0.0, 0)


def test_each_side_pays_half_the_round_trip():
    # constant prices: each trade loses exactly rt. Equity 0.995 (entry), 0.99 (exit),
    # 0.99 * 0.995, 0.99 ** 2: the drawdown from the starting peak 1 is 1 - 0.99 ** 2.
    metrics = evaluate(np.array([1, 0, 1, 0, 0]), np.full(5, 50.0), 0.01)
    assert metrics.net_return == pytest.approx(0.99**2 - 1, abs=1e-15)
    assert metrics.max_drawdown == pytest.approx(1 - 0.99**2, abs=1e-15)
    assert metrics.n_trades == 2
    # one trade closed at bar 1 and nothing after: the worst point is the exit, 1 - 0.99
    assert evaluate(np.array([1, 0, 0]), np.full(3, 50.0), 0.01).max_drawdown == pytest.approx(0.01, abs=1e-15)


# Always long over closes 100, 102, 102, 104.04, 104.04 at no cost: the equity is the price, its
# bar returns are 0 (the first mark), 0.02, 0, 0.02, 0. Mean 0.008; population variance
# 2 * 0.02**2 / 5 - 0.008**2 = 0.000096; per-bar Sharpe 0.008 / sqrt(0.000096) = sqrt(2/3).
# Annualised by sqrt(bars per year) of the bar interval: sqrt(2/3 * 8760) = sqrt(5840) for hourly
# bars, sqrt(2/3 * 365) for daily, sqrt(2/3 * 35040) = sqrt(23360) for 15-minute bars.
KNOWN_SHARPE_CLOSE = [100.0, 102.0, 102.0, 104.04, 104.04]


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        pytest.param("1h", math.sqrt(5840.0), id="hourly"),
        pytest.param("1d", math.sqrt(2 / 3 * 365), id="daily"),
        pytest.param("15min", math.sqrt(23360.0), id="15-minute"),
    ],
)
def test_sharpe_is_annualised_by_the_bar_interval(interval, expected):
    metrics = evaluate(np.ones(5), KNOWN_SHARPE_CLOSE, 0.0, bars_per_year=bars_per_year(pd.Timedelta(interval)))
    assert metrics.sharpe == pytest.approx(expected, rel=1e-9)


def test_sharpe_defaults_to_hourly_bars():
    assert evaluate(np.ones(5), KNOWN_SHARPE_CLOSE, 0.0).sharpe == pytest.approx(math.sqrt(5840.0), rel=1e-9)


@pytest.mark.parametrize(
    "bad", [pytest.param(0.0, id="zero"), pytest.param(float("nan"), id="nan"), pytest.param(-1.0, id="negative")]
)
def test_bars_per_year_must_be_positive(bad):
    with pytest.raises(ValueError, match="bars_per_year must be a finite number > 0"):
        evaluate(np.ones(5), KNOWN_SHARPE_CLOSE, 0.0, bars_per_year=bad)


@pytest.mark.parametrize(
    ("positions", "close", "rt", "match"),
    [
        pytest.param([1, 0], [1.0, 2.0, 3.0], 0.0, "one value per close", id="length"),
        pytest.param([1, 0.5, 0], [1.0, 2.0, 3.0], 0.0, "0.0 .* or 1.0", id="fractional"),
        pytest.param([-1, 0, 0], [1.0, 2.0, 3.0], 0.0, "0.0 .* or 1.0", id="short"),
        pytest.param([], [], 0.0, "empty", id="empty"),
        pytest.param([1, 0], [1.0, 2.0], -0.1, "round_trip_cost", id="negative-cost"),
    ],
)
def test_evaluate_refuses_bad_inputs(positions, close, rt, match):
    with pytest.raises(ValueError, match=match):
        evaluate(np.array(positions, dtype=float), np.array(close), rt)


# --- labels and fine_tune -----------------------------------------------------------------


def test_forward_log_returns_read_only_their_window():
    close = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    np.testing.assert_allclose(forward_log_returns(close, 1, 3, 2), [math.log(4), math.log(4)])
    with pytest.raises(ValueError, match="need close up to row 5"):
        forward_log_returns(close, 1, 4, 2)


def test_fine_tune_picks_from_the_grid_and_is_serialisable():
    model = fine_tune(_store(), FOLD, hold_bars=HOLD)
    params = json.loads(json.dumps(model.hyperparams))
    assert params["ridge_lambda"] in RIDGE_LAMBDAS
    assert params["entry_threshold"] in [m * SELECTION_ROUND_TRIP_COST for m in THRESHOLD_MULTIPLES]
    assert params["train_bars"] == 800 and params["selection_bars"] == 160
    positions = model.positions(_store().features[FOLD.test_start : FOLD.test_end])
    assert positions.shape == (FOLD.n_test_bars,)
    assert set(np.unique(positions)) <= {0.0, 1.0}


def test_standardisation_uses_training_rows_only():
    store = _store()
    model = fine_tune(store, FOLD, hold_bars=HOLD)
    train = store.features[FOLD.train_start : FOLD.train_end].astype(np.float64)
    np.testing.assert_allclose(model.ridge.mean, train.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(model.ridge.scale, train.std(axis=0), rtol=1e-12)


def _poisoned(store: FeatureStore, from_row: int) -> FeatureStore:
    rng = np.random.default_rng(99)
    close, features = store.close.copy(), store.features.copy()
    close[from_row:] *= rng.uniform(0.1, 10.0, close.size - from_row)
    features[from_row:] = rng.normal(5.0, 9.0, features[from_row:].shape)
    return FeatureStore(store.factor, store.symbol, store.index, features, store.feature_names, close, "poisoned")


def test_training_never_reads_past_train_end_minus_one_plus_hold():
    # The last label reads close[train_end - 1 + hold] = close[test_start - 1]. Rewriting every
    # close and feature from test_start on leaves the model unchanged to the bit ...
    store = _store(signal=0.5)
    clean = fine_tune(store, FOLD, hold_bars=HOLD)
    assert FOLD.train_end - 1 + HOLD < FOLD.test_start
    poisoned = fine_tune(_poisoned(store, FOLD.test_start), FOLD, hold_bars=HOLD)
    assert poisoned.hyperparams == clean.hyperparams
    np.testing.assert_array_equal(poisoned.ridge.coef, clean.ridge.coef)
    # ... while rewriting from the last label's bar on does change it (the check can see a read).
    touched = fine_tune(_poisoned(store, FOLD.train_end - 1 + HOLD), FOLD, hold_bars=HOLD)
    assert not np.array_equal(touched.ridge.coef, clean.ridge.coef)


def test_a_fold_without_embargo_is_refused():
    with pytest.raises(ValueError, match="labels of its train window would read its test window"):
        fine_tune(_store(), Fold(0, 100, 900, 902, 1000), hold_bars=HOLD)


def test_too_short_a_train_window_is_refused():
    with pytest.raises(ValueError, match="too few to select"):
        fine_tune(_store(), Fold(0, 100, 106, 110, 200), hold_bars=HOLD)


def test_the_model_finds_a_real_signal():
    # feature 0 is the standardised forward return plus unit noise: the ridge puts its weight
    # there and the long/flat positions beat both staying flat and a model on pure noise.
    store = _store(signal=1.0)
    model = fine_tune(store, FOLD, hold_bars=HOLD)
    assert np.argmax(np.abs(model.ridge.coef)) == 0 and model.ridge.coef[0] > 0
    test = slice(FOLD.test_start, FOLD.test_end)
    informed = evaluate(model.positions(store.features[test]), store.close[test], 0.002)
    noise = _store(signal=0.0)
    blind_model = fine_tune(noise, FOLD, hold_bars=HOLD)
    blind = evaluate(blind_model.positions(noise.features[test]), noise.close[test], 0.002)
    assert informed.net_return > 0.1
    assert informed.net_return > blind.net_return

"""The synthetic markets: determinism, URIs, the planted lead-lag and its absence in the random walk.

The power and null tests of the whole apparatus (btc_features finds the planted edge, and does
not find one in the random walk) run the runner's per-fold evaluation in-process: see the end.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from finetune import runner
from finetune.data import DataError, MarketData
from finetune.folds import DEFAULT_TEST_BARS, DEFAULT_TRAIN_BARS
from finetune.synthetic import (
    LEAD_LAG,
    LEAD_LAG_BETA,
    RANDOM_WALK,
    RANDOM_WALK_URI,
    SYNTHETIC_END,
    SYNTHETIC_START,
    SYNTHETIC_SYMBOLS,
    SYNTHETIC_URI,
    SyntheticDataError,
    SyntheticSpec,
    describe,
    garch_returns,
    is_synthetic_uri,
    parse_synthetic_uri,
    symbol_seed,
    synthetic_ohlcv,
)

AS_OF = pd.Timestamp("2026-06-07T00:00:00Z")
PACKAGE_DIR = Path(__file__).resolve().parents[3] / "images" / "finetune"
HOURLY_VOL = {"BTC": 0.0070, "ETH": 0.0090, "SOL": 0.0130}


def _returns(symbol: str, spec: SyntheticSpec | None = None) -> np.ndarray:
    return np.diff(np.log(synthetic_ohlcv(symbol, spec=spec)["close"].to_numpy()))


def _slope(y: np.ndarray, x: np.ndarray) -> float:
    """OLS slope of y on x (with an intercept)."""
    return float(np.polyfit(x, y, 1)[0])


# --- URIs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "spec"),
    [
        pytest.param("synthetic://", SyntheticSpec(LEAD_LAG, None), id="default"),
        pytest.param("synthetic://lead-lag", SyntheticSpec(LEAD_LAG, None), id="lead-lag"),
        pytest.param("synthetic://random-walk", SyntheticSpec(RANDOM_WALK, None), id="random-walk"),
        pytest.param("synthetic://random-walk?seed=7", SyntheticSpec(RANDOM_WALK, 7), id="random-walk-seeded"),
        pytest.param("synthetic://?seed=0", SyntheticSpec(LEAD_LAG, 0), id="lead-lag-seeded"),
        pytest.param("synthetic:///", SyntheticSpec(LEAD_LAG, None), id="trailing-slash"),
        pytest.param("synthetic://?symbols=50", SyntheticSpec(LEAD_LAG, None, 50), id="fifty-symbols"),
        pytest.param("synthetic://random-walk?seed=2&symbols=3", SyntheticSpec(RANDOM_WALK, 2, 3), id="seed-and-size"),
        pytest.param("synthetic://?beta=0.5", SyntheticSpec(LEAD_LAG, None, 8, 0.5), id="beta"),
        pytest.param("synthetic://lead-lag?beta=.3", SyntheticSpec(LEAD_LAG, None, 8, 0.3), id="beta-no-leading-zero"),
        pytest.param("synthetic://?beta=0", SyntheticSpec(LEAD_LAG, None, 8, 0.0), id="beta-zero"),
        pytest.param("synthetic://?beta=5.", SyntheticSpec(LEAD_LAG, None, 8, 5.0), id="beta-largest"),
        pytest.param(
            "synthetic://?symbols=3&beta=0.25&seed=9", SyntheticSpec(LEAD_LAG, 9, 3, 0.25), id="beta-seed-and-size"
        ),
    ],
)
def test_synthetic_uris(uri, spec):
    assert is_synthetic_uri(uri)
    assert parse_synthetic_uri(uri) == spec


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("synthetic://random_walk", id="unknown-market"),
        pytest.param("synthetic://?seed=-1", id="negative-seed"),
        pytest.param("synthetic://?seed=x", id="word-seed"),
        pytest.param("synthetic://?seed=1&seed=2", id="two-seeds"),
        pytest.param("synthetic://?drift=1", id="unknown-option"),
        pytest.param("synthetic://random-walk/ETH", id="path"),
        pytest.param("synthetic://?seed", id="empty-seed"),
        pytest.param("synthetic://?symbols=0", id="no-symbols"),
        pytest.param("synthetic://?symbols=501", id="too-many-symbols"),
        pytest.param("synthetic://?symbols=ten", id="word-symbols"),
        pytest.param("synthetic://?beta=-0.1", id="negative-beta"),
        pytest.param("synthetic://?beta=5.01", id="beta-above-5"),
        pytest.param("synthetic://?beta=nan", id="nan-beta"),
        pytest.param("synthetic://?beta=inf", id="inf-beta"),
        pytest.param("synthetic://?beta=1e-1", id="exponent-beta"),
        pytest.param("synthetic://?beta=1_0", id="underscore-beta"),
        pytest.param("synthetic://?beta=+1", id="signed-beta"),
        pytest.param("synthetic://?beta=", id="empty-beta"),
        pytest.param("synthetic://?beta=0.5&beta=0.3", id="two-betas"),
        pytest.param("synthetic://random-walk?beta=0.5", id="beta-on-the-random-walk"),
    ],
)
def test_bad_synthetic_uris_name_the_uri_and_what_is_allowed(uri):
    with pytest.raises(
        ValueError,
        match=r"unsupported synthetic data URI .* use synthetic:// \(planted lead-lag\), synthetic://random-walk",
    ):
        parse_synthetic_uri(uri)
    with pytest.raises(ValueError, match="unsupported synthetic data URI"):
        MarketData(uri)


@pytest.mark.parametrize("uri", ["synthetic://?beta=-1", "synthetic://random-walk?beta=0"])
def test_a_refused_beta_says_what_is_allowed(uri):
    message = f"unsupported synthetic data URI {uri!r}: use synthetic:// (planted lead-lag)"
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        parse_synthetic_uri(uri)
    assert "on the planted market ?beta=B (a decimal from 0 to 5, default 1)" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_default_market_is_the_planted_one():
    assert SYNTHETIC_URI == "synthetic://" and RANDOM_WALK_URI == "synthetic://random-walk"
    pd.testing.assert_frame_equal(
        MarketData().ohlcv("ETH", as_of=AS_OF), MarketData("synthetic://lead-lag").ohlcv("ETH", as_of=AS_OF)
    )


# --- determinism and shape (moved from test_data.py with the market) ------------------------


def test_synthetic_market_has_the_majors():
    assert {"BTC", "ETH", "SOL"} <= set(SYNTHETIC_SYMBOLS)
    assert len(SYNTHETIC_SYMBOLS) >= 5


def test_a_sized_market_keeps_the_named_symbols_and_adds_seeded_ones():
    assert SyntheticSpec(n_symbols=3).symbols == ("BTC", "ETH", "SOL")
    fifty = parse_synthetic_uri("synthetic://?symbols=50").symbols
    assert fifty[:8] == SYNTHETIC_SYMBOLS and fifty[8] == "SYN009" and fifty[-1] == "SYN050" and len(set(fifty)) == 50
    sized, named = MarketData("synthetic://?symbols=50"), MarketData()
    # the named symbols' bars do not depend on the market's size (ETH reads BTC's shocks too)
    pd.testing.assert_frame_equal(sized.ohlcv("ETH", as_of=AS_OF), named.ohlcv("ETH", as_of=AS_OF))
    extra = sized.ohlcv("SYN050", as_of=AS_OF)
    pd.testing.assert_frame_equal(extra, MarketData("synthetic://?symbols=60").ohlcv("SYN050", as_of=AS_OF))
    assert not extra["close"].equals(sized.ohlcv("SYN049", as_of=AS_OF)["close"])
    with pytest.raises(DataError, match="synthetic market has BTC, ETH, .*AVAX, SYN009 to SYN050"):
        sized.ohlcv("SYN051", as_of=AS_OF)
    with pytest.raises(DataError, match="synthetic market has BTC, ETH$"):
        MarketData("synthetic://?symbols=2").ohlcv("SOL", as_of=AS_OF)


def test_synthetic_seed_is_crc32_of_the_name():
    assert symbol_seed("BTC") == zlib.crc32(b"BTC") == 3176990918


def test_synthetic_bars_are_the_same_in_another_process():
    # a process with another hash seed: hash() would differ there, crc32 does not
    uri = "synthetic://?seed=3"
    code = f"from finetune.data import DataError, MarketData; import pandas as pd; print(repr(float(MarketData({uri!r}).ohlcv('ETH', as_of=pd.Timestamp('2026-06-07T00:00:00Z'))['close'].iloc[-1])))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(PACKAGE_DIR)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert float(out) == float(MarketData(uri).ohlcv("ETH", as_of=AS_OF)["close"].iloc[-1])


def test_synthetic_is_deterministic_and_hourly():
    first, second = MarketData().ohlcv("ETH", as_of=AS_OF), MarketData("synthetic://").ohlcv("ETH", as_of=AS_OF)
    pd.testing.assert_frame_equal(first, second)
    assert first.index[0] == SYNTHETIC_START
    assert (np.diff(first.index.asi8) == np.diff(first.index.asi8)[0]).all()
    assert first.index[1] - first.index[0] == pd.Timedelta(hours=1)
    assert str(first.index.tz) == "UTC"
    assert first.index[-1] == AS_OF - pd.Timedelta(hours=1)  # the bar opening at as-of has not closed
    assert list(first.columns) == ["open", "high", "low", "close", "volume", "filled"]
    assert (first.drop(columns="filled").dtypes == np.float64).all()
    assert not first["filled"].any()


@pytest.mark.parametrize("kind", [LEAD_LAG, RANDOM_WALK])
@pytest.mark.parametrize("symbol", [pytest.param(s, id=s) for s in SYNTHETIC_SYMBOLS])
def test_synthetic_bars_are_consistent(symbol, kind):
    bars = synthetic_ohlcv(symbol, spec=SyntheticSpec(kind))
    assert bars.index[-1] < SYNTHETIC_END
    assert (bars[["open", "high", "low", "close"]] > 0).all().all()
    assert (bars["volume"] > 0).all()
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    np.testing.assert_array_equal(bars["open"].to_numpy()[1:], bars["close"].to_numpy()[:-1])


def test_an_unknown_symbol_lists_the_known_ones():
    with pytest.raises(SyntheticDataError, match="no synthetic data for symbol XYZ: the synthetic market has BTC, ETH"):
        synthetic_ohlcv("XYZ")


def test_a_seed_gives_another_market_of_the_same_kind():
    default, seven, seven_again = (
        _returns("ETH", spec)
        for spec in (SyntheticSpec(LEAD_LAG), SyntheticSpec(LEAD_LAG, 7), SyntheticSpec(LEAD_LAG, 7))
    )
    np.testing.assert_array_equal(seven, seven_again)
    assert abs(np.corrcoef(default, seven)[0, 1]) < 0.02
    btc = _returns("BTC", SyntheticSpec(LEAD_LAG, 7))
    assert _slope(seven[1:], btc[:-1]) == pytest.approx(LEAD_LAG_BETA, abs=0.05)


# --- the planted lead-lag and the random walk ------------------------------------------------


@pytest.mark.parametrize("kind", [LEAD_LAG, RANDOM_WALK])
def test_btc_is_a_driftless_random_walk_with_clustered_volatility(kind):
    # GARCH: large moves follow large moves, so |r| is autocorrelated while r is not.
    returns = _returns("BTC", SyntheticSpec(kind))
    assert abs(np.corrcoef(returns[1:], returns[:-1])[0, 1]) < 0.02
    assert np.corrcoef(np.abs(returns[1:]), np.abs(returns[:-1]))[0, 1] > 0.05
    assert returns.std() == pytest.approx(HOURLY_VOL["BTC"], rel=0.1)


@pytest.mark.parametrize("alt", ["ETH", "SOL"])
def test_the_planted_alts_follow_btcs_previous_bar(alt):
    btc, returns = _returns("BTC"), _returns(alt)
    # the loading on BTC's previous bar is the planted beta; nothing on the same bar
    assert _slope(returns[1:], btc[:-1]) == pytest.approx(LEAD_LAG_BETA, abs=0.03)
    assert abs(np.corrcoef(returns, btc)[0, 1]) < 0.02
    # the alt's own past does not carry the edge: only BTC's bar predicts it
    assert abs(np.corrcoef(returns[1:], returns[:-1])[0, 1]) < 0.02
    assert returns.std() == pytest.approx(HOURLY_VOL[alt], rel=0.1)


@pytest.mark.parametrize("alt", ["ETH", "SOL"])
def test_the_random_walk_alts_co_move_but_nothing_leads(alt):
    spec = SyntheticSpec(RANDOM_WALK)
    btc, returns = _returns("BTC", spec), _returns(alt, spec)
    assert np.corrcoef(returns, btc)[0, 1] > 0.4  # the same bar: as real crypto
    assert abs(_slope(returns[1:], btc[:-1])) < 0.02  # the previous bar: nothing
    assert abs(np.corrcoef(returns[1:], returns[:-1])[0, 1]) < 0.02


# --- the planted coefficient: ?beta= -------------------------------------------------------------


def test_the_default_beta_leaves_every_bar_as_it_was():
    # The default market, written out from the formula it had before beta became a parameter:
    # ETH's own GARCH noise at sqrt(0.009^2 - 0.007^2) plus 1.0 times BTC's previous bar return.
    n = len(synthetic_ohlcv("ETH"))
    own, _ = garch_returns(np.random.default_rng(symbol_seed("ETH")).standard_normal(n), math.sqrt(0.009**2 - 0.007**2))
    btc, _ = garch_returns(np.random.default_rng(symbol_seed("BTC")).standard_normal(n), 0.007)
    own[1:] += btc[:-1]
    expected = 730.0 * np.exp(np.cumsum(own))
    np.testing.assert_array_equal(synthetic_ohlcv("ETH")["close"].to_numpy(), expected)
    for with_beta, without in (
        ("synthetic://?beta=1", "synthetic://"),
        ("synthetic://?beta=1.0&seed=4", "synthetic://?seed=4"),
    ):
        for symbol in ("BTC", "ETH", "SOL"):
            pd.testing.assert_frame_equal(
                MarketData(with_beta).ohlcv(symbol, as_of=AS_OF), MarketData(without).ohlcv(symbol, as_of=AS_OF)
            )


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5])
def test_beta_sets_the_alts_loading_on_btcs_previous_bar(beta):
    spec = parse_synthetic_uri(f"synthetic://?beta={beta}&seed=11")
    btc = _returns("BTC", spec)
    np.testing.assert_array_equal(btc, _returns("BTC", SyntheticSpec(LEAD_LAG, 11)))  # the leader is the same
    for alt in ("ETH", "SOL"):
        returns = _returns(alt, spec)
        assert _slope(returns[1:], btc[:-1]) == pytest.approx(beta, abs=0.03)
        assert abs(np.corrcoef(returns, btc)[0, 1]) < 0.02
        assert returns.std() == pytest.approx(HOURLY_VOL[alt], rel=0.1)  # the table's vol is kept


def test_a_beta_past_the_alts_vol_keeps_some_own_noise():
    # 3 x BTC's 0.007 exceeds ETH's 0.009: ETH's own noise keeps a quarter of its table vol
    spec = parse_synthetic_uri("synthetic://?beta=3")
    btc, eth = _returns("BTC", spec), _returns("ETH", spec)
    assert _slope(eth[1:], btc[:-1]) == pytest.approx(3.0, abs=0.05)
    residual = eth[1:] - 3.0 * btc[:-1]
    assert residual.std() == pytest.approx(0.25 * HOURLY_VOL["ETH"], rel=0.1)


def test_describe_names_a_beta_other_than_the_default():
    assert describe(parse_synthetic_uri("synthetic://?symbols=2")) == "BTC, ETH"
    assert describe(parse_synthetic_uri("synthetic://?symbols=2&beta=1")) == "BTC, ETH"
    assert describe(parse_synthetic_uri("synthetic://?symbols=2&beta=0.50")) == "BTC, ETH (planted lead-lag beta 0.5)"
    with pytest.raises(DataError, match=r"synthetic market has BTC, ETH \(planted lead-lag beta 0.3\)$"):
        MarketData("synthetic://?symbols=2&beta=0.3").ohlcv("SOL", as_of=AS_OF)


# --- the apparatus on both markets: power and null (runner functions in-process, no database) ---

POWER_COSTS = (0, 10, 30)


def _sweep(data_uri: str) -> list[runner.KeyResult]:
    """btc_features on ETH and SOL: 4 folds, 100 seeds, hold 24, default windows (issue 8)."""
    config = runner.RunConfig(
        run_id="power",
        factor="btc_features",
        cryptos=("ETH", "SOL"),
        cost_bps=POWER_COSTS,
        slippage_bps=(0,),
        as_of=AS_OF,
        n_folds=4,
        n_seeds=100,
        hold_bars=24,
        train_bars=DEFAULT_TRAIN_BARS,
        test_bars=DEFAULT_TEST_BARS,
        data_uri=data_uri,
    )
    return [
        result
        for crypto, item in runner.prepare(config).prepared()
        for fold in item.folds
        for result in runner.evaluate_fold(
            crypto, item, fold, cost_bases=config.cost_bases, n_seeds=config.n_seeds, hold_bars=config.hold_bars
        )
    ]


@pytest.fixture(scope="module")
def planted() -> list[runner.KeyResult]:
    return _sweep(SYNTHETIC_URI)


@pytest.fixture(scope="module")
def random_walk() -> list[runner.KeyResult]:
    return _sweep(RANDOM_WALK_URI)


def _at(results: list[runner.KeyResult], cost_bps: int) -> list[runner.KeyResult]:
    return [r for r in results if r.key.cost_bps == cost_bps]


def _found(result: runner.KeyResult) -> bool:
    """Beats buy-and-hold and ranks at or above the random seeds' 95th percentile."""
    buy_and_hold = next(b for b in result.baselines if b.baseline_type == "buy_and_hold")
    return result.model.net_return > buy_and_hold.net_return and result.model.random_percentile >= 0.95


def test_power_btc_features_finds_the_planted_lead_lag(planted):
    at_zero = _at(planted, 0)
    assert len(at_zero) == 8
    assert sum(map(_found, at_zero)) >= 6, [(r.key, r.model.net_return, r.model.random_percentile) for r in at_zero]
    # the exposure-matched shift test sees the timing too
    assert sum(r.model.perm_p_value <= 0.05 for r in at_zero) >= 6


def test_power_the_edge_shrinks_as_costs_rise(planted):
    mean_return = [np.mean([r.model.net_return for r in _at(planted, cost)]) for cost in POWER_COSTS]
    mean_edge = [
        np.mean([r.model.net_return - r.baselines[0].net_return for r in _at(planted, cost)]) for cost in POWER_COSTS
    ]
    assert mean_return[0] > mean_return[1] > mean_return[2]
    assert mean_edge[0] > mean_edge[1] > mean_edge[2]
    found = [sum(map(_found, _at(planted, cost))) for cost in POWER_COSTS]
    assert found == sorted(found, reverse=True)


def test_null_btc_features_finds_nothing_in_the_random_walk(planted, random_walk):
    at_zero = _at(random_walk, 0)
    found = sum(map(_found, at_zero))
    # a flat book can out-rank random trading in a falling month: one or two such keys, not six
    assert found <= 2 and sum(map(_found, _at(planted, 0))) - found >= 4
    assert sum(r.model.perm_p_value <= 0.05 for r in at_zero) <= 1


@pytest.mark.parametrize("kind", [LEAD_LAG, RANDOM_WALK])
def test_a_later_as_of_extends_the_market_without_changing_a_bar(kind):
    # A weekly schedule outlives the first block: its as-ofs must find fresh bars, and the bars an
    # earlier as-of read must stay the same bytes (the first block is drawn as before).
    spec = SyntheticSpec(kind)
    first = synthetic_ohlcv("ETH", spec=spec)
    later_as_of = SYNTHETIC_END + pd.Timedelta(days=400)
    extended = synthetic_ohlcv("ETH", spec=spec, until=later_as_of)

    pd.testing.assert_frame_equal(extended.loc[: first.index[-1]], first)
    assert extended.index[-1] >= later_as_of
    assert (extended.index.to_series().diff().iloc[1:] == pd.Timedelta(hours=1)).all(), "one hourly grid"
    # the price goes on from the first block's last close
    assert extended["open"].loc[SYNTHETIC_END] == first["close"].iloc[-1]
    assert (extended[["open", "high", "low", "close", "volume"]] > 0).all().all()
    # read through MarketData at that as-of: the newest closed bar is the one before as-of
    bars = MarketData(RANDOM_WALK_URI if kind == RANDOM_WALK else None).ohlcv("ETH", as_of=later_as_of)
    assert bars.index[-1] == later_as_of - pd.Timedelta(hours=1)
    assert not bars["filled"].any()

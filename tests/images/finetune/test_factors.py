from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from finetune.bars import BarOptions
from finetune.data import DataError, MarketData
from finetune.factors import (
    KNOWN_FACTORS,
    UnknownFactorError,
    build_feature_store,
    diff,
    feature_hash,
    lag,
    rolling,
    safe_ratio,
    warmup_rows,
)

AS_OF = pd.Timestamp("2021-03-01T00:00:00Z")  # two months of synthetic bars keep the tests fast


def _closed(n_bars: int, start: str = "2024-01-01") -> pd.Timestamp:
    """The as-of at which the n-th hourly bar from ``start`` has just closed."""
    return pd.Timestamp(start, tz="UTC") + pd.Timedelta(hours=n_bars)


@pytest.fixture(scope="module")
def market() -> MarketData:
    return MarketData()


def _hourly(close: np.ndarray, start: str = "2024-01-01") -> pd.DataFrame:
    index = pd.date_range(start, periods=len(close), freq="h", tz="UTC", name="timestamp")
    return pd.DataFrame(
        {
            "open": close,
            "high": close * 1.01,
            "low": close * 0.99,
            "close": close,
            "volume": np.linspace(5, 9, len(close)),
        },
        index=index,
    )


@pytest.mark.parametrize(
    ("factor", "n_features"),
    [
        pytest.param("base_features", 12, id="base"),
        pytest.param("n_features", 304, id="wide"),
        pytest.param("btc_features", 18, id="btc-overlay"),
        pytest.param("l2_features", 10, id="l2"),
    ],
)
def test_every_factor_builds_a_finite_float32_store(market, factor, n_features):
    store = build_feature_store(factor, "SOL", market, as_of=AS_OF)
    assert store.features.dtype == np.float32
    assert store.features.shape == (len(store.index), n_features) == (len(store.close), len(store.feature_names))
    assert len(set(store.feature_names)) == n_features
    assert np.isfinite(store.features).all()
    assert store.close.dtype == np.float64
    assert store.index[-1] == AS_OF - pd.Timedelta(hours=1)  # the bar opening at as-of has not closed
    assert store.nbytes == store.features.nbytes + store.close.nbytes + store.index.nbytes


def test_close_is_aligned_with_the_index(market):
    store = build_feature_store("base_features", "ETH", market, as_of=AS_OF)
    bars = market.ohlcv("ETH", as_of=AS_OF)
    np.testing.assert_array_equal(store.close, bars.loc[store.index, "close"].to_numpy())


def test_warm_up_rows_are_dropped_exactly(market):
    # base_features' longest look-back is the 336-bar mean of log close (the 168-bar return
    # needs 169 bars): the first row with every column is bar 335.
    store = build_feature_store("base_features", "ETH", market, as_of=AS_OF)
    assert store.index[0] == market.ohlcv("ETH", as_of=AS_OF).index[335]


@pytest.mark.parametrize(
    ("factor", "symbol"),
    [(factor, "ETH") for factor in KNOWN_FACTORS] + [("btc_features", "BTC")],
)
def test_the_warm_up_found_on_a_prefix_is_the_one_the_store_drops(market, factor, symbol):
    store = build_feature_store(factor, symbol, market, as_of=AS_OF)
    bars = market.ohlcv(symbol, as_of=AS_OF)
    assert bars.index[warmup_rows(factor, symbol, market, as_of=AS_OF)] == store.index[0]


def test_the_warm_up_of_a_late_starting_btc_is_found_past_the_first_probe(tmp_path):
    # BTC's bars begin 3000 hours after the alt's: btc_features have no row before BTC's 169th
    # bar, beyond the first prefix probed, so the probe has to look further.
    alt = _hourly(np.linspace(10.0, 12.0, 4000))
    btc = _hourly(np.linspace(100.0, 200.0, 1000), start="2024-05-05T08:00:00")
    for symbol, frame in (("BTC", btc), ("ALT", alt)):
        frame.rename_axis("timestamp").reset_index().to_csv(tmp_path / f"{symbol}.csv", index=False)
    market = MarketData(tmp_path.as_uri())
    as_of = _closed(4000)
    store = build_feature_store("btc_features", "ALT", market, as_of=as_of)
    start = warmup_rows("btc_features", "ALT", market, as_of=as_of)
    assert start > 3000 and market.ohlcv("ALT", as_of=as_of).index[start] == store.index[0]


def test_base_features_values(market):
    store = build_feature_store("base_features", "BTC", market, as_of=AS_OF)
    bars = market.ohlcv("BTC", as_of=AS_OF)
    log_close = np.log(bars["close"])
    column = dict(zip(store.feature_names, store.features.T, strict=True))
    expected_ret_24 = (log_close - log_close.shift(24)).loc[store.index].to_numpy()
    np.testing.assert_allclose(column["ret_24"], expected_ret_24, rtol=1e-6, atol=1e-7)
    expected_vol = log_close.diff().rolling(168).std().loc[store.index].to_numpy()
    np.testing.assert_allclose(column["vol_168"], expected_vol, rtol=1e-5)


def test_btc_features_add_only_the_btc_overlay(market):
    base = build_feature_store("base_features", "SOL", market, as_of=AS_OF)
    overlay = build_feature_store("btc_features", "SOL", market, as_of=AS_OF)
    assert overlay.feature_names[:12] == base.feature_names
    assert all(name.startswith("btc_") for name in overlay.feature_names[12:])
    np.testing.assert_array_equal(overlay.features[:, :12], base.features)
    column = dict(zip(overlay.feature_names, overlay.features.T, strict=True))
    btc = np.log(market.ohlcv("BTC", as_of=AS_OF)["close"])
    np.testing.assert_allclose(column["btc_ret_1"], btc.diff().loc[overlay.index].to_numpy(), rtol=1e-6, atol=1e-8)
    # alts co-move with BTC in the same bar in the random walk (in the planted market they lag it)
    co_moving = build_feature_store("btc_features", "SOL", MarketData("synthetic://random-walk"), as_of=AS_OF)
    assert 0.3 < co_moving.features[:, co_moving.feature_names.index("btc_corr_168")].mean() < 1.0


def test_btc_features_of_btc_are_its_base_features(market):
    base = build_feature_store("base_features", "BTC", market, as_of=AS_OF)
    own = build_feature_store("btc_features", "BTC", market, as_of=AS_OF)
    assert own.feature_names == base.feature_names
    np.testing.assert_array_equal(own.features, base.features)
    assert own.feature_hash != base.feature_hash  # the factor name is part of the hash


def test_btc_is_aligned_by_timestamp_never_from_the_future(tmp_path):
    # The symbol has a bar at 02:30 that BTC lacks: BTC's 02:00 close stands for it.
    btc = _hourly(np.linspace(100.0, 200.0, 400))
    alt_index = btc.index[:400].insert(3, pd.Timestamp("2024-01-01T02:30:00Z"))
    alt = _hourly(np.linspace(10.0, 12.0, 401))
    alt.index = alt_index
    for symbol, frame in (("BTC", btc), ("ALT", alt)):
        frame.rename_axis("timestamp").reset_index().to_csv(tmp_path / f"{symbol}.csv", index=False)
    # The 02:30 stamp is off the hourly grid: rows as given (DESIGN 4.1 --gaps rows).
    market = MarketData(tmp_path.as_uri(), bars=BarOptions(gaps="rows"))
    as_of = btc.index[-1] + pd.Timedelta(hours=1)  # the last bar has just closed
    store = build_feature_store("btc_features", "ALT", market, as_of=as_of)
    column = dict(zip(store.feature_names, store.features.T, strict=True))
    btc_log = np.log(btc["close"].to_numpy())
    # The last bar is BTC bar 399, the alt's row 400; its 1-bar BTC return is btc[399] - btc[398].
    assert column["btc_ret_1"][-1] == pytest.approx(btc_log[399] - btc_log[398], rel=1e-6)


def test_l2_close_location_and_range(market):
    store = build_feature_store("l2_features", "ETH", market, as_of=AS_OF)
    bars = market.ohlcv("ETH", as_of=AS_OF).loc[store.index]
    column = dict(zip(store.feature_names, store.features.T, strict=True))
    location = (bars["close"] - bars["low"]) / (bars["high"] - bars["low"])
    np.testing.assert_allclose(column["l2_close_location"], location.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(column["l2_log_range"], np.log(bars["high"] / bars["low"]).to_numpy(), rtol=1e-6)
    assert (column["l2_roll_spread_48"] >= 0).all()


def test_feature_hash_covers_factor_names_and_bytes(market):
    store = build_feature_store("l2_features", "SOL", market, as_of=AS_OF)
    digest = hashlib.sha256()
    digest.update(b"l2_features\0" + "\n".join(store.feature_names).encode() + b"\0")
    for j in range(store.features.shape[1]):
        digest.update(np.ascontiguousarray(store.features[:, j]).tobytes())
    assert store.feature_hash == digest.hexdigest()
    changed = store.features.copy()
    changed[5, 3] += 1.0
    assert feature_hash("l2_features", store.feature_names, changed) != store.feature_hash
    renamed = ("x",) + store.feature_names[1:]
    assert feature_hash("l2_features", renamed, store.features) != store.feature_hash


@pytest.mark.parametrize("factor", [pytest.param(f, id=f) for f in KNOWN_FACTORS])
def test_building_costs_the_matrix_plus_a_few_series(market, factor):
    # A year and a half of bars; the inputs are loaded first so that only the build is traced.
    # Beyond the float32 matrix a build may hold a bounded number of float64 series (the shared
    # inputs, a rolling window's output, ...), never one per column: 304 float64 columns
    # would be 300+ series.
    as_of = pd.Timestamp("2022-06-01T00:00:00Z")
    n = len(market.ohlcv("SOL", as_of=as_of))
    market.ohlcv("BTC", as_of=as_of)
    tracemalloc.start()
    try:
        store = build_feature_store(factor, "SOL", market, as_of=as_of)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (peak - store.features.nbytes) / (8 * n) < 24


def test_stores_are_reproducible(market):
    first = build_feature_store("n_features", "ETH", market, as_of=AS_OF)
    second = build_feature_store("n_features", "ETH", MarketData(), as_of=AS_OF)
    assert first.feature_hash == second.feature_hash


def test_unknown_factor_lists_the_known_ones(market):
    with pytest.raises(UnknownFactorError, match="unknown factor 'x_features'") as info:
        build_feature_store("x_features", "BTC", market, as_of=AS_OF)
    assert all(factor in str(info.value) for factor in KNOWN_FACTORS)
    assert isinstance(info.value, ValueError)


def test_too_short_a_history_is_a_data_error(tmp_path):
    _hourly(np.linspace(1.0, 2.0, 100)).reset_index().to_csv(tmp_path / "BTC.csv", index=False)
    with pytest.raises(DataError, match="symbol BTC: 100 bars .* leave no base_features rows"):
        build_feature_store("base_features", "BTC", MarketData(tmp_path.as_uri()), as_of=_closed(100))
    with pytest.raises(DataError, match="symbol BTC: 100 bars .* leave no base_features rows"):
        warmup_rows("base_features", "BTC", MarketData(tmp_path.as_uri()), as_of=_closed(100))


def test_flat_prices_give_zero_not_nan(tmp_path):
    # a flat window has zero volatility: ratios over it are 0, the store is still complete
    _hourly(np.full(500, 3.0)).reset_index().to_csv(tmp_path / "BTC.csv", index=False)
    store = build_feature_store("base_features", "BTC", MarketData(tmp_path.as_uri()), as_of=_closed(500))
    assert len(store.index) == 500 - 335
    assert np.isfinite(store.features).all()


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        pytest.param(lambda x: diff(x, 2), [np.nan, np.nan, 2.0, 2.0], id="diff"),
        pytest.param(lambda x: lag(x, 1), [np.nan, 1.0, 2.0, 3.0], id="lag"),
        pytest.param(lambda x: lag(x, 0), [1.0, 2.0, 3.0, 4.0], id="lag-0"),
        pytest.param(lambda x: rolling(x, 2, "mean"), [np.nan, 1.5, 2.5, 3.5], id="rolling-mean"),
        pytest.param(lambda x: safe_ratio(x, x - 2.0), [-1.0, 0.0, 3.0, 2.0], id="ratio-zero-denominator"),
    ],
)
def test_series_operations(op, expected):
    np.testing.assert_array_equal(op(np.array([1.0, 2.0, 3.0, 4.0])), expected)

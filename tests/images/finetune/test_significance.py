from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from scipy import stats

import design_reference as reference
from design_reference import held_share
from finetune.baselines import buy_and_hold
from finetune.model import evaluate, net_bar_returns
from finetune.significance import (
    ShiftTest,
    ewma_volatility,
    exposure,
    matched_percentiles,
    position_list,
    profit_tests,
    random_percentile,
    scaled_returns,
    shift_offsets,
    shift_test,
    timing_weights,
)

# A 5-bar window worked on paper (rt = 0): positions [1, 0, 1, 1, 0] trade 0 -> 1 (110/100) and
# 2 -> 4 (121/99): growth 1.1 * 11/9 = 1.34444..., a return of 0.34444...
CLOSE_5 = np.array([100.0, 110.0, 99.0, 121.0, 121.0])
POSITIONS_5 = np.array([1, 0, 1, 1, 0])


def _close(n: int, seed: int, vol: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, vol, n)))


# --- timing test (shift_test) ----------------------------------------------------------------

# A 6-bar window worked on paper with sigma = 1 (z = the next bar's log return, 0 at the last bar):
# z = [a, b, c, 0, a, 0] with a = ln 1.1, b = ln 0.9, c = ln 11/9; positions [1, 0, 1, 1, 0, 0]
# weigh each bar by the exposure less its mean before the bar: w = [0, -1, 1/2, 1/3, -3/4, -3/5],
# so the terms w z are [0, -b, c/2, 0, -3a/4, 0] and T = (-b + c/2 - 3a/4) / sqrt(b^2 + c^2/4 + 9a^2/16)
# = 0.8280. Of the 8 sign patterns of the three non-zero terms (0.1054, 0.1003, -0.0715), two
# reach the model's sum 0.1342: its own and (+, +, -) 0.2772. The exact p is 2/8.
CLOSE_6 = np.array([100.0, 110.0, 99.0, 121.0, 121.0, 133.1])
POSITIONS_6 = np.array([1, 0, 1, 1, 0, 0])
UNIT_SIGMA_6 = np.ones(6)


def test_timing_weights_are_the_exposure_less_its_mean_before_the_bar():
    np.testing.assert_allclose(timing_weights(POSITIONS_6), [0, -1, 1 / 2, 1 / 3, -3 / 4, -3 / 5], rtol=0, atol=1e-15)
    assert not timing_weights(np.ones(50)).any() and not timing_weights(np.zeros(50)).any()


def test_timing_test_hand_worked_six_bars():
    result = shift_test(POSITIONS_6, CLOSE_6, n_shifts=19_999, volatility=UNIT_SIGMA_6)
    a, b, c = math.log(1.1), math.log(0.9), math.log(11 / 9)
    expected = (-b + c / 2 - 3 * a / 4) / math.sqrt(b * b + c * c / 4 + 9 * a * a / 16)
    assert result.statistic == pytest.approx(expected, abs=1e-12)
    assert result.statistic == pytest.approx(0.8280, abs=1e-4)
    assert result.n_shifts == 19_999
    # the random flips reach the exact 2/8 within four standard errors
    assert result.p_value == pytest.approx(2 / 8, abs=4 * math.sqrt(2 / 8 * 6 / 8 / 20_000))
    assert result.model_return == pytest.approx(1.1 * 121 / 99 - 1, abs=1e-15)


def test_shift_offsets_are_distinct_from_the_whole_circle():
    offsets = shift_offsets(720, 300)
    assert offsets.size == 300 == np.unique(offsets).size
    assert offsets.min() >= 1 and offsets.max() <= 719
    np.testing.assert_array_equal(shift_offsets(720, 999), np.arange(1, 720))  # all of them: fewer than asked
    assert shift_offsets(1, 999).size == 0


@pytest.mark.parametrize(
    ("n", "n_shifts", "p_long"),
    [
        pytest.param(40, 10, 0.5, id="forty-bars"),
        pytest.param(60, 100, 0.3, id="sparse"),
        pytest.param(300, 100, 0.7, id="dense"),
        pytest.param(720, 200, 0.5, id="month"),
    ],
)
def test_timing_test_agrees_with_an_independent_loop(n, n_shifts, p_long):
    for seed in range(3):
        close = _close(n, seed)
        positions = (np.random.default_rng(100 + seed).random(n) < p_long).astype(int)
        expected = reference.timing_test(positions, close, n_shifts=n_shifts)
        result = shift_test(positions, close, n_shifts=n_shifts)
        assert (result.p_value, result.n_shifts) == (pytest.approx(expected[0], abs=1e-15), expected[1]), seed


def test_the_volatility_is_an_ewma_known_at_each_bar():
    close = _close(200, 3)
    np.testing.assert_allclose(ewma_volatility(close), reference.ewma_volatility(close), rtol=1e-12, equal_nan=True)
    # past-only: changing a later price leaves every earlier sigma as it was
    later = close.copy()
    later[150:] *= 1.3
    np.testing.assert_array_equal(ewma_volatility(later)[:150], ewma_volatility(close)[:150])
    # scaled returns: the next bar's log return over sigma known now; 0 where sigma is unknown and at the end
    z = scaled_returns(close)
    sigma = ewma_volatility(close)
    assert np.all(z[:24] == 0) and z[-1] == 0
    np.testing.assert_allclose(z[24:-1], np.diff(np.log(close))[24:] / sigma[24:-1], rtol=1e-12)


def test_the_timing_test_does_not_depend_on_the_cost():
    close = _close(500, 4)
    positions = (np.random.default_rng(5).random(500) < 0.4).astype(np.float64)
    tests = [shift_test(positions, close, rt, n_shifts=50) for rt in (0.0, 0.002, 0.006)]
    assert len({(t.p_value, t.n_shifts, t.statistic) for t in tests}) == 1
    for rt, result in zip((0.0, 0.002, 0.006), tests, strict=True):
        assert result.model_return == pytest.approx(evaluate(positions, close, rt).net_return, abs=1e-12)


def test_a_planted_timing_edge_is_significant():
    # long exactly before each rise: every term of T is positive, no flip can reach it
    close = _close(400, 8, vol=0.02)
    knows_the_future = (np.diff(close, append=close[-1]) > 0).astype(int)
    assert shift_test(knows_the_future, close, n_shifts=199).p_value == pytest.approx(1 / 200)


def test_the_shift_versions_options_are_accepted_and_change_nothing():
    close = _close(300, 6)
    positions = (np.random.default_rng(7).random(300) < 0.5).astype(int)
    plain = shift_test(positions, close, n_shifts=199)
    assert shift_test(positions, close, n_shifts=199, hold_bars=24, lookback=168) == plain
    with pytest.raises(ValueError, match="lookback must be an integer >= 0"):
        shift_test(positions, close, n_shifts=199, lookback=-1)


def test_one_bar_has_no_timing():
    assert shift_test(np.array([1]), np.array([100.0]), 0.002, n_shifts=100) == ShiftTest(1.0, 100, 0.0, 0.0)


@pytest.mark.parametrize("positions", [np.zeros(96, dtype=int), np.ones(96, dtype=int)], ids=["flat", "long"])
def test_a_constant_book_has_no_timing(positions):
    close = _close(96, 9)
    result = shift_test(positions, close, 0.002, n_shifts=100)
    assert (result.p_value, result.n_shifts, result.statistic) == (1.0, 100, 0.0)  # every weight is 0
    if positions[0]:  # always long is buy-and-hold
        assert result.model_return == pytest.approx(buy_and_hold(close, 0.002).net_return, abs=1e-15)


def _garch_market(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A driftless GARCH(1,1) market (Bollerslev 1986): volatility clusters, direction never
    predictable. Returns the closes and each bar's *coming* variance ``h[t+1]`` (known at ``t``)."""
    omega, alpha, beta = 1e-6, 0.1, 0.85
    h, shocks = omega / (1 - alpha - beta), rng.standard_normal(n)
    r, coming = np.empty(n), np.empty(n)
    for t in range(n):
        r[t] = shocks[t] * math.sqrt(h)
        h = omega + alpha * r[t] ** 2 + beta * h
        coming[t] = h
    return 100.0 * np.exp(np.cumsum(r)), coming


def _level_holds(p_values: list[float]) -> None:
    values = np.array(p_values)
    for level in (0.05, 0.10):
        hits = int(np.count_nonzero(values <= level))
        interval = stats.binomtest(hits, values.size, level).proportion_ci(0.95)
        assert interval.low <= level <= interval.high, (level, hits / values.size)


@pytest.mark.parametrize("knows", ["the-ewma", "the-coming-variance"])
def test_books_that_time_only_volatility_keep_the_level_on_a_garch_market(knows: str) -> None:
    # Long whenever the volatility is high: no directional skill at all. On raw returns such a
    # book got p <= 0.05 in about 8 % of markets. A book that knows the coming variance better
    # than the EWMA (as a model reading the bars' ranges does) still wins nothing: the statistic
    # is studentised over the bars it holds.
    p_values = []
    for market in range(300):
        close, coming = _garch_market(1_400, np.random.default_rng(7_000 + market))
        sigma = ewma_volatility(close)
        window, vol = close[680:], sigma[680:]
        signal = vol if knows == "the-ewma" else coming[680:]
        book = (signal > np.quantile(signal, (0.5, 0.7, 0.3)[market % 3])).astype(int)
        p_values.append(shift_test(book, window, n_shifts=999, volatility=vol).p_value)
    _level_holds(p_values)


@pytest.mark.parametrize("look_back", [72, 168])
def test_a_book_that_buys_after_falls_keeps_the_level_on_a_random_walk(look_back: int) -> None:
    # Long after the price fell over its look-back: more of a falling window is spent long, so
    # centring the book by its window-mean exposure (as its circularly shifted copies do) looks
    # ahead; that test gave p <= 0.05 in 9.0 % (72 bars) and 8.3 % (168) of these markets and
    # p <= 0.10 in 15.3 % and 17.7 %. The weights are centred on the exposure before each bar.
    p_values = []
    for market in range(300):
        close, _ = _garch_market(1_400, np.random.default_rng(9_000 + market))
        log_close = np.log(close)
        fell = np.zeros(close.size, dtype=int)
        fell[look_back:] = log_close[look_back:] < log_close[:-look_back]
        p_values.append(
            shift_test(fell[680:], close[680:], n_shifts=999, volatility=ewma_volatility(close)[680:]).p_value
        )
    _level_holds(p_values)


@pytest.mark.parametrize("chunk_cells", [pytest.param(c, id=f"cells-{c}") for c in (1, 300, 5_000, 1 << 20)])
def test_chunking_does_not_change_the_result(chunk_cells):
    close = _close(300, 12)
    positions = (np.random.default_rng(13).random(300) < 0.5).astype(int)
    offsets = shift_offsets(300, 250)
    expected = shift_test(positions, close, n_shifts=250)
    assert shift_test(positions, close, n_shifts=250, chunk_cells=chunk_cells) == expected
    by_chunks = matched_percentiles(positions, close, (0.0, 0.002), offsets, chunk_cells=chunk_cells)
    assert by_chunks == matched_percentiles(positions, close, (0.0, 0.002), offsets)
    profit = profit_tests(positions, close, (0.002,), n_resamples=99, block_bars=4)
    assert profit_tests(positions, close, (0.002,), n_resamples=99, block_bars=4, chunk_cells=chunk_cells) == profit


def _peak_bytes(positions: np.ndarray, close: np.ndarray, n_shifts: int) -> int:
    tracemalloc.start()
    try:
        shift_test(positions, close, n_shifts=n_shifts, chunk_cells=1 << 16)
        matched_percentiles(positions, close, (0.0, 0.002), shift_offsets(close.size, n_shifts), chunk_cells=1 << 16)
        profit_tests(positions, close, (0.0, 0.002), n_resamples=n_shifts, chunk_cells=1 << 16)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_flat_in_the_number_of_shifts():
    close = _close(4_000, 14)
    positions = (np.random.default_rng(15).random(4_000) < 0.5).astype(int)
    profit_tests(positions[:10], close[:10], (0.0,), n_resamples=1)  # arch's import is not the test's
    few, many = _peak_bytes(positions, close, 200), _peak_bytes(positions, close, 2_000)
    # the matched percentile's offsets (8 bytes each) grow; the (rows, n) chunks do not
    assert many < 1.2 * few + 8 * 2_000, (few, many)


@pytest.mark.parametrize(
    ("positions", "close", "kwargs", "match"),
    [
        pytest.param(
            [1, 0.5, 0], [1.0, 2.0, 3.0], {}, r"0 \(flat\) or 1 \(long\), got 0.5 at bar 1", id="half-position"
        ),
        pytest.param([1, 0], [1.0, 2.0, 3.0], {}, r"one value per close \(3\)", id="too-short"),
        pytest.param([1, 0, 1], [1.0, -2.0, 3.0], {}, "positive finite", id="bad-price"),
        pytest.param(
            [1, 0, 1], [1.0, 2.0, 3.0], {"n_shifts": -1}, "n_shifts must be an integer >= 0", id="negative-shifts"
        ),
        pytest.param([1, 0, 1], [1.0, 2.0, 3.0], {"rt": math.nan}, "round_trip_cost", id="nan-cost"),
        pytest.param(
            [1, 0, 1], [1.0, 2.0, 3.0], {"volatility": np.ones(2)}, r"one value per close \(3\)", id="short-sigma"
        ),
    ],
)
def test_bad_input_is_named(positions, close, kwargs, match):
    rt = kwargs.pop("rt", 0.002)
    kwargs.setdefault("n_shifts", 10)
    with pytest.raises(ValueError, match=match):
        shift_test(np.array(positions), np.array(close), rt, **kwargs)


# --- matched percentile ---------------------------------------------------------------------------


def test_matched_percentile_ranks_the_model_among_its_shifts_at_each_cost():
    # CLOSE_5's hand-worked shifts (rt = 0): k=1 -0.10, k=2 0.3444 (the model: a tie), k=3 0.10,
    # k=4 -0.01: below 3, tied 1 -> (3 + 0.5) / 4
    offsets = np.array([1, 2, 3, 4])
    assert matched_percentiles(POSITIONS_5, CLOSE_5, (0.0,), offsets) == [3.5 / 4]
    close = _close(300, 20)
    positions = (np.random.default_rng(21).random(300) < 0.5).astype(int)
    offsets = shift_offsets(300, 100)
    for rt, pct in zip((0.0, 0.006), matched_percentiles(positions, close, (0.0, 0.006), offsets), strict=True):
        model = reference.positions_return(positions, close, rt)
        shifted = [reference.positions_return(np.roll(positions, int(k)), close, rt) for k in offsets]
        assert pct == stats.percentileofscore(shifted, model, kind="mean") / 100
    assert matched_percentiles(POSITIONS_5, CLOSE_5, (0.0,), np.array([], dtype=np.int64)) == [None]


# --- profit after costs ---------------------------------------------------------------------------


def test_profit_test_agrees_with_an_independent_bootstrap_loop():
    close = _close(300, 22)
    positions = (np.random.default_rng(23).random(300) < 0.5).astype(int)
    costs = (0.0, 0.002, 0.02)
    results = profit_tests(positions, close, costs, n_resamples=199, block_bars=6)
    for rt, result in zip(costs, results, strict=True):
        pnl = [math.log1p(r) for r in reference.equity_bar_returns(positions, close, rt)]
        bh = [math.log1p(r) for r in reference.equity_bar_returns(np.ones(300), close, rt)]
        assert result.p_value == reference.block_bootstrap_p(pnl, n_resamples=199, block=6)
        excess = [a - b for a, b in zip(pnl, bh, strict=True)]
        assert result.p_value_vs_buy_and_hold == reference.block_bootstrap_p(excess, n_resamples=199, block=6)
        bar = net_bar_returns(positions, close, rt)
        assert result.bar_sharpe == pytest.approx(bar.mean() / bar.std(), rel=1e-12)
        assert result.bar_skewness == pytest.approx(stats.skew(bar), rel=1e-12)
        assert result.bar_kurtosis == pytest.approx(stats.kurtosis(bar, fisher=False), rel=1e-12)
    # costs only lower the P&L: the p-value of "above zero" never falls as the cost rises
    assert results[0].p_value <= results[1].p_value <= results[2].p_value


def test_a_book_that_loses_is_never_profitable_and_a_flat_book_is_p_one():
    close = _close(400, 24, vol=0.02)
    knows_the_future = (np.diff(close, append=close[-1]) > 0).astype(int)
    rich, eaten = profit_tests(knows_the_future, close, (0.0, 0.2), n_resamples=199, block_bars=4)
    assert rich.p_value == pytest.approx(1 / 200) and eaten.p_value > 0.5  # 20 % per trade eats it all
    (flat,) = profit_tests(np.zeros(400), close, (0.002,), n_resamples=99)
    assert (flat.p_value, flat.bar_sharpe, flat.bar_skewness) == (1.0, None, None)


# --- exposure and the stored positions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("positions", "expected"),
    [
        pytest.param(POSITIONS_5, 3 / 4, id="hand-worked"),  # long over periods 0, 2, 3 of 4
        pytest.param([0, 0, 0, 1], 0.0, id="last-bar-never-held"),
        pytest.param([1, 1, 1, 1], 1.0, id="always-long-is-buy-and-hold"),
        pytest.param([1], 0.0, id="one-bar"),
    ],
)
def test_exposure(positions, expected):
    assert exposure(np.array(positions, dtype=np.float64)) == expected


def test_exposure_of_a_model_equals_its_trades_holding_periods():
    close = _close(200, 16)
    positions = (np.random.default_rng(17).random(200) < 0.5).astype(int)
    held = positions.copy()
    held[-1] = 0
    change = np.diff(held, prepend=0)
    periods = int((np.flatnonzero(change < 0) - np.flatnonzero(change > 0)).sum())  # exit - entry
    assert exposure(positions) == pytest.approx(periods / 199) == pytest.approx(held_share(list(positions)))
    assert evaluate(positions, close, 0.0).n_trades == np.count_nonzero(change > 0)


def test_position_list_is_plain_ints_in_bar_order():
    values = position_list(np.array([1.0, 0.0, 0.0, 1.0]))
    assert values == [1, 0, 0, 1] and all(type(v) is int for v in values)


# --- random percentile ----------------------------------------------------------------------


def test_random_percentile_hand_worked():
    # 2 seeds below 3.0, 1 tied (half): (2 + 0.5) / 4
    assert random_percentile(3.0, np.array([1.0, 2.0, 3.0, 4.0])) == 0.625
    assert random_percentile(0.0, np.array([1.0, 2.0])) == 0.0
    assert random_percentile(9.0, np.array([1.0, 2.0])) == 1.0
    assert random_percentile(1.0, np.array([1.0, 1.0])) == 0.5


def test_random_percentile_is_scipys_mean_kind():
    rng = np.random.default_rng(18)
    seeds = np.round(rng.normal(0.0, 0.05, 100), 2)  # rounded: many ties
    for model in (-0.2, -0.03, 0.0, 0.01, 0.05, 0.3, float(seeds[7])):
        assert random_percentile(model, seeds) == pytest.approx(
            stats.percentileofscore(seeds, model, kind="mean") / 100, abs=1e-15
        )


@pytest.mark.parametrize(
    ("model", "seeds", "match"),
    [
        pytest.param(0.1, [], "non-empty", id="no-seed"),
        pytest.param(math.nan, [0.1], "finite", id="nan-model"),
        pytest.param(0.1, [0.1, math.inf], "finite", id="inf-seed"),
    ],
)
def test_random_percentile_refuses_what_has_no_rank(model, seeds, match):
    with pytest.raises(ValueError, match=match):
        random_percentile(model, np.array(seeds, dtype=np.float64))

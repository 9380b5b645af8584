from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from scipy import stats

from design_reference import random_baseline as reference_random_baseline
from design_reference import seed_runs as reference_seed_runs
from finetune.baselines import (
    BASELINE_TYPES,
    BaselineResult,
    buy_and_hold,
    compute_baselines,
    compute_window_baselines,
    naive,
    random_baseline,
    random_entries,
    random_seeds,
)


def _close(n: int, seed: int = 7, vol: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, vol, n)))


# --- buy_and_hold and naive ---------------------------------------------------------------


def test_buy_and_hold_hand_worked():
    # 120 / 100 - 1 - 2 * 10 / 10_000 = 0.2 - 0.002 = 0.198
    result = buy_and_hold(np.array([100.0, 90.0, 130.0, 120.0]), 0.002)
    # in the market over all 3 holding periods of the 4 bars: exposure 1
    assert result == BaselineResult("buy_and_hold", pytest.approx(0.198, abs=1e-15), 1.0, exposure=1.0)


def test_buy_and_hold_one_bar_makes_no_trade():
    assert buy_and_hold(np.array([100.0]), 0.002) == BaselineResult("buy_and_hold", 0.0, 0.0, exposure=0.0)


def test_naive_is_flat_whatever_the_prices():
    assert naive(np.array([100.0, 50.0, 300.0])) == BaselineResult("naive", 0.0, 0.0, exposure=0.0)


@pytest.mark.parametrize(
    "baseline",
    [
        pytest.param(lambda c: buy_and_hold(c, 0.002), id="buy_and_hold"),
        pytest.param(naive, id="naive"),
        pytest.param(lambda c: random_baseline(c, 0.002), id="random"),
    ],
)
@pytest.mark.parametrize(
    ("close", "match"),
    [
        pytest.param([], "empty", id="zero-bars"),
        pytest.param([100.0, -1.0], "positive finite", id="negative-price"),
        pytest.param([100.0, math.nan], "positive finite", id="nan-price"),
        pytest.param([[100.0, 101.0]], "1-D", id="two-dimensional"),
    ],
)
def test_baselines_refuse_unusable_windows(baseline, close, match):
    with pytest.raises(ValueError, match=match):
        baseline(np.array(close, dtype=float))


@pytest.mark.parametrize("rt", [pytest.param(-0.001, id="negative"), pytest.param(math.nan, id="nan")])
def test_baselines_refuse_a_bad_round_trip_cost(rt):
    with pytest.raises(ValueError, match="round_trip_cost"):
        buy_and_hold(np.array([1.0, 2.0]), rt)
    with pytest.raises(ValueError, match="round_trip_cost"):
        random_baseline(np.array([1.0, 2.0]), rt)


# --- random -------------------------------------------------------------------------------


def test_random_hand_worked_with_certain_entries():
    # p_entry = 1: every gap is 1, so entries = 0, 2, 4, ... and each trade holds 2 bars.
    # n = 7: trades (0 -> 2) and (2 -> 4) and (4 -> 6); exits 2, 4, 6 <= 6.
    # growth = (110/100 - 0.01) * (121/110 - 0.01) * (133.1/121 - 0.01) = 1.09^3
    close = np.array([100.0, 50.0, 110.0, 1.0, 121.0, 7.0, 133.1])
    result = random_baseline(close, 0.01, n_seeds=3, hold_bars=2, p_entry=1.0)
    assert result.net_return == pytest.approx(1.09**3 - 1, abs=1e-12)
    assert (result.n_trades, result.return_std, result.n_seeds, result.hold_bars) == (3.0, 0.0, 3, 2)
    # 3 trades x 2 bars = the 6 holding periods of 7 bars; every seed the same, so the quantiles too
    assert result.exposure == 1.0
    assert result.seed_p05 == result.seed_p50 == result.seed_p95 == pytest.approx(1.09**3 - 1, abs=1e-12)


def test_random_hand_worked_seed_zero():
    # n = 6, hold 2: m = 6 // 2 + 1 = 4 and default_rng(0).geometric(0.5, size=4) = [2, 1, 1, 1].
    # entries = cumsum([1, 0, 0, 0]) + 2 * [0, 1, 2, 3] = [1, 3, 5, 7]; exits [3, 5, 7, 9]:
    # trades (1 -> 3) and (3 -> 5) exit <= 5.
    # (110/100 - 1 - 0.004) = 0.096 ; (99/110 - 1 - 0.004) = -0.104 ; 1.096 * 0.896 - 1 = -0.017984
    np.testing.assert_array_equal(np.random.default_rng(0).geometric(0.5, size=4), [2, 1, 1, 1])
    close = np.array([50.0, 100.0, 7.0, 110.0, 3.0, 99.0])
    result = random_baseline(close, 0.004, n_seeds=1, hold_bars=2, p_entry=0.5)
    assert result.net_return == pytest.approx(-0.017984, abs=1e-15)
    assert result.n_trades == 2.0
    assert result.exposure == pytest.approx(2 * 2 / 5)  # long over bars 1..4 of the 5 periods


@pytest.mark.parametrize(
    ("n", "hold_bars", "n_seeds", "p_entry"),
    [
        pytest.param(500, 24, 50, None, id="short-window"),
        pytest.param(5_000, 24, 20, None, id="month-like"),
        pytest.param(3_000, 5, 10, 0.5, id="search-path-p>=1/3"),
        pytest.param(2_000, 12, 10, 0.01, id="rare-entries"),
        pytest.param(100, 1, 10, None, id="hold-one-bar"),
    ],
)
def test_random_agrees_with_a_per_trade_loop(n, hold_bars, n_seeds, p_entry):
    close = _close(n)
    result = random_baseline(close, 0.003, n_seeds=n_seeds, hold_bars=hold_bars, p_entry=p_entry)
    mean, std, trades = reference_random_baseline(close, 0.003, n_seeds=n_seeds, hold_bars=hold_bars, p_entry=p_entry)
    assert result.net_return == pytest.approx(mean, abs=1e-12)
    assert result.return_std == pytest.approx(std, abs=1e-12)
    assert result.n_trades == trades


@pytest.mark.parametrize(
    ("n", "hold_bars", "n_seeds"),
    [
        pytest.param(500, 24, 50, id="short-window"),
        pytest.param(720, 24, 100, id="month"),
        pytest.param(60, 4, 37, id="small"),
    ],
)
def test_seed_quantiles_and_exposure_agree_with_the_loop(n, hold_bars, n_seeds):
    close = _close(n, seed=11, vol=0.02)
    runs = reference_seed_runs(close, 0.003, n_seeds=n_seeds, hold_bars=hold_bars)
    returns = [r for r, _ in runs]
    result = random_baseline(close, 0.003, n_seeds=n_seeds, hold_bars=hold_bars)
    # numpy's default quantile is linear interpolation, scipy's scoreatpercentile 'fraction'
    for got, q in ((result.seed_p05, 5), (result.seed_p50, 50), (result.seed_p95, 95)):
        assert got == pytest.approx(stats.scoreatpercentile(returns, q), abs=1e-12)
    # each trade is long for hold_bars of the n - 1 holding periods
    held = [trades * hold_bars / (n - 1) for _, trades in runs]
    assert result.exposure == pytest.approx(sum(held) / n_seeds, abs=1e-12)
    assert 0 < result.exposure < 1


@pytest.mark.parametrize("hold_bars", [pytest.param(h, id=f"hold-{h}") for h in (1, 6, 24)])
def test_one_pass_per_window_equals_a_pass_per_cost_basis(hold_bars):
    close = _close(700, seed=3, vol=0.015)
    costs = [0.0, 0.002, 0.0041, 0.006]
    window = compute_window_baselines(close, costs, n_seeds=40, hold_bars=hold_bars)
    assert list(window.by_cost) == costs
    for rt in costs:
        per_key = compute_baselines(close, rt, n_seeds=40, hold_bars=hold_bars)
        assert window.by_cost[rt] == per_key
        runs = reference_seed_runs(close, rt, n_seeds=40, hold_bars=hold_bars)
        np.testing.assert_allclose(window.seed_returns(rt), [r for r, _ in runs], rtol=0, atol=1e-12)


def test_seeds_of_a_window_are_drawn_once_for_all_cost_bases(monkeypatch):
    import finetune.baselines as module

    calls = []
    real = module.random_entries

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "random_entries", counting)
    seeds = random_seeds(_close(300), (0.0, 0.002, 0.006), n_seeds=25, hold_bars=10)
    assert len(calls) == 25 and seeds.returns.shape == (3, 25)


@pytest.mark.parametrize("chunk", [pytest.param(c, id=f"chunk-{c}") for c in (None, 1, 3, 50)])
def test_entries_drawn_in_chunks_are_the_design_formula(chunk):
    # DESIGN 5 verbatim, then the prefix of trades whose exit is <= n - 1
    n, hold_bars, p = 400, 6, 0.3
    m = n // hold_bars + 1
    for seed in range(20):
        gaps = np.random.default_rng(seed).geometric(p, size=m)
        entries = np.cumsum(gaps - 1) + hold_bars * np.arange(m)
        expected = entries[entries + hold_bars <= n - 1]
        got = random_entries(np.random.default_rng(seed), m, n=n, hold_bars=hold_bars, p_entry=p, chunk=chunk)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("n", "hold_bars"),
    [
        pytest.param(1, 24, id="one-bar"),
        pytest.param(24, 24, id="exactly-hold-bars"),  # the exit bar 24 would be past n-1 = 23
        pytest.param(10, 24, id="fewer-bars-than-hold"),
    ],
)
def test_random_without_room_for_a_trade_is_flat(n, hold_bars):
    result = random_baseline(_close(n), 0.002, n_seeds=5, hold_bars=hold_bars)
    assert (result.net_return, result.n_trades, result.return_std) == (0.0, 0.0, 0.0)
    assert (result.exposure, result.seed_p05, result.seed_p50, result.seed_p95) == (0.0, 0.0, 0.0, 0.0)


def test_random_first_window_with_room_for_a_trade():
    # n = 25, hold 24: only an entry at bar 0 exits in time (bar 24); it happens when gap = 1.
    close = _close(25)
    result = random_baseline(close, 0.002, n_seeds=200, hold_bars=24)
    assert 0 < result.n_trades < 1
    assert result.net_return == pytest.approx(result.n_trades * (close[24] / close[0] - 1 - 0.002), abs=1e-12)


def test_random_on_constant_prices_loses_the_cost_per_trade():
    # every trade nets 1 - 1 - rt = -rt; the mean trade count is compared to the loop
    close = np.full(300, 50.0)
    result = random_baseline(close, 0.002, n_seeds=20, hold_bars=10)
    mean, _, trades = reference_random_baseline(close, 0.002, n_seeds=20, hold_bars=10)
    assert result.net_return == pytest.approx(mean, abs=1e-12)
    assert result.n_trades == trades > 0
    assert result.net_return < 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"n_seeds": 0}, "n_seeds", id="no-seed"),
        pytest.param({"hold_bars": 0}, "hold_bars", id="zero-hold"),
        pytest.param({"hold_bars": 2.5}, "hold_bars", id="fractional-hold"),
        pytest.param({"p_entry": 0.0}, "p_entry", id="p-zero"),
        pytest.param({"p_entry": 1.5}, "p_entry", id="p-above-one"),
    ],
)
def test_random_refuses_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_baseline(_close(50), 0.002, **kwargs)


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"prices-{s}") for s in range(4)])
def test_higher_cost_never_raises_any_baseline(seed):
    close = _close(400, seed=seed, vol=0.02)
    costs = [0.0, 0.0005, 0.002, 0.006, 0.02]
    for hold_bars in (1, 6, 24):
        rows = [compute_baselines(close, rt, n_seeds=30, hold_bars=hold_bars) for rt in costs]
        for cheaper, dearer in zip(rows, rows[1:], strict=False):
            for low, high in zip(cheaper, dearer, strict=False):
                assert high.net_return <= low.net_return, (low, high)
                assert high.n_trades == low.n_trades


def test_compute_baselines_in_the_declared_order():
    rows = compute_baselines(_close(200), 0.002, n_seeds=10, hold_bars=24)
    assert tuple(row.baseline_type for row in rows) == BASELINE_TYPES
    assert rows[1] == random_baseline(_close(200), 0.002, n_seeds=10, hold_bars=24)


def _peak_bytes(close: np.ndarray, n_seeds: int) -> int:
    tracemalloc.start()
    try:
        random_baseline(close, 0.002, n_seeds=n_seeds, hold_bars=24)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_random_memory_is_flat_in_the_number_of_seeds():
    close = _close(50_000)
    few, many = _peak_bytes(close, 10), _peak_bytes(close, 1000)
    assert many < 1.2 * few, (few, many)
    assert many < 8 * close.nbytes  # O(n): a few arrays of the window, not (n_seeds, n)

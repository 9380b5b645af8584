from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from scipy import stats

from design_reference import held_share
from design_reference import shift_test as reference_shift_test
from finetune.baselines import buy_and_hold
from finetune.model import evaluate
from finetune.significance import (
    ShiftTest,
    exposure,
    position_list,
    random_percentile,
    shift_offsets,
    shift_test,
    shift_tests,
)

# A 5-bar window worked on paper (rt = 0): positions [1, 0, 1, 1, 0] trade 0 -> 1 (110/100) and
# 2 -> 4 (121/99): growth 1.1 * 11/9 = 1.34444..., a return of 0.34444...
CLOSE_5 = np.array([100.0, 110.0, 99.0, 121.0, 121.0])
POSITIONS_5 = np.array([1, 0, 1, 1, 0])


def _close(n: int, seed: int, vol: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, vol, n)))


# --- shift test -----------------------------------------------------------------------------


def test_shift_test_hand_worked_five_bars():
    # offsets: default_rng(0).integers(1, 5, size=6) = [4, 3, 3, 2, 2, 1]
    #   k=4: [1,1,0,1,0] trades 0->2 (0.99), 3->4 (1.0)       -> -0.01
    #   k=3: [0,1,1,0,1] -> last flat: 1->3 (1.1)             ->  0.10
    #   k=2: [1,0,1,0,1] -> last flat: 0->1, 2->3 (1.1, 11/9) ->  0.3444... = the model (a tie)
    #   k=1: [0,1,0,1,1] -> last flat: 1->2 (0.9), 3->4 (1.0) -> -0.10
    # two shifts (k=2 twice) are >= the model: p = (1 + 2) / (1 + 6) = 3/7
    np.testing.assert_array_equal(shift_offsets(5, 6), [4, 3, 3, 2, 2, 1])
    result = shift_test(POSITIONS_5, CLOSE_5, 0.0, n_shifts=6)
    assert result.p_value == pytest.approx(3 / 7, abs=1e-15)
    assert result.n_shifts == 6
    assert result.model_return == pytest.approx(1.1 * 121 / 99 - 1, abs=1e-15)


def test_shift_test_hand_worked_with_a_cost():
    # rt = 0.02: model (1.1 - 0.02) * (121/99 - 0.02) - 1 = 0.298; k=3: 1.1 - 0.02 - 1 = 0.08 < model,
    # the k=2 ties stay ties: p = 3/7 again; with 1 shift (k=4: 0.97 * 0.98 - 1 < model) p = 1/2
    result = shift_test(POSITIONS_5, CLOSE_5, 0.02, n_shifts=6)
    assert result.model_return == pytest.approx((1.1 - 0.02) * (121 / 99 - 0.02) - 1, abs=1e-15)
    assert result.p_value == pytest.approx(3 / 7, abs=1e-15)
    assert shift_test(POSITIONS_5, CLOSE_5, 0.02, n_shifts=1) == ShiftTest(0.5, 1, result.model_return)


@pytest.mark.parametrize(
    ("n", "n_shifts", "rt", "p_long"),
    [
        pytest.param(2, 10, 0.0, 0.5, id="two-bars"),
        pytest.param(7, 30, 0.002, 0.5, id="seven-bars"),
        pytest.param(60, 100, 0.003, 0.3, id="sparse"),
        pytest.param(300, 200, 0.0, 0.7, id="dense"),
        pytest.param(720, 100, 0.006, 0.5, id="month"),
    ],
)
def test_shift_test_agrees_with_an_independent_loop(n, n_shifts, rt, p_long):
    for seed in range(3):
        close = _close(n, seed)
        positions = (np.random.default_rng(100 + seed).random(n) < p_long).astype(int)
        p_value, model = reference_shift_test(positions, close, rt, n_shifts=n_shifts)
        result = shift_test(positions, close, rt, n_shifts=n_shifts)
        assert result.p_value == pytest.approx(p_value, abs=1e-15), seed
        assert result.model_return == pytest.approx(model, abs=1e-12)
        assert result.n_shifts == n_shifts


def test_the_model_return_is_model_evaluate():
    close = _close(500, 4)
    positions = (np.random.default_rng(5).random(500) < 0.4).astype(np.float64)
    for rt in (0.0, 0.002, 0.006):
        assert shift_test(positions, close, rt, n_shifts=5).model_return == pytest.approx(
            evaluate(positions, close, rt).net_return, abs=1e-12
        )


def test_a_planted_timing_edge_is_significant_and_its_shifts_are_not():
    # long exactly before each rise: no shift can match that timing
    close = _close(400, 8, vol=0.02)
    knows_the_future = (np.diff(close, append=close[-1]) > 0).astype(int)
    assert shift_test(knows_the_future, close, 0.0, n_shifts=199).p_value == pytest.approx(1 / 200)


def test_one_bar_has_no_shift():
    assert shift_test(np.array([1]), np.array([100.0]), 0.002, n_shifts=100) == ShiftTest(1.0, 0, 0.0)


@pytest.mark.parametrize(
    ("positions", "expected_return"),
    [
        pytest.param(np.zeros(48, dtype=int), 0.0, id="always-flat"),
        pytest.param(np.ones(48, dtype=int), None, id="always-long"),
    ],
)
def test_a_constant_book_ties_with_every_shift(positions, expected_return):
    close = _close(48, 9)
    result = shift_test(positions, close, 0.002, n_shifts=100)
    assert result == ShiftTest(1.0, 100, result.model_return)  # every shift is the same book
    if expected_return is None:  # always long is buy-and-hold
        expected_return = buy_and_hold(close, 0.002).net_return
    assert result.model_return == pytest.approx(expected_return, abs=1e-15)


def test_every_cost_basis_of_a_window_in_one_pass():
    close = _close(720, 10)
    positions = (np.random.default_rng(11).random(720) < 0.5).astype(int)
    costs = (0.0, 0.002, 0.006)
    assert shift_tests(positions, close, costs, n_shifts=100) == [
        shift_test(positions, close, rt, n_shifts=100) for rt in costs
    ]


@pytest.mark.parametrize("chunk_cells", [pytest.param(c, id=f"cells-{c}") for c in (1, 300, 5_000, 1 << 20)])
def test_chunking_does_not_change_the_result(chunk_cells):
    close = _close(300, 12)
    positions = (np.random.default_rng(13).random(300) < 0.5).astype(int)
    expected = shift_tests(positions, close, (0.002,), n_shifts=250)
    assert shift_tests(positions, close, (0.002,), n_shifts=250, chunk_cells=chunk_cells) == expected


def _peak_bytes(positions: np.ndarray, close: np.ndarray, n_shifts: int) -> int:
    tracemalloc.start()
    try:
        shift_tests(positions, close, (0.0, 0.002), n_shifts=n_shifts, chunk_cells=1 << 16)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_flat_in_the_number_of_shifts():
    close = _close(4_000, 14)
    positions = (np.random.default_rng(15).random(4_000) < 0.5).astype(int)
    few, many = _peak_bytes(positions, close, 200), _peak_bytes(positions, close, 2_000)
    # the offsets (8 bytes each) grow; the (rows, n) chunks do not
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
    ],
)
def test_bad_input_is_named(positions, close, kwargs, match):
    rt = kwargs.get("rt", 0.002)
    with pytest.raises(ValueError, match=match):
        shift_test(np.array(positions), np.array(close), rt, n_shifts=kwargs.get("n_shifts", 10))


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

from __future__ import annotations

import math

import numpy as np
import pytest

from finetune.costs import compound, net_of_cost, round_trip_cost, trade_returns


@pytest.mark.parametrize(
    ("cost_bps", "slippage_bps", "expected"),
    [
        pytest.param(10, 0, 0.002, id="10bp-no-slippage"),  # 2 * 10 / 10_000
        pytest.param(15, 5, 0.004, id="15bp-plus-5bp-slippage"),  # 2 * 20 / 10_000
        pytest.param(0, 0, 0.0, id="free"),
        pytest.param(2.5, 0.5, 0.0006, id="fractional-bps"),  # 2 * 3 / 10_000
    ],
)
def test_round_trip_cost_is_twice_the_per_side_bps(cost_bps, slippage_bps, expected):
    assert round_trip_cost(cost_bps, slippage_bps) == pytest.approx(expected, abs=1e-15)


def test_slippage_defaults_to_zero():
    assert round_trip_cost(30) == round_trip_cost(30, 0) == 0.006


@pytest.mark.parametrize(
    ("cost_bps", "slippage_bps", "named"),
    [
        pytest.param(-1, 0, "cost_bps", id="negative-cost"),
        pytest.param(10, -0.5, "slippage_bps", id="negative-slippage"),
        pytest.param(math.nan, 0, "cost_bps", id="nan-cost"),
        pytest.param(10, math.inf, "slippage_bps", id="inf-slippage"),
        pytest.param("10", 0, "cost_bps", id="string-cost"),
        pytest.param(True, 0, "cost_bps", id="bool-cost"),
    ],
)
def test_round_trip_cost_refuses_what_is_no_cost(cost_bps, slippage_bps, named):
    with pytest.raises(ValueError, match=named) as info:
        round_trip_cost(cost_bps, slippage_bps)
    assert "\n" not in str(info.value)


def test_trade_returns_subtract_the_whole_round_trip_from_each_trade():
    # 110/100 - 1 - 0.002 = 0.098 ; 90/100 - 1 - 0.002 = -0.102
    returns = trade_returns(np.array([100.0, 100.0]), np.array([110.0, 90.0]), 0.002)
    np.testing.assert_allclose(returns, [0.098, -0.102], rtol=0, atol=1e-15)


def test_net_of_cost_leaves_its_input_alone():
    gross = np.array([1.1, 0.9])
    net_of_cost(gross, 0.002)
    np.testing.assert_array_equal(gross, [1.1, 0.9])


@pytest.mark.parametrize(
    ("returns", "expected"),
    [
        pytest.param([], 0.0, id="no-trade"),
        pytest.param([0.1], 0.1, id="one-trade"),
        pytest.param([0.1, -0.5], 1.1 * 0.5 - 1, id="two-trades"),
    ],
)
def test_compound_multiplies_growth(returns, expected):
    assert compound(np.array(returns, dtype=float)) == pytest.approx(expected, abs=1e-15)
